//! The worker: claims due jobs, runs them through the [`Runner`] it is given, and records the
//! outcome. It knows no job of its own: jit's jobs and their dispatch table live above it
//! (`crate::jobs`, `handlers::jobs`).
//!
//! [`run`] is the production loop: up to `workers` jobs at once, sleeping until the next due job,
//! a lease expiry, or an enqueue notification. [`run_due`] runs every due job one after another
//! and returns; tests and the demo drive time with it.
//!
//! Completion is fenced on the attempt number: if a lease ran out and another worker took the job,
//! this worker's late outcome changes nothing.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, watch};

use super::{JobSpec, RetryPolicy, Waker, backoff};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::store::jobs::{self, JobRow};
use crate::store::requests::Fenced;
use crate::store::{Store, WriteTx};

/// What runs the jobs of one type (jit's: `handlers::jobs::Dispatch`). Jobs register with the
/// worker through it; the worker itself calls nothing above the queue.
pub trait Runner: Send + Sync + 'static {
    type Job: JobSpec;

    /// Runs one claimed job. `Err`: a fault such as the database's, retried with backoff.
    fn run(
        &self,
        job: &Self::Job,
        ctx: JobCtx,
    ) -> impl Future<Output = anyhow::Result<Outcome>> + Send;

    /// A job gave up for good (it is buried, `dead`): raise the alert, inside the transaction
    /// that buries it. `job` is `None` when its payload could not be read.
    fn buried(
        &self,
        tx: &mut WriteTx,
        job: Option<&Self::Job>,
        kind: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What the worker needs of the application.
#[derive(Clone)]
pub struct Env {
    pub store: Store,
    pub clock: SharedClock,
    pub waker: Waker,
    pub metrics: Metrics,
    /// Unix milliseconds of the loop's last turn, for `/readyz`.
    pub beat: Arc<AtomicI64>,
    /// Jobs run at once.
    pub workers: usize,
    /// How long a claimed job is leased (renewed by a heartbeat every third of it).
    pub lease: Duration,
}

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

async fn execute<R: Runner>(runner: &R, job: &R::Job, ctx: JobCtx) -> Outcome {
    match runner.run(job, ctx).await {
        Ok(outcome) => outcome,
        // Database trouble and the like: retry.
        Err(err) => Outcome::Retry(format!("{err:#}")),
    }
}

/// A job that ran, waiting for its outcome to be recorded.
struct Finished<J> {
    row: JobRow,
    ctx: JobCtx,
    job: Option<J>,
    outcome: Outcome,
}

/// Runs one claimed job (without recording the outcome).
async fn run_job<R: Runner>(runner: &R, row: JobRow) -> Finished<R::Job> {
    let ctx = JobCtx {
        id: row.id,
        attempt: row.attempts.max(1) as u32,
        max_attempts: row.max_attempts.map(|m| m as u32),
    };
    let (job, outcome) = match serde_json::from_str::<R::Job>(&row.payload) {
        Ok(job) => {
            let span = tracing::info_span!("job", id = row.id, kind = %row.kind, attempt = ctx.attempt, request_id = job.request());
            let outcome = tracing::Instrument::instrument(execute(runner, &job, ctx), span).await;
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
async fn process<R: Runner>(env: &Env, runner: &R, row: JobRow) {
    let done = run_job(runner, row).await;
    if let Err(err) = finish(env, runner, &done).await {
        // The lease will run out and the job will be claimed again: nothing is lost.
        tracing::error!(
            job = done.row.id,
            error = format!("{err:#}"),
            "cannot record a job outcome"
        );
    }
}

async fn finish<R: Runner>(env: &Env, runner: &R, done: &Finished<R::Job>) -> anyhow::Result<()> {
    let mut tx = env.store.begin_write().await?;
    finish_in(&mut tx, env, runner, done).await?;
    tx.commit().await?;
    // A finished job may unblock the next job of its lane.
    env.waker.wake();
    Ok(())
}

/// Records many outcomes in one transaction (one commit, one fsync); falls back to one
/// transaction each if the batch fails.
async fn finish_batch<R: Runner>(env: &Env, runner: &R, batch: &[Finished<R::Job>]) {
    let together = async {
        let mut tx = env.store.begin_write().await?;
        for done in batch {
            finish_in(&mut tx, env, runner, done).await?;
        }
        tx.commit().await?;
        anyhow::Ok(())
    }
    .await;
    match together {
        Ok(()) => env.waker.wake(),
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                jobs = batch.len(),
                "recording a batch of job outcomes failed; recording them one by one"
            );
            for done in batch {
                if let Err(err) = finish(env, runner, done).await {
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
async fn finish_in<R: Runner>(
    tx: &mut WriteTx,
    env: &Env,
    runner: &R,
    done: &Finished<R::Job>,
) -> anyhow::Result<()> {
    let Finished {
        row,
        ctx,
        job,
        outcome,
    } = done;
    let (ctx, job) = (*ctx, job.as_ref());
    let now = env.clock.now();
    let fenced = match outcome {
        Outcome::Done => jobs::complete(tx, row.id, row.attempts, now).await?,
        Outcome::Defer(delay) => {
            let at = now + chrono::Duration::from_std(*delay).unwrap_or_default();
            jobs::defer(tx, row.id, row.attempts, at, now).await?
        }
        Outcome::RunAt(at) => jobs::defer(tx, row.id, row.attempts, *at, now).await?,
        Outcome::Retry(error) if !ctx.is_last() => {
            let policy = job.map(JobSpec::retry_policy).unwrap_or(RetryPolicy {
                max_attempts: Some(1),
                base: Duration::from_secs(1),
                cap: Duration::from_secs(1),
            });
            let delay = backoff(policy, ctx.attempt);
            let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
            tracing::warn!(job = row.id, kind = %row.kind, attempt = ctx.attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "job failed; will retry");
            env.metrics.job_retry(&row.kind);
            jobs::retry(tx, row.id, row.attempts, error, at, now).await?
        }
        Outcome::Retry(error) | Outcome::Fail(error) => {
            tracing::error!(job = row.id, kind = %row.kind, attempt = ctx.attempt, error = %error, "job gave up");
            let fenced = jobs::bury(tx, row.id, row.attempts, error, now).await?;
            if fenced == Fenced::Applied {
                env.metrics.job_dead(&row.kind);
                runner.buried(tx, job, &row.kind, error, now).await?;
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
async fn claim(env: &Env, limit: u32) -> anyhow::Result<Vec<JobRow>> {
    let now = env.clock.now();
    let lease_until = now + chrono::Duration::from_std(env.lease).unwrap_or_default();
    // A read first: when nothing is due and no lease has run out, there is nothing to claim,
    // and the write lock stays free for the request path (every commit there wakes us).
    if !anything_due(env, now).await? {
        return Ok(Vec::new());
    }
    let mut tx = env.store.begin_write().await?;
    let reclaimed = jobs::reclaim_expired(&mut tx, now).await?;
    let rows = jobs::claim(&mut tx, now, lease_until, limit, env.store.holder()).await?;
    tx.commit().await?;
    if reclaimed > 0 {
        tracing::warn!(
            jobs = reclaimed,
            "took over running jobs whose worker died or whose lease ran out"
        );
    }
    Ok(rows)
}

/// Whether a queued job is due, or a running job's lease has run out or its replica died, as
/// of `now`.
async fn anything_due(env: &Env, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<bool> {
    let mut conn = env.store.read().await?;
    let now = crate::store::millis(now);
    let due = jobs::next_due(&mut conn).await?.is_some_and(|at| at <= now);
    Ok(due
        || jobs::next_lease_expiry(&mut conn)
            .await?
            .is_some_and(|at| at < now)
        || jobs::any_orphaned(&mut conn).await?)
}

/// Runs every job that is due now, one at a time, until none is left. Returns how many ran.
pub async fn run_due<R: Runner>(env: &Env, runner: &R) -> anyhow::Result<usize> {
    let mut ran = 0;
    loop {
        let rows = claim(env, 1).await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(ran);
        };
        process(env, runner, row).await;
        ran += 1;
        if ran > 100_000 {
            anyhow::bail!(
                "run_due: more than 100000 jobs in one go; is a job rescheduling itself?"
            );
        }
    }
}

/// At startup, jobs left `running` by a process that died go back to the queue: on SQLite all
/// of them (the instance lock guarantees this is the only process), on PostgreSQL those whose
/// replica died (its liveness lock is gone) or whose lease ran out, since other replicas'
/// running jobs are alive.
pub async fn recover(env: &Env) -> anyhow::Result<u64> {
    let now = env.clock.now();
    let mut tx = env.store.begin_write().await?;
    let n = match env.store.driver() {
        crate::store::Driver::Sqlite => jobs::reclaim_all(&mut tx, now).await?,
        crate::store::Driver::Postgres => jobs::reclaim_expired(&mut tx, now).await?,
    };
    tx.commit().await?;
    if n > 0 {
        tracing::warn!(jobs = n, "reclaimed jobs interrupted by a previous crash");
    }
    Ok(n)
}

/// The longest a replica sleeps on PostgreSQL without looking for due jobs.
pub const REPLICA_POLL: Duration = Duration::from_secs(1);

/// Wakes this replica's worker whenever another replica commits (PostgreSQL `LISTEN`); returns
/// at once on SQLite, where this process is the only writer. A lost connection is re-opened,
/// and the bounded poll of [`idle_wait`] covers what was missed meanwhile.
pub async fn listen_for_wakes(env: Env) {
    loop {
        let mut listener = match env.store.wake_listener().await {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for other replicas' wake-ups; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        loop {
            match listener.recv().await {
                // The worker looks for work; API long-polls look for their request's change.
                Ok(_) => env.waker.wake(),
                Err(err) => {
                    tracing::warn!(error = %err, "lost the wake-up listener; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Keeps a running job's lease alive while it runs.
async fn heartbeat(env: Env, id: i64, attempt: i64) {
    let every = env.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        let until = env.clock.now() + chrono::Duration::from_std(env.lease).unwrap_or_default();
        let renewed = async {
            let mut tx = env.store.begin_write().await?;
            let fenced = jobs::renew(&mut tx, id, attempt, until).await?;
            tx.commit().await?;
            anyhow::Ok(fenced)
        }
        .await;
        match renewed {
            Ok(Fenced::Applied) => {}
            // Another worker took the job over (this one was presumed dead): its outcome is
            // fenced out anyway, so stop renewing.
            Ok(Fenced::Lost) => return,
            // A slow or unreachable database: try again at the next beat rather than let the
            // lease lapse while the job is still running.
            Err(err) => tracing::warn!(
                job = id,
                error = format!("{err:#}"),
                "cannot renew a running job's lease"
            ),
        }
    }
}

/// How long to sleep when nothing is due. With several replicas a wake-up can be missed (a
/// notification lost while the listener reconnects), so the sleep is bounded: at most
/// [`REPLICA_POLL`] late on PostgreSQL.
async fn idle_wait(env: &Env) -> Duration {
    let max = match env.store.driver() {
        crate::store::Driver::Sqlite => Duration::from_secs(5),
        crate::store::Driver::Postgres => REPLICA_POLL,
    };
    let now = env.clock.now().timestamp_millis();
    let next = async {
        let mut conn = env.store.read().await?;
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
pub async fn run<R: Runner>(env: Env, runner: Arc<R>, mut shutdown: watch::Receiver<bool>) {
    // On PostgreSQL, the lock whose release tells the other replicas that this one died; held
    // until the loop ends, after the running jobs finished.
    let _alive = env.store.hold_liveness();
    let slots = Arc::new(Semaphore::new(env.workers));
    // Outcomes are recorded by one task, many per transaction: under load that is one commit
    // (one fsync) for a whole batch of finished jobs instead of one each.
    let (finished, mut to_record) = tokio::sync::mpsc::unbounded_channel::<Finished<R::Job>>();
    let recorder = {
        let (env, runner) = (env.clone(), runner.clone());
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
                finish_batch(&env, runner.as_ref(), &batch).await;
                batch.clear();
            }
        })
    };
    let mut last_housekeeping = std::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        env.beat.store(
            chrono::Utc::now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let free = slots.available_permits() as u32;
        let claimed = if free > 0 {
            match claim(&env, free).await {
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
            let (env, runner) = (env.clone(), runner.clone());
            let finished = finished.clone();
            tokio::spawn(async move {
                let beat = tokio::spawn(heartbeat(env.clone(), row.id, row.attempts));
                let done = run_job(runner.as_ref(), row).await;
                beat.abort();
                // The job stays `running` until its outcome is recorded, so its lane stays
                // closed; the slot is free for another job meanwhile.
                let _ = finished.send(done);
                drop(permit);
            });
        }
        if last_housekeeping.elapsed() > Duration::from_secs(3600) {
            last_housekeeping = std::time::Instant::now();
            housekeeping(&env).await;
        }
        if got > 0 && (got as u32) == free {
            continue;
        }
        let wait = idle_wait(&env).await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = env.waker.woken() => {
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
        slots.acquire_many(env.workers as u32),
    )
    .await;
    drop(finished);
    let _ = tokio::time::timeout(Duration::from_secs(10), recorder).await;
}

async fn housekeeping(env: &Env) {
    let before = env.clock.now() - chrono::Duration::days(7);
    let pruned = async {
        let mut tx = env.store.begin_write().await?;
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
