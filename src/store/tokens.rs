//! API tokens: stored as SHA-256 hashes, looked up by hash.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, SqliteConnection};

use super::format_time;

#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub identity: String,
    pub created_at: String,
    pub created_by: String,
    pub revoked_at: Option<String>,
}

pub async fn insert(
    conn: &mut SqliteConnection,
    identity: &str,
    token_hash: &str,
    created_by: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO api_tokens (identity, token_hash, created_at, created_by) VALUES (?, ?, ?, ?) RETURNING id",
    )
    .bind(identity)
    .bind(token_hash)
    .bind(format_time(at))
    .bind(created_by)
    .fetch_one(&mut *conn)
    .await
}

/// The live token with this hash, if any.
pub async fn find_live(
    conn: &mut SqliteConnection,
    token_hash: &str,
) -> sqlx::Result<Option<TokenRow>> {
    sqlx::query_as(
        "SELECT id, identity, created_at, created_by, revoked_at FROM api_tokens \
         WHERE token_hash = ? AND revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await
}

/// Revokes one token. `false`: no such live token.
pub async fn revoke(conn: &mut SqliteConnection, id: i64, at: DateTime<Utc>) -> sqlx::Result<bool> {
    let done =
        sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(format_time(at))
            .bind(id)
            .execute(&mut *conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn list(
    conn: &mut SqliteConnection,
    identity: Option<&str>,
) -> sqlx::Result<Vec<TokenRow>> {
    match identity {
        Some(name) => {
            sqlx::query_as(
                "SELECT id, identity, created_at, created_by, revoked_at FROM api_tokens WHERE identity = ? ORDER BY id",
            )
            .bind(name)
            .fetch_all(&mut *conn)
            .await
        }
        None => {
            sqlx::query_as("SELECT id, identity, created_at, created_by, revoked_at FROM api_tokens ORDER BY id")
                .fetch_all(&mut *conn)
                .await
        }
    }
}
