//! The durable job queue: a generic layer that knows no job of jit's. Jobs are values of a type
//! implementing [`JobSpec`] (jit's are `crate::jobs::Job`); what runs them is a [`worker::Runner`]
//! the worker is given (jit's dispatch table, `handlers::jobs`), so the queue imports nothing
//! from the layers above it.
//!
//! - **Rows.** A job is a row in `jobs` (see `store::jobs`), inserted inside the caller's write
//!   transaction, so the state change that asks for work and the work itself commit together.
//! - **Claim.** One `UPDATE … RETURNING` moves due jobs to `running`, bumps `attempts`, and sets
//!   a lease. A job whose lease runs out is put back and claimed again; the bump means the stale
//!   worker's completion (fenced on `attempts`) affects nothing.
//! - **At least once.** Handlers are idempotent: a job interrupted after its effect and before its
//!   completion runs again.
//! - **Retries.** Exponential backoff with jitter, capped; after `max_attempts` a job is buried
//!   (`dead`) and an alert goes to the audit channel. Teardowns have no maximum: they are never
//!   dropped, and they alert after repeated failure.
//! - **Uniqueness.** A partial unique index gives one live job per `unique_key` (one teardown per
//!   grant); such jobs are rescheduled, not duplicated.
//! - **Lanes.** Jobs sharing a lane never run concurrently (grant, revoke and extend of one
//!   person's access to one resource). An *ordered* lane is a chain: its jobs run one after the
//!   other in insertion order (the messages to one Slack channel, so an audit thread reads in
//!   order and the channel's pace is respected); only the head is `queued`, the rest `blocked`
//!   until the head finishes.
//! - **Chain order.** The next head is not simply the oldest waiting job: messages someone
//!   waits on (approval messages, alerts) go before the rest, even past a head that has not
//!   started, and among them each requester's first waiting message goes before anyone's
//!   second, the requester with the fewest waiting first (a chain *key* with *turns*, see
//!   `store::jobs::CHAIN_URGENT`). Jobs of one key never pass each other, so a request's
//!   approval message precedes its updates and an audit thread reads in order. All messages to
//!   one Slack channel share one chain (`crate::jobs::channel_lane`), so this order is the order in which
//!   the channel's pace is spent.
//! - **Wake-up.** The worker sleeps until the next `run_at` or an enqueue notification.

pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::store::jobs::{self, NewJob};

/// A kind of work the queue can hold: stored as its stable `kind` name and a JSON payload.
pub trait JobSpec: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name stored with the job (never a Rust type name).
    fn kind(&self) -> &'static str;
    fn retry_policy(&self) -> RetryPolicy;
    /// `store::jobs::PRIORITY_ACCESS` or `PRIORITY_MESSAGES`.
    fn priority(&self) -> u8;
    /// The request a job is about, for its log span.
    fn request(&self) -> Option<i64> {
        None
    }
}

/// How a kind of job is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: Option<u32>,
    pub base: Duration,
    pub cap: Duration,
}

/// The delay before attempt `attempt + 1`, after `attempt` failures: exponential, capped, with
/// ±25% jitter so that retries of many jobs spread out.
pub fn backoff(policy: RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(policy.cap);
    let jitter = rand::rng().random_range(0.75..=1.25);
    capped.mul_f64(jitter)
}

/// Where and how a job is enqueued.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub unique_key: Option<String>,
    pub lane: Option<String>,
    pub ordered: bool,
    /// In a chain: goes before the chain's other jobs (see the module docs).
    pub urgent: bool,
    /// In a chain: jobs with the same key keep their order and take turns with other keys.
    pub chain_key: Option<String>,
}

impl Placement {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn unique(key: String) -> Self {
        Self {
            unique_key: Some(key),
            ..Self::default()
        }
    }

    /// A chain: the jobs of `lane` run one after the other, in chain order.
    pub fn chain(lane: String) -> Self {
        Self {
            lane: Some(lane),
            ordered: true,
            ..Self::default()
        }
    }
}

fn new_job<J: JobSpec>(job: &J, placement: Placement, run_at: DateTime<Utc>) -> NewJob {
    NewJob {
        kind: job.kind(),
        payload: serde_json::to_string(job).expect("jobs serialize"),
        run_at,
        unique_key: placement.unique_key,
        lane: placement.lane,
        ordered: placement.ordered,
        max_attempts: job.retry_policy().max_attempts,
        priority: job.priority(),
        chain_class: if placement.urgent {
            jobs::CHAIN_URGENT
        } else {
            jobs::CHAIN_NORMAL
        },
        chain_key: placement.chain_key,
    }
}

/// Inserts several jobs in one statement (see [`jobs::enqueue_many`]).
pub async fn enqueue_many<J: JobSpec>(
    conn: &mut crate::store::Conn,
    batch: Vec<(J, Placement, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let rows: Vec<NewJob> = batch
        .into_iter()
        .map(|(job, placement, run_at)| new_job(&job, placement, run_at))
        .collect();
    jobs::enqueue_many(conn, &rows, now).await
}

/// Inserts `job` to run at `run_at`. `None`: a live job with the same unique key exists.
pub async fn enqueue<J: JobSpec>(
    conn: &mut crate::store::Conn,
    job: &J,
    placement: Placement,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    jobs::enqueue(conn, &new_job(job, placement, run_at), now).await
}

/// Called after every commit that changed something: wakes the worker (there may be new work)
/// and anyone long-polling for a change (the API's `?wait=`).
#[derive(Debug, Clone)]
pub struct Waker {
    worker: Arc<Notify>,
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Waker {
    fn default() -> Self {
        Self {
            worker: Arc::new(Notify::new()),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl Waker {
    pub fn wake(&self) {
        self.worker.notify_one();
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub async fn woken(&self) {
        self.worker.notified().await;
    }

    /// A receiver that sees every later [`Waker::wake`].
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: None,
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        };
        let first = backoff(policy, 1);
        assert!((1.5..=2.5).contains(&first.as_secs_f64()), "{first:?}");
        let third = backoff(policy, 3);
        assert!((6.0..=10.0).contains(&third.as_secs_f64()), "{third:?}");
        for attempt in [10, 31, 1000] {
            let late = backoff(policy, attempt);
            assert!((45.0..=75.0).contains(&late.as_secs_f64()), "{late:?}");
        }
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| backoff(policy, 5).as_millis()).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
    }
}
