//! Slack deliveries already handled (see `crate::slack::deliveries`).

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::millis;
use crate::domain::ids::RequestId;

/// Records `key` as handled. `false`: it was already (a replay).
pub async fn claim(
    conn: &mut SqliteConnection,
    key: &str,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO slack_deliveries (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(millis(expires_at))
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records many deliveries that created requests, in one statement.
pub async fn claim_many(
    conn: &mut SqliteConnection,
    rows: &[(&str, DateTime<Utc>, RequestId)],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO slack_deliveries (key, expires_at, request_id) ",
    );
    insert.push_values(rows, |mut b, (key, expires, id)| {
        b.push_bind(*key)
            .push_bind(millis(*expires))
            .push_bind(id.0);
    });
    insert.build().execute(&mut *conn).await?;
    Ok(())
}

/// Which of `keys` were already handled, with the request each created (if it did).
pub async fn seen(
    conn: &mut SqliteConnection,
    keys: &[&str],
) -> sqlx::Result<Vec<(String, Option<i64>)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT key, request_id FROM slack_deliveries WHERE key IN (",
    );
    let mut list = query.separated(", ");
    for key in keys {
        list.push_bind(*key);
    }
    query.push(")");
    query.build_query_as().fetch_all(&mut *conn).await
}

/// The answer recorded for `key`, if the first delivery has one yet.
pub async fn answer(conn: &mut SqliteConnection, key: &str) -> sqlx::Result<Option<String>> {
    Ok(
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT answer FROM slack_deliveries WHERE key = ?",
        )
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
        .flatten(),
    )
}

pub async fn set_answer(conn: &mut SqliteConnection, key: &str, answer: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE slack_deliveries SET answer = ? WHERE key = ?")
        .bind(answer)
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Forgets deliveries that can no longer verify.
pub async fn prune(conn: &mut SqliteConnection, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM slack_deliveries WHERE expires_at < ?")
        .bind(millis(now))
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}
