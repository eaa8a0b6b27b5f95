//! Requests and approvals.
//!
//! Every state change is an `UPDATE … WHERE id = ? AND state = ?`: when it affects no row,
//! somebody else changed the request first, and the caller reports that instead of acting.

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Conn, format_time, on, parse_time};
use crate::domain::duration::GrantDuration;
use crate::domain::ids::{RequestId, ResourceId, SlackChannelId};
use crate::domain::policy::Requester;
use crate::domain::request::{Kind, Request, State};

/// The one projection of a request row.
macro_rules! select_requests {
    ($($tail:literal)*) => {
        concat!(
            "SELECT id, kind, parent_id, requester, resource, duration_secs, justification, ticket, \
             state, approvals_required, created_at, pending_until, decided_at, decided_by, \
             decision_note, granted_at, expires_at, ended_at, revoked_at, failure, \
             approval_channel, approval_ts, audit_ts, reviewed_by, reviewed_at, grant_handle, \
             access_key, origin_channel, delivery_failure, grant_baseline, start_at, escalation_step, \
             route_note FROM requests ",
            $($tail),*
        )
    };
}

#[derive(Debug, FromRow)]
struct RequestRow {
    id: i64,
    kind: String,
    parent_id: Option<i64>,
    requester: String,
    resource: String,
    duration_secs: i64,
    justification: String,
    ticket: Option<String>,
    state: String,
    approvals_required: i64,
    created_at: String,
    pending_until: Option<String>,
    decided_at: Option<String>,
    decided_by: Option<String>,
    decision_note: Option<String>,
    granted_at: Option<String>,
    expires_at: Option<String>,
    ended_at: Option<String>,
    revoked_at: Option<String>,
    failure: Option<String>,
    approval_channel: Option<String>,
    approval_ts: Option<String>,
    audit_ts: Option<String>,
    reviewed_by: Option<String>,
    reviewed_at: Option<String>,
    grant_handle: Option<String>,
    access_key: Option<String>,
    origin_channel: Option<String>,
    delivery_failure: Option<String>,
    grant_baseline: Option<String>,
    start_at: Option<String>,
    escalation_step: i64,
    route_note: Option<String>,
}

/// A request plus the storage-only columns the workers need.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    pub request: Request,
    pub grant_handle: Option<String>,
    pub access_key: Option<String>,
    pub origin_channel: Option<SlackChannelId>,
    /// Slack's error code when the approvers' message could never be posted.
    pub delivery_failure: Option<String>,
    /// What the provider recorded before the grant acted ([`crate::providers::Provider::baseline`]).
    pub grant_baseline: Option<String>,
    /// How many of the resource's escalation steps have run ([`escalate`]).
    pub escalation_step: u32,
    /// Why an auto-approval rule could not approve it (shown to the approvers).
    pub route_note: Option<String>,
}

fn time(value: Option<String>) -> anyhow::Result<Option<DateTime<Utc>>> {
    value.as_deref().map(parse_time).transpose()
}

impl TryFrom<RequestRow> for StoredRequest {
    type Error = anyhow::Error;

    fn try_from(row: RequestRow) -> anyhow::Result<Self> {
        let request = Request {
            id: RequestId(row.id),
            kind: Kind::parse(&row.kind).ok_or_else(|| anyhow!("unknown kind {}", row.kind))?,
            parent: row.parent_id.map(RequestId),
            requester: Requester::from_key(&row.requester)
                .ok_or_else(|| anyhow!("bad requester {}", row.requester))?,
            resource: ResourceId::parse(&row.resource)?,
            duration: GrantDuration::from_secs(row.duration_secs.max(1) as u64),
            justification: row.justification,
            ticket: row.ticket,
            state: State::parse(&row.state)
                .ok_or_else(|| anyhow!("unknown state {}", row.state))?,
            approvals_required: row.approvals_required.max(1) as u32,
            created_at: parse_time(&row.created_at)?,
            start_at: time(row.start_at)?,
            pending_until: time(row.pending_until)?,
            decided_at: time(row.decided_at)?,
            decided_by: row.decided_by,
            decision_note: row.decision_note,
            granted_at: time(row.granted_at)?,
            expires_at: time(row.expires_at)?,
            ended_at: time(row.ended_at)?,
            revoked_at: time(row.revoked_at)?,
            failure: row.failure,
            approval_channel: row
                .approval_channel
                .as_deref()
                .map(SlackChannelId::parse)
                .transpose()?,
            approval_ts: row.approval_ts,
            audit_ts: row.audit_ts,
            reviewed_by: row.reviewed_by,
            reviewed_at: time(row.reviewed_at)?,
        };
        Ok(StoredRequest {
            request,
            grant_handle: row.grant_handle,
            access_key: row.access_key,
            origin_channel: row
                .origin_channel
                .as_deref()
                .and_then(|c| SlackChannelId::parse(c).ok()),
            delivery_failure: row.delivery_failure,
            grant_baseline: row.grant_baseline,
            escalation_step: row.escalation_step.clamp(0, u32::MAX as i64) as u32,
            route_note: row.route_note,
        })
    }
}

/// What a new request starts with.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub kind: Kind,
    pub parent: Option<RequestId>,
    pub requester: &'a Requester,
    pub resource: &'a ResourceId,
    pub duration: GrantDuration,
    pub justification: &'a str,
    pub ticket: Option<&'a str>,
    pub approvals_required: u32,
    pub created_at: DateTime<Utc>,
    pub pending_until: Option<DateTime<Utc>>,
    pub origin_channel: Option<&'a SlackChannelId>,
}

pub async fn insert(conn: &mut Conn, new: &NewRequest<'_>) -> sqlx::Result<RequestId> {
    let id: i64 = on!(conn, |c| {
        sqlx::query_scalar(
        "INSERT INTO requests (kind, parent_id, requester, resource, duration_secs, justification, \
         ticket, state, approvals_required, created_at, pending_until, origin_channel) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11) RETURNING id",
    )
    .bind(new.kind.as_str())
    .bind(new.parent.map(|p| p.0))
    .bind(new.requester.key())
    .bind(new.resource.as_str())
    .bind(new.duration.as_secs() as i64)
    .bind(new.justification)
    .bind(new.ticket)
    .bind(new.approvals_required as i64)
    .bind(format_time(new.created_at))
    .bind(new.pending_until.map(format_time))
    .bind(new.origin_channel.map(|c| c.as_str()))
    .fetch_one(&mut *c)
    .await
    })?;
    Ok(RequestId(id))
}

/// Inserts several pending requests in one statement; returns their ids in the order given.
pub async fn insert_many(conn: &mut Conn, new: &[NewRequest<'_>]) -> sqlx::Result<Vec<i64>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<i64> = on!(conn, |c, Db| {
        let mut insert = sqlx::QueryBuilder::<Db>::new(
            "INSERT INTO requests (kind, parent_id, requester, resource, duration_secs, justification, \
             ticket, state, approvals_required, created_at, pending_until, origin_channel) ",
        );
        insert.push_values(new, |mut b, r| {
            b.push_bind(r.kind.as_str())
                .push_bind(r.parent.map(|p| p.0))
                .push_bind(r.requester.key())
                .push_bind(r.resource.as_str())
                .push_bind(r.duration.as_secs() as i64)
                .push_bind(r.justification)
                .push_bind(r.ticket)
                .push_bind("pending")
                .push_bind(r.approvals_required as i64)
                .push_bind(format_time(r.created_at))
                .push_bind(r.pending_until.map(format_time))
                .push_bind(r.origin_channel.map(|c| c.as_str()));
        });
        insert.push(" RETURNING id");
        insert.build_query_scalar().fetch_all(&mut *c).await
    })?;
    // Rows get increasing ids in the order of the VALUES list (one statement, one writer).
    ids.sort_unstable();
    Ok(ids)
}

/// Schedules a pending request's start (set once, right after it is stored).
pub async fn set_start(
    conn: &mut Conn,
    id: RequestId,
    start_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    on!(conn, |c| sqlx::query(
        "UPDATE requests SET start_at = $1 WHERE id = $2 AND state = 'pending'"
    )
    .bind(format_time(start_at))
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|_| ()))
}

pub async fn get(conn: &mut Conn, id: RequestId) -> anyhow::Result<Option<StoredRequest>> {
    let row: Option<RequestRow> = on!(conn, |c| sqlx::query_as(select_requests!("WHERE id = $1"))
        .bind(id.0)
        .fetch_optional(&mut *c)
        .await)
    .context("cannot load request")?;
    row.map(StoredRequest::try_from).transpose()
}

/// Requests of `requester` in any of the open states, newest first.
pub async fn open_for_requester(
    conn: &mut Conn,
    requester: &Requester,
) -> anyhow::Result<Vec<StoredRequest>> {
    let rows: Vec<RequestRow> = on!(conn, |c| sqlx::query_as(select_requests!(
        "WHERE requester = $1 AND state IN ('pending', 'approved', 'active') ORDER BY id DESC LIMIT 50"
    ))
    .bind(requester.key())
    .fetch_all(&mut *c)
    .await)
    .context("cannot list requests")?;
    rows.into_iter().map(StoredRequest::try_from).collect()
}

/// Every request of `requester` in an open state (pending, approved or active), oldest first.
pub async fn all_open_for_requester(
    conn: &mut Conn,
    requester: &Requester,
) -> anyhow::Result<Vec<StoredRequest>> {
    let rows: Vec<RequestRow> = on!(conn, |c| sqlx::query_as(select_requests!(
        "WHERE requester = $1 AND state IN ('pending', 'approved', 'active') ORDER BY id"
    ))
    .bind(requester.key())
    .fetch_all(&mut *c)
    .await)
    .context("cannot list requests")?;
    rows.into_iter().map(StoredRequest::try_from).collect()
}

/// Break-glass grants that no admin has reviewed yet, oldest first.
pub async fn unreviewed_breakglass(conn: &mut Conn) -> anyhow::Result<Vec<StoredRequest>> {
    let rows: Vec<RequestRow> = on!(conn, |c| sqlx::query_as(select_requests!(
        "WHERE kind = 'breakglass' AND reviewed_at IS NULL ORDER BY id LIMIT 50"
    ))
    .fetch_all(&mut *c)
    .await)
    .context("cannot list break-glass grants")?;
    rows.into_iter().map(StoredRequest::try_from).collect()
}

/// Pending requests on any of `resources`, oldest first (for an approver's App Home).
pub async fn pending_on(conn: &mut Conn, resources: &[&str]) -> anyhow::Result<Vec<StoredRequest>> {
    let mut out = Vec::new();
    for resource in resources {
        let rows: Vec<RequestRow> = on!(conn, |c| sqlx::query_as(select_requests!(
            "WHERE resource = $1 AND state = 'pending' ORDER BY id LIMIT 50"
        ))
        .bind(resource)
        .fetch_all(&mut *c)
        .await)
        .context("cannot list pending requests")?;
        for row in rows {
            out.push(StoredRequest::try_from(row)?);
        }
    }
    out.sort_by_key(|r| r.request.id);
    Ok(out)
}

/// All requests, newest first; `active_only` limits to grants that are active now.
pub async fn list(
    conn: &mut Conn,
    active_only: bool,
    limit: i64,
) -> anyhow::Result<Vec<StoredRequest>> {
    let rows: Vec<RequestRow> = if active_only {
        on!(conn, |c| sqlx::query_as(select_requests!(
            "WHERE state = 'active' ORDER BY id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&mut *c)
        .await)
    } else {
        on!(conn, |c| sqlx::query_as(select_requests!(
            "ORDER BY id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&mut *c)
        .await)
    }
    .context("cannot list requests")?;
    rows.into_iter().map(StoredRequest::try_from).collect()
}

/// How many requests were never torn down (`jit bench teardown`).
pub async fn count_not_revoked(conn: &mut Conn) -> sqlx::Result<i64> {
    on!(conn, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM requests WHERE revoked_at IS NULL"
    )
    .fetch_one(&mut *c)
    .await)
}

/// Every request's expiry and teardown time, as stored (`jit bench teardown`).
pub async fn expiries(conn: &mut Conn) -> sqlx::Result<Vec<(Option<String>, Option<String>)>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT expires_at, revoked_at FROM requests ORDER BY id"
    )
    .fetch_all(&mut *c)
    .await)
}

/// Counts requests by state (for metrics).
pub async fn count_by_state(conn: &mut Conn) -> sqlx::Result<Vec<(String, i64)>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT state, COUNT(*) FROM requests GROUP BY state"
    )
    .fetch_all(&mut *c)
    .await)
}

/// Records one approver's approval. `false`: this approver had already approved.
pub async fn add_approval(
    conn: &mut Conn,
    id: RequestId,
    approver: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = on!(conn, |c| sqlx::query(
        "INSERT INTO approvals (request_id, approver, decided_at) VALUES ($1, $2, $3) \
         ON CONFLICT (request_id, approver) DO NOTHING",
    )
    .bind(id.0)
    .bind(approver)
    .bind(format_time(at))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// Approvers so far, in the order they approved.
pub async fn approvals(conn: &mut Conn, id: RequestId) -> sqlx::Result<Vec<String>> {
    on!(conn, |c| sqlx::query_scalar(
        "SELECT approver FROM approvals WHERE request_id = $1 ORDER BY decided_at, approver",
    )
    .bind(id.0)
    .fetch_all(&mut *c)
    .await)
}

/// Outcome of a fenced update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Fenced {
    Applied,
    /// The row was not in the expected state: someone else changed it first.
    Lost,
}

fn fenced(rows: u64) -> Fenced {
    if rows == 1 {
        Fenced::Applied
    } else {
        Fenced::Lost
    }
}

/// A decision on a pending request: approved, denied, cancelled or timed out.
pub async fn decide(
    conn: &mut Conn,
    id: RequestId,
    to: State,
    decided_by: &str,
    note: Option<&str>,
    at: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let ended = to.is_final().then(|| format_time(at));
    let done = on!(conn, |c| sqlx::query(
        "UPDATE requests SET state = $1, decided_by = $2, decision_note = $3, decided_at = $4, \
         ended_at = COALESCE($5, ended_at) WHERE id = $6 AND state = 'pending'",
    )
    .bind(to.as_str())
    .bind(decided_by)
    .bind(note)
    .bind(format_time(at))
    .bind(ended)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(fenced(done))
}

/// Approved → active, once the provider has issued access.
pub async fn activate(
    conn: &mut Conn,
    id: RequestId,
    granted_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    grant_handle: &str,
    access_key: &str,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE requests SET state = 'active', granted_at = $1, expires_at = $2, grant_handle = $3, \
         access_key = $4 WHERE id = $5 AND state = 'approved'",
    )
    .bind(format_time(granted_at))
    .bind(format_time(expires_at))
    .bind(grant_handle)
    .bind(access_key)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(fenced(done))
}

/// Records the handle of access that was issued (or may have been) but could not be activated
/// (the request moved on meanwhile, or issuing failed in doubt), so the teardown knows what to
/// revoke. `false`: a handle was already recorded, and stays.
pub async fn record_handle(
    conn: &mut Conn,
    id: RequestId,
    grant_handle: &str,
    access_key: &str,
) -> sqlx::Result<bool> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE requests SET grant_handle = $1, access_key = $2 WHERE id = $3 AND grant_handle IS NULL",
    )
    .bind(grant_handle)
    .bind(access_key)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Records something a grant issued (see [`crate::providers::Issuance`]). Issuing the same
/// handle again keeps the later expiry.
pub async fn record_issuance(
    conn: &mut Conn,
    id: RequestId,
    handle: &str,
    issued_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> sqlx::Result<()> {
    // RFC 3339 text in one fixed format compares in time order.
    on!(conn, |c| {
        sqlx::query(
        "INSERT INTO issued (request_id, handle, issued_at, expires_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (request_id, handle) DO UPDATE SET \
           expires_at = CASE WHEN issued.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL \
                             WHEN excluded.expires_at > issued.expires_at THEN excluded.expires_at \
                             ELSE issued.expires_at END",
    )
    .bind(id.0)
    .bind(handle)
    .bind(format_time(issued_at))
    .bind(expires_at.map(format_time))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// Everything request `id` issued, oldest first.
pub async fn issuances(
    conn: &mut Conn,
    id: RequestId,
) -> anyhow::Result<Vec<crate::providers::Issuance>> {
    let rows: Vec<(String, Option<String>)> = on!(conn, |c| {
        sqlx::query_as(
        "SELECT handle, expires_at FROM issued WHERE request_id = $1 ORDER BY issued_at, handle",
    )
    .bind(id.0)
    .fetch_all(&mut *c)
    .await
    })
    .context("cannot load what a grant issued")?;
    rows.into_iter()
        .map(|(handle, expires_at)| {
            Ok(crate::providers::Issuance {
                handle,
                expires_at: time(expires_at)?,
            })
        })
        .collect()
}

/// Records the provider's baseline, once: a retried grant keeps the first (the earliest).
pub async fn record_baseline(conn: &mut Conn, id: RequestId, baseline: &str) -> sqlx::Result<()> {
    on!(conn, |c| sqlx::query(
        "UPDATE requests SET grant_baseline = $1 WHERE id = $2 AND grant_baseline IS NULL"
    )
    .bind(baseline)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// The baselines a revoke of request `id` needs: its own, and those of every grant that held the
/// same access (`access_key`) without a break up to this one's end. Overlapping grants of one
/// access are torn down once, by the last to end, so what was made under the first must count.
pub async fn access_baselines(
    conn: &mut Conn,
    id: RequestId,
    access_key: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    // (id, start, end, baseline); a grant still held has no end.
    let rows: Vec<(i64, String, Option<String>, Option<String>)> = on!(conn, |c| sqlx::query_as(
        "SELECT id, COALESCE(granted_at, decided_at, created_at), revoked_at, grant_baseline \
         FROM requests WHERE id = $1 OR ($2 IS NOT NULL AND access_key = $3)",
    )
    .bind(id.0)
    .bind(access_key)
    .bind(access_key)
    .fetch_all(&mut *c)
    .await)
    .context("cannot load the baselines of an access")?;
    let mut grants = Vec::new();
    for (row_id, start, end, baseline) in rows {
        grants.push((row_id, parse_time(&start)?, time(end)?, baseline));
    }
    let Some((mut since, until)) = grants.iter().find(|g| g.0 == id.0).map(|g| (g.1, g.2)) else {
        return Ok(Vec::new());
    };
    let mut chained = vec![id.0];
    // Grow the unbroken stretch backwards until no other grant reaches into it.
    loop {
        let before = chained.len();
        for (row_id, start, end, _) in &grants {
            let overlaps =
                end.is_none_or(|end| end >= since) && until.is_none_or(|until| *start <= until);
            if !chained.contains(row_id) && overlaps {
                chained.push(*row_id);
                since = since.min(*start);
            }
        }
        if chained.len() == before {
            break;
        }
    }
    let mut out: Vec<String> = grants
        .into_iter()
        .filter(|g| chained.contains(&g.0))
        .filter_map(|g| g.3)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The handle of the latest issue of an active grant (an extension that re-issued access).
pub async fn set_handle(conn: &mut Conn, id: RequestId, grant_handle: &str) -> sqlx::Result<()> {
    on!(conn, |c| sqlx::query(
        "UPDATE requests SET grant_handle = $1 WHERE id = $2"
    )
    .bind(grant_handle)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Moves a request from `from` to a final state `to` (expire, release, revoke, fail, apply).
pub async fn end(
    conn: &mut Conn,
    id: RequestId,
    from: State,
    to: State,
    at: DateTime<Utc>,
    note: Option<&str>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| sqlx::query(
        "UPDATE requests SET state = $1, ended_at = $2, failure = COALESCE($3, failure) \
         WHERE id = $4 AND state = $5",
    )
    .bind(to.as_str())
    .bind(format_time(at))
    .bind(note)
    .bind(id.0)
    .bind(from.as_str())
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(fenced(done))
}

/// Cancels an approved request whose scheduled start is still ahead at `now`. Fenced on both:
/// once the start has come, the grant job owns the request and a cancel changes nothing
/// (times are stored in one fixed-width UTC format, so they compare as text).
pub async fn cancel_scheduled(
    conn: &mut Conn,
    id: RequestId,
    now: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| sqlx::query(
        "UPDATE requests SET state = 'cancelled', ended_at = $1 \
         WHERE id = $2 AND state = 'approved' AND kind = 'access' AND start_at > $1",
    )
    .bind(format_time(now))
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(fenced(done))
}

/// Moves the expiry of an active grant.
pub async fn set_expiry(
    conn: &mut Conn,
    id: RequestId,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| sqlx::query(
        "UPDATE requests SET expires_at = $1 WHERE id = $2 AND state = 'active'"
    )
    .bind(format_time(expires_at))
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(fenced(done))
}

/// Marks the teardown as confirmed. Fenced so it happens once.
pub async fn mark_revoked(
    conn: &mut Conn,
    id: RequestId,
    at: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| sqlx::query(
        "UPDATE requests SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
    )
    .bind(format_time(at))
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(fenced(done))
}

/// Other grants that hold the same access and are not torn down yet (reference counting).
pub async fn other_holders(
    conn: &mut Conn,
    id: RequestId,
    access_key: &str,
) -> sqlx::Result<Vec<i64>> {
    on!(conn, |c| {
        sqlx::query_scalar(
        "SELECT id FROM requests WHERE access_key = $1 AND id <> $2 AND revoked_at IS NULL ORDER BY id",
    )
    .bind(access_key)
    .bind(id.0)
    .fetch_all(&mut *c)
    .await
    })
}

/// Remembers the approvers' message, once.
pub async fn set_approval_message(
    conn: &mut Conn,
    id: RequestId,
    channel: &SlackChannelId,
    ts: &str,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE requests SET approval_channel = $1, approval_ts = $2 WHERE id = $3 AND approval_ts IS NULL",
    )
    .bind(channel.as_str())
    .bind(ts)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(fenced(done))
}

/// Records that the first `steps` escalation steps of a pending request have run. `Lost`: it is
/// no longer pending, or as many steps (or more) are already recorded.
pub async fn escalate(conn: &mut Conn, id: RequestId, steps: u32) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE requests SET escalation_step = $1 WHERE id = $2 AND state = 'pending' AND escalation_step < $1",
    )
    .bind(steps as i64)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(fenced(done))
}

/// A copy of a request's approval message: a DM to an approver, or a post in a channel an
/// escalation step named.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct ApprovalCopy {
    pub channel: String,
    pub ts: String,
    /// The approver a DM copy went to; `None` for a channel copy.
    pub recipient: Option<String>,
}

/// Remembers a copy once Slack accepted it. `false`: it was already recorded.
pub async fn record_copy(
    conn: &mut Conn,
    id: RequestId,
    copy: &ApprovalCopy,
    at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = on!(conn, |c| sqlx::query(
        "INSERT INTO approval_copies (request_id, channel, ts, recipient, posted_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id, channel) DO NOTHING",
    )
    .bind(id.0)
    .bind(&copy.channel)
    .bind(&copy.ts)
    .bind(copy.recipient.as_deref())
    .bind(format_time(at))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// Every recorded copy of a request's approval message, oldest first.
pub async fn copies(conn: &mut Conn, id: RequestId) -> sqlx::Result<Vec<ApprovalCopy>> {
    on!(conn, |c| {
        sqlx::query_as(
        "SELECT channel, ts, recipient FROM approval_copies WHERE request_id = $1 ORDER BY posted_at, channel",
    )
    .bind(id.0)
    .fetch_all(&mut *c)
    .await
    })
}

/// The copy of a request's approval message in `channel`, if one was recorded.
pub async fn copy_in(
    conn: &mut Conn,
    id: RequestId,
    channel: &str,
) -> sqlx::Result<Option<ApprovalCopy>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT channel, ts, recipient FROM approval_copies WHERE request_id = $1 AND channel = $2",
    )
    .bind(id.0)
    .bind(channel)
    .fetch_optional(&mut *c)
    .await)
}

/// The copy of a request's approval message DMed to `recipient`, if one was recorded.
pub async fn copy_for(
    conn: &mut Conn,
    id: RequestId,
    recipient: &str,
) -> sqlx::Result<Option<ApprovalCopy>> {
    on!(conn, |c| {
        sqlx::query_as(
        "SELECT channel, ts, recipient FROM approval_copies WHERE request_id = $1 AND recipient = $2",
    )
    .bind(id.0)
    .bind(recipient)
    .fetch_optional(&mut *c)
    .await
    })
}

/// Remembers why an auto-approval rule did not approve a request waiting for approval.
pub async fn set_route_note(conn: &mut Conn, id: RequestId, note: &str) -> sqlx::Result<()> {
    on!(conn, |c| {
        sqlx::query("UPDATE requests SET route_note = $1 WHERE id = $2")
            .bind(note)
            .bind(id.0)
            .execute(&mut *c)
            .await
            .map(|_| ())
    })
}

/// Remembers why the approvers' message could never be posted, once. `Applied` the first time.
pub async fn set_delivery_failure(
    conn: &mut Conn,
    id: RequestId,
    code: &str,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| {
        sqlx::query(
        "UPDATE requests SET delivery_failure = $1 WHERE id = $2 AND delivery_failure IS NULL AND approval_ts IS NULL",
    )
    .bind(code)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(fenced(done))
}

/// Remembers the audit thread's root message, once.
pub async fn set_audit_root(conn: &mut Conn, id: RequestId, ts: &str) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| sqlx::query(
        "UPDATE requests SET audit_ts = $1 WHERE id = $2 AND audit_ts IS NULL"
    )
    .bind(ts)
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(fenced(done))
}

/// An admin's review of a break-glass grant, once.
pub async fn mark_reviewed(
    conn: &mut Conn,
    id: RequestId,
    by: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<Fenced> {
    let done = on!(conn, |c| sqlx::query(
        "UPDATE requests SET reviewed_by = $1, reviewed_at = $2 \
         WHERE id = $3 AND kind = 'breakglass' AND reviewed_at IS NULL",
    )
    .bind(by)
    .bind(format_time(at))
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(fenced(done))
}

/// How many requests (extensions included) each of `requesters` (keys, see
/// [`Requester::key`]) has waiting for approval. Requesters with none are left out.
pub async fn pending_counts(
    conn: &mut Conn,
    requesters: &[String],
) -> sqlx::Result<std::collections::HashMap<String, u32>> {
    if requesters.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(String, i64)> = on!(conn, |c, Db| {
        let mut query = sqlx::QueryBuilder::<Db>::new(
            "SELECT requester, COUNT(*) FROM requests WHERE state = 'pending' AND requester IN (",
        );
        super::push_list(&mut query, requesters.iter().map(String::as_str));
        query.push(") GROUP BY requester");
        query.build_query_as().fetch_all(&mut *c).await
    })?;
    Ok(rows
        .into_iter()
        .map(|(requester, n)| (requester, n.max(0) as u32))
        .collect())
}

/// The time extensions of `parent` that are waiting or approved (not yet applied) would add.
pub async fn open_extension_secs(conn: &mut Conn, parent: RequestId) -> sqlx::Result<u64> {
    let secs: i64 = on!(conn, |c| sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(duration_secs), 0) AS BIGINT) FROM requests \
         WHERE parent_id = $1 AND kind = 'extension' AND state IN ('pending', 'approved')",
    )
    .bind(parent.0)
    .fetch_one(&mut *c)
    .await)?;
    Ok(secs.max(0) as u64)
}

/// Pending extensions of a grant (cancelled when the grant ends).
pub async fn pending_extensions(conn: &mut Conn, parent: RequestId) -> sqlx::Result<Vec<i64>> {
    on!(conn, |c| {
        sqlx::query_scalar(
        "SELECT id FROM requests WHERE parent_id = $1 AND kind = 'extension' AND state IN ('pending', 'approved')",
    )
    .bind(parent.0)
    .fetch_all(&mut *c)
    .await
    })
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::store::{Durability, Store};

    /// Grants of one access: A (10:00-11:30) and B (11:00-12:30) overlap, C (12:00-…) overlaps
    /// B only, D (08:00-09:00) ended long before, E is another access. C's teardown needs the
    /// baselines of the whole unbroken stretch A-B-C, and nothing of D or E.
    #[tokio::test]
    async fn the_baselines_of_an_unbroken_stretch_of_one_access() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let store = Store::connect(&url, Durability::Normal).await.unwrap();
        store.migrate().await.unwrap();
        let at = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).unwrap();
        let requester = Requester::from_key("U0DEV").unwrap();
        let resource = ResourceId::parse("pg").unwrap();
        let mut tx = store.begin_write().await.unwrap();
        let mut ids = Vec::new();
        for (start, end, key, baseline) in [
            (at(10, 0), Some(at(11, 30)), "k", Some("pg-xid:100")),
            (at(11, 0), Some(at(12, 30)), "k", Some("pg-xid:200")),
            (at(12, 0), None, "k", Some("pg-xid:300")),
            (at(8, 0), Some(at(9, 0)), "k", Some("pg-xid:50")),
            (at(11, 0), None, "other", Some("pg-xid:10")),
            (at(11, 45), Some(at(11, 50)), "k", None),
        ] {
            let id = insert(
                &mut tx,
                &NewRequest {
                    kind: Kind::Access,
                    parent: None,
                    requester: &requester,
                    resource: &resource,
                    duration: GrantDuration::from_secs(3600),
                    justification: "test",
                    ticket: None,
                    approvals_required: 1,
                    created_at: start - Duration::minutes(1),
                    pending_until: None,
                    origin_channel: None,
                },
            )
            .await
            .unwrap();
            on!(&mut tx, |c| sqlx::query(
                "UPDATE requests SET granted_at = $1, revoked_at = $2, access_key = $3, grant_baseline = $4 WHERE id = $5",
            )
            .bind(format_time(start))
            .bind(end.map(format_time))
            .bind(key)
            .bind(baseline)
            .bind(id.0)
            .execute(&mut *c)
            .await
            .map(|_| ()))
            .unwrap();
            ids.push(id);
        }
        assert_eq!(
            access_baselines(&mut tx, ids[2], Some("k")).await.unwrap(),
            ["pg-xid:100", "pg-xid:200", "pg-xid:300"]
        );
        assert_eq!(
            access_baselines(&mut tx, ids[3], Some("k")).await.unwrap(),
            ["pg-xid:50"],
            "D's stretch is D alone"
        );
        assert_eq!(
            access_baselines(&mut tx, ids[4], Some("other"))
                .await
                .unwrap(),
            ["pg-xid:10"]
        );
        assert_eq!(
            access_baselines(&mut tx, ids[0], None).await.unwrap(),
            ["pg-xid:100"]
        );
        record_baseline(&mut tx, ids[5], "pg-xid:400")
            .await
            .unwrap();
        record_baseline(&mut tx, ids[5], "pg-xid:999")
            .await
            .unwrap();
        assert_eq!(
            get(&mut tx, ids[5])
                .await
                .unwrap()
                .unwrap()
                .grant_baseline
                .as_deref(),
            Some("pg-xid:400"),
            "the first baseline stays"
        );
    }
}
