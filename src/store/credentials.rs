//! Sealed credentials. The plaintext never reaches this module: callers seal and open.

use super::{Conn, format_time, on};
use crate::domain::ids::RequestId;
use chrono::{DateTime, Utc};

/// Stores (or replaces, after an extension re-issued them) the sealed credentials of a grant.
pub async fn put(
    conn: &mut Conn,
    id: RequestId,
    sealed: &[u8],
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    on!(conn, |c| {
        sqlx::query(
        "INSERT INTO credentials (request_id, sealed, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (request_id) DO UPDATE SET sealed = excluded.sealed, created_at = excluded.created_at",
    )
    .bind(id.0)
    .bind(sealed)
    .bind(format_time(at))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

pub async fn get(conn: &mut Conn, id: RequestId) -> sqlx::Result<Option<Vec<u8>>> {
    on!(conn, |c| sqlx::query_scalar(
        "SELECT sealed FROM credentials WHERE request_id = $1"
    )
    .bind(id.0)
    .fetch_optional(&mut *c)
    .await)
}

/// The most recently stored sealed credentials, with their request (`jit doctor` checks that the
/// encryption key opens them).
pub async fn newest(conn: &mut Conn) -> sqlx::Result<Option<(RequestId, Vec<u8>)>> {
    let row: Option<(i64, Vec<u8>)> = on!(conn, |c| {
        sqlx::query_as(
        "SELECT request_id, sealed FROM credentials ORDER BY created_at DESC, request_id DESC LIMIT 1",
    )
    .fetch_optional(&mut *c)
    .await
    })?;
    Ok(row.map(|(id, sealed)| (RequestId(id), sealed)))
}

/// Erases a grant's credentials. `true` if there were any.
pub async fn erase(conn: &mut Conn, id: RequestId) -> sqlx::Result<bool> {
    let done = on!(conn, |c| sqlx::query(
        "DELETE FROM credentials WHERE request_id = $1"
    )
    .bind(id.0)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done > 0)
}

/// The additional data that binds a ciphertext to its request.
pub fn aad(id: RequestId) -> Vec<u8> {
    format!("request:{}", id.0).into_bytes()
}
