//! The HTTP API for non-human identities, under `/api/v1`.
//!
//! Callers authenticate with `Authorization: Bearer jit_…`. Unknown and revoked tokens get 401;
//! an identity that may not request a resource gets 403 (the same answer whether or not the
//! resource exists, so the API does not reveal the policy). Errors are JSON with a stable `code`
//! and a human `message`. Calls are rate-limited per token, bodies are limited to 16 KiB, and
//! every authenticated call is recorded in the audit log.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::audit::{self, AuditEvent};
use crate::domain::duration::GrantDuration;
use crate::domain::ids::RequestId;
use crate::domain::policy::Requester;
use crate::domain::request::{Request, State as RequestState};
use crate::handlers::request::{FieldError, Submission, Via};
use crate::handlers::{HandlerError, grant, request};
use crate::store::{self, requests};

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 16 * 1024;
/// The longest `?wait=` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// API calls per token per minute.
pub fn call_limiter(per_minute: u32) -> DefaultKeyedRateLimiter<i64> {
    RateLimiter::keyed(Quota::per_minute(
        NonZeroU32::new(per_minute.max(1)).expect("positive"),
    ))
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid API token is required.",
        )
    }

    fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This identity may not request that resource.",
        )
    }

    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "No such request for this identity.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("valid header"),
            );
        }
        response
    }
}

impl From<HandlerError> for ApiError {
    fn from(err: HandlerError) -> Self {
        match err {
            HandlerError::User(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            internal => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                internal.user_message(),
            ),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        HandlerError::Internal(err).into()
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: i64,
    pub identity: String,
}

impl Caller {
    pub fn requester(&self) -> Requester {
        Requester::Identity(self.identity.clone())
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            app.metrics.http_rejected("api_unauthorized");
            ApiError::unauthorized()
        })?;
        let Some((token_id, identity)) =
            crate::handlers::identity::authenticate(app, token).await?
        else {
            app.metrics.http_rejected("api_unauthorized");
            tracing::warn!("API call with an unknown or revoked token");
            return Err(ApiError::unauthorized());
        };
        if app.api_limiter.check_key(&token_id).is_err() {
            app.metrics.http_rejected("api_rate_limited");
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many calls with this token; slow down.",
            ));
        }
        Ok(Caller { token_id, identity })
    }
}

/// Records an authenticated call in the audit log (not posted to Slack).
async fn audit_call(
    app: &App,
    caller: &Caller,
    method: &str,
    path: &str,
    status: StatusCode,
    request: Option<RequestId>,
) {
    let now = app.clock.now();
    let result = async {
        let mut tx = app.store.begin_write().await?;
        audit::record_quietly(
            &mut tx,
            now,
            request,
            &caller.requester().key(),
            &AuditEvent::ApiCall {
                method: method.to_owned(),
                path: path.to_owned(),
                status: status.as_u16(),
                token_id: caller.token_id,
            },
        )
        .await?;
        tx.commit().await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(err) = result {
        tracing::error!(error = format!("{err:#}"), "cannot audit an API call");
    }
}

/// A request as the API shows it.
pub fn view(request: &Request, revoked: bool) -> Value {
    let t = |at: Option<chrono::DateTime<chrono::Utc>>| at.map(store::format_time);
    json!({
        "id": request.id.0,
        "kind": request.kind.as_str(),
        "resource": request.resource.as_str(),
        "state": request.state.as_str(),
        "final": request.state.is_final(),
        "duration": request.duration.to_string(),
        "justification": request.justification,
        "ticket": request.ticket,
        "created_at": t(Some(request.created_at)),
        "decided_at": t(request.decided_at),
        "decided_by": request.decided_by,
        "reason": request.decision_note,
        "granted_at": t(request.granted_at),
        "expires_at": t(request.expires_at),
        "ended_at": t(request.ended_at),
        "revoked": revoked,
        "failure": request.failure,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRequestBody {
    resource: String,
    duration: String,
    justification: String,
    #[serde(default)]
    ticket: Option<String>,
}

async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The body is larger than {MAX_BODY} bytes."),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("The body is not valid JSON for this call: {e}"),
        )
    })
}

async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    let path = "/api/v1/requests";
    let result = create_inner(&app, &caller, req.into_body()).await;
    let (status, id) = match &result {
        Ok((id, _)) => (StatusCode::ACCEPTED, Some(*id)),
        Err(e) => (e.status, None),
    };
    audit_call(&app, &caller, "POST", path, status, id).await;
    let (_, body) = result?;
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn create_inner(
    app: &App,
    caller: &Caller,
    body: Body,
) -> Result<(RequestId, Value), ApiError> {
    let body: NewRequestBody = read_json(body).await?;
    let duration = GrantDuration::parse(&body.duration)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_duration", e.to_string()))?;
    let submission = Submission {
        requester: caller.requester(),
        resource: &body.resource,
        duration: Some(duration),
        justification: &body.justification,
        ticket: body.ticket.as_deref(),
        via: Via::Api,
        origin_channel: None,
    };
    match request::submit(app, submission).await {
        Ok(Ok(submitted)) => Ok((
            submitted.request.id,
            json!({
                "id": submitted.request.id.0,
                "state": submitted.request.state.as_str(),
                "auto_approved": submitted.auto,
                "url": format!("/api/v1/requests/{}", submitted.request.id.0),
            }),
        )),
        Ok(Err(FieldError::Resource(_))) => Err(ApiError::forbidden()),
        Ok(Err(FieldError::Duration(message))) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "duration_too_long",
            message,
        )),
        Ok(Err(FieldError::Justification(message))) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_justification",
            message,
        )),
        Ok(Err(FieldError::Ticket(message))) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_ticket",
            message,
        )),
        Err(HandlerError::User(message)) if message.contains("too quickly") => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            message,
        )),
        Err(err) => Err(err.into()),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    resource: Option<String>,
}

async fn list(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let mut conn = app.store.read().await.map_err(anyhow::Error::from)?;
    let rows = requests::open_for_requester(&mut conn, &caller.requester()).await?;
    drop(conn);
    let items: Vec<Value> = rows
        .iter()
        .filter(|s| {
            q.resource
                .as_deref()
                .is_none_or(|r| s.request.resource.as_str() == r)
        })
        .map(|s| view(&s.request, s.request.revoked_at.is_some()))
        .collect();
    audit_call(
        &app,
        &caller,
        "GET",
        "/api/v1/requests",
        StatusCode::OK,
        None,
    )
    .await;
    Ok(Json(json!({"requests": items})).into_response())
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: Option<String>,
}

fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let secs = match text.parse::<u64>() {
        Ok(n) => n,
        Err(_) => GrantDuration::parse(text)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_wait",
                    "`wait` is a duration such as 60s (at most 120s).",
                )
            })?
            .as_secs(),
    };
    Ok(Duration::from_secs(secs).min(MAX_WAIT))
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    RequestId::parse(text)
        .map(|id| id.0)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.to_string()))
}

/// Loads the caller's own request; another identity's request is "not found".
async fn own(
    app: &App,
    caller: &Caller,
    id: i64,
) -> Result<store::requests::StoredRequest, ApiError> {
    let mut conn = app.store.read().await.map_err(anyhow::Error::from)?;
    let stored = requests::get(&mut conn, RequestId(id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    if stored.request.requester != caller.requester() {
        return Err(ApiError::not_found());
    }
    Ok(stored)
}

/// Whether a long-poll should keep waiting: until a decision, and then until access is issued.
fn settled(request: &Request) -> bool {
    !matches!(
        request.state,
        RequestState::Pending | RequestState::Approved
    )
}

async fn show(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let path = format!("/api/v1/requests/{id}");
    let result = async {
        let wait = q
            .wait
            .as_deref()
            .map(parse_wait)
            .transpose()?
            .unwrap_or_default();
        let mut changes = app.waker.changes();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let stored = own(&app, &caller, id).await?;
            if settled(&stored.request) || tokio::time::Instant::now() >= deadline {
                return Ok::<_, ApiError>(view(
                    &stored.request,
                    stored.request.revoked_at.is_some(),
                ));
            }
            // Wake on any change, and look again at least every two seconds.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_secs(2)),
                changes.changed(),
            )
            .await;
        }
    }
    .await;
    let status = result
        .as_ref()
        .map(|_| StatusCode::OK)
        .unwrap_or_else(|e| e.status);
    audit_call(
        &app,
        &caller,
        "GET",
        &path,
        status,
        Some(RequestId(id)).filter(|_| status == StatusCode::OK),
    )
    .await;
    Ok(Json(result?).into_response())
}

async fn credentials(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let path = format!("/api/v1/requests/{id}/credentials");
    let result = async {
        let stored = own(&app, &caller, id).await?;
        if stored.request.state != RequestState::Active {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_active",
                format!(
                    "Request #{id} is {}; credentials exist only while it is active.",
                    stored.request.state.label()
                ),
            ));
        }
        let (request, pairs) = grant::reveal(&app, &caller.requester(), RequestId(id))
            .await
            .map_err(|e| match e {
                HandlerError::User(message) => {
                    ApiError::new(StatusCode::NOT_FOUND, "no_credentials", message)
                }
                other => other.into(),
            })?;
        let credentials: serde_json::Map<String, Value> = pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        Ok(json!({
            "id": id,
            "resource": request.resource.as_str(),
            "expires_at": request.expires_at.map(store::format_time),
            "credentials": credentials,
        }))
    }
    .await;
    let status = result
        .as_ref()
        .map(|_| StatusCode::OK)
        .unwrap_or_else(|e| e.status);
    audit_call(
        &app,
        &caller,
        "GET",
        &path,
        status,
        Some(RequestId(id)).filter(|_| status == StatusCode::OK),
    )
    .await;
    let body = result?;
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        "no-store".parse().expect("valid header"),
    );
    Ok(response)
}

async fn release(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let path = format!("/api/v1/requests/{id}/release");
    let result = async {
        own(&app, &caller, id).await?;
        let request = grant::release(&app, &caller.requester(), RequestId(id)).await?;
        Ok::<_, ApiError>(view(&request, request.revoked_at.is_some()))
    }
    .await;
    let status = result
        .as_ref()
        .map(|_| StatusCode::OK)
        .unwrap_or_else(|e| e.status);
    audit_call(
        &app,
        &caller,
        "POST",
        &path,
        status,
        Some(RequestId(id)).filter(|_| status == StatusCode::OK),
    )
    .await;
    Ok(Json(result?).into_response())
}

async fn fallback() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_endpoint",
        "No such API endpoint; see the README.",
    )
}

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/requests", post(create).get(list))
        .route("/requests/{id}", get(show))
        .route("/requests/{id}/credentials", get(credentials))
        .route("/requests/{id}/release", post(release))
        .fallback(fallback)
}
