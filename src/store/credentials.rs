//! Sealed credentials. The plaintext never reaches this module: callers seal and open.

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::format_time;
use crate::domain::ids::RequestId;

/// Stores (or replaces, after an extension re-issued them) the sealed credentials of a grant.
pub async fn put(
    conn: &mut SqliteConnection,
    id: RequestId,
    sealed: &[u8],
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO credentials (request_id, sealed, created_at) VALUES (?, ?, ?) \
         ON CONFLICT (request_id) DO UPDATE SET sealed = excluded.sealed, created_at = excluded.created_at",
    )
    .bind(id.0)
    .bind(sealed)
    .bind(format_time(at))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut SqliteConnection, id: RequestId) -> sqlx::Result<Option<Vec<u8>>> {
    sqlx::query_scalar("SELECT sealed FROM credentials WHERE request_id = ?")
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await
}

/// The most recently stored sealed credentials, with their request (`jit doctor` checks that the
/// encryption key opens them).
pub async fn newest(conn: &mut SqliteConnection) -> sqlx::Result<Option<(RequestId, Vec<u8>)>> {
    let row: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT request_id, sealed FROM credentials ORDER BY created_at DESC, request_id DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(id, sealed)| (RequestId(id), sealed)))
}

/// Erases a grant's credentials. `true` if there were any.
pub async fn erase(conn: &mut SqliteConnection, id: RequestId) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM credentials WHERE request_id = ?")
        .bind(id.0)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The additional data that binds a ciphertext to its request.
pub fn aad(id: RequestId) -> Vec<u8> {
    format!("request:{}", id.0).into_bytes()
}
