//! Webhook cursors: the last audit event each webhook acknowledged.

use chrono::{DateTime, Utc};

use super::{Conn, millis, on};

/// The last audit seq `url` acknowledged, if it was ever run.
pub async fn cursor(conn: &mut Conn, url: &str) -> sqlx::Result<Option<i64>> {
    on!(conn, |c| sqlx::query_scalar(
        "SELECT seq FROM webhook_cursors WHERE url = $1"
    )
    .bind(url)
    .fetch_optional(&mut *c)
    .await)
}

/// Moves `url`'s cursor forward to `seq` (never back: a stale worker's late write changes
/// nothing), creating it if needed.
pub async fn advance(conn: &mut Conn, url: &str, seq: i64, now: DateTime<Utc>) -> sqlx::Result<()> {
    on!(conn, |c| sqlx::query(
        "INSERT INTO webhook_cursors (url, seq, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (url) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at \
         WHERE webhook_cursors.seq < excluded.seq"
    )
    .bind(url)
    .bind(seq)
    .bind(millis(now))
    .execute(&mut *c)
    .await
    .map(|_| ()))
}
