//! Socket Mode: Slack delivers slash commands, interactions and events over a WebSocket that jit
//! opens, instead of POSTing them to public HTTP routes.
//!
//! The protocol is implemented here on `tokio-tungstenite` rather than with slack-morphism's
//! listener: that listener parses every payload into slack-morphism's strict types (which have
//! broken on new Slack fields) without handing over the raw JSON, and its acknowledgements only
//! carry its own typed responses. Here each envelope's payload is read into jit's tolerant types
//! ([`crate::slack::payload`]) and handed to the same handlers the HTTP routes use; their answer
//! becomes the acknowledgement's `payload`.
//!
//! # Protocol
//!
//! 1. `POST {api_url}/apps.connections.open` with `Authorization: Bearer <app token>` answers
//!    `{"ok":true,"url":"wss://…"}`.
//! 2. Slack greets the new connection with `{"type":"hello",…}`.
//! 3. Each delivery is an envelope `{"envelope_id","type","payload","accepts_response_payload"}`
//!    with `type` `slash_commands`, `interactive` or `events_api`; jit answers
//!    `{"envelope_id":…}`, plus `"payload":…` when the handler has a body (a slash command's
//!    ephemeral reply, a view submission's `response_action`).
//! 4. `{"type":"disconnect","reason":…}` asks for a new connection. jit opens the replacement at
//!    once and keeps the old one until the new one has said hello and the old one's envelopes are
//!    answered (make before break), so no acknowledgement is lost to a routine refresh.
//!
//! A connection that closes, errors or goes quiet (no frame, not even a pong to jit's pings, for
//! [`Options::idle_timeout`]) is replaced with exponential backoff and jitter. Envelopes are handled
//! concurrently, at most [`Options::max_in_flight`] per connection.
//!
//! Nothing here logs the app token, the WebSocket URL (it carries a ticket) or payload bodies.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::payload::{EventBody, Interaction, SlashCommand};
use super::{commands, events, interactions};
use crate::app::App;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How to reach Slack, and the timings of the connection loop.
#[derive(Clone)]
pub struct Options {
    /// The Web API base, such as `https://slack.com/api` (`JIT_SLACK_API_URL`).
    pub api_url: String,
    /// The app-level token (`xapp-…`) with `connections:write`.
    pub app_token: SecretString,
    /// The first retry delay after a failure; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often jit pings Slack.
    pub ping_interval: Duration,
    /// A connection that has received nothing (not even a pong) for this long is replaced.
    pub idle_timeout: Duration,
    /// Time allowed for `apps.connections.open` and the WebSocket handshake.
    pub connect_timeout: Duration,
    /// How long a connection that is being replaced or shut down waits for its envelopes' answers.
    pub drain_timeout: Duration,
    /// Envelopes handled at once per connection; beyond it, reading pauses.
    pub max_in_flight: usize,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("api_url", &self.api_url)
            .field("app_token", &"[redacted]")
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl Options {
    /// Production timings: backoff from 1 s to 60 s, a ping every 10 s, 30 s of silence allowed.
    pub fn new(api_url: impl Into<String>, app_token: SecretString) -> Self {
        Self {
            api_url: api_url.into(),
            app_token,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_in_flight: 64,
        }
    }

    /// The delay before retry number `attempt` (0: none), with jitter in its upper half.
    pub fn backoff(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        let full = self
            .min_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        full / 2 + full.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// Slack-requested refreshes closer together than this are treated as failures (backoff applies).
const REFRESH_QUIET: Duration = Duration::from_secs(60);

/// Resolves once shutdown is requested (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs Socket Mode until `shutdown` turns true: connects, answers envelopes through jit's
/// handlers, and reconnects whenever a connection ends. Never returns early on errors; it logs
/// them and retries with backoff.
pub async fn run(app: Arc<App>, options: Options, mut shutdown: watch::Receiver<bool>) {
    let http = match reqwest::Client::builder()
        .timeout(options.connect_timeout)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "Socket Mode: cannot build an HTTP client; not starting");
            return;
        }
    };
    let options = Arc::new(options);
    // `/readyz` now also needs a connection Slack greeted.
    app.health
        .socket_mode
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Connections being replaced: they finish answering their envelopes in the background.
    let mut retiring: JoinSet<Outcome> = JoinSet::new();
    // Told when a replacement connection has said hello (the retiring one may then close).
    let mut successor_ready: Option<oneshot::Sender<()>> = None;
    let mut attempt: u32 = 0;
    let mut delay = Duration::ZERO;
    let mut last_refresh: Option<Instant> = None;
    loop {
        while retiring.try_join_next().is_some() {}
        if *shutdown.borrow() {
            break;
        }
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopping(&mut shutdown) => break,
            }
        }
        let socket = tokio::select! {
            socket = connect(&http, &options) => socket,
            _ = stopping(&mut shutdown) => break,
        };
        let socket = match socket {
            Ok(socket) => socket,
            Err(err) => {
                attempt = attempt.saturating_add(1);
                delay = options.backoff(attempt).max(err.retry_after);
                let retry_in_ms = delay.as_millis() as u64;
                if err.fatal {
                    tracing::error!(error = %err.message, attempt, retry_in_ms, "Socket Mode: cannot connect; check SLACK_APP_TOKEN");
                } else {
                    tracing::warn!(error = %err.message, attempt, retry_in_ms, "Socket Mode: cannot connect; will retry");
                }
                continue;
            }
        };
        let (replace_tx, replace_rx) = oneshot::channel();
        let conn = tokio::spawn(connection(
            app.clone(),
            socket,
            options.clone(),
            shutdown.clone(),
            replace_tx,
            successor_ready.take(),
        ));
        match replace_rx.await {
            Ok(ready) => {
                // Slack asked for a new connection: open it now; this one drains meanwhile.
                // Refreshes come hours apart; back off if they start coming back to back.
                successor_ready = Some(ready);
                let hurried = last_refresh.is_some_and(|at| at.elapsed() < REFRESH_QUIET);
                last_refresh = Some(Instant::now());
                attempt = if hurried {
                    attempt.saturating_add(1)
                } else {
                    0
                };
                delay = options.backoff(attempt);
                retiring.spawn(async move { conn.await.unwrap_or_default() });
            }
            Err(_) => {
                let outcome = conn.await.unwrap_or_default();
                if outcome.ready.is_some() {
                    successor_ready = outcome.ready;
                }
                // A connection Slack greeted counts as a success: start the backoff over.
                attempt = if outcome.greeted {
                    1
                } else {
                    attempt.saturating_add(1)
                };
                delay = options.backoff(attempt);
                if !*shutdown.borrow() {
                    tracing::info!(
                        end = outcome.end,
                        retry_in_ms = delay.as_millis() as u64,
                        "Socket Mode: connection ended; reconnecting"
                    );
                }
            }
        }
    }
    drop(successor_ready);
    while retiring.join_next().await.is_some() {}
    tracing::info!("Socket Mode: stopped");
}

/// Why `apps.connections.open` or the handshake failed.
struct ConnectError {
    message: String,
    /// A `Retry-After` to honour, if Slack sent one.
    retry_after: Duration,
    /// A token or configuration problem that retrying will not fix by itself.
    fatal: bool,
}

impl ConnectError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry_after: Duration::ZERO,
            fatal: false,
        }
    }
}

#[derive(Deserialize)]
struct ConnectionsOpen {
    ok: bool,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Asks Slack for a WebSocket URL and connects to it.
async fn connect(http: &reqwest::Client, options: &Options) -> Result<Socket, ConnectError> {
    let endpoint = format!(
        "{}/apps.connections.open",
        options.api_url.trim_end_matches('/')
    );
    let response = http
        .post(&endpoint)
        .bearer_auth(options.app_token.expose_secret())
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("")
        .send()
        .await
        .map_err(|e| {
            ConnectError::new(format!(
                "apps.connections.open: {}",
                chain(&e.without_url())
            ))
        })?;
    let status = response.status();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1);
        return Err(ConnectError {
            retry_after: Duration::from_secs(retry_after),
            ..ConnectError::new("apps.connections.open: rate limited (HTTP 429)")
        });
    }
    if !status.is_success() {
        return Err(ConnectError::new(format!(
            "apps.connections.open: HTTP {status}"
        )));
    }
    let answer: ConnectionsOpen = response.json().await.map_err(|e| {
        ConnectError::new(format!(
            "apps.connections.open: unreadable answer: {}",
            chain(&e.without_url())
        ))
    })?;
    let url = match (answer.ok, answer.url) {
        (true, Some(url)) => url,
        (true, None) => return Err(ConnectError::new("apps.connections.open: no url")),
        (false, _) => {
            let error = answer.error.unwrap_or_else(|| "unknown_error".into());
            let fatal = matches!(
                error.as_str(),
                "invalid_auth"
                    | "not_authed"
                    | "not_allowed_token_type"
                    | "token_revoked"
                    | "account_inactive"
                    | "missing_scope"
            );
            return Err(ConnectError {
                fatal,
                ..ConnectError::new(format!("apps.connections.open answered `{error}`"))
            });
        }
    };
    let (socket, _) = tokio::time::timeout(
        options.connect_timeout,
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .map_err(|_| ConnectError::new("the WebSocket handshake timed out"))?
    .map_err(|e| ConnectError::new(format!("the WebSocket handshake failed: {e}")))?;
    Ok(socket)
}

/// An error and its sources, on one line (reqwest's own message leaves out the cause).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How a connection ended.
#[derive(Default)]
struct Outcome {
    /// Slack said hello on it.
    greeted: bool,
    end: &'static str,
    /// A retiring connection's "successor ready" signal this connection never got to send.
    ready: Option<oneshot::Sender<()>>,
}

/// A frame from Slack, read tolerantly.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    envelope_id: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    accepts_response_payload: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    num_connections: Value,
}

/// One WebSocket connection: reads frames, runs envelopes, writes acknowledgements.
///
/// `replace` is sent (with a "successor ready" sender) when Slack asks for a new connection;
/// `ready` is fired on hello, telling a retiring predecessor it may close.
async fn connection(
    app: Arc<App>,
    socket: Socket,
    options: Arc<Options>,
    mut shutdown: watch::Receiver<bool>,
    replace: oneshot::Sender<oneshot::Sender<()>>,
    mut ready: Option<oneshot::Sender<()>>,
) -> Outcome {
    let (mut sink, mut stream) = socket.split();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut replace = Some(replace);
    let mut greeted = false;
    // Counts this connection for `/readyz` from Slack's hello until it ends.
    let mut counted = None;
    // Set once this connection is winding down (replaced or shutting down).
    let mut drain_until: Option<Instant> = None;
    // While replaced: resolves when the successor has said hello (or will never).
    let mut successor: Option<oneshot::Receiver<()>> = None;
    let mut reading = true;
    let mut stop_seen = false;
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval_at(
        Instant::now() + options.ping_interval,
        options.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end: &'static str = loop {
        if drain_until.is_some() && successor.is_none() && tasks.is_empty() {
            break if stop_seen { "shutdown" } else { "replaced" };
        }
        let deadline = drain_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            _ = stopping(&mut shutdown), if !stop_seen => {
                stop_seen = true;
                reading = false;
                successor = None;
                let until = Instant::now() + options.drain_timeout;
                drain_until = Some(drain_until.map_or(until, |d| d.min(until)));
            }
            _ = async { successor.as_mut().expect("guarded").await }, if successor.is_some() => {
                successor = None;
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                Ok(ack) => {
                    if let Err(err) = sink.send(Message::text(ack)).await {
                        tracing::warn!(error = %err, "Socket Mode: cannot send an acknowledgement");
                        break "send_failed";
                    }
                }
                Err(err) => tracing::error!(error = %err, "Socket Mode: an envelope task failed"),
            },
            message = stream.next(), if reading && tasks.len() < options.max_in_flight.max(1) => {
                last_heard = Instant::now();
                let text = match message {
                    None => break "closed",
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "Socket Mode: the connection failed");
                        break "error";
                    }
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        tracing::debug!(frame = ?frame, "Socket Mode: Slack closed the connection");
                        break "closed";
                    }
                    Some(Ok(_)) => continue,
                };
                let frame: Frame = match serde_json::from_str(text.as_str()) {
                    Ok(frame) => frame,
                    Err(err) => {
                        tracing::warn!(error = %err, bytes = text.len(), "Socket Mode: ignoring a frame that is not an envelope");
                        continue;
                    }
                };
                match frame.kind.as_str() {
                    "hello" => {
                        greeted = true;
                        if counted.is_none() {
                            counted = Some(app.health.socket_connected());
                        }
                        tracing::info!(num_connections = frame.num_connections.as_u64(), "Socket Mode: connected");
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    "disconnect" => {
                        let reason = frame.reason.as_deref().unwrap_or("unknown");
                        if reason == "link_disabled" {
                            tracing::warn!(reason, "Socket Mode: Slack closed the link (is Socket Mode turned off in the app settings?)");
                        } else {
                            tracing::info!(reason, "Socket Mode: Slack asked for a new connection");
                        }
                        if let Some(replace) = replace.take() {
                            let (ready_tx, ready_rx) = oneshot::channel();
                            if replace.send(ready_tx).is_ok() {
                                successor = Some(ready_rx);
                            }
                            let until = Instant::now() + options.drain_timeout;
                            drain_until = Some(drain_until.map_or(until, |d| d.min(until)));
                        }
                    }
                    kind => {
                        let Some(envelope_id) = frame.envelope_id else {
                            tracing::debug!(kind, "Socket Mode: ignoring a frame without envelope_id");
                            continue;
                        };
                        tracing::debug!(kind, envelope_id, "Socket Mode: envelope");
                        let app = app.clone();
                        let kind = kind.to_owned();
                        let accepts = frame.accepts_response_payload.unwrap_or(true);
                        tasks.spawn(async move {
                            acknowledge(&app, &kind, envelope_id, frame.payload, accepts).await
                        });
                    }
                }
            }
            _ = ping.tick() => {
                if tasks.len() >= options.max_in_flight.max(1) {
                    // Reading is paused: silence says nothing about the connection.
                    last_heard = Instant::now();
                }
                if last_heard.elapsed() >= options.idle_timeout {
                    tracing::warn!(silent_ms = last_heard.elapsed().as_millis() as u64, "Socket Mode: no word from Slack; reconnecting");
                    break "idle";
                }
                if let Err(err) = sink.send(Message::Ping(Default::default())).await {
                    tracing::warn!(error = %err, "Socket Mode: cannot ping");
                    break "send_failed";
                }
            }
            _ = tokio::time::sleep_until(deadline), if drain_until.is_some() => {
                if !tasks.is_empty() {
                    tracing::warn!(in_flight = tasks.len(), "Socket Mode: closing with envelopes still unanswered");
                }
                break "drain_timeout";
            }
        }
    };
    // Handlers still running keep going (their work is committed or rolled back on its own);
    // only their acknowledgements are lost.
    tasks.detach_all();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    })
    .await;
    tracing::debug!(end, "Socket Mode: connection closed");
    Outcome {
        greeted,
        end,
        ready,
    }
}

/// Runs one envelope through jit's handlers and returns the acknowledgement frame.
///
/// A payload that cannot be read is still acknowledged (without a body), so Slack does not
/// redeliver something that will never parse; so is an envelope type jit does not know.
pub async fn acknowledge(
    app: &App,
    kind: &str,
    envelope_id: String,
    payload: Value,
    accepts_response_payload: bool,
) -> String {
    let delivery = super::deliveries::Delivery::envelope(&envelope_id, app.clock.now());
    let body = match AssertUnwindSafe(dispatch(app, kind, payload, &delivery))
        .catch_unwind()
        .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(err)) => {
            tracing::warn!(kind, envelope_id, error = %err, "Socket Mode: cannot read an envelope's payload");
            None
        }
        Err(_) => {
            tracing::error!(
                kind,
                envelope_id,
                "Socket Mode: a handler panicked; acknowledging without a body"
            );
            None
        }
    };
    let body = match body {
        Some(_) if !accepts_response_payload => {
            tracing::warn!(
                kind,
                envelope_id,
                "Socket Mode: Slack does not accept a response payload here; dropping the reply"
            );
            None
        }
        body => body,
    };
    ack_frame(&envelope_id, body).to_string()
}

/// `{"envelope_id": …}`, with `"payload"` when there is a body.
pub fn ack_frame(envelope_id: &str, body: Option<Value>) -> Value {
    match body {
        Some(payload) => json!({ "envelope_id": envelope_id, "payload": payload }),
        None => json!({ "envelope_id": envelope_id }),
    }
}

/// Routes a payload to the handler its envelope type names; returns the reply body, if any.
/// A redelivered envelope (the same `envelope_id`) has no second effect.
async fn dispatch(
    app: &App,
    kind: &str,
    payload: Value,
    delivery: &super::deliveries::Delivery,
) -> Result<Option<Value>, String> {
    match kind {
        "slash_commands" => {
            let command: SlashCommand =
                serde_json::from_value(payload).map_err(|e| e.to_string())?;
            Ok(commands::answer(app, &command, Some(delivery)).await)
        }
        "interactive" => {
            let interaction: Interaction =
                serde_json::from_value(payload).map_err(|e| e.to_string())?;
            Ok(interactions::answer(app, interaction, Some(delivery)).await)
        }
        "events_api" => {
            let event: EventBody = serde_json::from_value(payload).map_err(|e| e.to_string())?;
            Ok(events::answer(app, event, Some(delivery)).await)
        }
        other => {
            tracing::debug!(
                kind = other,
                "Socket Mode: acknowledging an envelope type jit does not handle"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let options = Options::new("http://x", SecretString::from("xapp-1"));
        assert_eq!(options.backoff(0), Duration::ZERO);
        for _ in 0..50 {
            let first = options.backoff(1);
            assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
            let third = options.backoff(3);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = options.backoff(40);
            assert!(late >= Duration::from_secs(30) && late <= Duration::from_secs(60));
        }
    }

    #[test]
    fn ack_frames_carry_a_payload_only_with_a_body() {
        assert_eq!(ack_frame("e1", None), json!({"envelope_id": "e1"}));
        assert_eq!(
            ack_frame("e2", Some(json!({"response_action": "clear"}))),
            json!({"envelope_id": "e2", "payload": {"response_action": "clear"}})
        );
    }

    #[test]
    fn options_debug_hides_the_token() {
        let options = Options::new("http://x", SecretString::from("xapp-secret"));
        assert!(!format!("{options:?}").contains("xapp-secret"));
    }
}
