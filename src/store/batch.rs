//! The reads a group-commit batch of new requests makes under the write lock, in one statement:
//! which of its Slack deliveries were handled before, how many requests its requesters have
//! pending, and the audit chain's head. Each was a round trip of its own (about 0.1 ms each
//! under load, most of it the hand-off to SQLite's thread and back), in a cycle that every
//! acked request waits for.

use std::collections::HashMap;

use super::audit::Head;
use super::{Conn, on};

/// What [`read`] found.
#[derive(Debug, Default)]
pub struct BatchReads {
    /// Delivery keys handled before, with the request each created (if it did).
    pub seen: HashMap<String, Option<i64>>,
    /// Pending requests per requester (requesters with none are absent).
    pub pending: HashMap<String, u32>,
    /// The audit chain's head, for [`super::audit::append_many_after`] in the same transaction.
    pub head: Head,
}

/// Reads, in one statement, the deliveries among `keys` handled before, the pending counts of
/// `requesters`, and the audit chain's head. Call it inside the write transaction that appends
/// after that head: a row appended in between makes the append fail (its `seq` is taken), never
/// fork the chain.
pub async fn read(
    conn: &mut Conn,
    keys: &[&str],
    requesters: &[String],
) -> sqlx::Result<BatchReads> {
    let rows: Vec<(String, String, Option<i64>, Option<String>)> = on!(conn, |c, Db| {
        let mut query = sqlx::QueryBuilder::<Db>::new(
            "SELECT * FROM (SELECT 'audit' AS what, hash AS name, seq AS n, at AS extra \
             FROM audit_log ORDER BY seq DESC LIMIT 1) AS head",
        );
        if !keys.is_empty() {
            query.push(
                " UNION ALL SELECT 'seen', key, request_id, NULL FROM slack_deliveries WHERE key IN (",
            );
            super::push_list(&mut query, keys.iter().copied());
            query.push(")");
        }
        if !requesters.is_empty() {
            query.push(
                " UNION ALL SELECT 'pending', requester, COUNT(*), NULL FROM requests \
                 WHERE state = 'pending' AND requester IN (",
            );
            super::push_list(&mut query, requesters.iter().map(String::as_str));
            query.push(") GROUP BY requester");
        }
        query.build_query_as().fetch_all(&mut *c).await
    })?;
    let mut reads = BatchReads::default();
    for (what, name, n, extra) in rows {
        match what.as_str() {
            "audit" => {
                let (Some(seq), Some(at)) = (n, extra) else {
                    return Err(sqlx::Error::Protocol(
                        "the audit chain's head came back without its seq or time".into(),
                    ));
                };
                reads.head = Head::At {
                    seq,
                    hash: name,
                    at,
                };
            }
            "seen" => {
                reads.seen.insert(name, n);
            }
            "pending" => {
                reads.pending.insert(name, n.unwrap_or(0).max(0) as u32);
            }
            other => {
                return Err(sqlx::Error::Protocol(format!(
                    "a batch read returned a row of unknown kind `{other}`"
                )));
            }
        }
    }
    Ok(reads)
}
