//! Slack deliveries already handled (see `crate::slack::deliveries`).

use super::{Conn, millis, on};
use crate::domain::ids::RequestId;
use chrono::{DateTime, Utc};

/// Records `key` as handled. `false`: it was already (a replay).
pub async fn claim(conn: &mut Conn, key: &str, expires_at: DateTime<Utc>) -> sqlx::Result<bool> {
    let done = on!(conn, |c| {
        sqlx::query(
        "INSERT INTO slack_deliveries (key, expires_at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(key)
    .bind(millis(expires_at))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(done == 1)
}

/// Records many deliveries that created requests, in one statement.
pub async fn claim_many(
    conn: &mut Conn,
    rows: &[(&str, DateTime<Utc>, RequestId)],
) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    on!(conn, |c, Db| {
        let mut insert = sqlx::QueryBuilder::<Db>::new(
            "INSERT INTO slack_deliveries (key, expires_at, request_id) ",
        );
        insert.push_values(rows, |mut b, (key, expires, id)| {
            b.push_bind(*key)
                .push_bind(millis(*expires))
                .push_bind(id.0);
        });
        insert
            .build()
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The answer recorded for `key`, if the first delivery has one yet.
pub async fn answer(conn: &mut Conn, key: &str) -> sqlx::Result<Option<String>> {
    Ok(on!(conn, |c| sqlx::query_scalar::<_, Option<String>>(
        "SELECT answer FROM slack_deliveries WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *c)
    .await)?
    .flatten())
}

pub async fn set_answer(conn: &mut Conn, key: &str, answer: &str) -> sqlx::Result<()> {
    on!(conn, |c| sqlx::query(
        "UPDATE slack_deliveries SET answer = $1 WHERE key = $2"
    )
    .bind(answer)
    .bind(key)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Forgets deliveries that can no longer verify.
pub async fn prune(conn: &mut Conn, now: DateTime<Utc>) -> sqlx::Result<u64> {
    let done = on!(conn, |c| sqlx::query(
        "DELETE FROM slack_deliveries WHERE expires_at < $1"
    )
    .bind(millis(now))
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done)
}
