//! Slack messages, sent by queue jobs so that a Slack outage delays them and loses none.
//! A rate limit defers the job without counting an attempt; a fatal Slack error (bad channel,
//! missing scope) buries it at once and raises an alert, with Slack's explanation (its
//! json-pointers, never a response body) in the job's error.
//!
//! When the approvers' message itself is refused for good (`not_in_channel`, `is_archived`, …)
//! the request is marked (`delivery_failure`), the requester (or an identity's owners) is told
//! at once why and what to do, nothing more is posted in that channel for the request, and its
//! pending timeout says it never reached the approvers.

use crate::app::App;
use crate::domain::ids::{RequestId, SlackChannelId, SlackUserId};
use crate::jobs::Job;
use crate::queue::worker::{JobCtx, Outcome};
use crate::queue::{self, Placement};
use crate::slack::api::{PostTag, SlackError};
use crate::slack::{blocks, limits};
use crate::store::audit as audit_store;
use crate::store::requests::{self, Fenced, StoredRequest};

/// One message a job posts, and the tag that names it (the same on every attempt).
struct Post<'a> {
    channel: &'a str,
    thread: Option<&'a str>,
    text: &'a str,
    blocks: Option<&'a serde_json::Value>,
    broadcast: bool,
    tag: PostTag<'a>,
}

/// Posts a message once.
///
/// - **Never twice.** Every post carries its tag in Slack's message metadata. A job that ran
///   before (a retry after an unanswered call, or a job taken over from a replica that died
///   between Slack's answer and recording it) first looks for its tag in the channel or thread,
///   and if the message is there, takes its `ts` instead of posting again. A lookup that fails
///   does not stop the post: a rare duplicate beats a lost message.
/// - **Paced across replicas.** With `Settings::shared_pacing` a post first takes a slot of the
///   channel's pace in the database ([`crate::store::pace`]); none free defers the job.
///
/// `Ok(Err(_))` is Slack's (or the pace's) answer; `Err(_)` a database fault.
async fn post_once(
    app: &App,
    ctx: JobCtx,
    post: Post<'_>,
) -> anyhow::Result<Result<Option<String>, SlackError>> {
    if ctx.attempt > 1 {
        match app
            .slack
            .find_post(post.channel, post.thread, &post.tag)
            .await
        {
            Ok(Some(ts)) => {
                app.metrics.slack_post_found();
                tracing::info!(
                    key = post.tag.key,
                    channel = post.channel,
                    "found this job's earlier post in Slack; not posting it again"
                );
                return Ok(Ok(Some(ts)));
            }
            Ok(None) => {}
            Err(err @ SlackError::RateLimited { .. }) => return Ok(Err(err)),
            Err(err) => tracing::warn!(
                key = post.tag.key,
                channel = post.channel,
                error = %err,
                "cannot look for this job's earlier post; posting (it may show twice)"
            ),
        }
    }
    if app.settings.shared_pacing {
        let (interval, burst) = app.slack.pace();
        let mut tx = app.store.begin_write().await?;
        let slot =
            crate::store::pace::take(&mut tx, post.channel, app.clock.now(), interval, burst)
                .await?;
        tx.commit().await?;
        if let Err(wait) = slot {
            return Ok(Err(SlackError::RateLimited { retry_after: wait }));
        }
    }
    Ok(app
        .slack
        .post_message(
            post.channel,
            post.thread,
            post.text,
            post.blocks,
            post.broadcast,
            Some(&post.tag),
        )
        .await)
}

fn outcome(result: Result<(), SlackError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(SlackError::RateLimited { retry_after }) => Outcome::Defer(retry_after),
        Err(SlackError::Transient(e)) => Outcome::Retry(format!("Slack: {e}")),
        Err(err @ SlackError::Fatal { .. }) => Outcome::Fail(err.to_string()),
    }
}

/// Posts the approvers' message, or updates it to the request's current state.
pub async fn approval_message(app: &App, ctx: JobCtx, id: RequestId) -> anyhow::Result<Outcome> {
    let (stored, approvals) = {
        let mut conn = app.store.read().await?;
        let Some(stored) = requests::get(&mut conn, id).await? else {
            return Ok(Outcome::Done);
        };
        let approvals = requests::approvals(&mut conn, id).await?;
        (stored, approvals)
    };
    let request = &stored.request;
    let resource = app.policy.resource(request.resource.as_str());
    let msg = blocks::approval_message(
        request,
        resource,
        &app.policy,
        &approvals,
        stored.escalation_step,
        stored.route_note.as_deref(),
    );
    match (&request.approval_channel, &request.approval_ts) {
        (Some(channel), Some(ts)) => Ok(outcome(
            app.slack
                .update_message(channel.as_str(), ts, &msg.text, Some(&msg.blocks))
                .await,
        )),
        // The channel refused the first post for good; the requester knows. Nothing to update.
        _ if stored.delivery_failure.is_some() => Ok(Outcome::Done),
        // `notify = "dm"`: the approvers are asked in DMs only ([`approver_dms`]).
        _ if resource.is_some_and(|r| !r.approvers.notify.in_channel()) => Ok(Outcome::Done),
        _ => {
            let Some(resource) = resource else {
                return Ok(Outcome::Fail(format!(
                    "`{}` is not in the policy any more; cannot post request {id}",
                    request.resource
                )));
            };
            let Some(channel) = &resource.approvers.channel else {
                return Ok(Outcome::Done);
            };
            let key = format!("approval:{id}");
            let post = Post {
                channel: channel.as_str(),
                thread: None,
                text: &msg.text,
                blocks: Some(&msg.blocks),
                broadcast: false,
                tag: PostTag {
                    key: &key,
                    request: Some(id.0),
                },
            };
            let ts = match post_once(app, ctx, post).await? {
                Ok(ts) => ts,
                Err(SlackError::Fatal { code, details }) => {
                    undeliverable(app, &stored, channel, &code).await?;
                    let err = SlackError::Fatal { code, details };
                    return Ok(Outcome::Fail(format!(
                        "request {id} could not be posted to its approvers' channel {channel}: {err}. The requester was told."
                    )));
                }
                Err(e) => return Ok(outcome(Err(e))),
            };
            let Some(ts) = ts else {
                return Ok(Outcome::Done);
            };
            let mut tx = app.store.begin_write().await?;
            let _ = requests::set_approval_message(&mut tx, id, channel, &ts).await?;
            tx.commit().await?;
            Ok(Outcome::Done)
        }
    }
}

/// The approvers' channel refused a request's message for good: marks the request and tells
/// the requester (or the identity's owners) why and what to do, once.
async fn undeliverable(
    app: &App,
    stored: &StoredRequest,
    channel: &SlackChannelId,
    code: &str,
) -> anyhow::Result<()> {
    let request = &stored.request;
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    if requests::set_delivery_failure(&mut tx, request.id, code).await? == Fenced::Lost {
        return Ok(());
    }
    let msg = blocks::undeliverable_dm(request, channel, code);
    match request.requester.user() {
        Some(user) => {
            queue::enqueue(
                &mut tx,
                &Job::Dm {
                    user: user.clone(),
                    text: msg.text,
                    blocks: Some(msg.blocks),
                },
                Placement::dm(user),
                now,
                now,
            )
            .await?;
        }
        None => super::identity::notify_owners(&mut tx, app, request, msg, now).await?,
    }
    tx.commit().await?;
    app.waker.wake();
    tracing::warn!(
        request_id = request.id.0,
        channel = %channel,
        code,
        "the approvers' channel refused the request's message; the requester was told"
    );
    Ok(())
}

/// Reminds the approvers in the approval message's thread; for escalation step `step`, tells
/// the people it added that they may decide now.
pub async fn approval_nudge(
    app: &App,
    ctx: JobCtx,
    id: RequestId,
    step: Option<u32>,
) -> anyhow::Result<Outcome> {
    let stored = {
        let mut conn = app.store.read().await?;
        requests::get(&mut conn, id).await?
    };
    let Some(stored) = stored else {
        return Ok(Outcome::Done);
    };
    let request = &stored.request;
    if request.state != crate::domain::request::State::Pending {
        return Ok(Outcome::Done);
    }
    // A channel that refused the request's message would refuse the nudge too.
    if stored.delivery_failure.is_some() && request.approval_ts.is_none() {
        return Ok(Outcome::Done);
    }
    let resource = app.policy.resource(request.resource.as_str());
    let text = match (step, resource) {
        (Some(step), Some(resource)) => {
            let Some(text) = blocks::escalation_nudge(request, resource, step) else {
                return Ok(Outcome::Done);
            };
            text
        }
        _ => blocks::nudge(request, resource, stored.escalation_step),
    };
    let Some(channel) = request
        .approval_channel
        .clone()
        .or_else(|| resource.and_then(|r| r.approvers.channel.clone()))
    else {
        return Ok(Outcome::Done);
    };
    let key = format!("job:{}", ctx.id);
    let post = Post {
        channel: channel.as_str(),
        thread: request.approval_ts.as_deref(),
        text: &text,
        blocks: None,
        broadcast: false,
        tag: PostTag {
            key: &key,
            request: Some(id.0),
        },
    };
    Ok(outcome(post_once(app, ctx, post).await?.map(|_| ())))
}

/// The most approvers one request (or one escalation step) is sent to by DM: a large group
/// would otherwise fill Slack's pace with copies. Beyond it, the first ones by user id get the
/// DM, and a warning says so; everyone who may decide can still use the channel's message.
pub const MAX_DM_COPIES: usize = 50;

/// Posts one copy of the approval message (a DM to `user`, or a post in `channel`), or updates
/// the copy already posted to how the request now stands. A decided request is never posted
/// anew. Each copy is posted once (tagged, see [`post_once`]) and recorded with its channel and
/// `ts`; a decision committed while the copy was on its way is seen by the write recording it,
/// and the copy is brought up to date at once.
pub async fn approval_copy(
    app: &App,
    ctx: JobCtx,
    id: RequestId,
    user: Option<&SlackUserId>,
    channel: Option<&SlackChannelId>,
) -> anyhow::Result<Outcome> {
    let (stored, approvals, existing) = {
        let mut conn = app.store.read().await?;
        let Some(stored) = requests::get(&mut conn, id).await? else {
            return Ok(Outcome::Done);
        };
        let approvals = requests::approvals(&mut conn, id).await?;
        let existing = match (user, channel) {
            (Some(user), _) => requests::copy_for(&mut conn, id, user.as_str()).await?,
            (None, Some(channel)) => requests::copy_in(&mut conn, id, channel.as_str()).await?,
            (None, None) => return Ok(Outcome::Done),
        };
        (stored, approvals, existing)
    };
    let request = &stored.request;
    let resource = app.policy.resource(request.resource.as_str());
    let msg = blocks::approval_message(
        request,
        resource,
        &app.policy,
        &approvals,
        stored.escalation_step,
        stored.route_note.as_deref(),
    );
    if let Some(copy) = existing {
        return Ok(outcome(
            app.slack
                .update_message(&copy.channel, &copy.ts, &msg.text, Some(&msg.blocks))
                .await,
        ));
    }
    if request.state != crate::domain::request::State::Pending {
        return Ok(Outcome::Done);
    }
    let target = match (user, channel) {
        (Some(user), _) => match app.slack.open_dm(user.as_str()).await {
            Ok(c) => c,
            Err(e) => return Ok(outcome(Err(e))),
        },
        (None, Some(channel)) => channel.to_string(),
        (None, None) => return Ok(Outcome::Done),
    };
    let key = format!("approval-copy:{id}:{target}");
    let post = Post {
        channel: &target,
        thread: None,
        text: &msg.text,
        blocks: Some(&msg.blocks),
        broadcast: false,
        tag: PostTag {
            key: &key,
            request: Some(id.0),
        },
    };
    let ts = match post_once(app, ctx, post).await? {
        Ok(Some(ts)) => ts,
        Ok(None) => return Ok(Outcome::Done),
        Err(e) => return Ok(outcome(Err(e))),
    };
    let copy = requests::ApprovalCopy {
        channel: target,
        ts,
        recipient: user.map(|u| u.to_string()),
    };
    let mut tx = app.store.begin_write().await?;
    requests::record_copy(&mut tx, id, &copy, app.clock.now()).await?;
    let now = requests::get(&mut tx, id).await?;
    let approvals_now = requests::approvals(&mut tx, id).await?;
    tx.commit().await?;
    let Some(now) = now else {
        return Ok(Outcome::Done);
    };
    let changed = now.request.state != request.state
        || now.escalation_step != stored.escalation_step
        || approvals_now != approvals;
    if !changed {
        return Ok(Outcome::Done);
    }
    // Changed while this copy was on its way (perhaps decided): the update queued then did not
    // know this copy, so it is brought up to date here.
    let msg = blocks::approval_message(
        &now.request,
        resource,
        &app.policy,
        &approvals_now,
        now.escalation_step,
        now.route_note.as_deref(),
    );
    Ok(outcome(
        app.slack
            .update_message(&copy.channel, &copy.ts, &msg.text, Some(&msg.blocks))
            .await,
    ))
}

/// Queues the DM copies of a request: to its approvers (`step` 0), or to the people escalation
/// step `step` (1-based) added. Groups are resolved here, in a job (reading again any group jit
/// has not read lately), never in the ack path. Only people who may decide get a copy: not the
/// requester, not an identity's owners, not a guest reached through a group.
pub async fn approver_dms(app: &App, id: RequestId, step: u32) -> anyhow::Result<Outcome> {
    let stored = {
        let mut conn = app.store.read().await?;
        requests::get(&mut conn, id).await?
    };
    let Some(stored) = stored else {
        return Ok(Outcome::Done);
    };
    let request = &stored.request;
    if request.state != crate::domain::request::State::Pending {
        return Ok(Outcome::Done);
    }
    let Some(resource) = app.policy.resource(request.resource.as_str()) else {
        return Ok(Outcome::Done);
    };
    let (users, groups) = match step {
        0 => (
            resource.approvers.users.clone(),
            resource.approvers.groups.clone(),
        ),
        n => match resource
            .escalate
            .get(n as usize - 1)
            .and_then(|s| s.to.as_ref())
        {
            Some(to) => (to.users.clone(), to.groups.clone()),
            None => return Ok(Outcome::Done),
        },
    };
    for group in app.directory.stale(&groups) {
        app.directory.refresh(&group).await;
    }
    let mut people = users;
    for group in &groups {
        people.extend(app.directory.members(group));
    }
    people.sort();
    people.dedup();
    let steps_run = stored.escalation_step.max(step);
    people.retain(|u| {
        app.policy
            .may_decide(resource, &request.requester, u, steps_run, &app.directory)
            .is_ok()
    });
    if people.len() > MAX_DM_COPIES {
        tracing::warn!(
            request_id = id.0,
            approvers = people.len(),
            sent = MAX_DM_COPIES,
            "more approvers than jit sends DMs to for one request; the others use the channel's message"
        );
        people.truncate(MAX_DM_COPIES);
    }
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    for user in people {
        let (job, mut placement) =
            super::escalation::copy_job(app, request, Some(user.clone()), None);
        placement.unique_key = Some(crate::jobs::keys::approval_copy(id, user.as_str()));
        queue::enqueue(&mut tx, &job, placement, now, now).await?;
    }
    tx.commit().await?;
    app.waker.wake();
    Ok(Outcome::Done)
}

/// The most audit events one coalesced reply looks at (Slack's 50 blocks hold fewer anyway).
const MAX_COALESCED: u32 = 48;

/// Posts one audit event: as a reply in its request's thread (starting the thread if needed),
/// or at the top of the audit channel.
///
/// When the audit channel is backed up (at least `Settings::audit_coalesce_backlog` posts wait
/// in its chain), the request's later events waiting behind this one ride along in the same
/// reply, each with its number and hash digits, up to what one message holds; their jobs are
/// then done. Nothing is dropped: an event left out waits for the next reply. Alerts and
/// break-glass are never carried by another event's reply (they are posted on their own,
/// broadcast, with their buttons); one ends the run, and goes next, ahead of the other waiting
/// posts.
pub async fn audit_post(app: &App, ctx: JobCtx, seq: i64) -> anyhow::Result<Outcome> {
    let (row, stored, later) = {
        let mut conn = app.store.read().await?;
        let Some(row) = audit_store::get(&mut conn, seq).await? else {
            return Ok(Outcome::Fail(format!("audit event {seq} does not exist")));
        };
        let stored = match row.request_id {
            Some(id) => requests::get(&mut conn, RequestId(id)).await?,
            None => None,
        };
        let later = riding_along(app, &mut conn, &row).await?;
        (row, stored, later)
    };
    let channel = app.policy.audit_channel.clone();
    let later_rows: Vec<_> = later.iter().map(|(_, row)| row.clone()).collect();
    let (msg, held) = blocks::audit_replies(&row, &later_rows, &app.policy);
    // Jobs of the later events this reply holds.
    let carried: Vec<i64> = later.iter().take(held - 1).map(|(job, _)| *job).collect();
    let alert =
        crate::audit::AuditEvent::from_row(&row.event, &row.detail).is_some_and(|e| e.is_alert());
    let thread = match &stored {
        None => None,
        Some(stored) => match &stored.request.audit_ts {
            Some(ts) => Some(ts.clone()),
            None => {
                let root = blocks::audit_root(&stored.request);
                let key = format!("audit-root:{}", stored.request.id);
                let post = Post {
                    channel: channel.as_str(),
                    thread: None,
                    text: &root.text,
                    blocks: Some(&root.blocks),
                    broadcast: false,
                    tag: PostTag {
                        key: &key,
                        request: Some(stored.request.id.0),
                    },
                };
                let ts = match post_once(app, ctx, post).await? {
                    Ok(Some(ts)) => ts,
                    // Accepted, but no ts to thread under: replies go to the channel itself.
                    Ok(None) => {
                        let posted =
                            post_reply(app, ctx, &channel, None, &row, &msg, alert).await?;
                        return carried_done(app, posted, &carried).await;
                    }
                    Err(e) => return Ok(outcome(Err(e))),
                };
                let mut tx = app.store.begin_write().await?;
                let _ = requests::set_audit_root(&mut tx, stored.request.id, &ts).await?;
                tx.commit().await?;
                Some(ts)
            }
        },
    };
    let posted = post_reply(app, ctx, &channel, thread.as_deref(), &row, &msg, alert).await?;
    carried_done(app, posted, &carried).await
}

/// The later events of `row`'s request that may share its reply: only while the audit chain
/// is backed up, and only when `row` itself is not posted alone.
async fn riding_along(
    app: &App,
    conn: &mut crate::store::Conn,
    row: &audit_store::AuditRow,
) -> anyhow::Result<Vec<(i64, audit_store::AuditRow)>> {
    let Some(request) = row.request_id.map(RequestId) else {
        return Ok(Vec::new());
    };
    let threshold = app.settings.audit_coalesce_backlog;
    if blocks::posted_alone(row) || crate::jobs::audit_backlog(conn, threshold).await? < threshold {
        return Ok(Vec::new());
    }
    let mut later = Vec::new();
    for (job, seq) in crate::jobs::waiting_audit_posts(conn, request, MAX_COALESCED).await? {
        match audit_store::get(conn, seq).await? {
            Some(next) if !blocks::posted_alone(&next) => later.push((job, next)),
            // An alert goes on its own; a missing row fails its own job, visibly.
            _ => break,
        }
    }
    Ok(later)
}

/// After a reply that carried later events was posted, their jobs are done.
async fn carried_done(app: &App, posted: Outcome, carried: &[i64]) -> anyhow::Result<Outcome> {
    if posted != Outcome::Done || carried.is_empty() {
        return Ok(posted);
    }
    let mut tx = app.store.begin_write().await?;
    let done = crate::jobs::complete_carried(&mut tx, carried, app.clock.now()).await?;
    tx.commit().await?;
    app.metrics.audit_coalesced(done);
    tracing::info!(
        events = carried.len() + 1,
        "audit channel backed up: posted several events of one request in one reply"
    );
    Ok(Outcome::Done)
}

/// Posts the audit chain's head to the audit channel when rows were appended since the last
/// anchor, records the post, and comes back after the anchor interval (see `audit::anchor`).
pub async fn audit_anchor(app: &App, ctx: JobCtx) -> anyhow::Result<Outcome> {
    let now = app.clock.now();
    let next = now
        + chrono::Duration::from_std(app.settings.audit_anchor_interval)
            .unwrap_or(chrono::Duration::hours(1));
    let head = {
        let mut conn = app.store.read().await?;
        crate::audit::anchor::unanchored_head(&mut conn).await?
    };
    let Some((seq, hash)) = head else {
        return Ok(Outcome::RunAt(next));
    };
    let channel = app.policy.audit_channel.clone();
    let msg = blocks::audit_anchor(seq, &hash);
    let key = format!("anchor:{seq}");
    let post = Post {
        channel: channel.as_str(),
        thread: None,
        text: &msg.text,
        blocks: Some(&msg.blocks),
        broadcast: false,
        tag: PostTag {
            key: &key,
            request: None,
        },
    };
    // Every run of the anchor job is a new attempt to anchor this head: look for it first.
    let ctx = JobCtx {
        attempt: ctx.attempt.max(2),
        ..ctx
    };
    match post_once(app, ctx, post).await? {
        Ok(ts) => {
            let mut tx = app.store.begin_write().await?;
            audit_store::record_anchor(&mut tx, seq, &hash, channel.as_str(), ts.as_deref(), now)
                .await?;
            tx.commit().await?;
            tracing::info!(seq, channel = %channel, "audit chain head anchored in Slack");
            Ok(Outcome::RunAt(next))
        }
        Err(SlackError::RateLimited { retry_after }) => Ok(Outcome::Defer(retry_after)),
        // Retried with backoff, never buried: the job is the anchor schedule itself.
        Err(err) => {
            tracing::error!(seq, channel = %channel, error = %err, "cannot post the audit chain's head to the audit channel; retrying");
            Ok(Outcome::Retry(format!("Slack: {err}")))
        }
    }
}

async fn post_reply(
    app: &App,
    ctx: JobCtx,
    channel: &SlackChannelId,
    thread: Option<&str>,
    row: &audit_store::AuditRow,
    msg: &blocks::Msg,
    alert: bool,
) -> anyhow::Result<Outcome> {
    let key = format!("audit:{}", row.seq);
    let post = Post {
        channel: channel.as_str(),
        thread,
        text: &msg.text,
        blocks: Some(&msg.blocks),
        broadcast: alert && thread.is_some(),
        tag: PostTag {
            key: &key,
            request: row.request_id,
        },
    };
    Ok(outcome(post_once(app, ctx, post).await?.map(|_| ())))
}

pub async fn dm(
    app: &App,
    ctx: JobCtx,
    user: &SlackUserId,
    text: &str,
    blocks: Option<&serde_json::Value>,
) -> anyhow::Result<Outcome> {
    let channel = match app.slack.open_dm(user.as_str()).await {
        Ok(c) => c,
        Err(e) => return Ok(outcome(Err(e))),
    };
    let key = format!("job:{}", ctx.id);
    let text = limits::fallback(text);
    let post = Post {
        channel: &channel,
        thread: None,
        text: &text,
        blocks,
        broadcast: false,
        tag: PostTag {
            key: &key,
            request: None,
        },
    };
    Ok(outcome(post_once(app, ctx, post).await?.map(|_| ())))
}

pub async fn ephemeral(
    app: &App,
    channel: &SlackChannelId,
    user: &SlackUserId,
    text: &str,
) -> anyhow::Result<Outcome> {
    Ok(outcome(
        app.slack
            .post_ephemeral(channel.as_str(), user.as_str(), &limits::fallback(text))
            .await,
    ))
}

/// Publishes a user's App Home.
pub async fn home(app: &App, user: &SlackUserId) -> anyhow::Result<Outcome> {
    let view = crate::slack::home::render(app, user).await?;
    Ok(outcome(app.slack.publish_home(user.as_str(), &view).await))
}
