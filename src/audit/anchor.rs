//! Anchors: the audit chain's head, posted outside the database.
//!
//! The keyed chain stops anyone without the audit key from recomputing it after an edit, but
//! nothing inside the database can show that rows were cut off the end, or that someone who has
//! the key rewrote history. So jit posts the head (`seq` and the full 64-digit hash) to the audit
//! channel, as the message [`text`], where the bot's own messages cannot be edited by anyone
//! else:
//!
//! - **When.** One durable job (`slack.audit_anchor`, unique key [`JOB_KEY`]) runs at start and
//!   then every `JIT_AUDIT_ANCHOR_INTERVAL` (default 1 hour), and posts only when rows were
//!   appended since the last anchor. At shutdown, `jit serve` runs it at once and waits a few
//!   seconds for the post; if Slack is down, the job stays queued and posts at the next start.
//! - **Record.** Each post is recorded in `audit_anchors` (seq, hash, channel, ts). That record
//!   only says where to look: [`verify_slack`] reads the channel's history from the oldest
//!   recorded anchor on (the whole history if none is recorded), takes every anchor message the
//!   bot posted, and checks the chain against what Slack holds.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use crate::app::App;
use crate::jobs::Job;
use crate::queue::{self, Placement};
use crate::slack::api::{SlackApi, SlackError};
use crate::store::{self, Store, audit as audit_store};

/// The unique key of the one anchor job.
pub const JOB_KEY: &str = "audit_anchor";

/// The default of `JIT_AUDIT_ANCHOR_INTERVAL`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

const PREFIX: &str = "audit head ";

/// The anchor message's text, which [`verify_slack`] reads back: `audit head SEQ:HASH`.
pub fn text(seq: i64, hash: &str) -> String {
    format!("{PREFIX}{seq}:{hash}")
}

/// Reads an anchor message's text back: exactly `audit head SEQ:HASH` with a 64-digit hash.
pub fn parse(text: &str) -> Option<(i64, String)> {
    let (seq, hash) = text.trim().strip_prefix(PREFIX)?.split_once(':')?;
    let seq: i64 = seq.parse().ok().filter(|s| *s > 0)?;
    (hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| (seq, hash.to_owned()))
}

/// At start: runs the anchor job now (creating it if needed), so a head that moved since the
/// last anchor (a crash skipped the shutdown anchor) is posted; then it keeps itself scheduled.
pub async fn schedule(app: &App) -> anyhow::Result<()> {
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    if !store::jobs::reschedule(&mut tx, JOB_KEY, now, now).await? {
        queue::enqueue(
            &mut tx,
            &Job::AuditAnchor,
            Placement::unique(JOB_KEY.into()),
            now,
            now,
        )
        .await?;
    }
    tx.commit().await?;
    app.waker.wake();
    Ok(())
}

/// The head, if rows were appended since the last anchor (or none was posted yet).
pub async fn unanchored_head(conn: &mut crate::store::Conn) -> sqlx::Result<Option<(i64, String)>> {
    let Some((seq, hash)) = audit_store::head(conn).await? else {
        return Ok(None);
    };
    let last = audit_store::last_anchor(conn).await?;
    Ok(match last {
        Some(a) if a.seq == seq && a.hash == hash => None,
        _ => Some((seq, hash)),
    })
}

/// At shutdown: runs the anchor job now if the head is not anchored yet. Returns the head to
/// wait for (see [`wait_posted`]); the job is durable, so if Slack is down it posts at the next
/// start.
pub async fn request_now(app: &App) -> anyhow::Result<Option<(i64, String)>> {
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let Some(head) = unanchored_head(&mut tx).await? else {
        return Ok(None);
    };
    if !store::jobs::reschedule(&mut tx, JOB_KEY, now, now).await? {
        // Not queued: running right now (it posts this head or a newer one), or missing.
        queue::enqueue(
            &mut tx,
            &Job::AuditAnchor,
            Placement::unique(JOB_KEY.into()),
            now,
            now,
        )
        .await?;
    }
    tx.commit().await?;
    app.waker.wake();
    Ok(Some(head))
}

/// Waits until an anchor at or after `seq` is recorded, for at most `timeout`.
pub async fn wait_posted(store: &Store, seq: i64, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let posted = async {
            let mut conn = store.read().await?;
            anyhow::Ok(
                audit_store::last_anchor(&mut conn)
                    .await?
                    .is_some_and(|a| a.seq >= seq),
            )
        }
        .await
        .unwrap_or(false);
        if posted {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An anchor message found in the audit channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlackAnchor {
    pub channel: String,
    pub ts: String,
    pub seq: i64,
    pub hash: String,
}

impl SlackAnchor {
    /// When it was posted, from its ts (seconds since the epoch).
    pub fn posted(&self) -> String {
        self.ts
            .split('.')
            .next()
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
            .map(store::format_time)
            .unwrap_or_else(|| self.ts.clone())
    }
}

/// What [`verify_slack`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackCheck {
    Intact {
        /// Anchor messages compared with the chain.
        anchors: usize,
        newest: Option<SlackAnchor>,
    },
    Broken {
        /// The first row that does not match what Slack holds.
        seq: i64,
        reason: String,
    },
}

/// Every anchor message the bot posted in `channel` from `oldest` (a ts, inclusive) on.
async fn anchors_in(
    slack: &SlackApi,
    bot_user: &str,
    channel: &str,
    oldest: Option<&str>,
) -> anyhow::Result<Vec<SlackAnchor>> {
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    let mut transient = 0;
    loop {
        let page = match slack.history(channel, oldest, cursor.as_deref()).await {
            Ok(page) => page,
            Err(SlackError::RateLimited { retry_after }) => {
                tokio::time::sleep(retry_after).await;
                continue;
            }
            Err(SlackError::Transient(e)) if transient < 5 => {
                transient += 1;
                tracing::warn!(channel, error = %e, "reading the audit channel failed; retrying");
                tokio::time::sleep(Duration::from_secs(1 << transient)).await;
                continue;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot read the history of {channel} from Slack: {e}{}",
                    if e.code() == "missing_scope" {
                        " (the app needs the channels:history and groups:history scopes: see slack-app.yaml)"
                    } else if e.code() == "not_in_channel" || e.code() == "channel_not_found" {
                        " (invite the bot to the audit channel)"
                    } else {
                        ""
                    }
                ));
            }
        };
        // Only the bot's own messages: anyone in the channel can type an anchor-like line, and
        // nobody but the bot can edit the bot's messages.
        found.extend(page.messages.into_iter().filter_map(|m| {
            let (seq, hash) = parse(&m.text)?;
            (m.user.as_deref() == Some(bot_user)).then(|| SlackAnchor {
                channel: channel.to_owned(),
                ts: m.ts,
                seq,
                hash,
            })
        }));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(found),
        }
    }
}

/// Checks the chain against the anchors in Slack: every anchor recorded in the database must be
/// in the channel, saying the same; every anchor the bot posted there must name a row that
/// exists with that hash. This catches rows removed from the end (which the chain alone cannot
/// show) and history rewritten by someone holding the audit key. Run it after
/// [`audit_store::verify`].
pub async fn verify_slack(
    conn: &mut crate::store::Conn,
    slack: &SlackApi,
    audit_channel: &str,
) -> anyhow::Result<SlackCheck> {
    let bot_user = slack
        .bot_user_id()
        .await
        .context("cannot ask Slack who the bot is (auth.test); check SLACK_BOT_TOKEN")?;
    let recorded = audit_store::anchors(conn).await?;
    // Per channel: the oldest recorded ts to read from (None: the whole history).
    let mut channels: BTreeMap<String, Option<String>> = BTreeMap::new();
    channels.insert(audit_channel.to_owned(), None);
    for r in &recorded {
        let entry = channels.entry(r.channel.clone()).or_insert(None);
        if let Some(ts) = &r.ts {
            let older = entry.as_ref().is_none_or(|e| ts_value(ts) < ts_value(e));
            if older {
                *entry = Some(ts.clone());
            }
        }
    }
    // A channel with recorded anchors is read from its oldest; the current audit channel
    // without any, from its start.
    let mut in_slack = Vec::new();
    for (channel, oldest) in &channels {
        let has_recorded = recorded
            .iter()
            .any(|r| &r.channel == channel && r.ts.is_some());
        let from = if has_recorded {
            oldest.as_deref()
        } else {
            None
        };
        in_slack.extend(anchors_in(slack, &bot_user, channel, from).await?);
    }
    let mut failures: Vec<(i64, String)> = Vec::new();
    for r in &recorded {
        let Some(ts) = &r.ts else { continue };
        match in_slack.iter().find(|a| a.channel == r.channel && &a.ts == ts) {
            None => failures.push((
                r.seq,
                format!(
                    "the anchor of row {} recorded as posted in {} (ts {ts}) is not in the channel: the message was deleted in Slack, or the record was forged",
                    r.seq, r.channel
                ),
            )),
            Some(a) if a.seq != r.seq || a.hash != r.hash => failures.push((
                r.seq.min(a.seq),
                format!(
                    "the anchor posted in {} at {} says row {}, but the database records row {} with another hash for it (the anchors table was edited)",
                    a.channel,
                    a.posted(),
                    a.seq,
                    r.seq
                ),
            )),
            Some(_) => {}
        }
    }
    in_slack.sort_by(|a, b| {
        a.seq
            .cmp(&b.seq)
            .then(ts_value(&a.ts).cmp(&ts_value(&b.ts)))
    });
    let head = audit_store::head(conn).await?;
    let head_seq = head.as_ref().map(|h| h.0).unwrap_or(0);
    let mut previous_good = 0;
    for a in &in_slack {
        match audit_store::get(conn, a.seq).await? {
            None if a.seq > head_seq => failures.push((
                head_seq + 1,
                format!(
                    "the log ends at row {head_seq}, but row {} was anchored in {} at {}: rows were removed from the end",
                    a.seq,
                    a.channel,
                    a.posted()
                ),
            )),
            None => failures.push((
                a.seq,
                format!(
                    "row {}, anchored in {} at {}, is missing",
                    a.seq,
                    a.channel,
                    a.posted()
                ),
            )),
            Some(row) if row.hash != a.hash => failures.push((
                a.seq,
                format!(
                    "its hash differs from the anchor posted in {} at {}: a row after {previous_good} up to this one was changed and the chain recomputed",
                    a.channel,
                    a.posted()
                ),
            )),
            Some(_) => previous_good = a.seq,
        }
    }
    if let Some((seq, reason)) = failures.into_iter().min_by_key(|(seq, _)| *seq) {
        return Ok(SlackCheck::Broken { seq, reason });
    }
    Ok(SlackCheck::Intact {
        anchors: in_slack.len(),
        newest: in_slack.into_iter().max_by(|a, b| {
            a.seq
                .cmp(&b.seq)
                .then(ts_value(&a.ts).cmp(&ts_value(&b.ts)))
        }),
    })
}

/// A Slack ts (`SECONDS.MICROS`) as numbers, to order messages.
fn ts_value(ts: &str) -> (u64, u64) {
    let (secs, micros) = ts.split_once('.').unwrap_or((ts, "0"));
    (secs.parse().unwrap_or(0), micros.parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_texts_round_trip_and_nothing_else_parses() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(text(172, hash), format!("audit head 172:{hash}"));
        assert_eq!(parse(&text(172, hash)), Some((172, hash.to_owned())));
        for bad in [
            format!("audit head 0:{hash}"),
            format!("audit head -1:{hash}"),
            format!("audit head 172:{}", &hash[..63]),
            format!("audit head 172:{}", hash.to_uppercase()),
            format!("audit head 172:{hash}0"),
            format!("head 172:{hash}"),
            "audit head 172".to_owned(),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
