//! API tokens: stored as SHA-256 hashes, looked up by hash.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Conn, format_time, on};

#[derive(Debug, Clone, FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub identity: String,
    pub created_at: String,
    pub created_by: String,
    pub revoked_at: Option<String>,
}

pub async fn insert(
    conn: &mut Conn,
    identity: &str,
    token_hash: &str,
    created_by: &str,
    at: DateTime<Utc>,
) -> sqlx::Result<i64> {
    on!(conn, |c| {
        sqlx::query_scalar(
        "INSERT INTO api_tokens (identity, token_hash, created_at, created_by) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(identity)
    .bind(token_hash)
    .bind(format_time(at))
    .bind(created_by)
    .fetch_one(&mut *c)
    .await
    })
}

/// The live token with this hash, if any.
pub async fn find_live(conn: &mut Conn, token_hash: &str) -> sqlx::Result<Option<TokenRow>> {
    on!(conn, |c| sqlx::query_as(
        "SELECT id, identity, created_at, created_by, revoked_at FROM api_tokens \
         WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(&mut *c)
    .await)
}

/// Revokes one token. `false`: no such live token.
pub async fn revoke(conn: &mut Conn, id: i64, at: DateTime<Utc>) -> sqlx::Result<bool> {
    let done = on!(conn, |c| sqlx::query(
        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
    )
    .bind(format_time(at))
    .bind(id)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn list(conn: &mut Conn, identity: Option<&str>) -> sqlx::Result<Vec<TokenRow>> {
    match identity {
        Some(name) => {
            on!(conn, |c| {
                sqlx::query_as(
                "SELECT id, identity, created_at, created_by, revoked_at FROM api_tokens WHERE identity = $1 ORDER BY id",
            )
            .bind(name)
            .fetch_all(&mut *c)
            .await
            })
        }
        None => {
            on!(conn, |c| {
                sqlx::query_as("SELECT id, identity, created_at, created_by, revoked_at FROM api_tokens ORDER BY id")
                .fetch_all(&mut *c)
                .await
            })
        }
    }
}
