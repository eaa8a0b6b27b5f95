//! The job table behind [`crate::queue`]. See that module for the semantics; this file only
//! holds the statements.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::requests::Fenced;
use super::{Conn, Driver, millis, on};

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
    conn: &mut Conn,
    job: &NewJob,
    now: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    let id: Option<i64> = on!(conn, |c| {
        sqlx::query_scalar(
        "INSERT INTO jobs (kind, payload, run_at, unique_key, lane, ordered, max_attempts, priority, created_at, updated_at, \
           chain_class, chain_key, chain_turn, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $8, $8, $10, $11, \
           CASE WHEN $6 AND $11 IS NOT NULL THEN COALESCE((SELECT MAX(chain_turn) + 1 FROM jobs \
             WHERE lane = $5 AND chain_key = $11 AND state IN ('queued', 'blocked', 'running')), 0) ELSE 0 END, \
           CASE WHEN $6 AND EXISTS (SELECT 1 FROM jobs WHERE lane = $5 AND state IN ('queued', 'blocked', 'running')) \
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
    .fetch_optional(&mut *c)
    .await
    })?;
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
    conn: &mut Conn,
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
    let rows = jobs.iter().zip(turns).zip(states);
    on!(conn, |c, Db| {
        let mut insert = sqlx::QueryBuilder::<Db>::new(
            "INSERT INTO jobs (kind, payload, run_at, unique_key, lane, ordered, max_attempts, priority, created_at, updated_at, \
         chain_class, chain_key, chain_turn, state) ",
        );
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
        insert
            .build()
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
    })?;
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
async fn chain_probe(conn: &mut Conn, jobs: &[NewJob]) -> sqlx::Result<ChainProbe> {
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
    let rows: Vec<(String, Option<String>, Option<i64>)> = on!(conn, |c, Db| {
        // (Typed as BIGINT, so both branches of the union decode alike on PostgreSQL.)
        let mut query =
            sqlx::QueryBuilder::<Db>::new("SELECT l.lane, NULL, CAST(CASE WHEN EXISTS (");
        query
        .push("SELECT 1 FROM jobs h WHERE h.lane = l.lane AND h.state = 'queued' AND h.chain_class <> ")
        .push_bind(i64::from(CHAIN_URGENT))
        .push(") THEN 1 ELSE 0 END AS BIGINT) FROM (");
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
        query.build_query_as().fetch_all(&mut *c).await
    })?;
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

/// The condition, on PostgreSQL, that the replica holding running job `j` is dead: its liveness
/// lock ([`crate::store::LIVENESS_LOCK_CLASS`], holder) is held by no session of this database.
/// (The class is written out: `concat!` takes literals; a test keeps the two equal.)
macro_rules! holder_dead {
    () => {
        "(j.holder IS NOT NULL AND NOT EXISTS ( \
           SELECT 1 FROM pg_locks l \
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.classid::bigint = 1785295220 AND l.objid::bigint = j.holder))"
    };
}

/// Puts running jobs back in the queue when their lease ran out, or, on PostgreSQL, when the
/// replica that claimed them died (its liveness lock went with its session). Their attempt
/// counter stays, and the next claim increments it, which fences out a stale worker's completion.
pub async fn reclaim_expired(conn: &mut Conn, now: DateTime<Utc>) -> sqlx::Result<u64> {
    on!(conn, |c, Db| {
        let sql = if Driver::of::<Db>() == Driver::Postgres {
            concat!(
                "UPDATE jobs j SET state = 'queued', lease_until = NULL, holder = NULL, updated_at = $1 \
                 WHERE j.state = 'running' AND (j.lease_until < $1 OR ",
                holder_dead!(),
                ")"
            )
        } else {
            "UPDATE jobs SET state = 'queued', lease_until = NULL, holder = NULL, updated_at = $1 \
             WHERE state = 'running' AND lease_until < $1"
        };
        sqlx::query(sql)
            .bind(millis(now))
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
    })
}

/// Whether a running job's replica died (PostgreSQL; always `false` on SQLite, where the one
/// process's own crash is recovered at its start).
pub async fn any_orphaned(conn: &mut Conn) -> sqlx::Result<bool> {
    if conn.driver() == Driver::Sqlite {
        return Ok(false);
    }
    on!(conn, |c| {
        sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'running' AND ",
            holder_dead!(),
            ")"
        ))
        .fetch_one(&mut *c)
        .await
    })
}

/// At startup, with the instance lock held, every running job is an orphan of a dead process.
pub async fn reclaim_all(conn: &mut Conn, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_until = NULL, holder = NULL, updated_at = $1 WHERE state = 'running'",
    )
    .bind(millis(now))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(done)
}

/// Claims up to `limit` due jobs in one statement: by priority, then oldest due first, for
/// `holder` (this replica's liveness lock while it holds it; `None`: the lease alone).
///
/// In an ordered lane (a chain) only the head is `queued`; the rest wait as `blocked`, so no
/// check is needed. In an unordered lane, a job is eligible when no lane-mate is running and
/// none is due earlier. Either way at most one job per lane is eligible at a time, and one
/// statement never claims two of a lane.
pub async fn claim(
    conn: &mut Conn,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u32,
    holder: Option<i64>,
) -> sqlx::Result<Vec<JobRow>> {
    // On PostgreSQL the candidates are also locked and rows another transaction holds are
    // skipped: writers of jit take turns anyway (the write lock), but a transaction that does not
    // take it (an operator's, in psql) never makes a claim wait.
    macro_rules! claim_sql {
        ($lock:literal) => {
            concat!(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $2, holder = $6, updated_at = $1 \
                 WHERE id IN ( \
                   SELECT j.id FROM jobs j \
                   WHERE j.state = 'queued' AND j.priority IN ($4, $5) AND j.run_at <= $1 \
                     AND (j.lane IS NULL OR j.ordered = TRUE OR ( \
                       NOT EXISTS (SELECT 1 FROM jobs o WHERE o.lane = j.lane AND o.state = 'running') \
                       AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.lane = j.lane AND o.state = 'queued' \
                         AND o.id <> j.id AND o.run_at <= $1 \
                         AND (o.run_at < j.run_at OR (o.run_at = j.run_at AND o.id < j.id))))) \
                   ORDER BY j.priority, j.run_at, j.id LIMIT $3 ",
                $lock,
                ") RETURNING id, kind, payload, run_at, attempts, max_attempts, lane, unique_key"
            )
        };
    }
    on!(conn, |c, Db| {
        let sql = if Driver::of::<Db>() == Driver::Postgres {
            claim_sql!("FOR UPDATE OF j SKIP LOCKED")
        } else {
            claim_sql!("")
        };
        sqlx::query_as(sql)
            .bind(millis(now))
            .bind(millis(lease_until))
            .bind(i64::from(limit))
            .bind(i64::from(PRIORITY_ACCESS))
            .bind(i64::from(PRIORITY_MESSAGES))
            .bind(holder)
            .fetch_all(&mut *c)
            .await
    })
}

/// Marks a claimed job done, if this worker still owns it.
pub async fn complete(
    conn: &mut Conn,
    id: i64,
    attempt: i64,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = $1 \
         WHERE id = $2 AND attempts = $3 AND state = 'running'",
    )
    .bind(millis(now))
    .bind(id)
    .bind(attempt)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    if done == 1 {
        promote_next(conn, id).await?;
    }
    Ok(fenced(done))
}

/// Which chain [`promote`] works on.
enum Chain<'a> {
    /// The chain job `id` just left for good.
    Of(i64),
    Lane(&'a str),
}

/// After job `id` left its chain for good, the next job of the chain becomes its head.
async fn promote_next(conn: &mut Conn, id: i64) -> sqlx::Result<()> {
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
async fn promote(conn: &mut Conn, chain: Chain<'_>) -> sqlx::Result<()> {
    let (id, lane) = match chain {
        Chain::Of(id) => (Some(id), None),
        Chain::Lane(lane) => (None, Some(lane)),
    };
    on!(conn, |c| sqlx::query(
        "WITH chain(lane) AS ( \
           SELECT COALESCE($2, (SELECT f.lane FROM jobs f WHERE f.id = $1 AND f.ordered = TRUE))), \
         candidates AS ( \
           SELECT n.id, n.chain_class, n.chain_turn, n.chain_key FROM jobs n \
           WHERE n.lane = (SELECT lane FROM chain) AND n.state = 'blocked' \
             AND (n.chain_key IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM jobs p WHERE p.lane = n.lane AND p.chain_key = n.chain_key \
                 AND p.state = 'blocked' AND p.id < n.id)) \
           ORDER BY n.chain_class, n.chain_turn, n.id LIMIT $3) \
         UPDATE jobs SET state = 'queued' WHERE id = ( \
           SELECT c.id FROM candidates c \
           ORDER BY c.chain_class, c.chain_turn, \
             CASE WHEN c.chain_class = $4 THEN (SELECT COUNT(*) FROM jobs w \
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
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Urgent jobs may have joined the chain `lane` behind a head that is not urgent: if that head
/// has not started (it is `queued`, perhaps deferred by Slack's pace), it steps back to
/// `blocked` and the chain's next job in order becomes the head. A running head is never
/// interrupted.
async fn let_urgent_pass(conn: &mut Conn, lane: &str) -> sqlx::Result<()> {
    let stepped_back = on!(conn, |c| {
        sqlx::query(
        "UPDATE jobs SET state = 'blocked' \
         WHERE lane = $1 AND ordered = TRUE AND state = 'queued' AND chain_class <> $2 \
           AND EXISTS (SELECT 1 FROM jobs u WHERE u.lane = $1 AND u.state = 'blocked' AND u.chain_class = $2)",
    )
    .bind(lane)
    .bind(i64::from(CHAIN_URGENT))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    if stepped_back > 0 {
        promote(conn, Chain::Lane(lane)).await?;
    }
    Ok(())
}

/// Waiting (`blocked`) jobs of `key` in the chain `lane`, oldest first: the ones a running job
/// of that key may take over (see [`complete_waiting`]).
pub async fn waiting_in_chain(
    conn: &mut Conn,
    lane: &str,
    key: &str,
    limit: u32,
) -> sqlx::Result<Vec<(i64, String)>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT id, payload FROM jobs WHERE lane = $1 AND chain_key = $2 AND state = 'blocked' \
         ORDER BY id LIMIT $3",
    )
    .bind(lane)
    .bind(key)
    .bind(i64::from(limit))
    .fetch_all(&mut *c)
    .await)
}

/// How many jobs wait behind the head of the chain `lane`, counting up to `at_most`.
pub async fn chain_backlog(conn: &mut Conn, lane: &str, at_most: u32) -> sqlx::Result<u32> {
    let n: i64 = on!(conn, |c| {
        sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE lane = $1 AND state = 'blocked' LIMIT $2) AS w",
    )
    .bind(lane)
    .bind(i64::from(at_most))
    .fetch_one(&mut *c)
    .await
    })?;
    Ok(n as u32)
}

/// Marks waiting jobs done whose work a running job of their chain did (one Slack post carrying
/// several audit events). Only jobs still `blocked` change; returns how many did. A waiting job
/// was never claimed, so no worker holds it; the chain's head is untouched.
pub async fn complete_waiting(
    conn: &mut Conn,
    ids: &[i64],
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    on!(conn, |c, Db| {
        let mut query = sqlx::QueryBuilder::<Db>::new(
            "UPDATE jobs SET state = 'done', lease_until = NULL, last_error = NULL, updated_at = ",
        );
        query.push_bind(millis(now));
        query.push(" WHERE state = 'blocked' AND id IN (");
        super::push_list(&mut query, ids.iter().copied());
        query.push(")");
        query
            .build()
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
    })
}

/// Puts a failed job back for another attempt at `retry_at`.
pub async fn retry(
    conn: &mut Conn,
    id: i64,
    attempt: i64,
    error: &str,
    retry_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE jobs SET state = 'queued', run_at = $1, last_error = $2, lease_until = NULL, updated_at = $3 \
         WHERE id = $4 AND attempts = $5 AND state = 'running'",
    )
    .bind(millis(retry_at))
    .bind(error)
    .bind(millis(now))
    .bind(id)
    .bind(attempt)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(fenced(done))
}

/// Postpones a job without counting the attempt (Slack said "slow down").
pub async fn defer(
    conn: &mut Conn,
    id: i64,
    attempt: i64,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE jobs SET state = 'queued', run_at = $1, attempts = attempts - 1, lease_until = NULL, updated_at = $2 \
         WHERE id = $3 AND attempts = $4 AND state = 'running'",
    )
    .bind(millis(run_at))
    .bind(millis(now))
    .bind(id)
    .bind(attempt)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(fenced(done))
}

/// Gives up on a job. It stays in the table, visible, for an operator.
pub async fn bury(
    conn: &mut Conn,
    id: i64,
    attempt: i64,
    error: &str,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| sqlx::query(
        "UPDATE jobs SET state = 'dead', last_error = $1, lease_until = NULL, updated_at = $2 \
         WHERE id = $3 AND attempts = $4 AND state = 'running'",
    )
    .bind(error)
    .bind(millis(now))
    .bind(id)
    .bind(attempt)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    if done == 1 {
        promote_next(conn, id).await?;
    }
    Ok(fenced(done))
}

/// Extends the lease of a job that is still running.
pub async fn renew(
    conn: &mut Conn,
    id: i64,
    attempt: i64,
    lease_until: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND attempts = $3 AND state = 'running'",
    )
    .bind(millis(lease_until))
    .bind(id)
    .bind(attempt)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(fenced(done))
}

/// Moves the queued job with `unique_key` to `run_at`. `false`: no such queued job.
pub async fn reschedule(
    conn: &mut Conn,
    unique_key: &str,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE jobs SET run_at = $1, updated_at = $2 WHERE unique_key = $3 AND state = 'queued'",
    )
    .bind(millis(run_at))
    .bind(millis(now))
    .bind(unique_key)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(done > 0)
}

/// Whether a live (queued or running) job holds `unique_key`.
pub async fn is_live(conn: &mut Conn, unique_key: &str) -> sqlx::Result<bool> {
    let n: i64 = on!(conn, |c| {
        sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE unique_key = $1 AND state IN ('queued', 'blocked', 'running')",
    )
    .bind(unique_key)
    .fetch_one(&mut *c)
    .await
    })?;
    Ok(n > 0)
}

/// The earliest `run_at` among queued jobs, in Unix milliseconds.
pub async fn next_due(conn: &mut Conn) -> sqlx::Result<Option<i64>> {
    // One index seek per priority; a single MIN over all queued jobs would walk every one.
    on!(conn, |c| sqlx::query_scalar(
        "SELECT MIN(at) FROM ( \
           SELECT MIN(run_at) AS at FROM jobs WHERE state = 'queued' AND priority = $1 \
           UNION ALL \
           SELECT MIN(run_at) AS at FROM jobs WHERE state = 'queued' AND priority = $2) AS due",
    )
    .bind(i64::from(PRIORITY_ACCESS))
    .bind(i64::from(PRIORITY_MESSAGES))
    .fetch_one(&mut *c)
    .await)
}

/// The earliest lease expiry among running jobs, in Unix milliseconds.
pub async fn next_lease_expiry(conn: &mut Conn) -> sqlx::Result<Option<i64>> {
    on!(conn, |c| sqlx::query_scalar(
        "SELECT MIN(lease_until) FROM jobs WHERE state = 'running'"
    )
    .fetch_one(&mut *c)
    .await)
}

/// Queued and running jobs by kind, and dead jobs (for metrics).
pub async fn depth_by_kind(conn: &mut Conn) -> sqlx::Result<Vec<(String, String, i64)>> {
    on!(conn, |c| {
        sqlx::query_as(
        "SELECT kind, state, COUNT(*) FROM jobs WHERE state IN ('queued', 'blocked', 'running', 'dead') GROUP BY kind, state",
    )
    .fetch_all(&mut *c)
    .await
    })
}

/// How many jobs of `kind` are in `state`.
pub async fn count(conn: &mut Conn, kind: &str, state: &str) -> sqlx::Result<i64> {
    on!(conn, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE kind = $1 AND state = $2"
    )
    .bind(kind)
    .bind(state)
    .fetch_one(&mut *c)
    .await)
}

/// Deletes finished jobs older than `before`.
pub async fn prune_done(conn: &mut Conn, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = on!(conn, |c| sqlx::query(
        "DELETE FROM jobs WHERE state = 'done' AND updated_at < $1"
    )
    .bind(millis(before))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done)
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

pub async fn by_state(conn: &mut Conn, state: &str, limit: i64) -> sqlx::Result<Vec<JobSummary>> {
    on!(conn, |c| {
        sqlx::query_as(
        "SELECT id, kind, state, attempts, run_at, last_error, unique_key FROM jobs WHERE state = $1 ORDER BY id LIMIT $2",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(&mut *c)
    .await
    })
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
    #[test]
    fn the_dead_holder_condition_names_the_liveness_lock_class() {
        assert!(holder_dead!().contains(&format!(
            "l.classid::bigint = {}",
            crate::store::LIVENESS_LOCK_CLASS
        )));
    }
}
