//! Deciding requests: approvals (one or several), denials, and approval by policy.
//!
//! Every decision is an update fenced on `state = 'pending'`, and each approver's approval is a
//! row keyed by (request, approver). Double clicks, concurrent clicks and Slack retries therefore
//! produce exactly one decision and one grant job.

use chrono::{DateTime, Utc};

use super::{HandlerError, HandlerResult, load, request::reload};
use crate::app::App;
use crate::audit::{self, AuditEvent, actor};
use crate::domain::ids::{RequestId, SlackUserId};
use crate::domain::policy::{DecisionRefusal, Resource};
use crate::domain::request::{Kind, Request, State};
use crate::jobs::{Job, keys};
use crate::queue::{self, Placement};
use crate::slack::blocks;
use crate::store::WriteTx;
use crate::store::requests::{self, Fenced, StoredRequest};

/// What a click on Approve did.
#[derive(Debug, Clone)]
pub enum ApproveOutcome {
    /// The last approval needed: the request is approved.
    Approved(Request),
    /// One more approval recorded; more are needed.
    Partial { count: u32, required: u32 },
    /// This approver had already approved.
    AlreadyApprovedByYou,
    /// Someone decided first.
    AlreadyDecided(Request),
    /// The request's pending time ran out (its timeout job may simply not have run yet): it can
    /// no longer be approved.
    Expired(Request),
}

/// Checks that `approver` may decide `stored`'s request (its approvers, and those its escalation
/// steps that have run added), refreshing group membership on a cache miss. A DM copy's button
/// and the channel's are the same click: only the clicker's Slack user id counts.
pub async fn authorize<'a>(
    app: &'a App,
    stored: &StoredRequest,
    approver: &SlackUserId,
) -> HandlerResult<&'a Resource> {
    let request = &stored.request;
    let steps_run = stored.escalation_step;
    let resource = app
        .policy
        .resource(request.resource.as_str())
        .ok_or_else(|| {
            HandlerError::user(format!(
                "`{}` is no longer in the policy, so request {} cannot be decided.",
                request.resource, request.id
            ))
        })?;
    let (_, groups) = resource.deciders(steps_run);
    app.directory.refresh_on_miss(approver, &groups).await;
    app.policy
        .may_decide(
            resource,
            &request.requester,
            approver,
            steps_run,
            &app.directory,
        )
        .map_err(|refusal| {
            let stale = app.directory.stale(&groups);
            if refusal == DecisionRefusal::NotAnApprover && !stale.is_empty() {
                return HandlerError::user(stale_groups_message(&stale, request.id));
            }
            HandlerError::user(format!("{refusal} (request {})", request.id))
        })?;
    Ok(resource)
}

/// Why a member of an approver (or admin) group may be refused: jit could not read the group
/// from Slack for too long, and fails closed.
pub fn stale_groups_message(stale: &[crate::domain::ids::SlackGroupId], id: RequestId) -> String {
    format!(
        "jit has not been able to read who is in {} from Slack for over {} minutes, so group membership grants no rights until it can (request {id}). Approvers listed by name can still decide; otherwise try again once Slack answers.",
        stale
            .iter()
            .map(crate::slack::text::group)
            .collect::<Vec<_>>()
            .join(", "),
        crate::slack::directory::MAX_STALENESS.as_secs() / 60
    )
}

pub async fn approve(
    app: &App,
    approver: &SlackUserId,
    id: RequestId,
) -> HandlerResult<ApproveOutcome> {
    let stored = load(app, id).await?;
    authorize(app, &stored, approver).await?;
    if stored.request.state != State::Pending {
        return Ok(ApproveOutcome::AlreadyDecided(stored.request));
    }
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let request = reload(&mut tx, id).await?;
    if request.state != State::Pending {
        return Ok(ApproveOutcome::AlreadyDecided(request));
    }
    if request.pending_until.is_some_and(|until| now >= until) {
        // Late: the timeout job is due but has not run. Bring it forward; approve nothing.
        crate::store::jobs::reschedule(&mut tx, &keys::pending_timeout(id), now, now).await?;
        tx.commit().await?;
        app.waker.wake();
        return Ok(ApproveOutcome::Expired(request));
    }
    if !requests::add_approval(&mut tx, id, approver.as_str(), now).await? {
        return Ok(ApproveOutcome::AlreadyApprovedByYou);
    }
    let approvals = requests::approvals(&mut tx, id).await?;
    let count = approvals.len() as u32;
    let outcome = if count >= request.approvals_required {
        let request = approve_as(&mut tx, app, request, &approvals.join(","), now, false).await?;
        ApproveOutcome::Approved(request)
    } else {
        audit::record(
            &mut tx,
            now,
            Some(request.parent.unwrap_or(id)),
            approver.as_str(),
            &AuditEvent::Approval {
                count,
                required: request.approvals_required,
                extension: request.parent.map(|_| id.0),
            },
        )
        .await?;
        super::escalation::refresh_messages(&mut tx, app, &request, now).await?;
        ApproveOutcome::Partial {
            count,
            required: request.approvals_required,
        }
    };
    tx.commit().await?;
    app.waker.wake();
    Ok(outcome)
}

/// Approves a pending request as `decided_by` (approvers joined by commas, `policy`, or the
/// break-glass requester) and enqueues what follows: the grant (or the extension), the update
/// of the approvers' message, and the requester's DM.
pub async fn approve_as(
    tx: &mut WriteTx,
    app: &App,
    request: Request,
    decided_by: &str,
    now: DateTime<Utc>,
    breakglass: bool,
) -> HandlerResult<Request> {
    approve_with(tx, app, request, decided_by, now, breakglass, None).await
}

/// [`approve_as`], naming the on-call schedule that got it approved by policy.
async fn approve_with(
    tx: &mut WriteTx,
    app: &App,
    request: Request,
    decided_by: &str,
    now: DateTime<Utc>,
    breakglass: bool,
    on_call: Option<&str>,
) -> HandlerResult<Request> {
    let id = request.id;
    if requests::decide(tx, id, State::Approved, decided_by, None, now).await? == Fenced::Lost {
        return Err(HandlerError::user(format!(
            "Request {id} was decided a moment ago by someone else."
        )));
    }
    let extension = request.parent.map(|_| id.0);
    let target = request.parent.unwrap_or(id);
    if decided_by == actor::POLICY {
        audit::record(
            tx,
            now,
            Some(target),
            actor::POLICY,
            &AuditEvent::AutoApproved {
                extension,
                on_call: on_call.map(str::to_owned),
            },
        )
        .await?;
    } else if !breakglass {
        audit::record(
            tx,
            now,
            Some(target),
            decided_by.split(',').next_back().unwrap_or(decided_by),
            &AuditEvent::Approved {
                approvers: decided_by.split(',').map(str::to_owned).collect(),
                extension,
            },
        )
        .await?;
    }
    let request = reload(tx, id).await?;
    enqueue_issue(tx, &request, now).await?;
    let posted_to_approvers = request.pending_until.is_some();
    if posted_to_approvers {
        super::escalation::refresh_messages(tx, app, &request, now).await?;
        if let Some(user) = request.requester.user() {
            let dm = blocks::decision_dm(&request);
            queue::enqueue(
                tx,
                &Job::Dm {
                    user: user.clone(),
                    text: dm.text,
                    blocks: Some(dm.blocks),
                },
                Placement::dm(user),
                now,
                now,
            )
            .await?;
        }
        let status = format!(
            "approved by {}",
            blocks::decision_line(&request).trim_start_matches(":white_check_mark: Approved by ")
        );
        super::identity::notify_owners(tx, app, &request, blocks::owner_dm(&request, &status), now)
            .await?;
        app.metrics
            .approval_latency((now - request.created_at).num_milliseconds() as f64 / 1000.0);
        app.metrics.request("approved");
    }
    tracing::info!(request_id = id.0, decided_by, "request approved");
    Ok(request)
}

/// Approval by the policy's auto-approve rule.
pub async fn approve_by_policy(
    tx: &mut WriteTx,
    app: &App,
    request: Request,
    on_call: Option<&str>,
    now: DateTime<Utc>,
) -> HandlerResult<Request> {
    approve_with(tx, app, request, actor::POLICY, now, false, on_call).await
}

/// The job that acts on an approval: issue the grant (at its scheduled start, if it has one
/// still ahead), or apply the extension.
async fn enqueue_issue(
    tx: &mut WriteTx,
    request: &Request,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let id = request.id;
    let (job, key) = match request.kind {
        Kind::Extension => (Job::Extend { extension: id }, keys::extend(id)),
        Kind::Access | Kind::Breakglass => (Job::Grant { request: id }, keys::grant(id)),
    };
    let run_at = request.starts_later(now).unwrap_or(now);
    queue::enqueue(tx, &job, Placement::access_of(request, key), run_at, now).await?;
    Ok(())
}

pub const MAX_REASON: usize = 1000;

pub async fn deny(
    app: &App,
    approver: &SlackUserId,
    id: RequestId,
    reason: &str,
) -> HandlerResult<Request> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(HandlerError::user(
            "Please give a reason for the requester.",
        ));
    }
    if reason.chars().count() > MAX_REASON {
        return Err(HandlerError::user(format!(
            "The reason is too long: at most {MAX_REASON} characters."
        )));
    }
    let stored = load(app, id).await?;
    authorize(app, &stored, approver).await?;
    let already = |request: &Request| {
        HandlerError::user(format!(
            "Request {id} is already {}; nothing was changed.",
            request.state.label()
        ))
    };
    if stored.request.state != State::Pending {
        return Err(already(&stored.request));
    }
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    if requests::decide(
        &mut tx,
        id,
        State::Denied,
        approver.as_str(),
        Some(reason),
        now,
    )
    .await?
        == Fenced::Lost
    {
        let request = reload(&mut tx, id).await?;
        return Err(already(&request));
    }
    let request = reload(&mut tx, id).await?;
    audit::record(
        &mut tx,
        now,
        Some(request.parent.unwrap_or(id)),
        approver.as_str(),
        &AuditEvent::Denied {
            reason: reason.to_owned(),
            extension: request.parent.map(|_| id.0),
        },
    )
    .await?;
    super::escalation::refresh_messages(&mut tx, app, &request, now).await?;
    if let Some(user) = request.requester.user() {
        let dm = blocks::decision_dm(&request);
        queue::enqueue(
            &mut tx,
            &Job::Dm {
                user: user.clone(),
                text: dm.text,
                blocks: Some(dm.blocks),
            },
            Placement::dm(user),
            now,
            now,
        )
        .await?;
    }
    super::identity::notify_owners(
        &mut tx,
        app,
        &request,
        blocks::owner_dm(
            &request,
            &format!(
                "denied by <@{approver}>: {}",
                crate::slack::text::escape_truncated(reason, 500)
            ),
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    app.waker.wake();
    app.metrics.request("denied");
    tracing::info!(request_id = id.0, approver = %approver, "request denied");
    Ok(request)
}
