//! The worker: claims due jobs, runs them, and records the outcome.
//!
//! [`run`] is the production loop: up to `workers` jobs at once, sleeping until the next due job,
//! a lease expiry, or an enqueue notification. [`run_due`] runs every due job one after another
//! and returns; tests and the demo drive time with it.
//!
//! Completion is fenced on the attempt number: if a lease ran out and another worker took the job,
//! this worker's late outcome changes nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, watch};

use super::{Job, backoff};
use crate::app::App;
use crate::audit::{self, AuditEvent};
use crate::handlers::{grant, notify};
use crate::store::jobs::{self, JobRow};
use crate::store::requests::Fenced;

/// What running a job came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Failed; try again after a backoff (or give up after the last attempt).
    Retry(String),
    /// Failed in a way a retry cannot fix.
    Fail(String),
    /// Not now: run again after this delay without counting an attempt (rate limits).
    Defer(Duration),
    /// Not yet: run again at this time without counting an attempt.
    RunAt(DateTime<Utc>),
}

/// Facts about the claimed job that handlers may need.
#[derive(Debug, Clone, Copy)]
pub struct JobCtx {
    pub id: i64,
    pub attempt: u32,
    pub max_attempts: Option<u32>,
}

impl JobCtx {
    /// Whether a failure now would be the last one.
    pub fn is_last(&self) -> bool {
        self.max_attempts.is_some_and(|max| self.attempt >= max)
    }
}

async fn execute(app: &App, job: &Job, ctx: JobCtx) -> Outcome {
    let result = match job {
        Job::Grant { request } => grant::run_grant(app, *request, ctx).await,
        Job::Revoke { request } => grant::run_revoke(app, *request, ctx).await,
        Job::Extend { extension } => grant::run_extend(app, *extension, ctx).await,
        Job::Cleanup { request } => grant::run_cleanup(app, *request, ctx).await,
        Job::Remind { request } => grant::run_remind(app, *request).await,
        Job::Nudge { request } => grant::run_nudge(app, *request).await,
        Job::PendingTimeout { request } => grant::run_pending_timeout(app, *request).await,
        Job::ApprovalMessage { request } => notify::approval_message(app, *request).await,
        Job::AuditPost { seq } => notify::audit_post(app, *seq).await,
        Job::AuditAnchor => notify::audit_anchor(app).await,
        Job::Dm { user, text, blocks } => notify::dm(app, user, text, blocks.as_ref()).await,
        Job::Ephemeral {
            channel,
            user,
            text,
        } => notify::ephemeral(app, channel, user, text).await,
        Job::Home { user } => notify::home(app, user).await,
        Job::ApprovalNudge { request } => notify::approval_nudge(app, *request).await,
        Job::Noop => Ok(Outcome::Done),
    };
    match result {
        Ok(outcome) => outcome,
        // Database trouble and the like: retry.
        Err(err) => Outcome::Retry(format!("{err:#}")),
    }
}

/// A job that ran, waiting for its outcome to be recorded.
struct Finished {
    row: JobRow,
    ctx: JobCtx,
    job: Option<Job>,
    outcome: Outcome,
}

/// Runs one claimed job (without recording the outcome).
async fn run_job(app: &App, row: JobRow) -> Finished {
    let ctx = JobCtx {
        id: row.id,
        attempt: row.attempts.max(1) as u32,
        max_attempts: row.max_attempts.map(|m| m as u32),
    };
    let (job, outcome) = match serde_json::from_str::<Job>(&row.payload) {
        Ok(job) => {
            let span = tracing::info_span!("job", id = row.id, kind = %row.kind, attempt = ctx.attempt, request_id = job.request().map(|r| r.0));
            let outcome = tracing::Instrument::instrument(execute(app, &job, ctx), span).await;
            (Some(job), outcome)
        }
        Err(e) => (
            None,
            Outcome::Fail(format!(
                "cannot read a `{}` job ({e}); was it written by a newer version of jit?",
                row.kind
            )),
        ),
    };
    Finished {
        row,
        ctx,
        job,
        outcome,
    }
}

/// Runs one claimed job and records its outcome in a transaction of its own.
async fn process(app: &App, row: JobRow) {
    let done = run_job(app, row).await;
    if let Err(err) = finish(app, &done).await {
        // The lease will run out and the job will be claimed again: nothing is lost.
        tracing::error!(
            job = done.row.id,
            error = format!("{err:#}"),
            "cannot record a job outcome"
        );
    }
}

async fn finish(app: &App, done: &Finished) -> anyhow::Result<()> {
    let mut tx = app.store.begin_write().await?;
    finish_in(&mut tx, app, done).await?;
    tx.commit().await?;
    // A finished job may unblock the next job of its lane.
    app.waker.wake();
    Ok(())
}

/// Records many outcomes in one transaction (one commit, one fsync); falls back to one
/// transaction each if the batch fails.
async fn finish_batch(app: &App, batch: &[Finished]) {
    let together = async {
        let mut tx = app.store.begin_write().await?;
        for done in batch {
            finish_in(&mut tx, app, done).await?;
        }
        tx.commit().await?;
        anyhow::Ok(())
    }
    .await;
    match together {
        Ok(()) => app.waker.wake(),
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                jobs = batch.len(),
                "recording a batch of job outcomes failed; recording them one by one"
            );
            for done in batch {
                if let Err(err) = finish(app, done).await {
                    tracing::error!(
                        job = done.row.id,
                        error = format!("{err:#}"),
                        "cannot record a job outcome"
                    );
                }
            }
        }
    }
}

/// Records one outcome inside `tx`.
async fn finish_in(
    tx: &mut crate::store::WriteTx,
    app: &App,
    done: &Finished,
) -> anyhow::Result<()> {
    let Finished {
        row,
        ctx,
        job,
        outcome,
    } = done;
    let (ctx, job) = (*ctx, job.as_ref());
    let now = app.clock.now();
    let fenced = match outcome {
        Outcome::Done => jobs::complete(tx, row.id, row.attempts, now).await?,
        Outcome::Defer(delay) => {
            let at = now + chrono::Duration::from_std(*delay).unwrap_or_default();
            jobs::defer(tx, row.id, row.attempts, at, now).await?
        }
        Outcome::RunAt(at) => jobs::defer(tx, row.id, row.attempts, *at, now).await?,
        Outcome::Retry(error) if !ctx.is_last() => {
            let policy = job.map(Job::retry_policy).unwrap_or(super::RetryPolicy {
                max_attempts: Some(1),
                base: Duration::from_secs(1),
                cap: Duration::from_secs(1),
            });
            let delay = backoff(policy, ctx.attempt);
            let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
            tracing::warn!(job = row.id, kind = %row.kind, attempt = ctx.attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
            app.metrics.job_retry(&row.kind);
            jobs::retry(tx, row.id, row.attempts, error, at, now).await?
        }
        Outcome::Retry(error) | Outcome::Fail(error) => {
            tracing::error!(job = row.id, kind = %row.kind, attempt = ctx.attempt, error = %error, "job gave up");
            let fenced = jobs::bury(tx, row.id, row.attempts, error, now).await?;
            if fenced == Fenced::Applied {
                app.metrics.job_dead(&row.kind);
                let event = AuditEvent::JobDead {
                    job: row.kind.clone(),
                    error: error.clone(),
                };
                match job {
                    // A failed audit post must not post another audit message about itself
                    // forever: record the event without posting it.
                    Some(Job::AuditPost { .. }) | None => {
                        crate::store::audit::append(
                            tx,
                            now,
                            None,
                            audit::actor::SYSTEM,
                            &event.name(),
                            &event.detail(),
                        )
                        .await?;
                    }
                    // Other Slack messages: alert at the top of the audit channel, not in the
                    // (possibly broken) request thread.
                    Some(
                        Job::Dm { .. }
                        | Job::Ephemeral { .. }
                        | Job::ApprovalMessage { .. }
                        | Job::ApprovalNudge { .. }
                        | Job::Home { .. },
                    ) => {
                        audit::record(tx, now, None, audit::actor::SYSTEM, &event).await?;
                    }
                    Some(Job::Noop) => {}
                    Some(other) => {
                        audit::record(tx, now, other.request(), audit::actor::SYSTEM, &event)
                            .await?;
                    }
                }
            }
            fenced
        }
    };
    if fenced == Fenced::Lost {
        tracing::warn!(job = row.id, kind = %row.kind, "job outcome fenced out: another worker took over after the lease ran out");
    }
    Ok(())
}

/// Claims up to `limit` due jobs.
async fn claim(app: &App, limit: u32) -> anyhow::Result<Vec<JobRow>> {
    let now = app.clock.now();
    let lease_until = now + chrono::Duration::from_std(app.settings.lease).unwrap_or_default();
    // A read first: when nothing is due and no lease has run out, there is nothing to claim,
    // and the write lock stays free for the request path (every commit there wakes us).
    if !anything_due(app, now).await? {
        return Ok(Vec::new());
    }
    let mut tx = app.store.begin_write().await?;
    jobs::reclaim_expired(&mut tx, now).await?;
    let rows = jobs::claim(&mut tx, now, lease_until, limit).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Whether a queued job is due or a running job's lease has run out, as of `now`.
async fn anything_due(app: &App, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<bool> {
    let mut conn = app.store.read().await?;
    let now = crate::store::millis(now);
    let due = jobs::next_due(&mut conn).await?.is_some_and(|at| at <= now);
    Ok(due
        || jobs::next_lease_expiry(&mut conn)
            .await?
            .is_some_and(|at| at < now))
}

/// Runs every job that is due now, one at a time, until none is left. Returns how many ran.
pub async fn run_due(app: &App) -> anyhow::Result<usize> {
    let mut ran = 0;
    loop {
        let rows = claim(app, 1).await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(ran);
        };
        process(app, row).await;
        ran += 1;
        if ran > 100_000 {
            anyhow::bail!(
                "run_due: more than 100000 jobs in one go; is a job rescheduling itself?"
            );
        }
    }
}

/// At startup: every job left `running` belongs to a process that died (the instance lock
/// guarantees this is the only one), so it goes back to the queue.
pub async fn recover(app: &App) -> anyhow::Result<u64> {
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let n = jobs::reclaim_all(&mut tx, now).await?;
    tx.commit().await?;
    if n > 0 {
        tracing::warn!(jobs = n, "reclaimed jobs interrupted by a previous crash");
    }
    Ok(n)
}

/// Keeps a running job's lease alive while it runs.
async fn heartbeat(app: Arc<App>, id: i64, attempt: i64) {
    let every = app.settings.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let until =
            app.clock.now() + chrono::Duration::from_std(app.settings.lease).unwrap_or_default();
        let renewed = async {
            let mut tx = app.store.begin_write().await?;
            let fenced = jobs::renew(&mut tx, id, attempt, until).await?;
            tx.commit().await?;
            anyhow::Ok(fenced)
        }
        .await;
        if !matches!(renewed, Ok(Fenced::Applied)) {
            return;
        }
    }
}

/// How long to sleep when nothing is due.
async fn idle_wait(app: &App) -> Duration {
    let max = Duration::from_secs(5);
    let now = app.clock.now().timestamp_millis();
    let next = async {
        let mut conn = app.store.read().await?;
        let due = jobs::next_due(&mut conn).await?;
        let lease = jobs::next_lease_expiry(&mut conn).await?;
        anyhow::Ok([due, lease].into_iter().flatten().min())
    }
    .await;
    match next {
        Ok(Some(at)) if at > now => Duration::from_millis((at - now) as u64).min(max),
        // Due now but not claimable (its lane is busy): wait for a completion to wake us.
        Ok(Some(_)) => max,
        Ok(None) => max,
        Err(_) => Duration::from_secs(1),
    }
}

/// The production loop. Returns when `shutdown` turns true, after running jobs finish.
pub async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(app.settings.workers));
    // Outcomes are recorded by one task, many per transaction: under load that is one commit
    // (one fsync) for a whole batch of finished jobs instead of one each.
    let (finished, mut to_record) = tokio::sync::mpsc::unbounded_channel::<Finished>();
    let recorder = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while let Some(first) = to_record.recv().await {
                batch.push(first);
                while batch.len() < 256 {
                    match to_record.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                finish_batch(&app, &batch).await;
                batch.clear();
            }
        })
    };
    let mut last_housekeeping = std::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        app.health.worker_beat.store(
            chrono::Utc::now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let free = slots.available_permits() as u32;
        let claimed = if free > 0 {
            match claim(&app, free).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::error!(error = format!("{err:#}"), "cannot claim jobs");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        let got = claimed.len();
        for row in claimed {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let app = app.clone();
            let finished = finished.clone();
            tokio::spawn(async move {
                let beat = tokio::spawn(heartbeat(app.clone(), row.id, row.attempts));
                let done = run_job(&app, row).await;
                beat.abort();
                // The job stays `running` until its outcome is recorded, so its lane stays
                // closed; the slot is free for another job meanwhile.
                let _ = finished.send(done);
                drop(permit);
            });
        }
        if last_housekeeping.elapsed() > Duration::from_secs(3600) {
            last_housekeeping = std::time::Instant::now();
            housekeeping(&app).await;
        }
        if got > 0 && (got as u32) == free {
            continue;
        }
        let wait = idle_wait(&app).await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.waker.woken() => {
                // Under load every commit wakes the worker; gather a few before claiming.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ = shutdown.changed() => {}
        }
    }
    // Let running jobs finish (their leases protect them if we are killed meanwhile), then
    // record their outcomes.
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        slots.acquire_many(app.settings.workers as u32),
    )
    .await;
    drop(finished);
    let _ = tokio::time::timeout(Duration::from_secs(10), recorder).await;
}

async fn housekeeping(app: &App) {
    let before = app.clock.now() - chrono::Duration::days(7);
    let pruned = async {
        let mut tx = app.store.begin_write().await?;
        let n = jobs::prune_done(&mut tx, before).await?;
        tx.commit().await?;
        anyhow::Ok(n)
    }
    .await;
    match pruned {
        Ok(n) if n > 0 => tracing::info!(jobs = n, "pruned finished jobs older than 7 days"),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = format!("{err:#}"), "cannot prune finished jobs"),
    }
}
