//! The HTTP API for non-human identities, under `/api/v1`.
//!
//! Callers authenticate with `Authorization: Bearer jit_…`. Unknown and revoked tokens get 401;
//! an identity that may not request a resource gets 403 (the same answer whether or not the
//! resource exists, so the API does not reveal the policy). Errors are JSON with a stable `code`
//! and a human `message`. Calls are rate-limited per token, bodies are limited to 16 KiB, and
//! every authenticated call is recorded in the audit log.
//!
//! Calls that do not authenticate (no token, an unknown or revoked one, an unknown endpoint) are
//! also rate-limited per source address, so nobody can guess tokens or load the database at
//! will. The source address is the peer's, or, behind `trusted_proxy_hops` proxies, the entry of
//! `X-Forwarded-For` that the outermost of them appended ([`client_address`]). A valid token is
//! never refused by that limit: its calls count against the token's own.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
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
use crate::handlers::{HandlerError, Limit, access, request};
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

/// Calls that do not authenticate, per source address per minute.
pub fn address_limiter(per_minute: u32) -> DefaultKeyedRateLimiter<IpAddr> {
    RateLimiter::keyed(Quota::per_minute(
        NonZeroU32::new(per_minute.max(1)).expect("positive"),
    ))
}

/// Parses one `X-Forwarded-For` entry: an address, optionally with a port.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The caller's address. With `trusted_hops == 0` it is the peer's. Behind N trusted proxies it
/// is the Nth `X-Forwarded-For` entry from the right: the one the outermost trusted proxy wrote.
/// Entries further left were written by the client and are never believed. A chain shorter than
/// N gives its leftmost entry; an entry that is not an address gives the peer's.
pub fn client_address(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted_hops: usize,
) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if entries.is_empty() {
        return peer;
    }
    let index = entries.len().saturating_sub(trusted_hops);
    forwarded_address(entries[index]).or(peer)
}

/// The limiter's key: an IPv4 address, or an IPv6 address's /64 (one host's usual allocation).
fn address_key(address: Option<IpAddr>) -> IpAddr {
    match address.map(|a| a.to_canonical()) {
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        Some(v4) => v4,
        // Driven in-process (no socket): one shared key.
        None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Counts a call that did not authenticate against its source address. `Err` when the address
/// is over its limit: answer that instead of the call's own error.
fn count_unauthenticated(app: &App, parts: &Parts) -> Result<(), ApiError> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let address = client_address(peer, &parts.headers, app.settings.trusted_proxy_hops);
    let Err(not_until) = app.unauthenticated_limiter.check_key(&address_key(address)) else {
        return Ok(());
    };
    app.metrics.http_rejected("api_address_rate_limited");
    let wait = not_until.wait_time_from(governor::clock::Clock::now(
        &governor::clock::DefaultClock::default(),
    ));
    tracing::warn!(
        address = address.map(|a| a.to_string()).unwrap_or_default(),
        "too many unauthenticated API calls from one address"
    );
    Err(ApiError {
        retry_after: Some(wait.as_secs() + 1),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many calls without a valid API token from this address; check JIT_TOKEN and \
             try again in a minute.",
        )
    })
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
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
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
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
            HandlerError::Limited {
                limit: Limit::Rate,
                text,
            } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", text),
            // Not 429: waiting does not help by itself; one of the pending requests must end.
            HandlerError::Limited {
                limit: Limit::Pending,
                text,
            } => ApiError::new(StatusCode::CONFLICT, "too_many_pending", text),
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
        let Some(token) = bearer(&parts.headers) else {
            count_unauthenticated(app, parts)?;
            app.metrics.http_rejected("api_unauthorized");
            return Err(ApiError::unauthorized());
        };
        let Some((token_id, identity)) =
            crate::handlers::identity::authenticate(app, token).await?
        else {
            count_unauthenticated(app, parts)?;
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
        "start_at": t(request.start_at),
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
    /// A scheduled start, RFC 3339 (`2026-12-24T22:00:00Z`).
    #[serde(default)]
    start_at: Option<String>,
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
    let start_at = body
        .start_at
        .as_deref()
        .map(|text| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&chrono::Utc))
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_start_at",
                        format!(
                            "`start_at` must be an RFC 3339 date and time with a zone, such as `2026-12-24T22:00:00Z`; got `{}`.",
                            text.chars().take(60).collect::<String>()
                        ),
                    )
                })
        })
        .transpose()?;
    let submission = Submission {
        requester: caller.requester(),
        resource: &body.resource,
        duration: Some(duration),
        justification: &body.justification,
        ticket: body.ticket.as_deref(),
        start_at,
        via: Via::Api,
        origin_channel: None,
        delivery: None,
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
        // start_in_past, start_too_far_ahead.
        Ok(Err(FieldError::Start { code, message })) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, code, message))
        }
        // The policy's rules, with their own stable codes: justification_too_short,
        // justification_mismatch, ticket_required, ticket_mismatch.
        Ok(Err(FieldError::JustificationRule(breach) | FieldError::TicketRule(breach))) => Err(
            ApiError::new(StatusCode::BAD_REQUEST, breach.code, breach.message),
        ),
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
        let (request, pairs) = access::reveal(&app, &caller.requester(), RequestId(id))
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
        let request = access::release(&app, &caller.requester(), RequestId(id)).await?;
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

async fn fallback(State(app): State<Arc<App>>, request: axum::extract::Request) -> ApiError {
    let (parts, _) = request.into_parts();
    if let Err(limited) = count_unauthenticated(&app, &parts) {
        return limited;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_caller_is_the_peer_unless_proxies_are_trusted() {
        let peer: Option<IpAddr> = Some("10.0.0.9".parse().unwrap());
        let spoofed = forwarded(&["6.6.6.6"]);
        assert_eq!(client_address(peer, &spoofed, 0), peer);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // One proxy: the entry it appended, not what the client wrote before it.
        let chain = forwarded(&["6.6.6.6, 203.0.113.7"]);
        assert_eq!(client_address(peer, &chain, 1), ip("203.0.113.7"));
        // Two proxies, across repeated headers.
        let chain = forwarded(&["6.6.6.6, 203.0.113.7", "10.1.2.3"]);
        assert_eq!(client_address(peer, &chain, 2), ip("203.0.113.7"));
        // Ports and IPv6 forms.
        assert_eq!(
            client_address(peer, &forwarded(&["203.0.113.7:4711"]), 1),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_address(peer, &forwarded(&["[2001:db8::1]:443"]), 1),
            ip("2001:db8::1")
        );
        // Nothing forwarded, or garbage: the peer.
        assert_eq!(client_address(peer, &HeaderMap::new(), 1), peer);
        assert_eq!(client_address(peer, &forwarded(&["unknown"]), 1), peer);
        // A chain shorter than the hops: its leftmost entry.
        assert_eq!(
            client_address(peer, &forwarded(&["203.0.113.7"]), 3),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn ipv6_callers_share_their_64() {
        let a = address_key(Some("2001:db8:1:2:aaaa::1".parse().unwrap()));
        let b = address_key(Some("2001:db8:1:2:bbbb::2".parse().unwrap()));
        let c = address_key(Some("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = address_key(Some("::ffff:192.0.2.1".parse().unwrap()));
        assert_eq!(mapped, "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_address_limit_runs_out_and_says_rate_limited() {
        let limiter = address_limiter(3);
        let key = address_key(Some("192.0.2.1".parse().unwrap()));
        let other = address_key(Some("192.0.2.2".parse().unwrap()));
        for _ in 0..3 {
            assert!(limiter.check_key(&key).is_ok());
        }
        assert!(limiter.check_key(&key).is_err());
        assert!(limiter.check_key(&other).is_ok(), "per address");
    }
}
