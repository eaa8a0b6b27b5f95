//! Escalation of waiting requests, and the copies of the approval message (DMs to approvers,
//! posts in the channels an escalation step names).
//!
//! - **Steps are jobs.** A request waiting for approval gets one `nudge` job per escalation step
//!   of its resource (`Job::Nudge { step }`, unique per request and step), due at
//!   `created_at + after`. The default escalation is one reminder at half the pending timeout,
//!   the half-time nudge jit always had (half the time left before a scheduled start, when that
//!   comes first).
//! - **Recorded, then acted on.** A step that runs first raises `requests.escalation_step` in a
//!   write fenced on `state = 'pending'` and on the count being lower. From that commit on, the
//!   people it names may decide ([`crate::domain::policy::Resource::deciders`]): the click path
//!   reads the count with the request. A decided request, or a step already recorded (a retry,
//!   a later step that ran first after downtime), does nothing.
//! - **Every copy follows the request.** Whatever changes how the request looks (a decision, an
//!   approval of several, an escalation, the timeout) queues the update of the channel message
//!   and of every recorded copy ([`refresh_messages`]). A copy posted while the decision
//!   commits sees the decision in the write that records it, and updates itself at once.

use chrono::{DateTime, Utc};

use crate::app::App;
use crate::audit::{self, AuditEvent, actor};
use crate::domain::ids::{RequestId, SlackChannelId, SlackUserId};
use crate::domain::policy::Resource;
use crate::domain::request::{Request, State};
use crate::jobs::{Job, keys};
use crate::queue::worker::Outcome;
use crate::queue::{self, Placement};
use crate::store::WriteTx;
use crate::store::requests::{self, ApprovalCopy, Fenced};

/// The jobs a request that waits for approval starts with, beyond its approval message and its
/// pending timeout: one per escalation step, and the DMs to the approvers where the resource
/// asks for them. `until` is when the request stops waiting: its pending timeout, or a scheduled
/// start that comes first. The default step (the half-time reminder) comes at half of that
/// window; a step the policy names comes `after` the request, as written.
pub fn initial_jobs(
    resource: &Resource,
    id: RequestId,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<(Job, Placement, DateTime<Utc>)> {
    let mut jobs: Vec<(Job, Placement, DateTime<Utc>)> = resource
        .escalate
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let step_no = i as u32;
            (
                Job::Nudge {
                    request: id,
                    step: step_no,
                },
                Placement::unique(keys::nudge(id, step_no)),
                if resource.escalate_is_default {
                    now + (until - now) / 2
                } else {
                    now + step.after.to_chrono()
                },
            )
        })
        .collect();
    if resource.approvers.notify.by_dm() {
        jobs.push((
            Job::ApproverDms {
                request: id,
                step: 0,
            },
            Placement::none(),
            now,
        ));
    }
    jobs
}

/// Enqueues [`initial_jobs`] inside `tx`.
pub async fn schedule(
    tx: &mut WriteTx,
    resource: &Resource,
    id: RequestId,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> sqlx::Result<()> {
    for (job, placement, run_at) in initial_jobs(resource, id, now, until) {
        queue::enqueue(tx, &job, placement, run_at, now).await?;
    }
    Ok(())
}

/// Where the job posting or updating one copy goes: a DM's lane, or the channel's chain of
/// approval messages.
pub fn copy_job(
    app: &App,
    request: &Request,
    user: Option<SlackUserId>,
    channel: Option<SlackChannelId>,
) -> (Job, Placement) {
    let placement = match (&user, &channel) {
        (Some(user), _) => Placement::dm(user),
        (None, Some(channel)) => {
            Placement::approval(channel, &app.policy.audit_channel, &request.requester)
        }
        (None, None) => Placement::none(),
    };
    (
        Job::ApprovalCopy {
            request: request.id,
            user,
            channel,
        },
        placement,
    )
}

/// Queues the update of the approvers' message and of every recorded copy of it, so that each
/// shows the request as it now stands (and a decided one loses its buttons everywhere).
pub async fn refresh_messages(
    tx: &mut WriteTx,
    app: &App,
    request: &Request,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    queue::enqueue(
        tx,
        &Job::ApprovalMessage {
            request: request.id,
        },
        super::approvals_placement(app, request),
        now,
        now,
    )
    .await?;
    for copy in requests::copies(tx, request.id).await? {
        let (user, channel) = copy_target(&copy);
        let (job, placement) = copy_job(app, request, user, channel);
        queue::enqueue(tx, &job, placement, now, now).await?;
    }
    Ok(())
}

/// Who or where a recorded copy went.
fn copy_target(copy: &ApprovalCopy) -> (Option<SlackUserId>, Option<SlackChannelId>) {
    match copy
        .recipient
        .as_deref()
        .and_then(|u| SlackUserId::parse(u).ok())
    {
        Some(user) => (Some(user), None),
        None => (None, SlackChannelId::parse(&copy.channel).ok()),
    }
}

/// Runs escalation step `step` (0-based) of request `id`: see the module docs.
pub async fn run_step(app: &App, id: RequestId, step: u32) -> anyhow::Result<Outcome> {
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let Some(stored) = requests::get(&mut tx, id).await? else {
        return Ok(Outcome::Done);
    };
    let request = &stored.request;
    if request.state != State::Pending || request.pending_until.is_some_and(|u| now >= u) {
        return Ok(Outcome::Done);
    }
    let Some(resource) = app.policy.resource(request.resource.as_str()) else {
        return Ok(Outcome::Done);
    };
    // A step the policy no longer has (it changed since the job was queued) does nothing.
    if step as usize >= resource.escalate.len() {
        return Ok(Outcome::Done);
    }
    let before = stored.escalation_step;
    let reached = step + 1;
    if before >= reached || requests::escalate(&mut tx, id, reached).await? == Fenced::Lost {
        return Ok(Outcome::Done);
    }
    let target = request.parent.unwrap_or(id);
    let notify = resource.approvers.notify;
    let placement = super::approvals_placement(app, request);
    let mut reminder = false;
    // Normally one step; several when a later step ran first (catch-up after downtime).
    for (index, s) in resource
        .escalate
        .iter()
        .enumerate()
        .take(reached as usize)
        .skip(before as usize)
    {
        let number = index as u32 + 1;
        match &s.to {
            None => {
                audit::record(
                    &mut tx,
                    now,
                    Some(target),
                    actor::SYSTEM,
                    &AuditEvent::Nudged,
                )
                .await?;
                reminder = true;
            }
            Some(to) => {
                audit::record(
                    &mut tx,
                    now,
                    Some(target),
                    actor::SYSTEM,
                    &AuditEvent::Escalated {
                        step: number,
                        after: s.after.to_string(),
                        users: to.users.iter().map(|u| u.to_string()).collect(),
                        groups: to.groups.iter().map(|g| g.to_string()).collect(),
                        channel: to.channel.as_ref().map(|c| c.to_string()),
                        extension: request.parent.map(|_| id.0),
                    },
                )
                .await?;
                let names_people = !to.users.is_empty() || !to.groups.is_empty();
                if names_people && notify.in_channel() {
                    queue::enqueue(
                        &mut tx,
                        &Job::ApprovalNudge {
                            request: id,
                            step: Some(number),
                        },
                        placement.clone(),
                        now,
                        now,
                    )
                    .await?;
                }
                if names_people && notify.by_dm() {
                    queue::enqueue(
                        &mut tx,
                        &Job::ApproverDms {
                            request: id,
                            step: number,
                        },
                        Placement::none(),
                        now,
                        now,
                    )
                    .await?;
                }
                if let Some(channel) = &to.channel {
                    let (job, placement) = copy_job(app, request, None, Some(channel.clone()));
                    queue::enqueue(&mut tx, &job, placement, now, now).await?;
                }
            }
        }
    }
    if reminder {
        if notify.in_channel() {
            queue::enqueue(
                &mut tx,
                &Job::ApprovalNudge {
                    request: id,
                    step: None,
                },
                placement.clone(),
                now,
                now,
            )
            .await?;
        }
        if notify == crate::domain::policy::Notify::Dm {
            // No channel thread to remind in: each approver who has a DM copy and has not
            // approved yet gets a line under it.
            let approved = requests::approvals(&mut tx, id).await?;
            let resource = Some(resource);
            for copy in requests::copies(&mut tx, id).await? {
                let Some(user) = copy
                    .recipient
                    .as_deref()
                    .and_then(|u| SlackUserId::parse(u).ok())
                else {
                    continue;
                };
                if approved.iter().any(|a| a == user.as_str()) {
                    continue;
                }
                let text = crate::slack::blocks::nudge(request, resource, reached);
                queue::enqueue(
                    &mut tx,
                    &Job::Dm {
                        user: user.clone(),
                        text,
                        blocks: None,
                    },
                    Placement::dm(&user),
                    now,
                    now,
                )
                .await?;
            }
        }
    }
    let escalated = requests::get(&mut tx, id)
        .await?
        .map(|s| s.request)
        .unwrap_or_else(|| request.clone());
    refresh_messages(&mut tx, app, &escalated, now).await?;
    tx.commit().await?;
    app.waker.wake();
    tracing::info!(
        request_id = id.0,
        step = reached,
        "escalation step ran for a waiting request"
    );
    Ok(Outcome::Done)
}
