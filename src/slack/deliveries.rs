//! Replays have no second effect.
//!
//! Anyone who captured a signed Slack request (a proxy or an APM that logs bodies) could send it
//! again within its five-minute window. Each delivery therefore has a key, recorded in the
//! database before (or, for `/jit request`, together with) its effect:
//! - a signed HTTP request: the SHA-256 of its signature, which is unique to its timestamp and
//!   body; kept until the signature can no longer verify;
//! - an Events API event: its `event_id`, which Slack keeps across its own retries (they carry
//!   `X-Slack-Retry-Num` and a fresh signature);
//! - a Socket Mode envelope: its `envelope_id`, which Slack keeps when it redelivers.
//!
//! A delivery seen before gets the answer the first one got (the same ephemeral reply, the same
//! `response_action`), and nothing happens again. The record is in the database, so this holds
//! across restarts and across replicas.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::slack::verify::MAX_SKEW_SECS;
use crate::store::deliveries;

/// How long a redelivered event or envelope is recognised (Slack retries within minutes).
const REDELIVERY_WINDOW: chrono::Duration = chrono::Duration::hours(1);

/// One delivery from Slack, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub key: String,
    /// After this the delivery cannot come again (its signature no longer verifies).
    pub expires_at: DateTime<Utc>,
}

impl Delivery {
    /// A verified HTTP request with this signature header and timestamp.
    pub fn signed(signature: &[u8], timestamp: i64) -> Delivery {
        let valid_until = timestamp.saturating_add(MAX_SKEW_SECS + 60);
        Delivery {
            key: format!("sig:{}", hex::encode(Sha256::digest(signature))),
            expires_at: DateTime::from_timestamp(valid_until, 0)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// An Events API event, by its `event_id`.
    pub fn event(event_id: &str, now: DateTime<Utc>) -> Delivery {
        Delivery {
            key: format!("event:{}", truncated(event_id)),
            expires_at: now + REDELIVERY_WINDOW,
        }
    }

    /// A Socket Mode envelope, by its `envelope_id`.
    pub fn envelope(envelope_id: &str, now: DateTime<Utc>) -> Delivery {
        Delivery {
            key: format!("envelope:{}", truncated(envelope_id)),
            expires_at: now + REDELIVERY_WINDOW,
        }
    }
}

fn truncated(id: &str) -> String {
    id.chars().take(200).collect()
}

/// What [`once`] answers when the first delivery has recorded no answer yet (it is still being
/// handled): for a slash command, a line saying so; otherwise an empty 200.
pub fn still_handling(slash_command: bool) -> Option<Value> {
    slash_command.then(|| {
        json!({
            "response_type": "ephemeral",
            "text": "jit already received this command and is handling it.",
        })
    })
}

/// Runs `handle` for the first delivery of `delivery` only, and records its answer. A delivery
/// seen before gets that answer (waiting up to two seconds for the first to finish), or
/// `pending` if it is still not there, and `handle` never runs. Without a delivery key (the
/// in-process paths of the demo and benchmarks) `handle` just runs.
///
/// If the delivery cannot be recorded (the database is down), nothing runs: the caller answers
/// `failed`, because jit cannot tell a replay from a first delivery.
pub async fn once<F, Fut>(
    app: &App,
    delivery: Option<&Delivery>,
    pending: Option<Value>,
    failed: impl FnOnce() -> Option<Value>,
    handle: F,
) -> Option<Value>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<Value>>,
{
    let Some(delivery) = delivery else {
        return handle().await;
    };
    match claim(app, delivery).await {
        Ok(true) => {
            let answer = handle().await;
            let text = answer
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_else(|| "null".into());
            if let Err(err) = record_answer(app, delivery, &text).await {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot record a Slack delivery's answer; a replay will get a neutral one"
                );
            }
            answer
        }
        Ok(false) => {
            replayed(app);
            first_answer(app, delivery).await.unwrap_or(pending)
        }
        Err(err) => {
            tracing::error!(
                error = format!("{err:#}"),
                "cannot record a Slack delivery, so it is not acted on"
            );
            failed()
        }
    }
}

/// Counts and logs a delivery that was seen before.
pub fn replayed(app: &App) {
    app.metrics.http_rejected("replay");
    tracing::warn!(
        "a Slack delivery was received again; answered as before, with no second effect"
    );
}

async fn claim(app: &App, delivery: &Delivery) -> anyhow::Result<bool> {
    let mut tx = app.store.begin_write().await?;
    let first = deliveries::claim(&mut tx, &delivery.key, delivery.expires_at).await?;
    tx.commit().await?;
    Ok(first)
}

async fn record_answer(app: &App, delivery: &Delivery, answer: &str) -> anyhow::Result<()> {
    let mut tx = app.store.begin_write().await?;
    deliveries::set_answer(&mut tx, &delivery.key, answer).await?;
    tx.commit().await?;
    Ok(())
}

/// The first delivery's answer: `Some(None)` for an empty one, `None` if not recorded yet.
async fn first_answer(app: &App, delivery: &Delivery) -> Option<Option<Value>> {
    for _ in 0..20 {
        let recorded = async {
            let mut conn = app.store.read().await?;
            anyhow::Ok(deliveries::answer(&mut conn, &delivery.key).await?)
        }
        .await;
        match recorded {
            Ok(Some(text)) => {
                return Some(
                    serde_json::from_str::<Value>(&text)
                        .ok()
                        .filter(|v| !v.is_null()),
                );
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "cannot read a Slack delivery's answer"
                );
                return None;
            }
        }
    }
    None
}

/// Forgets deliveries that can no longer come again. Run by the worker every minute.
pub async fn prune(app: &App) -> anyhow::Result<u64> {
    let now = app.clock.wall().max(app.clock.now());
    let mut tx = app.store.begin_write().await?;
    let n = deliveries::prune(&mut tx, now).await?;
    tx.commit().await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        let a = Delivery::signed(b"v0=abc", 1_700_000_000);
        assert_eq!(a, Delivery::signed(b"v0=abc", 1_700_000_000));
        assert_ne!(a.key, Delivery::signed(b"v0=abd", 1_700_000_000).key);
        assert!(a.key.starts_with("sig:") && a.key.len() == 4 + 64);
        assert_eq!(
            a.expires_at.timestamp(),
            1_700_000_000 + MAX_SKEW_SECS + 60,
            "kept until the signature cannot verify any more"
        );
        let now = Utc::now();
        assert_eq!(Delivery::event("Ev1", now).key, "event:Ev1");
        assert_eq!(Delivery::envelope("e-1", now).key, "envelope:e-1");
        assert_eq!(Delivery::event(&"x".repeat(500), now).key.len(), 6 + 200);
    }
}
