//! The audit log table: append-only (triggers refuse UPDATE and DELETE) and hash-chained.
//!
//! Each row stores `hash = SHA-256(prev_hash ‖ canonical JSON of the row)`, where `prev_hash` is
//! the previous row's hash (64 zeros for the first row). Editing a row breaks its own hash;
//! deleting or reordering rows breaks the link to the next one. Rows are appended inside the
//! caller's write transaction, so an action and its audit event commit or fail together.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{FromRow, SqliteConnection};

use super::format_time;
use crate::domain::ids::RequestId;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit event as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub request_id: Option<i64>,
    pub actor: String,
    pub event: String,
    /// JSON object, as text.
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRow {
    pub fn detail_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.detail).unwrap_or(serde_json::Value::Null)
    }
}

/// The hash of a row, from its content and its predecessor's hash.
pub fn chain_hash(
    prev_hash: &str,
    seq: i64,
    at: &str,
    request_id: Option<i64>,
    actor: &str,
    event: &str,
    detail: &str,
) -> String {
    let canonical = serde_json::json!([seq, at, request_id, actor, event, detail]).to_string();
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// Appends one event; returns its sequence number.
pub async fn append(
    conn: &mut SqliteConnection,
    at: DateTime<Utc>,
    request_id: Option<RequestId>,
    actor: &str,
    event: &str,
    detail: &serde_json::Value,
) -> sqlx::Result<i64> {
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let (prev_seq, prev_hash) = last.unwrap_or((0, GENESIS.to_owned()));
    let seq = prev_seq + 1;
    let at = format_time(at);
    let detail = detail.to_string();
    let request_id = request_id.map(|r| r.0);
    let hash = chain_hash(&prev_hash, seq, &at, request_id, actor, event, &detail);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, request_id, actor, event, detail, prev_hash, hash) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(&at)
    .bind(request_id)
    .bind(actor)
    .bind(event)
    .bind(&detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    Ok(seq)
}

/// Appends several events in one statement, chained in order; returns their sequence numbers.
pub async fn append_many(
    conn: &mut SqliteConnection,
    at: DateTime<Utc>,
    events: &[(Option<RequestId>, String, String, serde_json::Value)],
) -> sqlx::Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let (mut seq, mut prev_hash) = last.unwrap_or((0, GENESIS.to_owned()));
    let at = format_time(at);
    let mut rows = Vec::with_capacity(events.len());
    for (request, actor, event, detail) in events {
        seq += 1;
        let detail = detail.to_string();
        let request_id = request.map(|r| r.0);
        let hash = chain_hash(&prev_hash, seq, &at, request_id, actor, event, &detail);
        rows.push((
            seq,
            request_id,
            actor,
            event,
            detail,
            std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        ));
    }
    let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO audit_log (seq, at, request_id, actor, event, detail, prev_hash, hash) ",
    );
    insert.push_values(
        &rows,
        |mut b, (seq, request_id, actor, event, detail, prev, hash)| {
            b.push_bind(*seq)
                .push_bind(&at)
                .push_bind(*request_id)
                .push_bind(actor.as_str())
                .push_bind(event.as_str())
                .push_bind(detail.as_str())
                .push_bind(prev.as_str())
                .push_bind(hash.as_str());
        },
    );
    insert.build().execute(&mut *conn).await?;
    Ok(rows.iter().map(|r| r.0).collect())
}

pub async fn get(conn: &mut SqliteConnection, seq: i64) -> sqlx::Result<Option<AuditRow>> {
    sqlx::query_as("SELECT * FROM audit_log WHERE seq = ?")
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await
}

pub async fn for_request(
    conn: &mut SqliteConnection,
    id: RequestId,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as("SELECT * FROM audit_log WHERE request_id = ? ORDER BY seq")
        .bind(id.0)
        .fetch_all(&mut *conn)
        .await
}

/// Rows after `after_seq`, in order, at most `limit` (for exports and verification in pages).
pub async fn page(
    conn: &mut SqliteConnection,
    after_seq: i64,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?")
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Intact {
        rows: u64,
        /// The last row's hash: record it elsewhere, and a later `verify` against it also
        /// detects rows removed from the end, which the chain alone cannot show.
        head: Option<String>,
    },
    Broken {
        rows_checked: u64,
        seq: i64,
        reason: String,
    },
}

/// Whether row `seq` still exists with a hash that starts with `hash` (at least 12 hex digits,
/// as the audit thread in Slack shows them). `Err` says what is wrong.
pub async fn check_anchor(
    conn: &mut SqliteConnection,
    seq: i64,
    hash: &str,
) -> sqlx::Result<Result<(), String>> {
    let Some(row) = get(conn, seq).await? else {
        return Ok(Err(format!(
            "row {seq} was recorded earlier but is gone (rows were removed from the end)"
        )));
    };
    if hash.len() < 12 || !row.hash.starts_with(&hash.to_ascii_lowercase()) {
        // Too short to mean anything, or a different row.
        return Ok(Err(format!(
            "row {seq} no longer has the hash recorded for it"
        )));
    }
    Ok(Ok(()))
}

/// Re-checks the whole chain in order; stops at the first bad row.
pub async fn verify(conn: &mut SqliteConnection) -> sqlx::Result<Verification> {
    let mut prev_hash = GENESIS.to_owned();
    let mut expected_seq = 1;
    let mut checked = 0u64;
    loop {
        let rows = page(conn, expected_seq - 1, 1000).await?;
        if rows.is_empty() {
            return Ok(Verification::Intact {
                rows: checked,
                head: (checked > 0).then_some(prev_hash),
            });
        }
        for row in rows {
            if row.seq != expected_seq {
                return Ok(Verification::Broken {
                    rows_checked: checked,
                    seq: row.seq,
                    reason: format!(
                        "row {expected_seq} is missing (the next row is {})",
                        row.seq
                    ),
                });
            }
            if row.prev_hash != prev_hash {
                return Ok(Verification::Broken {
                    rows_checked: checked,
                    seq: row.seq,
                    reason: "its link to the previous row does not match (a row was deleted, replaced or reordered)".into(),
                });
            }
            let recomputed = chain_hash(
                &row.prev_hash,
                row.seq,
                &row.at,
                row.request_id,
                &row.actor,
                &row.event,
                &row.detail,
            );
            if recomputed != row.hash {
                return Ok(Verification::Broken {
                    rows_checked: checked,
                    seq: row.seq,
                    reason: "its content does not match its hash (the row was edited)".into(),
                });
            }
            prev_hash = row.hash;
            expected_seq += 1;
            checked += 1;
        }
    }
}
