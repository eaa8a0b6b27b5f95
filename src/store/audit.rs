//! The audit log table: append-only (triggers refuse UPDATE and DELETE) and chained under a key.
//!
//! - **Keyed chain.** Each row stores `hash = HMAC-SHA-256(K, "jit-audit-row" ‖ prev_hash ‖
//!   canonical JSON of the row)`, where `prev_hash` is the previous row's hash and `K` the audit
//!   key ([`AuditKey`]), which is not in the database. Editing a row breaks its own MAC; deleting
//!   or reordering rows breaks the link to the next one; recomputing the chain after a change
//!   needs `K`.
//! - **Boundary.** Databases from before the keyed chain hold rows hashed with plain SHA-256
//!   (`hash = SHA-256(prev_hash ‖ canonical)`, [`legacy_hash`]). They stay as they are. The first
//!   time jit opens the chain with the key ([`open_chain`]) it verifies them, refuses a chain
//!   that does not verify, and records the boundary: the last unkeyed row's `seq` and hash
//!   (`head`), with a MAC under `K`. The first keyed row links to `head`. A database created
//!   keyed has its boundary at seq 0. [`verify`] checks the unkeyed rows as before, that they end
//!   in the recorded `head`, the boundary's MAC, and the keyed rows.
//! - **Time.** Rows are appended inside the caller's write transaction, which holds the
//!   database's write lock (`BEGIN IMMEDIATE`). A row's `at` is the clock read there, under the
//!   lock ([`WriteTx::now_under_lock`]), and never before its predecessor's (a clock stepped
//!   back) nor before the caller's own `now` (which tests may set ahead). No writer can commit a
//!   row between that reading and this row, so `at` never decreases with `seq`.
//! - **Anchors.** Heads posted to the audit channel are recorded in `audit_anchors`
//!   ([`record_anchor`]), so `jit audit verify --slack` knows which messages to compare with.
//!
//! Rows are appended inside the caller's write transaction, so an action and its audit event
//! commit or fail together; without the key (the chain was not opened) an append fails, and so
//! does the action.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::FromRow;

use super::{Conn, WriteTx, format_time, on, parse_time};
use crate::crypto::AuditKey;
use crate::domain::ids::RequestId;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A `--head` or anchor hash must have at least this many hex digits (128 bits).
pub const MIN_HEAD_DIGITS: usize = 32;

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

    fn canonical(&self) -> String {
        canonical(
            self.seq,
            &self.at,
            self.request_id,
            &self.actor,
            &self.event,
            &self.detail,
        )
    }
}

/// The canonical form of a row's content, which its hash covers.
pub fn canonical(
    seq: i64,
    at: &str,
    request_id: Option<i64>,
    actor: &str,
    event: &str,
    detail: &str,
) -> String {
    serde_json::json!([seq, at, request_id, actor, event, detail]).to_string()
}

/// The unkeyed hash of rows written before the chain was keyed (and of nothing since).
pub fn legacy_hash(prev_hash: &str, canonical: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

/// The keyed hash of a row: HMAC-SHA-256 under the audit key.
pub fn keyed_hash(key: &AuditKey, prev_hash: &str, canonical: &str) -> String {
    key.mac_hex(&[b"jit-audit-row", prev_hash.as_bytes(), canonical.as_bytes()])
}

fn boundary_mac(key: &AuditKey, seq: i64, head: &str, keyed_at: &str) -> String {
    key.mac_hex(&[
        b"jit-audit-boundary",
        seq.to_string().as_bytes(),
        head.as_bytes(),
        keyed_at.as_bytes(),
    ])
}

/// The key of a write transaction, or the error that fails the action closed.
fn key_of(tx: &WriteTx) -> sqlx::Result<AuditKey> {
    tx.audit_key().cloned().ok_or_else(|| {
        sqlx::Error::Configuration(
            "the audit chain is not open (no audit key): nothing can be recorded. Set JIT_AUDIT_KEY or JIT_ENCRYPTION_KEY"
                .into(),
        )
    })
}

/// The last row's seq, hash and time.
async fn last_row(conn: &mut Conn) -> sqlx::Result<Option<(i64, String, String)>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT seq, hash, at FROM audit_log ORDER BY seq DESC LIMIT 1"
    )
    .fetch_optional(&mut *c)
    .await)
}

/// The chain's newest row as read inside a write transaction ([`super::batch::read`]), for
/// [`append_many_after`] in the same transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Head {
    /// No row yet.
    #[default]
    Empty,
    At {
        seq: i64,
        hash: String,
        at: String,
    },
}

impl Head {
    fn from_row(row: Option<(i64, String, String)>) -> Head {
        match row {
            None => Head::Empty,
            Some((seq, hash, at)) => Head::At { seq, hash, at },
        }
    }
}

/// Where the next row goes: its seq, its `prev_hash`, and its time: the clock read now, under
/// the write lock, never before the caller's `at` or the last row's time.
async fn next_slot(
    tx: &mut WriteTx,
    at: DateTime<Utc>,
) -> sqlx::Result<(i64, String, DateTime<Utc>)> {
    let head = Head::from_row(last_row(tx).await?);
    Ok(slot_after(tx, head, at))
}

/// [`next_slot`] after a head read earlier in the same transaction.
fn slot_after(tx: &WriteTx, head: Head, at: DateTime<Utc>) -> (i64, String, DateTime<Utc>) {
    // The caller read `at` before it held the lock; another writer may have committed
    // meanwhile. So the time is read again here, where no one else can write.
    let at = at.max(tx.now_under_lock());
    match head {
        Head::Empty => (1, GENESIS.to_owned(), at),
        Head::At {
            seq,
            hash,
            at: last_at,
        } => {
            // A clock stepped back: time still never goes backwards along the chain.
            let floor = parse_time(&last_at).ok().unwrap_or(at);
            (seq + 1, hash, at.max(floor))
        }
    }
}

/// Appends one event; returns its sequence number.
pub async fn append(
    tx: &mut WriteTx,
    at: DateTime<Utc>,
    request_id: Option<RequestId>,
    actor: &str,
    event: &str,
    detail: &serde_json::Value,
) -> sqlx::Result<i64> {
    let key = key_of(tx)?;
    let (seq, prev_hash, at) = next_slot(tx, at).await?;
    let at = format_time(at);
    let detail = detail.to_string();
    let request_id = request_id.map(|r| r.0);
    let hash = keyed_hash(
        &key,
        &prev_hash,
        &canonical(seq, &at, request_id, actor, event, &detail),
    );
    on!(tx, |c| sqlx::query(
        "INSERT INTO audit_log (seq, at, request_id, actor, event, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(&at)
    .bind(request_id)
    .bind(actor)
    .bind(event)
    .bind(&detail)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(seq)
}

/// Appends several events in one statement, chained in order; returns their sequence numbers.
pub async fn append_many(
    tx: &mut WriteTx,
    at: DateTime<Utc>,
    events: &[(Option<RequestId>, String, String, serde_json::Value)],
) -> sqlx::Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let head = Head::from_row(last_row(tx).await?);
    append_many_after(tx, head, at, events).await
}

/// [`append_many`] after `head`, read earlier in this transaction ([`super::batch::read`]):
/// one round trip fewer. Should another row have been appended since, its `seq` is taken and
/// the insert fails; the chain never forks.
pub async fn append_many_after(
    tx: &mut WriteTx,
    head: Head,
    at: DateTime<Utc>,
    events: &[(Option<RequestId>, String, String, serde_json::Value)],
) -> sqlx::Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let key = key_of(tx)?;
    let (first, mut prev_hash, at) = slot_after(tx, head, at);
    let at = format_time(at);
    let mut rows = Vec::with_capacity(events.len());
    for (seq, (request, actor, event, detail)) in (first..).zip(events) {
        let detail = detail.to_string();
        let request_id = request.map(|r| r.0);
        let hash = keyed_hash(
            &key,
            &prev_hash,
            &canonical(seq, &at, request_id, actor, event, &detail),
        );
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
    on!(tx, |c, Db| {
        let mut insert = sqlx::QueryBuilder::<Db>::new(
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
        insert
            .build()
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(rows.iter().map(|r| r.0).collect())
}

pub async fn get(conn: &mut Conn, seq: i64) -> sqlx::Result<Option<AuditRow>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT * FROM audit_log WHERE seq = $1"
    )
    .bind(seq)
    .fetch_optional(&mut *c)
    .await)
}

/// The newest row's seq and hash: the chain's head.
pub async fn head(conn: &mut Conn) -> sqlx::Result<Option<(i64, String)>> {
    Ok(last_row(conn).await?.map(|(seq, hash, _)| (seq, hash)))
}

pub async fn for_request(conn: &mut Conn, id: RequestId) -> sqlx::Result<Vec<AuditRow>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT * FROM audit_log WHERE request_id = $1 ORDER BY seq"
    )
    .bind(id.0)
    .fetch_all(&mut *c)
    .await)
}

/// Rows after `after_seq`, in order, at most `limit` (for exports and verification in pages).
pub async fn page(conn: &mut Conn, after_seq: i64, limit: i64) -> sqlx::Result<Vec<AuditRow>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
    )
    .bind(after_seq)
    .bind(limit)
    .fetch_all(&mut *c)
    .await)
}

/// Where the unkeyed rows end and the keyed chain begins.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Boundary {
    /// The last unkeyed row (0: none).
    pub seq: i64,
    /// Its hash.
    pub head: String,
    pub keyed_at: String,
    pub mac: String,
}

pub async fn boundary(conn: &mut Conn) -> sqlx::Result<Option<Boundary>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT seq, head, keyed_at, mac FROM audit_chain_boundary WHERE id = 1"
    )
    .fetch_optional(&mut *c)
    .await)
}

/// What [`open_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainOpened {
    /// The boundary was there and matches the key.
    Keyed { boundary: i64 },
    /// First open: rows `1..=unkeyed` were verified as the old unkeyed chain and the boundary
    /// recorded after them (0 for a new database).
    Recorded { unkeyed: i64 },
}

/// Why the chain cannot be opened. Each text says what to do, and never shows the key.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(
        "the audit key does not match the key this database's audit chain was keyed with (its boundary record does not verify). Set JIT_AUDIT_KEY (or JIT_ENCRYPTION_KEY, if the key is derived from it) to the key in use when the chain was keyed; if the key is right, the boundary record was tampered with: run `jit audit verify`"
    )]
    WrongKey,
    #[error(
        "the audit log written before the keyed chain does not verify (row {seq}: {reason}); jit refuses to key a tampered chain. Investigate with `jit audit export`, and restore the database from a backup"
    )]
    Tampered { seq: i64, reason: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Checks `key` against the boundary; or, the first time, verifies the unkeyed rows (all of
/// them: none is keyed yet) and records the boundary after the last one. Runs in the caller's
/// write transaction, so two processes opening an old database at once record one boundary.
pub async fn open_chain(
    tx: &mut WriteTx,
    key: &AuditKey,
    now: DateTime<Utc>,
) -> Result<ChainOpened, ChainError> {
    if let Some(b) = boundary(tx).await? {
        if boundary_mac(key, b.seq, &b.head, &b.keyed_at) != b.mac {
            return Err(ChainError::WrongKey);
        }
        return Ok(ChainOpened::Keyed { boundary: b.seq });
    }
    let (seq, head) = match verify_legacy(tx, i64::MAX).await? {
        Walk::Broken { seq, reason, .. } => return Err(ChainError::Tampered { seq, reason }),
        Walk::Done { last, head, .. } => (last, head),
    };
    let keyed_at = format_time(now);
    on!(tx, |c| {
        sqlx::query(
        "INSERT INTO audit_chain_boundary (id, seq, head, keyed_at, mac) VALUES (1, $1, $2, $3, $4)",
    )
    .bind(seq)
    .bind(&head)
    .bind(&keyed_at)
    .bind(boundary_mac(key, seq, &head, &keyed_at))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(ChainOpened::Recorded { unkeyed: seq })
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Intact {
        rows: u64,
        /// The last row's hash: record it elsewhere (anchors do, in Slack), and a later check
        /// against it also detects rows removed from the end, which the chain alone cannot show.
        head: Option<String>,
    },
    Broken {
        rows_checked: u64,
        /// The first row that does not verify.
        seq: i64,
        reason: String,
    },
}

/// A walk along the chain: where it stopped.
enum Walk {
    Done { rows: u64, last: i64, head: String },
    Broken { rows: u64, seq: i64, reason: String },
}

/// How a row's hash is computed in the part of the chain being walked.
enum Scheme<'k> {
    Legacy,
    Keyed(&'k AuditKey),
}

/// Walks rows after `(start_seq, start_hash)` up to `until` (inclusive), checking order, links
/// and hashes; keyed rows also that time never goes backwards.
async fn walk(
    conn: &mut Conn,
    start_seq: i64,
    start_hash: &str,
    until: i64,
    scheme: Scheme<'_>,
) -> sqlx::Result<Walk> {
    let mut prev_hash = start_hash.to_owned();
    let mut prev_at: Option<String> = None;
    let mut expected_seq = start_seq + 1;
    let mut checked = 0u64;
    loop {
        let limit = (until - expected_seq + 1).clamp(0, 1000);
        let rows = if limit == 0 {
            Vec::new()
        } else {
            page(conn, expected_seq - 1, limit).await?
        };
        if rows.is_empty() {
            return Ok(Walk::Done {
                rows: checked,
                last: expected_seq - 1,
                head: prev_hash,
            });
        }
        for row in rows {
            let broken = |reason: String| Walk::Broken {
                rows: checked,
                seq: row.seq,
                reason,
            };
            if row.seq != expected_seq {
                return Ok(broken(format!(
                    "row {expected_seq} is missing (the next row is {})",
                    row.seq
                )));
            }
            if row.prev_hash != prev_hash {
                return Ok(broken(
                    "its link to the previous row does not match (a row was deleted, replaced or reordered)".into(),
                ));
            }
            match &scheme {
                Scheme::Legacy => {
                    if legacy_hash(&row.prev_hash, &row.canonical()) != row.hash {
                        return Ok(broken(
                            "its content does not match its hash (the row was edited)".into(),
                        ));
                    }
                }
                Scheme::Keyed(key) => {
                    if keyed_hash(key, &row.prev_hash, &row.canonical()) != row.hash {
                        return Ok(broken(
                            "its content does not match its keyed hash (the row was edited, or the chain was recomputed without the audit key)".into(),
                        ));
                    }
                    if prev_at.as_deref().is_some_and(|prev| {
                        matches!((parse_time(prev), parse_time(&row.at)), (Ok(p), Ok(a)) if a < p)
                    }) {
                        return Ok(broken(
                            "its time is before the previous row's (rows are out of order)".into(),
                        ));
                    }
                }
            }
            prev_at = Some(row.at);
            prev_hash = row.hash;
            expected_seq += 1;
            checked += 1;
        }
    }
}

/// The unkeyed chain from the first row up to `until`.
async fn verify_legacy(conn: &mut Conn, until: i64) -> sqlx::Result<Walk> {
    walk(conn, 0, GENESIS, until, Scheme::Legacy).await
}

/// Re-checks the whole chain in order under `key`; stops at the first bad row. This is the one
/// verification entry point (`jit audit verify`, the demo, `jit doctor`): the unkeyed rows up to
/// the boundary, that they end in the boundary's head, the boundary's MAC, then the keyed rows.
pub async fn verify(conn: &mut Conn, key: &AuditKey) -> sqlx::Result<Verification> {
    let Some(b) = boundary(conn).await? else {
        let first = page(conn, 0, 1).await?;
        return Ok(match first.first() {
            None => Verification::Intact {
                rows: 0,
                head: None,
            },
            Some(row) => Verification::Broken {
                rows_checked: 0,
                seq: row.seq,
                reason: "the chain has no keyed boundary record: it was never opened with the audit key (start `jit serve`, or run `jit migrate` with the key), or the record was deleted".into(),
            },
        });
    };
    let legacy = verify_legacy(conn, b.seq).await?;
    let unkeyed_rows = match legacy {
        Walk::Broken { rows, seq, reason } => {
            return Ok(Verification::Broken {
                rows_checked: rows,
                seq,
                reason,
            });
        }
        Walk::Done { rows, last, head } => {
            if last < b.seq {
                return Ok(Verification::Broken {
                    rows_checked: rows,
                    seq: last + 1,
                    reason: format!(
                        "row {} is missing: the unkeyed rows were recorded as ending at row {} when the chain was keyed",
                        last + 1,
                        b.seq
                    ),
                });
            }
            if head != b.head {
                return Ok(Verification::Broken {
                    rows_checked: rows.saturating_sub(1),
                    seq: b.seq,
                    reason: "the unkeyed rows no longer end in the head recorded when the chain was keyed (an unkeyed row was edited and the hashes recomputed)".into(),
                });
            }
            rows
        }
    };
    if boundary_mac(key, b.seq, &b.head, &b.keyed_at) != b.mac {
        return Ok(Verification::Broken {
            rows_checked: unkeyed_rows,
            seq: b.seq + 1,
            reason: format!(
                "the keyed chain's boundary record (after row {}) does not verify under the audit key: the wrong key (JIT_AUDIT_KEY, or JIT_ENCRYPTION_KEY it is derived from), or the record was forged",
                b.seq
            ),
        });
    }
    Ok(
        match walk(conn, b.seq, &b.head, i64::MAX, Scheme::Keyed(key)).await? {
            Walk::Broken { rows, seq, reason } => Verification::Broken {
                rows_checked: unkeyed_rows + rows,
                seq,
                reason,
            },
            Walk::Done { rows, head, .. } => {
                let total = unkeyed_rows + rows;
                Verification::Intact {
                    rows: total,
                    head: (total > 0).then_some(head),
                }
            }
        },
    )
}

/// Whether row `seq` still exists with a hash that starts with `hash` (at least
/// [`MIN_HEAD_DIGITS`] hex digits). `Err` says what is wrong.
pub async fn check_anchor(
    conn: &mut Conn,
    seq: i64,
    hash: &str,
) -> sqlx::Result<Result<(), String>> {
    let Some(row) = get(conn, seq).await? else {
        return Ok(Err(format!(
            "row {seq} was recorded earlier but is gone (rows were removed from the end)"
        )));
    };
    if hash.len() < MIN_HEAD_DIGITS || !row.hash.starts_with(&hash.to_ascii_lowercase()) {
        // Too short to mean anything, or a different row.
        return Ok(Err(format!(
            "row {seq} no longer has the hash recorded for it"
        )));
    }
    Ok(Ok(()))
}

/// A head jit posted to the audit channel.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct AnchorRow {
    pub seq: i64,
    pub hash: String,
    pub channel: String,
    pub ts: Option<String>,
    pub posted_at: String,
}

pub async fn record_anchor(
    conn: &mut Conn,
    seq: i64,
    hash: &str,
    channel: &str,
    ts: Option<&str>,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    on!(conn, |c| sqlx::query(
        "INSERT INTO audit_anchors (seq, hash, channel, ts, posted_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(seq)
    .bind(hash)
    .bind(channel)
    .bind(ts)
    .bind(format_time(now))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// The newest posted anchor.
pub async fn last_anchor(conn: &mut Conn) -> sqlx::Result<Option<AnchorRow>> {
    on!(conn, |c| {
        sqlx::query_as(
        "SELECT seq, hash, channel, ts, posted_at FROM audit_anchors ORDER BY seq DESC, id DESC LIMIT 1",
    )
    .fetch_optional(&mut *c)
    .await
    })
}

/// Every posted anchor, oldest first.
pub async fn anchors(conn: &mut Conn) -> sqlx::Result<Vec<AnchorRow>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT seq, hash, channel, ts, posted_at FROM audit_anchors ORDER BY id"
    )
    .fetch_all(&mut *c)
    .await)
}
