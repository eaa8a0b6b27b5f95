//! Signed event webhooks (`[[webhook]]`): every audit event a webhook asks for is POSTed to it as
//! JSON, signed the way Slack signs its requests, through the durable queue.
//!
//! - **Stream.** Each webhook has one live job (`webhook.deliver`, unique per URL) and a cursor in
//!   the database: the last audit seq it acknowledged. The job reads the events after the cursor
//!   in order, POSTs each one the webhook wants, and moves the cursor past each acknowledged (2xx)
//!   one, so nothing is lost across crashes and restarts, and a replica taking over goes on from
//!   the cursor. When it has caught up it comes back every [`POLL`]. A webhook run for the first
//!   time starts at the head of the log (the events before it are in `jit audit export`).
//! - **At least once.** An event whose answer was lost (a crash after the POST, before the cursor
//!   moved) is sent again, with the same `id` (`jit-<seq>`), for the receiver to deduplicate.
//! - **Failures.** Any other answer, or none, retries the same event with exponential backoff and
//!   jitter (from 2 s, capped at 5 minutes); events behind it wait their turn, in order. After
//!   [`ALERT_AFTER`] failures in a row the audit channel gets one loud `webhook_failing` event.
//! - **Signature.** `X-Jit-Request-Timestamp: <unix seconds>` and
//!   `X-Jit-Signature: v0=<hex HMAC-SHA256(secret, "v0:" + timestamp + ":" + body)>`: a receiver
//!   recomputes it over the raw body, compares in constant time, and refuses a timestamp more
//!   than five minutes old (a replay). The secret comes from the variable `secret_env` names, or
//!   its `_FILE`.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use secrecy::SecretString;
use serde_json::json;

use crate::app::App;
use crate::audit::{self, AuditEvent};
use crate::domain::policy::{Policy, Webhook};
use crate::jobs::Job;
use crate::queue::worker::{JobCtx, Outcome};
use crate::queue::{self, Placement};
use crate::store::{self, audit as audit_store, webhooks as cursors};

/// How often a webhook that has caught up looks for new events.
pub const POLL: Duration = Duration::from_secs(2);

/// Failures in a row before the audit channel is told (once per run of failures).
pub const ALERT_AFTER: u32 = 5;

/// Events read per run of the job.
const BATCH: i64 = 100;

/// How long a webhook has to answer one POST.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The webhooks of the policy with their signing secrets, read once at start.
#[derive(Clone)]
pub struct Targets {
    targets: Vec<(Webhook, SecretString)>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.targets.iter().map(|(w, _)| w.url.as_str()).collect();
        f.debug_struct("Targets").field("urls", &urls).finish()
    }
}

impl Targets {
    /// Reads each webhook's secret from its `secret_env` (or `<secret_env>_FILE`) with `env`.
    pub fn from_policy(policy: &Policy, env: crate::config::EnvFn<'_>) -> Result<Targets, String> {
        let mut targets = Vec::new();
        for webhook in policy.webhooks() {
            let secret = crate::config::required_secret(env, &webhook.secret_env)
                .map_err(|e| format!("webhook {}: {e}", webhook.url))?;
            targets.push((webhook.clone(), secret));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("jit/", env!("CARGO_PKG_VERSION"), " (webhook)"))
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        Ok(Targets { targets, http })
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn get(&self, url: &str) -> Option<&(Webhook, SecretString)> {
        self.targets.iter().find(|(w, _)| w.url == url)
    }
}

/// At start: one delivery job per webhook (creating it if needed), run now.
pub async fn schedule(app: &App) -> anyhow::Result<()> {
    let Some(targets) = app.services.get::<Targets>() else {
        return Ok(());
    };
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    for (webhook, _) in &targets.targets {
        let key = job_key(&webhook.url);
        if !store::jobs::reschedule(&mut tx, &key, now, now).await? {
            queue::enqueue(
                &mut tx,
                &Job::Webhook {
                    url: webhook.url.clone(),
                },
                Placement::unique(key),
                now,
                now,
            )
            .await?;
        }
    }
    tx.commit().await?;
    app.waker.wake();
    Ok(())
}

fn job_key(url: &str) -> String {
    format!("webhook:{url}")
}

/// The JSON body of one event, and its type.
pub fn body(row: &audit_store::AuditRow) -> Option<(String, serde_json::Value)> {
    let event = AuditEvent::from_row(&row.event, &row.detail)?;
    let kind = format!("{}.{}", event.family(), row.event);
    let body = json!({
        "id": format!("jit-{}", row.seq),
        "type": kind,
        "seq": row.seq,
        "at": row.at,
        "request_id": row.request_id,
        "actor": row.actor,
        "event": row.event,
        "detail": row.detail_json(),
        "hash": row.hash,
    });
    Some((kind, body))
}

/// The `webhook.deliver` job: sends what `url` has not acknowledged yet.
pub async fn deliver(app: &App, ctx: JobCtx, url: &str) -> anyhow::Result<Outcome> {
    let Some((webhook, secret)) = app
        .services
        .get::<Targets>()
        .and_then(|t| t.get(url))
        .cloned()
    else {
        // Removed from the policy: its stream ends (the cursor stays, should it come back).
        tracing::info!(
            url,
            "a webhook is no longer in the policy; its delivery job ends"
        );
        return Ok(Outcome::Done);
    };
    let http = app
        .services
        .get::<Targets>()
        .map(|t| t.http.clone())
        .context("no webhook client")?;
    let (after, rows) = {
        let mut conn = app.store.read().await?;
        match cursors::cursor(&mut conn, url).await? {
            Some(after) => (after, audit_store::page(&mut conn, after, BATCH).await?),
            None => {
                // First run: start at the head of the log.
                let head = audit_store::head(&mut conn)
                    .await?
                    .map_or(0, |(seq, _)| seq);
                drop(conn);
                let mut tx = app.store.begin_write().await?;
                cursors::advance(&mut tx, url, head, app.clock.now()).await?;
                tx.commit().await?;
                return Ok(Outcome::RunAt(
                    app.clock.now() + chrono::Duration::from_std(POLL)?,
                ));
            }
        }
    };
    let mut sent_to = after;
    let mut failure: Option<String> = None;
    for row in &rows {
        if let Some((kind, body)) = body(row).filter(|(kind, _)| webhook.wants(kind)) {
            if let Err(err) = post(&http, &webhook, &secret, app, &body).await {
                failure = Some(format!("event {} ({kind}): {err}", row.seq));
                break;
            }
            app.metrics.webhook_sent();
        }
        sent_to = row.seq;
    }
    if sent_to > after {
        let mut tx = app.store.begin_write().await?;
        cursors::advance(&mut tx, url, sent_to, app.clock.now()).await?;
        tx.commit().await?;
    }
    if let Some(error) = failure {
        tracing::warn!(url, attempt = ctx.attempt, error = %error, "a webhook did not take an event; retrying");
        if ctx.attempt == ALERT_AFTER {
            let now = app.clock.now();
            let mut tx = app.store.begin_write().await?;
            audit::record(
                &mut tx,
                now,
                None,
                audit::actor::SYSTEM,
                &AuditEvent::WebhookFailing {
                    url: url.to_owned(),
                    attempts: ctx.attempt,
                    error: error.clone(),
                },
            )
            .await?;
            tx.commit().await?;
            app.waker.wake();
        }
        return Ok(Outcome::Retry(error));
    }
    if rows.len() as i64 == BATCH {
        // More to send: at once.
        return Ok(Outcome::RunAt(app.clock.now()));
    }
    Ok(Outcome::RunAt(
        app.clock.now() + chrono::Duration::from_std(POLL)?,
    ))
}

/// POSTs one signed event; any answer but 2xx is a failure, with its status.
async fn post(
    http: &reqwest::Client,
    webhook: &Webhook,
    secret: &SecretString,
    app: &App,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let body = body.to_string();
    let timestamp = app.clock.wall().timestamp();
    let signature = crate::slack::verify::sign(secret, timestamp, body.as_bytes());
    let id = serde_json::from_str::<serde_json::Value>(&body)?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let response = http
        .post(&webhook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-jit-request-timestamp", timestamp.to_string())
        .header("x-jit-signature", signature)
        .header("x-jit-event-id", id)
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("no answer: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        anyhow::bail!("answered HTTP {}", status.as_u16())
    }
}

/// For the README's receiver example and the tests: whether `signature` is jit's over `body` at
/// `timestamp`, no older than five minutes at `now`.
pub fn verify(
    secret: &SecretString,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    now: chrono::DateTime<Utc>,
) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now.timestamp() - ts).abs() > 300 {
        return false;
    }
    let expected = crate::slack::verify::sign(secret, ts, body);
    subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), signature.as_bytes()).into()
}
