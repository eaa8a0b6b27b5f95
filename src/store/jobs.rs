//! The job table behind [`crate::queue`]. See that module for the semantics; this file only
//! holds the statements.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{FromRow, SqliteConnection};

use super::millis;
use super::requests::Fenced;

/// Priorities a job can have: access changes (grants, revokes) before messages. Queries that
/// look for the earliest due job seek each priority separately, so a backlog of jobs due later
/// never has to be walked. These two are the only ones: a new priority must be added to
/// [`claim`], [`next_due`] and the `jobs_priority_known` triggers (which refuse any other value,
/// so no job can sit unclaimed for ever).
pub const PRIORITY_ACCESS: u8 = 0;
pub const PRIORITY_MESSAGES: u8 = 1;

/// Classes inside a chain (an ordered lane): when the head finishes, the next head is the
/// waiting job with the lowest `(class, turn, id)`, where a job's turn counts the live jobs of
/// its key that were ahead of it at insert; among urgent jobs of one turn, the key with the
/// fewest waiting goes first (see [`promote`]). An urgent job also passes a head that has not
/// started ([`let_urgent_pass`]). Jobs sharing a key keep their insertion order whatever their
/// class: a job never passes an older waiting job of its own key.
///
/// `CHAIN_URGENT`: messages someone waits on (approval messages, alerts); `CHAIN_NORMAL`: the
/// rest, oldest first among themselves.
pub const CHAIN_URGENT: u8 = 0;
pub const CHAIN_NORMAL: u8 = 1;

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub payload: String,
    pub run_at: DateTime<Utc>,
    pub unique_key: Option<String>,
    pub lane: Option<String>,
    pub ordered: bool,
    /// `None`: retried for ever.
    pub max_attempts: Option<u32>,
    /// 0 runs before 1 when both are due.
    pub priority: u8,
    /// Order inside a chain: [`CHAIN_URGENT`] or [`CHAIN_NORMAL`] (ignored outside chains).
    pub chain_class: u8,
    /// Jobs of a chain with the same key keep their order, and take turns with other keys.
    pub chain_key: Option<String>,
}

/// A claimed job.
#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    pub run_at: i64,
    pub attempts: i64,
    pub max_attempts: Option<i64>,
    pub lane: Option<String>,
    pub unique_key: Option<String>,
}

/// Inserts a job. `None`: a live job with the same unique key exists, so nothing was added.
pub async fn enqueue(
    conn: &mut SqliteConnection,
    job: &NewJob,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (kind, payload, run_at, unique_key, lane, ordered, max_attempts, priority, created_at, updated_at, \
           chain_class, chain_key, chain_turn, state) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?9, ?8, ?8, ?10, ?11, \
           CASE WHEN ?6 = 1 AND ?11 IS NOT NULL THEN COALESCE((SELECT MAX(chain_turn) + 1 FROM jobs \
             WHERE lane = ?5 AND chain_key = ?11 AND state IN ('queued', 'blocked', 'running')), 0) ELSE 0 END, \
           CASE WHEN ?6 = 1 AND EXISTS (SELECT 1 FROM jobs WHERE lane = ?5 AND state IN ('queued', 'blocked', 'running')) \
                THEN 'blocked' ELSE 'queued' END) \
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'blocked', 'running') DO NOTHING \
         RETURNING id",
    )
    .bind(job.kind)
    .bind(&job.payload)
    .bind(millis(job.run_at))
    .bind(job.unique_key.as_deref())
    .bind(job.lane.as_deref())
    .bind(job.ordered)
    .bind(job.max_attempts.map(i64::from))
    .bind(millis(now))
    .bind(i64::from(job.priority))
    .bind(i64::from(job.chain_class))
    .bind(job.chain_key.as_deref())
    .fetch_optional(&mut *conn)
    .await?;
    if let (Some(_), Some(lane), true) = (id, &job.lane, job.ordered)
        && job.chain_class == CHAIN_URGENT
    {
        let_urgent_pass(conn, lane).await?;
    }
    Ok(id)
}

/// Inserts several jobs in one statement. Chain states are worked out here: the first job of an
/// ordered lane with no live job is its head (`queued`), every other one waits (`blocked`).
/// Jobs whose unique key is live are skipped, as with [`enqueue`].
pub async fn enqueue_many(
    conn: &mut SqliteConnection,
    jobs: &[NewJob],
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ChainProbe {
        mut busy,
        turns: mut next,
        mut passable,
    } = chain_probe(conn, jobs).await?;
    let turns: Vec<i64> = jobs
        .iter()
        .map(|j| match (&j.lane, &j.chain_key, j.ordered) {
            (Some(lane), Some(key), true) => {
                let turn = next.entry((lane.clone(), key.clone())).or_insert(0);
                *turn += 1;
                *turn - 1
            }
            _ => 0,
        })
        .collect();
    let states: Vec<&'static str> = jobs
        .iter()
        .map(|j| match (&j.lane, j.ordered) {
            (Some(lane), true) => {
                if busy.insert(lane.clone()) {
                    // This batch gives the chain its head; urgent jobs behind it may pass it.
                    if j.chain_class != CHAIN_URGENT {
                        passable.insert(lane.clone());
                    }
                    "queued"
                } else {
                    "blocked"
                }
            }
            _ => "queued",
        })
        .collect();
    let now = millis(now);
    let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO jobs (kind, payload, run_at, unique_key, lane, ordered, max_attempts, priority, created_at, updated_at, \
         chain_class, chain_key, chain_turn, state) ",
    );
    let rows = jobs.iter().zip(turns).zip(states);
    insert.push_values(rows, |mut b, ((job, turn), state)| {
        b.push_bind(job.kind)
            .push_bind(job.payload.as_str())
            .push_bind(millis(job.run_at))
            .push_bind(job.unique_key.as_deref())
            .push_bind(job.lane.as_deref())
            .push_bind(job.ordered)
            .push_bind(job.max_attempts.map(i64::from))
            .push_bind(i64::from(job.priority))
            .push_bind(now)
            .push_bind(now)
            .push_bind(i64::from(job.chain_class))
            .push_bind(job.chain_key.as_deref())
            .push_bind(turn)
            .push_bind(state);
    });
    insert.push(
        " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'blocked', 'running') DO NOTHING",
    );
    insert.build().execute(&mut *conn).await?;
    // Only where the head is waiting and not urgent (rarely: the usual head of an approvers'
    // channel is an approval message) may one step back; elsewhere this costs no statement.
    let mut urgent: Vec<&str> = jobs
        .iter()
        .filter(|j| j.ordered && j.chain_class == CHAIN_URGENT)
        .filter_map(|j| j.lane.as_deref())
        .filter(|lane| passable.contains(*lane))
        .collect();
    urgent.sort_unstable();
    urgent.dedup();
    for lane in urgent {
        let_urgent_pass(conn, lane).await?;
    }
    Ok(())
}

/// What [`enqueue_many`] needs to know about the chains of a batch.
struct ChainProbe {
    /// Its ordered lanes that have a live job.
    busy: HashSet<String>,
    /// For each (lane, key), the turn its first job gets: one more than the last turn among the
    /// key's live jobs in that lane, or 0.
    turns: HashMap<(String, String), i64>,
    /// Busy lanes whose head has not started and is not urgent.
    passable: HashSet<String>,
}

/// [`ChainProbe`] for a batch, in one query (one EXISTS probe per lane, which stops at the
/// first live job however long the chain).
async fn chain_probe(conn: &mut SqliteConnection, jobs: &[NewJob]) -> sqlx::Result<ChainProbe> {
    let mut lanes: Vec<&str> = jobs
        .iter()
        .filter(|j| j.ordered)
        .filter_map(|j| j.lane.as_deref())
        .collect();
    lanes.sort_unstable();
    lanes.dedup();
    let mut keys: Vec<(&str, &str)> = jobs
        .iter()
        .filter(|j| j.ordered)
        .filter_map(|j| Some((j.lane.as_deref()?, j.chain_key.as_deref()?)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut probe = ChainProbe {
        busy: HashSet::new(),
        turns: HashMap::new(),
        passable: HashSet::new(),
    };
    if lanes.is_empty() {
        return Ok(probe);
    }
    // Rows without a key name a busy lane (and whether its head is waiting and not urgent);
    // rows with one carry that key's next turn.
    let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT l.lane, NULL, EXISTS (");
    query
        .push("SELECT 1 FROM jobs h WHERE h.lane = l.lane AND h.state = 'queued' AND h.chain_class <> ")
        .push_bind(i64::from(CHAIN_URGENT))
        .push(") FROM (");
    for (i, lane) in lanes.iter().enumerate() {
        if i > 0 {
            query.push(" UNION ALL ");
        }
        query.push("SELECT ").push_bind(*lane).push(" AS lane");
    }
    query.push(
        ") l WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.lane = l.lane \
         AND j.state IN ('queued', 'blocked', 'running'))",
    );
    if !keys.is_empty() {
        query.push(
            " UNION ALL SELECT k.lane, k.key, (SELECT MAX(j.chain_turn) + 1 FROM jobs j \
             WHERE j.lane = k.lane AND j.chain_key = k.key \
             AND j.state IN ('queued', 'blocked', 'running')) FROM (",
        );
        for (i, (lane, key)) in keys.iter().enumerate() {
            if i > 0 {
                query.push(" UNION ALL ");
            }
            query
                .push("SELECT ")
                .push_bind(*lane)
                .push(" AS lane, ")
                .push_bind(*key)
                .push(" AS key");
        }
        query.push(") k");
    }
    let rows: Vec<(String, Option<String>, Option<i64>)> =
        query.build_query_as().fetch_all(&mut *conn).await?;
    for (lane, key, n) in rows {
        match key {
            None => {
                if n == Some(1) {
                    probe.passable.insert(lane.clone());
                }
                probe.busy.insert(lane);
            }
            Some(key) => {
                probe.turns.insert((lane, key), n.unwrap_or(0));
            }
        }
    }
    Ok(probe)
}

/// Puts jobs whose lease ran out back in the queue. Their attempt counter stays, and the next
/// claim increments it, which fences out the stale worker's completion.
pub async fn reclaim_expired(conn: &mut SqliteConnection, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_until = NULL, updated_at = ?1 \
         WHERE state = 'running' AND lease_until < ?1",
    )
    .bind(millis(now))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// At startup, with the instance lock held, every running job is an orphan of a dead process.
pub async fn reclaim_all(conn: &mut SqliteConnection, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_until = NULL, updated_at = ? WHERE state = 'running'",
    )
    .bind(millis(now))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Claims up to `limit` due jobs in one statement: by priority, then oldest due first.
///
/// In an ordered lane (a chain) only the head is `queued`; the rest wait as `blocked`, so no
/// check is needed. In an unordered lane, a job is eligible when no lane-mate is running and
/// none is due earlier. Either way at most one job per lane is eligible at a time, and one
/// statement never claims two of a lane.
pub async fn claim(
    conn: &mut SqliteConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u32,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?2, updated_at = ?1 \
         WHERE id IN ( \
           SELECT j.id FROM jobs j \
           WHERE j.state = 'queued' AND j.priority IN (?4, ?5) AND j.run_at <= ?1 \
             AND (j.lane IS NULL OR j.ordered = 1 OR ( \
               NOT EXISTS (SELECT 1 FROM jobs o WHERE o.lane = j.lane AND o.state = 'running') \
               AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.lane = j.lane AND o.state = 'queued' \
                 AND o.id <> j.id AND o.run_at <= ?1 \
                 AND (o.run_at < j.run_at OR (o.run_at = j.run_at AND o.id < j.id))))) \
           ORDER BY j.priority, j.run_at, j.id LIMIT ?3) \
         RETURNING id, kind, payload, run_at, attempts, max_attempts, lane, unique_key",
    )
    .bind(millis(now))
    .bind(millis(lease_until))
    .bind(limit)
    .bind(i64::from(PRIORITY_ACCESS))
    .bind(i64::from(PRIORITY_MESSAGES))
    .fetch_all(&mut *conn)
    .await
}

/// Marks a claimed job done, if this worker still owns it.
pub async fn complete(
    conn: &mut SqliteConnection,
    id: i64,
    attempt: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = ? \
         WHERE id = ? AND attempts = ? AND state = 'running'",
    )
    .bind(millis(now))
    .bind(id)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        promote_next(conn, id).await?;
    }
    Ok(fenced(done.rows_affected()))
}

/// Which chain [`promote`] works on.
enum Chain<'a> {
    /// The chain job `id` just left for good.
    Of(i64),
    Lane(&'a str),
}

/// After job `id` left its chain for good, the next job of the chain becomes its head.
async fn promote_next(conn: &mut SqliteConnection, id: i64) -> sqlx::Result<()> {
    promote(conn, Chain::Of(id)).await
}

/// How many waiting jobs of a chain [`promote`] weighs against each other: the first ones in
/// (class, turn, id) order.
const PROMOTE_WINDOW: i64 = 32;

/// Makes the chain's next job its head, unless it has one. Candidates are the waiting jobs that
/// no older waiting job of their own key is ahead of; the first [`PROMOTE_WINDOW`] of them in
/// (`chain_class`, `chain_turn`, `id`) order (the index `jobs_chain_next` yields them in that
/// order) are weighed, and the one with the lowest (class, turn, id) wins, except that among
/// urgent jobs of the same turn the key with the fewest waiting goes first: someone with one
/// approval message waiting goes before people with several, even if theirs came earlier.
/// Other jobs (audit posts) keep their turns and arrival order.
async fn promote(conn: &mut SqliteConnection, chain: Chain<'_>) -> sqlx::Result<()> {
    let (id, lane) = match chain {
        Chain::Of(id) => (Some(id), None),
        Chain::Lane(lane) => (None, Some(lane)),
    };
    sqlx::query(
        "WITH chain(lane) AS ( \
           SELECT COALESCE(?2, (SELECT f.lane FROM jobs f WHERE f.id = ?1 AND f.ordered = 1))), \
         candidates AS ( \
           SELECT n.id, n.chain_class, n.chain_turn, n.chain_key FROM jobs n \
           WHERE n.lane = (SELECT lane FROM chain) AND n.state = 'blocked' \
             AND (n.chain_key IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM jobs p WHERE p.lane = n.lane AND p.chain_key = n.chain_key \
                 AND p.state = 'blocked' AND p.id < n.id)) \
           ORDER BY n.chain_class, n.chain_turn, n.id LIMIT ?3) \
         UPDATE jobs SET state = 'queued' WHERE id = ( \
           SELECT c.id FROM candidates c \
           ORDER BY c.chain_class, c.chain_turn, \
             CASE WHEN c.chain_class = ?4 THEN (SELECT COUNT(*) FROM jobs w \
               WHERE w.lane = (SELECT lane FROM chain) AND w.chain_key = c.chain_key \
                 AND w.state = 'blocked') ELSE 0 END, \
             c.id \
           LIMIT 1) \
         AND NOT EXISTS ( \
           SELECT 1 FROM jobs l \
           WHERE l.lane = (SELECT lane FROM chain) AND l.state IN ('queued', 'running'))",
    )
    .bind(id)
    .bind(lane)
    .bind(PROMOTE_WINDOW)
    .bind(i64::from(CHAIN_URGENT))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Urgent jobs may have joined the chain `lane` behind a head that is not urgent: if that head
/// has not started (it is `queued`, perhaps deferred by Slack's pace), it steps back to
/// `blocked` and the chain's next job in order becomes the head. A running head is never
/// interrupted.
async fn let_urgent_pass(conn: &mut SqliteConnection, lane: &str) -> sqlx::Result<()> {
    let stepped_back = sqlx::query(
        "UPDATE jobs SET state = 'blocked' \
         WHERE lane = ?1 AND ordered = 1 AND state = 'queued' AND chain_class <> ?2 \
           AND EXISTS (SELECT 1 FROM jobs u WHERE u.lane = ?1 AND u.state = 'blocked' AND u.chain_class = ?2)",
    )
    .bind(lane)
    .bind(i64::from(CHAIN_URGENT))
    .execute(&mut *conn)
    .await?;
    if stepped_back.rows_affected() > 0 {
        promote(conn, Chain::Lane(lane)).await?;
    }
    Ok(())
}

/// Waiting (`blocked`) jobs of `key` in the chain `lane`, oldest first: the ones a running job
/// of that key may take over (see [`complete_waiting`]).
pub async fn waiting_in_chain(
    conn: &mut SqliteConnection,
    lane: &str,
    key: &str,
    limit: u32,
) -> sqlx::Result<Vec<(i64, String)>> {
    sqlx::query_as(
        "SELECT id, payload FROM jobs WHERE lane = ? AND chain_key = ? AND state = 'blocked' \
         ORDER BY id LIMIT ?",
    )
    .bind(lane)
    .bind(key)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// How many jobs wait behind the head of the chain `lane`, counting up to `at_most`.
pub async fn chain_backlog(
    conn: &mut SqliteConnection,
    lane: &str,
    at_most: u32,
) -> sqlx::Result<u32> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE lane = ? AND state = 'blocked' LIMIT ?)",
    )
    .bind(lane)
    .bind(at_most)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n as u32)
}

/// Marks waiting jobs done whose work a running job of their chain did (one Slack post carrying
/// several audit events). Only jobs still `blocked` change; returns how many did. A waiting job
/// was never claimed, so no worker holds it; the chain's head is untouched.
pub async fn complete_waiting(
    conn: &mut SqliteConnection,
    ids: &[i64],
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = ",
    );
    query.push_bind(millis(now));
    query.push(" WHERE state = 'blocked' AND id IN (");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    query.push(")");
    Ok(query.build().execute(&mut *conn).await?.rows_affected())
}

/// Puts a failed job back for another attempt at `retry_at`.
pub async fn retry(
    conn: &mut SqliteConnection,
    id: i64,
    attempt: i64,
    error: &str,
    retry_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'queued', run_at = ?, last_error = ?, lease_until = NULL, updated_at = ? \
         WHERE id = ? AND attempts = ? AND state = 'running'",
    )
    .bind(millis(retry_at))
    .bind(error)
    .bind(millis(now))
    .bind(id)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    Ok(fenced(done.rows_affected()))
}

/// Postpones a job without counting the attempt (Slack said "slow down").
pub async fn defer(
    conn: &mut SqliteConnection,
    id: i64,
    attempt: i64,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'queued', run_at = ?, attempts = attempts - 1, lease_until = NULL, updated_at = ? \
         WHERE id = ? AND attempts = ? AND state = 'running'",
    )
    .bind(millis(run_at))
    .bind(millis(now))
    .bind(id)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    Ok(fenced(done.rows_affected()))
}

/// Gives up on a job. It stays in the table, visible, for an operator.
pub async fn bury(
    conn: &mut SqliteConnection,
    id: i64,
    attempt: i64,
    error: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'dead', last_error = ?, lease_until = NULL, updated_at = ? \
         WHERE id = ? AND attempts = ? AND state = 'running'",
    )
    .bind(error)
    .bind(millis(now))
    .bind(id)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 {
        promote_next(conn, id).await?;
    }
    Ok(fenced(done.rows_affected()))
}

/// Extends the lease of a job that is still running.
pub async fn renew(
    conn: &mut SqliteConnection,
    id: i64,
    attempt: i64,
    lease_until: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = sqlx::query(
        "UPDATE jobs SET lease_until = ? WHERE id = ? AND attempts = ? AND state = 'running'",
    )
    .bind(millis(lease_until))
    .bind(id)
    .bind(attempt)
    .execute(&mut *conn)
    .await?;
    Ok(fenced(done.rows_affected()))
}

/// Moves the queued job with `unique_key` to `run_at`. `false`: no such queued job.
pub async fn reschedule(
    conn: &mut SqliteConnection,
    unique_key: &str,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET run_at = ?, updated_at = ? WHERE unique_key = ? AND state = 'queued'",
    )
    .bind(millis(run_at))
    .bind(millis(now))
    .bind(unique_key)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Whether a live (queued or running) job holds `unique_key`.
pub async fn is_live(conn: &mut SqliteConnection, unique_key: &str) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE unique_key = ? AND state IN ('queued', 'blocked', 'running')",
    )
    .bind(unique_key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

/// The earliest `run_at` among queued jobs, in Unix milliseconds.
pub async fn next_due(conn: &mut SqliteConnection) -> sqlx::Result<Option<i64>> {
    // One index seek per priority; a single MIN over all queued jobs would walk every one.
    sqlx::query_scalar(
        "SELECT MIN(at) FROM ( \
           SELECT MIN(run_at) AS at FROM jobs WHERE state = 'queued' AND priority = ?1 \
           UNION ALL \
           SELECT MIN(run_at) AS at FROM jobs WHERE state = 'queued' AND priority = ?2)",
    )
    .bind(i64::from(PRIORITY_ACCESS))
    .bind(i64::from(PRIORITY_MESSAGES))
    .fetch_one(&mut *conn)
    .await
}

/// The earliest lease expiry among running jobs, in Unix milliseconds.
pub async fn next_lease_expiry(conn: &mut SqliteConnection) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT MIN(lease_until) FROM jobs WHERE state = 'running'")
        .fetch_one(&mut *conn)
        .await
}

/// Queued and running jobs by kind, and dead jobs (for metrics).
pub async fn depth_by_kind(
    conn: &mut SqliteConnection,
) -> sqlx::Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "SELECT kind, state, COUNT(*) FROM jobs WHERE state IN ('queued', 'blocked', 'running', 'dead') GROUP BY kind, state",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Deletes finished jobs older than `before`.
pub async fn prune_done(conn: &mut SqliteConnection, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM jobs WHERE state = 'done' AND updated_at < ?")
        .bind(millis(before))
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// A job as listed for operators.
#[derive(Debug, Clone, FromRow)]
pub struct JobSummary {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub attempts: i64,
    pub run_at: i64,
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
}

pub async fn by_state(
    conn: &mut SqliteConnection,
    state: &str,
    limit: i64,
) -> sqlx::Result<Vec<JobSummary>> {
    sqlx::query_as(
        "SELECT id, kind, state, attempts, run_at, last_error, unique_key FROM jobs WHERE state = ? ORDER BY id LIMIT ?",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

fn fenced(rows: u64) -> Fenced {
    if rows == 1 {
        Fenced::Applied
    } else {
        Fenced::Lost
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone, Utc};

    use super::*;
    use crate::store::{Durability, Store};

    /// A migrated store in a temporary directory (kept alive by the first value), and a time.
    async fn fresh() -> (tempfile::TempDir, Store, DateTime<Utc>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
        let store = Store::connect(&url, Durability::Normal).await.unwrap();
        store.migrate().await.unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        (dir, store, now)
    }

    fn job(kind: &'static str, priority: u8, run_at: DateTime<Utc>) -> NewJob {
        NewJob {
            kind,
            payload: "{}".into(),
            run_at,
            unique_key: None,
            lane: None,
            ordered: false,
            max_attempts: None,
            priority,
            chain_class: CHAIN_NORMAL,
            chain_key: None,
        }
    }

    /// Access jobs due later must not hide due messages (nor the other way round), and the
    /// earliest due time is found across both priorities.
    #[tokio::test]
    async fn claims_take_due_jobs_by_priority_past_a_backlog_due_later() {
        let (_dir, store, now) = fresh().await;
        let later = now + Duration::hours(1);

        let mut tx = store.begin_write().await.unwrap();
        let mut backlog = Vec::new();
        for _ in 0..200 {
            backlog.push(job("revoke_later", PRIORITY_ACCESS, later));
            backlog.push(job("nudge_later", PRIORITY_MESSAGES, later));
        }
        enqueue_many(&mut tx, &backlog, now).await.unwrap();
        assert_eq!(
            next_due(&mut tx).await.unwrap(),
            Some(millis(later)),
            "the earliest run_at among queued jobs"
        );
        enqueue(
            &mut tx,
            &job("message_now", PRIORITY_MESSAGES, now - Duration::seconds(5)),
            now,
        )
        .await
        .unwrap();
        enqueue(&mut tx, &job("revoke_now", PRIORITY_ACCESS, now), now)
            .await
            .unwrap();
        assert_eq!(
            next_due(&mut tx).await.unwrap(),
            Some(millis(now - Duration::seconds(5)))
        );

        // One claim returns its rows in id order; which rows it takes follows the priority.
        let lease = now + Duration::minutes(1);
        let kinds = |rows: Vec<JobRow>| rows.into_iter().map(|j| j.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(claim(&mut tx, now, lease, 1).await.unwrap()),
            ["revoke_now"],
            "access first"
        );
        assert_eq!(
            kinds(claim(&mut tx, now, lease, 10).await.unwrap()),
            ["message_now"],
            "then messages; nothing that is due later"
        );
        assert!(
            claim(&mut tx, now, lease, 10).await.unwrap().is_empty(),
            "nothing else is due"
        );
        let lease = later + Duration::minutes(1);
        let first = kinds(claim(&mut tx, later, lease, 200).await.unwrap());
        assert!(
            first.len() == 200 && first.iter().all(|k| k == "revoke_later"),
            "the backlog once it is due, access first: {first:?}"
        );
        let rest = kinds(claim(&mut tx, later, lease, 500).await.unwrap());
        assert!(rest.len() == 200 && rest.iter().all(|k| k == "nudge_later"));
        tx.commit().await.unwrap();
    }

    /// A job whose priority no claim looks for is refused, not left to wait for ever.
    #[tokio::test]
    async fn an_unknown_priority_is_refused() {
        let (_dir, store, now) = fresh().await;
        let mut tx = store.begin_write().await.unwrap();
        let err = enqueue(&mut tx, &job("odd", 2, now), now)
            .await
            .expect_err("priority 2 is refused");
        assert!(err.to_string().contains("jobs.priority must be 0"), "{err}");
        let err = enqueue_many(&mut tx, &[job("odd", 7, now)], now)
            .await
            .expect_err("in bulk too");
        assert!(err.to_string().contains("jobs.priority must be 0"), "{err}");
        enqueue(&mut tx, &job("fine", PRIORITY_ACCESS, now), now)
            .await
            .unwrap();
        let err = sqlx::query("UPDATE jobs SET priority = 5")
            .execute(tx.conn())
            .await
            .expect_err("and on update");
        assert!(err.to_string().contains("jobs.priority must be 0"), "{err}");
    }

    /// In an ordered lane only the head is queued, across separate batches too; another lane
    /// starts its own chain.
    #[tokio::test]
    async fn batches_chain_jobs_of_a_busy_lane() {
        let (_dir, store, now) = fresh().await;
        let in_lane = |kind: &'static str, lane: &str| NewJob {
            lane: Some(lane.into()),
            ordered: true,
            ..job(kind, PRIORITY_MESSAGES, now)
        };
        let mut tx = store.begin_write().await.unwrap();
        let batches = [
            [in_lane("a1", "channel:A"), in_lane("a2", "channel:A")],
            [in_lane("a3", "channel:A"), in_lane("b1", "channel:B")],
        ];
        for batch in &batches {
            enqueue_many(&mut tx, batch, now).await.unwrap();
        }
        let states: Vec<(String, String)> =
            sqlx::query_as("SELECT kind, state FROM jobs ORDER BY id")
                .fetch_all(tx.conn())
                .await
                .unwrap();
        let expected = [
            ("a1", "queued"),
            ("a2", "blocked"),
            ("a3", "blocked"),
            ("b1", "queued"),
        ]
        .map(|(k, s)| (k.to_owned(), s.to_owned()));
        assert_eq!(states, expected);
        tx.commit().await.unwrap();
    }

    /// A job in the chain `lane`.
    fn chained(kind: &'static str, lane: &str, urgent: bool, key: Option<&str>) -> NewJob {
        NewJob {
            lane: Some(lane.into()),
            ordered: true,
            chain_class: if urgent { CHAIN_URGENT } else { CHAIN_NORMAL },
            chain_key: key.map(str::to_owned),
            ..job(
                kind,
                PRIORITY_MESSAGES,
                Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
            )
        }
    }

    /// Runs the chains to the end, one head at a time (claim, then complete), and returns the
    /// kinds in the order they ran. A crash after every third claim puts the running head back
    /// (`reclaim_all`, as at startup) before it completes: the order survives restarts.
    async fn drain(store: &Store, now: DateTime<Utc>) -> Vec<String> {
        let lease = now + Duration::minutes(1);
        let mut ran = Vec::new();
        let mut claims = 0;
        loop {
            let mut tx = store.begin_write().await.unwrap();
            let Some(head) = claim(&mut tx, now, lease, 1).await.unwrap().pop() else {
                tx.commit().await.unwrap();
                return ran;
            };
            claims += 1;
            if claims % 3 == 0 {
                assert_eq!(reclaim_all(&mut tx, now).await.unwrap(), 1);
                tx.commit().await.unwrap();
                continue;
            }
            assert_eq!(
                complete(&mut tx, head.id, head.attempts, now)
                    .await
                    .unwrap(),
                Fenced::Applied
            );
            tx.commit().await.unwrap();
            ran.push(head.kind);
        }
    }

    /// Within one channel's chain, waiting approval messages go before waiting audit posts,
    /// whatever their order of arrival, even the head if it has not started. Each key keeps
    /// its order (an approval message before its update, a thread's replies in
    /// order), and keys take turns: a request's second audit post goes after the other
    /// requests' first ones.
    #[tokio::test]
    async fn approval_messages_go_before_audit_posts_in_one_channel() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:audit";
        let mut tx = store.begin_write().await.unwrap();
        let batch = [
            chained("audit-1a", lane, false, Some("audit:1")),
            chained("audit-2a", lane, false, Some("audit:2")),
            chained("approval-U1-1", lane, true, Some("approvals:U1")),
            chained("audit-1b", lane, false, Some("audit:1")),
            chained("top-level", lane, false, None),
        ];
        enqueue_many(&mut tx, &batch, now).await.unwrap();
        for job in [
            chained("approval-U2-1", lane, true, Some("approvals:U2")),
            chained("audit-3a", lane, false, Some("audit:3")),
            // The first approval message's update: after its post, never before.
            chained("approval-U1-1-update", lane, true, Some("approvals:U1")),
        ] {
            enqueue(&mut tx, &job, now).await.unwrap();
        }
        // Another channel is its own chain, unaffected.
        enqueue(&mut tx, &chained("dm", "dm:U9", false, None), now)
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let ran = drain(&store, now).await;
        let in_lane: Vec<&str> = ran
            .iter()
            .map(String::as_str)
            .filter(|k| *k != "dm")
            .collect();
        assert_eq!(
            in_lane,
            [
                "approval-U1-1",
                "approval-U2-1",
                "approval-U1-1-update",
                "audit-1a",
                "audit-2a",
                "top-level",
                "audit-3a",
                "audit-1b",
            ]
        );
        assert!(ran.contains(&"dm".to_owned()));
    }

    /// Each requester's first waiting approval message goes before anyone's second, and among
    /// first ones, the requester with the fewest waiting goes first: a few people with many
    /// requests do not push a newcomer back, even when their first messages came earlier.
    /// Turns count only live jobs, and are the same whether jobs arrive in one batch or one at
    /// a time.
    #[tokio::test]
    async fn requesters_take_turns_in_a_chain() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:C0APPROVALS";
        let approval = |kind: &'static str, who: &str| {
            chained(kind, lane, true, Some(&format!("approvals:{who}")))
        };
        let mut tx = store.begin_write().await.unwrap();
        let flood = [
            approval("U1-a", "U1"),
            approval("U1-b", "U1"),
            approval("U2-a", "U2"),
            approval("U1-c", "U1"),
            approval("U2-b", "U2"),
        ];
        enqueue_many(&mut tx, &flood, now).await.unwrap();
        enqueue(&mut tx, &approval("U2-c", "U2"), now)
            .await
            .unwrap();
        enqueue(&mut tx, &approval("U3-a", "U3"), now)
            .await
            .unwrap();
        let turns: Vec<(String, i64)> =
            sqlx::query_as("SELECT kind, chain_turn FROM jobs ORDER BY id")
                .fetch_all(tx.conn())
                .await
                .unwrap();
        let expected = [
            ("U1-a", 0),
            ("U1-b", 1),
            ("U2-a", 0),
            ("U1-c", 2),
            ("U2-b", 1),
            ("U2-c", 2),
            ("U3-a", 0),
        ]
        .map(|(k, t)| (k.to_owned(), t));
        assert_eq!(turns, expected);
        tx.commit().await.unwrap();

        assert_eq!(
            drain(&store, now).await,
            ["U1-a", "U3-a", "U2-a", "U1-b", "U2-b", "U1-c", "U2-c"]
        );

        // Nothing of U1 is live any more: its next message is a first turn again.
        let mut tx = store.begin_write().await.unwrap();
        enqueue(&mut tx, &approval("U1-d", "U1"), now)
            .await
            .unwrap();
        let turn: i64 = sqlx::query_scalar("SELECT chain_turn FROM jobs WHERE kind = 'U1-d'")
            .fetch_one(tx.conn())
            .await
            .unwrap();
        assert_eq!(turn, 0);
        tx.commit().await.unwrap();
    }

    /// An urgent job (an alert) never passes an older waiting job of its own key (its
    /// request's earlier audit posts): it goes right after them, ahead of the other keys, and
    /// ahead of a head that has not started.
    #[tokio::test]
    async fn urgent_jobs_wait_for_their_own_keys_older_jobs() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:audit";
        let mut tx = store.begin_write().await.unwrap();
        for job in [
            chained("head", lane, false, None),
            chained("r1-requested", lane, false, Some("audit:1")),
            chained("r2-requested", lane, false, Some("audit:2")),
            chained("r1-alert", lane, true, Some("audit:1")),
            chained("r3-alert", lane, true, Some("audit:3")),
        ] {
            enqueue(&mut tx, &job, now).await.unwrap();
        }
        tx.commit().await.unwrap();
        assert_eq!(
            drain(&store, now).await,
            [
                "r3-alert",
                "head",
                "r1-requested",
                "r1-alert",
                "r2-requested"
            ]
        );
    }

    /// A running job may take over the waiting jobs of its key (one post carrying several audit
    /// events): they are done, the chain goes on past them, and only waiting jobs are taken.
    #[tokio::test]
    async fn a_head_can_complete_its_keys_waiting_jobs() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:audit";
        let mut tx = store.begin_write().await.unwrap();
        for job in [
            chained("r1-a", lane, false, Some("audit:1")),
            chained("r2-a", lane, false, Some("audit:2")),
            chained("r1-b", lane, false, Some("audit:1")),
            chained("r1-c", lane, false, Some("audit:1")),
            chained("other-lane", "slack:C0OTHER", false, Some("audit:1")),
        ] {
            enqueue(&mut tx, &job, now).await.unwrap();
        }
        assert_eq!(chain_backlog(&mut tx, lane, 100).await.unwrap(), 3);
        assert_eq!(
            chain_backlog(&mut tx, lane, 2).await.unwrap(),
            2,
            "counts up to the cap"
        );
        let heads = claim(&mut tx, now, now + Duration::minutes(1), 10)
            .await
            .unwrap();
        assert_eq!(heads.len(), 2, "one head per chain: {heads:?}");
        let head = heads.iter().find(|j| j.kind == "r1-a").unwrap().clone();
        let other = heads.iter().find(|j| j.kind == "other-lane").unwrap();
        assert_eq!(
            complete(&mut tx, other.id, other.attempts, now)
                .await
                .unwrap(),
            Fenced::Applied
        );
        let waiting = waiting_in_chain(&mut tx, lane, "audit:1", 10)
            .await
            .unwrap();
        let ids: Vec<i64> = waiting.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids.len(),
            2,
            "r1-b and r1-c, not the running head: {waiting:?}"
        );
        assert_eq!(
            waiting_in_chain(&mut tx, lane, "audit:1", 1)
                .await
                .unwrap()
                .len(),
            1
        );
        // The head itself is running, not waiting: never taken over.
        assert_eq!(complete_waiting(&mut tx, &[head.id], now).await.unwrap(), 0);
        assert_eq!(complete_waiting(&mut tx, &ids, now).await.unwrap(), 2);
        assert_eq!(
            complete_waiting(&mut tx, &ids, now).await.unwrap(),
            0,
            "once"
        );
        assert_eq!(
            complete(&mut tx, head.id, head.attempts, now)
                .await
                .unwrap(),
            Fenced::Applied
        );
        tx.commit().await.unwrap();
        assert_eq!(drain(&store, now).await, ["r2-a"]);
        let states: Vec<(String, String)> =
            sqlx::query_as("SELECT kind, state FROM jobs ORDER BY id")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert!(
            states.iter().all(|(_, s)| s == "done"),
            "every job done, none lost: {states:?}"
        );
    }

    /// A head that is running is never interrupted by an urgent job: it finishes, and the
    /// urgent job goes next. One that has not started steps back, also when it was deferred.
    #[tokio::test]
    async fn urgent_jobs_pass_a_waiting_head_never_a_running_one() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:audit";
        let lease = now + Duration::minutes(1);
        let mut tx = store.begin_write().await.unwrap();
        enqueue(&mut tx, &chained("audit-a", lane, false, None), now)
            .await
            .unwrap();
        enqueue(&mut tx, &chained("audit-b", lane, false, None), now)
            .await
            .unwrap();
        let head = claim(&mut tx, now, lease, 1).await.unwrap().pop().unwrap();
        assert_eq!(head.kind, "audit-a");
        enqueue(
            &mut tx,
            &chained("approval", lane, true, Some("approvals:U1")),
            now,
        )
        .await
        .unwrap();
        let states: Vec<(String, String)> =
            sqlx::query_as("SELECT kind, state FROM jobs ORDER BY id")
                .fetch_all(tx.conn())
                .await
                .unwrap();
        let expected = [
            ("audit-a", "running"),
            ("audit-b", "blocked"),
            ("approval", "blocked"),
        ]
        .map(|(k, s)| (k.to_owned(), s.to_owned()));
        assert_eq!(states, expected, "the running head keeps running");
        // The head is put back, deferred (Slack said slow down): it has not started now.
        assert_eq!(
            defer(
                &mut tx,
                head.id,
                head.attempts,
                now + Duration::seconds(30),
                now
            )
            .await
            .unwrap(),
            Fenced::Applied
        );
        enqueue(
            &mut tx,
            &chained("approval-2", lane, true, Some("approvals:U2")),
            now,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let later = now + Duration::minutes(1);
        assert_eq!(
            drain(&store, later).await,
            ["approval", "approval-2", "audit-a", "audit-b"]
        );
    }
}
