//! Slack's posting pace per channel, shared by every replica: the generic cell rate algorithm
//! (GCRA) with its state, the "theoretical arrival time" (`tat`), in the database. One
//! statement takes a slot or says how long to wait, so two replicas never post into one channel
//! faster than Slack allows.

use chrono::{DateTime, Utc};

use super::{Conn, millis, on};

/// Takes a posting slot in `channel` at `now`, where slots come every `interval` and up to
/// `burst` may be taken at once. `Err(wait)`: none is free; the next one is `wait` away.
pub async fn take(
    conn: &mut Conn,
    channel: &str,
    now: DateTime<Utc>,
    interval: std::time::Duration,
    burst: u32,
) -> sqlx::Result<Result<(), std::time::Duration>> {
    let now = millis(now);
    let step = interval.as_millis().max(1) as i64;
    let tolerance = step * i64::from(burst.max(1) - 1);
    // tat' = max(tat, now) + step, allowed while max(tat, now) - now <= tolerance.
    let taken: Option<i64> = on!(conn, |c| sqlx::query_scalar(
        "INSERT INTO slack_pace (channel, tat) VALUES ($1, $2 + $3) \
         ON CONFLICT (channel) DO UPDATE \
           SET tat = (CASE WHEN slack_pace.tat > $2 THEN slack_pace.tat ELSE $2 END) + $3 \
           WHERE (CASE WHEN slack_pace.tat > $2 THEN slack_pace.tat ELSE $2 END) - $2 <= $4 \
         RETURNING tat"
    )
    .bind(channel)
    .bind(now)
    .bind(step)
    .bind(tolerance)
    .fetch_optional(&mut *c)
    .await)?;
    if taken.is_some() {
        return Ok(Ok(()));
    }
    let tat: i64 = on!(conn, |c| sqlx::query_scalar(
        "SELECT tat FROM slack_pace WHERE channel = $1"
    )
    .bind(channel)
    .fetch_one(&mut *c)
    .await)?;
    let wait = (tat - tolerance - now).max(1) as u64;
    Ok(Err(std::time::Duration::from_millis(wait)))
}
