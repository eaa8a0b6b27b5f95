//! The HTTP front door: Slack's three routes, health, readiness and metrics. The listeners, the
//! connection cap and the timeouts are in [`crate::edge`].
//!
//! Every Slack route goes through [`SlackRequest`], an extractor that limits the body to 64 KiB
//! (413 beyond), verifies the v0 signature against the injected clock (401, with an empty body,
//! on any failure), and only then parses the payload. Handlers get a verified, typed value.
//!
//! Two exceptions, as both Bolt libraries make them:
//! - Slack's `ssl_check` (a form body of `ssl_check=1` and at most a `token`, sent unsigned to a
//!   slash command's URL) is answered 200 before verification, and nothing else happens. Any
//!   other body, `ssl_check` or not, is verified as usual.
//! - A verified event or interaction whose body jit cannot read is answered 200 and ignored,
//!   with a debug line: it is Slack's, and refusing it makes Slack retry and may get the app's
//!   event delivery disabled. A slash command that cannot be read is still a 400.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::app::App;
pub use crate::slack::payload::SlackPayload;
use crate::slack::payload::{EventBody, Interaction, SlashCommand};
use crate::slack::{commands, events, interactions};

/// Slack bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// A verified Slack request, parsed.
pub struct SlackRequest<T> {
    pub payload: T,
    /// `X-Slack-Retry-Num`, when Slack is redelivering.
    pub retry: Option<u32>,
    /// What identifies this delivery, so a replay has no second effect.
    pub delivery: Option<crate::slack::deliveries::Delivery>,
}

fn reject(app: &App, status: StatusCode, reason: &str) -> Response {
    app.metrics.http_rejected(reason);
    tracing::warn!(reason, status = status.as_u16(), "rejected a Slack request");
    (status, Body::empty()).into_response()
}

/// Reads the body, refusing one over [`MAX_BODY`] with 413.
async fn limited_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(reject(app, StatusCode::PAYLOAD_TOO_LARGE, "too_large"));
    }
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| reject(app, StatusCode::PAYLOAD_TOO_LARGE, "too_large"))
}

/// Checks size and signature; returns the raw body.
pub async fn verified_body(app: &App, headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    let bytes = limited_body(app, headers, body).await?;
    verify(app, headers, &bytes).map_err(|r| *r)?;
    Ok(bytes)
}

fn verify(app: &App, headers: &HeaderMap, bytes: &[u8]) -> Result<(), Box<Response>> {
    let timestamp = headers
        .get("x-slack-request-timestamp")
        .map(|v| v.as_bytes());
    let signature = headers.get("x-slack-signature").map(|v| v.as_bytes());
    if let Err(err) = app.verifier.verify(timestamp, signature, bytes) {
        let reason = match err {
            crate::slack::verify::VerifyError::Stale => "stale",
            crate::slack::verify::VerifyError::Mismatch => "bad_signature",
            _ => "malformed",
        };
        return Err(Box::new(reject(app, StatusCode::UNAUTHORIZED, reason)));
    }
    Ok(())
}

/// Slack's `ssl_check`: exactly `ssl_check=1`, with at most a `token` besides.
fn is_ssl_check(body: &[u8]) -> bool {
    let mut ssl_check = false;
    for (key, value) in url::form_urlencoded::parse(body) {
        match key.as_ref() {
            "ssl_check" if value == "1" && !ssl_check => ssl_check = true,
            "token" => {}
            _ => return false,
        }
    }
    ssl_check
}

/// Parses a verified body into `T`, with the retry header.
fn parse_verified<T: SlackPayload>(
    app: &App,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<SlackRequest<T>, Box<Response>> {
    let payload = T::parse(bytes).map_err(|e| {
        if T::ACK_UNPARSEABLE {
            tracing::debug!(error = %e, "ignoring a verified Slack request jit cannot read");
            return Box::new(StatusCode::OK.into_response());
        }
        tracing::warn!(error = %e, "a verified Slack request could not be parsed");
        app.metrics.http_rejected("unparseable");
        Box::new((StatusCode::BAD_REQUEST, "cannot parse the payload").into_response())
    })?;
    let retry = headers
        .get("x-slack-retry-num")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // Verified already, so both headers are there and well-formed.
    let delivery = match (
        headers.get("x-slack-signature"),
        headers
            .get("x-slack-request-timestamp")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok()),
    ) {
        (Some(signature), Some(ts)) => Some(crate::slack::deliveries::Delivery::signed(
            signature.as_bytes(),
            ts,
        )),
        _ => None,
    };
    Ok(SlackRequest {
        payload,
        retry,
        delivery,
    })
}

impl<T: SlackPayload> FromRequest<Arc<App>> for SlackRequest<T> {
    type Rejection = Response;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let bytes = verified_body(app, &parts.headers, body).await?;
        parse_verified(app, &parts.headers, &bytes).map_err(|r| *r)
    }
}

async fn slash_command(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match limited_body(&app, &parts.headers, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    if is_ssl_check(&bytes) {
        tracing::debug!("answered Slack's ssl_check");
        return StatusCode::OK.into_response();
    }
    if let Err(response) = verify(&app, &parts.headers, &bytes) {
        return *response;
    }
    let req: SlackRequest<SlashCommand> = match parse_verified(&app, &parts.headers, &bytes) {
        Ok(req) => req,
        Err(response) => return *response,
    };
    json_or_empty(commands::answer(&app, &req.payload, req.delivery.as_ref()).await)
}

fn json_or_empty(body: Option<serde_json::Value>) -> Response {
    match body {
        Some(body) => Json(body).into_response(),
        None => StatusCode::OK.into_response(),
    }
}

async fn interaction(State(app): State<Arc<App>>, req: SlackRequest<Interaction>) -> Response {
    json_or_empty(interactions::answer(&app, req.payload, req.delivery.as_ref()).await)
}

async fn event(State(app): State<Arc<App>>, req: SlackRequest<EventBody>) -> Response {
    json_or_empty(events::answer(&app, req.payload, req.delivery.as_ref()).await)
}

async fn healthz() -> &'static str {
    "ok"
}

/// How long `/readyz` waits for the database. A pool that cannot reach PostgreSQL keeps trying
/// for its whole acquire timeout; readiness answers before the probe's own timeout does.
const READY_DATABASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Ready when the database answers (within [`READY_DATABASE_TIMEOUT`]) and the worker loop has
/// run recently. With several replicas on PostgreSQL, a replica that cannot reach the database is
/// taken out of the Service until it can again.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    match tokio::time::timeout(READY_DATABASE_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: database check failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response();
        }
        Err(_) => {
            tracing::warn!(
                "readiness: the database did not answer within {READY_DATABASE_TIMEOUT:?}"
            );
            return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response();
        }
    }
    if !app.health.slack_reachable() {
        return (StatusCode::SERVICE_UNAVAILABLE, "Socket Mode not connected").into_response();
    }
    if !app.directory.ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "Slack workspace and users not read yet",
        )
            .into_response();
    }
    let beat = app.health.worker_beat.load(Ordering::Relaxed);
    let age_ms = chrono::Utc::now().timestamp_millis() - beat;
    if beat == 0 || age_ms > 30_000 {
        return (StatusCode::SERVICE_UNAVAILABLE, "worker not running").into_response();
    }
    "ready".into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    if let Err(err) = refresh_gauges(&app).await {
        tracing::warn!(
            error = format!("{err:#}"),
            "cannot refresh metrics from the database"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn refresh_gauges(app: &App) -> anyhow::Result<()> {
    let mut conn = app.store.read().await?;
    let states = crate::store::requests::count_by_state(&mut conn).await?;
    let active = states
        .iter()
        .find(|(s, _)| s == "active")
        .map_or(0, |(_, n)| *n);
    app.metrics.set_active_grants(active);
    let depth = crate::store::jobs::depth_by_kind(&mut conn).await?;
    app.metrics.set_queue_depth(&depth);
    Ok(())
}

/// Every route, `/metrics` included (one listener).
pub fn router(app: Arc<App>) -> Router {
    main_router(app, true)
}

/// The main listener's routes; without `/metrics` when it has a listener of its own.
pub fn main_router(app: Arc<App>, with_metrics: bool) -> Router {
    let routes = Router::new()
        .route("/slack/commands", post(slash_command))
        .route("/slack/interactions", post(interaction))
        .route("/slack/events", post(event))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    let routes = if with_metrics {
        routes.route("/metrics", get(metrics))
    } else {
        routes
    };
    routes.nest("/api/v1", crate::api::router()).with_state(app)
}

/// The separate metrics listener (`JIT_METRICS_LISTEN`): `/metrics` only.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(app)
}
