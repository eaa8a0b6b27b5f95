//! Asking for access: submit, cancel, list, explain, extend and break-glass.

use chrono::{DateTime, Utc};

use super::{HandlerError, HandlerResult, Limit, decision, load};
use crate::app::App;
use crate::audit::{self, AuditEvent};
use crate::domain::duration::GrantDuration;
use crate::domain::ids::{RequestId, SlackChannelId, SlackUserId};
use crate::domain::policy::{Refusal, Requester, Resource, Route, RuleBreach};
use crate::domain::request::{Kind, Request, State};
use crate::jobs::{Job, keys};
use crate::queue::{self, Placement};
use crate::slack::blocks;
use crate::store::WriteTx;
use crate::store::requests::{self, NewRequest, StoredRequest};

pub const MAX_JUSTIFICATION: usize = 2000;
pub const MAX_TICKET: usize = 200;

/// Where a request came from, for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Slack,
    Api,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Slack => "slack",
            Via::Api => "api",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Submission<'a> {
    pub requester: Requester,
    pub resource: &'a str,
    /// `None`: the resource's default duration.
    pub duration: Option<GrantDuration>,
    pub justification: &'a str,
    pub ticket: Option<&'a str>,
    /// A scheduled start (`at …`, the form's picker, the API's `start_at`); `None`: at approval.
    pub start_at: Option<DateTime<Utc>>,
    pub via: Via,
    pub origin_channel: Option<SlackChannelId>,
    /// The Slack delivery that asked, recorded with the request: a replay stores nothing and
    /// answers with the request the first delivery created.
    pub delivery: Option<crate::slack::deliveries::Delivery>,
}

#[derive(Debug, Clone)]
pub struct Submitted {
    pub request: Request,
    pub resource: Resource,
    /// Approved by policy at once.
    pub auto: bool,
    /// The on-call schedule that got it approved by policy.
    pub on_call: Option<String>,
    /// Why an auto-approval rule could not tell (also in the approval message).
    pub route_note: Option<String>,
}

/// Field-level problems, so a modal can show each next to its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldError {
    Resource(String),
    Duration(String),
    Justification(String),
    Ticket(String),
    /// The justification breaks the resource's rule (`justification = { … }`).
    JustificationRule(RuleBreach),
    /// The ticket is missing or breaks the resource's rule (`ticket = { … }`).
    TicketRule(RuleBreach),
    /// The scheduled start has passed or is further ahead than `max_start_ahead`. `code` is the
    /// API's: `start_in_past` or `start_too_far_ahead`.
    Start {
        code: &'static str,
        message: String,
    },
}

impl FieldError {
    pub fn message(&self) -> &str {
        match self {
            FieldError::Resource(m)
            | FieldError::Duration(m)
            | FieldError::Justification(m)
            | FieldError::Ticket(m)
            | FieldError::Start { message: m, .. } => m,
            FieldError::JustificationRule(b) | FieldError::TicketRule(b) => &b.message,
        }
    }
}

/// Checks the free-text fields of a submission.
pub fn check_text(justification: &str, ticket: Option<&str>) -> Result<(), FieldError> {
    let justification = justification.trim();
    if justification.is_empty() {
        return Err(FieldError::Justification(
            "Please say why you need access: the justification is empty.".into(),
        ));
    }
    if justification.chars().count() > MAX_JUSTIFICATION {
        return Err(FieldError::Justification(format!(
            "The justification is too long: at most {MAX_JUSTIFICATION} characters."
        )));
    }
    if let Some(ticket) = ticket
        && (ticket.chars().count() > MAX_TICKET || ticket.contains('\n'))
    {
        return Err(FieldError::Ticket(format!(
            "The ticket must be one line of at most {MAX_TICKET} characters."
        )));
    }
    Ok(())
}

fn refusal_field(refusal: &Refusal) -> FieldError {
    match refusal {
        Refusal::UnknownResource { .. } | Refusal::NotAllowed { .. } | Refusal::NotNamed { .. } => {
            FieldError::Resource(refusal.to_string())
        }
        Refusal::TooLong { .. } | Refusal::LifetimeExceeded { .. } => {
            FieldError::Duration(refusal.to_string())
        }
        Refusal::StartPassed { .. } => FieldError::Start {
            code: "start_in_past",
            message: refusal.to_string(),
        },
        Refusal::StartTooFar { .. } => FieldError::Start {
            code: "start_too_far_ahead",
            message: refusal.to_string(),
        },
    }
}

/// Until when a new request waits for a decision: its resource's `pending_timeout`, and never
/// past its scheduled start (an approval that has not come by then expires the request).
pub fn pending_deadline(
    now: DateTime<Utc>,
    resource: &Resource,
    start_at: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let timeout = now + resource.pending_timeout.to_chrono();
    start_at.map_or(timeout, |start| start.min(timeout))
}

/// Whether `requester` may submit another request now (per-requester rate limit).
fn check_rate(app: &App, requester: &Requester) -> HandlerResult<()> {
    if app.request_limiter.check_key(&requester.key()).is_err() {
        app.metrics.request("rate_limited");
        return Err(HandlerError::Limited {
            limit: Limit::Rate,
            text: format!(
                "You are sending requests too quickly (at most {} a minute). Please wait a minute and try again.",
                app.policy.limits.requests_per_user_per_minute
            ),
        });
    }
    Ok(())
}

/// The refusal of a request that would wait for approval while its requester already has
/// `limits.max_pending_per_user` waiting: what the cap is and how to free a slot.
pub fn pending_refusal(app: &App, requester: &Requester) -> HandlerError {
    let max = app.policy.limits.max_pending_per_user;
    let requests = if max == 1 { "request" } else { "requests" };
    let text = match requester {
        Requester::User(_) => format!(
            "You already have {max} {requests} waiting for approval, the most one person may have at once. \
             To ask for another, withdraw one with `/jit cancel <id>` (`/jit list` shows them with their ids), \
             or wait until one is decided."
        ),
        Requester::Identity(name) => format!(
            "Identity `{name}` already has {max} {requests} waiting for approval, the most one requester may have at once. \
             Ask again once one of them is approved, denied or expired; `GET /api/v1/requests` lists them."
        ),
    };
    HandlerError::Limited {
        limit: Limit::Pending,
        text,
    }
}

/// Refuses one more request waiting for approval from `requester` once it has
/// `limits.max_pending_per_user` waiting. Counted inside the write transaction that would store
/// it, so concurrent submissions cannot pass the cap together.
async fn check_pending(tx: &mut WriteTx, app: &App, requester: &Requester) -> HandlerResult<()> {
    let key = requester.key();
    let counts = requests::pending_counts(tx, std::slice::from_ref(&key)).await?;
    if counts.get(&key).copied().unwrap_or(0) >= app.policy.limits.max_pending_per_user {
        return Err(pending_refusal(app, requester));
    }
    Ok(())
}

/// The requesters whose pending requests [`over_pending_cap`] counts: those of the batch's
/// submissions that would wait for approvers.
pub fn pending_cap_requesters(batch: &[&Prepared]) -> Vec<String> {
    let mut keys: Vec<String> = batch
        .iter()
        .filter(|p| !p.auto)
        .map(|p| p.requester.key())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// For each submission of a batch, whether it would exceed its requester's
/// `limits.max_pending_per_user`, counting the requests already waiting (`pending`, read inside
/// the batch's transaction for [`pending_cap_requesters`]) and those earlier in the batch.
/// Requests approved by policy at once never wait, so they are never refused.
pub fn over_pending_cap(
    app: &App,
    batch: &[&Prepared],
    mut pending: std::collections::HashMap<String, u32>,
) -> Vec<bool> {
    let max = app.policy.limits.max_pending_per_user;
    batch
        .iter()
        .map(|p| {
            if p.auto {
                return false;
            }
            let n = pending.entry(p.requester.key()).or_insert(0);
            if *n >= max {
                true
            } else {
                *n += 1;
                false
            }
        })
        .collect()
}

/// A submission that passed every check, ready to be stored.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub requester: Requester,
    pub resource: Resource,
    pub duration: GrantDuration,
    pub justification: String,
    pub ticket: Option<String>,
    pub origin_channel: Option<SlackChannelId>,
    pub start_at: Option<DateTime<Utc>>,
    pub auto: bool,
    /// The on-call schedule that got it approved by policy (`auto_approve.oncall`).
    pub on_call: Option<String>,
    /// For the approvers: why an auto-approval rule could not tell (PagerDuty unreachable…).
    pub route_note: Option<String>,
    pub via: Via,
    pub delivery: Option<crate::slack::deliveries::Delivery>,
}

/// Submits a request. Field errors come back separately so a form can place them.
///
/// The checks run here; the write goes through the group committer, which stores concurrent
/// submissions in one transaction and answers each after the commit.
pub async fn submit(app: &App, s: Submission<'_>) -> HandlerResult<Result<Submitted, FieldError>> {
    if let Err(field) = check_text(s.justification, s.ticket) {
        return Ok(Err(field));
    }
    let evaluation = match app
        .policy
        .evaluate(s.resource, &s.requester, s.duration, &app.directory)
    {
        Ok(e) => e,
        Err(refusal) => {
            app.metrics.request("refused");
            return Ok(Err(refusal_field(&refusal)));
        }
    };
    let resource = evaluation.resource;
    if let Some(start) = s.start_at
        && let Err(refusal) = app.policy.check_start(resource, app.clock.now(), start)
    {
        app.metrics.request("refused");
        return Ok(Err(refusal_field(&refusal)));
    }
    // A ticket given, or else the first word of the justification that looks like one.
    let ticket = s
        .ticket
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .or_else(|| resource.ticket.find_in(s.justification));
    if let Err(breach) = resource.justification.check(&resource.id, s.justification) {
        app.metrics.request("refused");
        return Ok(Err(FieldError::JustificationRule(breach)));
    }
    if let Err(breach) = resource.ticket.check(&resource.id, ticket.as_deref()) {
        app.metrics.request("refused");
        return Ok(Err(FieldError::TicketRule(breach)));
    }
    check_rate(app, &s.requester)?;
    let prepared = Prepared {
        requester: s.requester.clone(),
        resource: resource.clone(),
        duration: evaluation.duration,
        justification: s.justification.trim().to_owned(),
        ticket,
        origin_channel: s.origin_channel.clone(),
        start_at: s.start_at,
        auto: evaluation.route == Route::Auto,
        on_call: evaluation.on_call_schedule().map(str::to_owned),
        route_note: evaluation.on_call_note(),
        via: s.via,
        delivery: s.delivery,
    };
    let committer = app
        .services
        .get::<super::committer::Committer>()
        .ok_or_else(|| {
            HandlerError::Internal(anyhow::anyhow!("no request committer was started"))
        })?;
    let stored = match committer.store(prepared.clone()).await {
        Ok(stored) => stored,
        Err(err) => {
            if matches!(
                err,
                HandlerError::Limited {
                    limit: Limit::Pending,
                    ..
                }
            ) {
                app.metrics.request("too_many_pending");
            }
            return Err(err);
        }
    };
    let (resource, auto) = (prepared.resource, prepared.auto);
    let request = stored.request;
    if stored.replay {
        crate::slack::deliveries::replayed(app);
        return Ok(Ok(Submitted {
            auto: request.decided_by.as_deref() == Some(crate::audit::actor::POLICY),
            request,
            resource,
            on_call: None,
            route_note: None,
        }));
    }
    app.metrics
        .request(if auto { "auto_approved" } else { "submitted" });
    tracing::info!(
        request_id = request.id.0,
        resource = %resource.id,
        requester = %request.requester,
        duration = %request.duration,
        route = if auto { "auto" } else { "approval" },
        "request submitted"
    );
    Ok(Ok(Submitted {
        request,
        resource,
        auto,
        on_call: prepared.on_call,
        route_note: prepared.route_note,
    }))
}

/// Stores a prepared submission inside `tx`: the request, its audit event, its route (approval
/// or policy) and the owners' DM for identities. A request that would wait for approval is
/// refused first (before any write) if its requester is at `limits.max_pending_per_user`.
pub async fn store(
    tx: &mut WriteTx,
    app: &App,
    p: &Prepared,
    now: DateTime<Utc>,
) -> HandlerResult<Request> {
    if !p.auto {
        check_pending(tx, app, &p.requester).await?;
    }
    let resource = &p.resource;
    let request = insert(
        tx,
        NewRequest {
            kind: Kind::Access,
            parent: None,
            requester: &p.requester,
            resource: &resource.id,
            duration: p.duration,
            justification: &p.justification,
            ticket: p.ticket.as_deref(),
            approvals_required: resource.approvals_required,
            created_at: now,
            pending_until: (!p.auto).then(|| pending_deadline(now, resource, p.start_at)),
            origin_channel: p.origin_channel.as_ref(),
        },
        p.start_at,
        actor_of(&p.requester),
        p.via,
    )
    .await?;
    let how = How {
        auto: p.auto,
        on_call: p.on_call.as_deref(),
        note: p.route_note.as_deref(),
    };
    let request = route(tx, app, request, resource, how, now).await?;
    if matches!(request.requester, Requester::Identity(_)) {
        let status = if p.auto {
            "approved by policy".to_owned()
        } else {
            format!(
                "waiting for approval from {} {}",
                blocks::approvers_of(resource),
                blocks::where_asked(resource)
            )
        };
        super::identity::notify_owners(tx, app, &request, blocks::owner_dm(&request, &status), now)
            .await?;
    }
    Ok(request)
}

/// Stores many requests that go to approvers (people, not identities) with a few statements in
/// all: one insert for the requests, one for their audit events, one for their jobs. The result is
/// what [`store`] would give for each, in the same order.
///
/// The caller applies `limits.max_pending_per_user` first ([`over_pending_cap`]), and gives the
/// audit chain's head as read earlier in `tx` ([`crate::store::batch::read`]).
pub async fn store_for_approval(
    tx: &mut WriteTx,
    audit_channel: &SlackChannelId,
    items: &[&Prepared],
    head: crate::store::audit::Head,
    now: DateTime<Utc>,
) -> HandlerResult<Vec<Request>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let fields: Vec<(String, DateTime<Utc>)> = items
        .iter()
        .map(|p| {
            (
                p.requester.key(),
                pending_deadline(now, &p.resource, p.start_at),
            )
        })
        .collect();
    let new: Vec<crate::store::requests::NewRequest<'_>> = items
        .iter()
        .zip(&fields)
        .map(|(p, (_, until))| crate::store::requests::NewRequest {
            kind: Kind::Access,
            parent: None,
            requester: &p.requester,
            resource: &p.resource.id,
            duration: p.duration,
            justification: &p.justification,
            ticket: p.ticket.as_deref(),
            approvals_required: p.resource.approvals_required,
            created_at: now,
            pending_until: Some(*until),
            origin_channel: p.origin_channel.as_ref(),
        })
        .collect();
    let ids = crate::store::requests::insert_many(tx, &new).await?;
    if ids.len() != items.len() {
        return Err(anyhow::anyhow!(
            "inserted {} requests for {} submissions",
            ids.len(),
            items.len()
        )
        .into());
    }
    for (p, id) in items.iter().zip(&ids) {
        if let Some(start) = p.start_at {
            requests::set_start(tx, RequestId(*id), start).await?;
        }
    }
    let requests: Vec<Request> = items
        .iter()
        .zip(&ids)
        .zip(&fields)
        .map(|((p, id), (_, until))| Request {
            id: RequestId(*id),
            kind: Kind::Access,
            parent: None,
            requester: p.requester.clone(),
            resource: p.resource.id.clone(),
            duration: p.duration,
            justification: p.justification.clone(),
            ticket: p.ticket.clone(),
            state: State::Pending,
            approvals_required: p.resource.approvals_required,
            created_at: now,
            start_at: p.start_at,
            pending_until: Some(*until),
            decided_at: None,
            decided_by: None,
            decision_note: None,
            granted_at: None,
            expires_at: None,
            ended_at: None,
            revoked_at: None,
            failure: None,
            approval_channel: None,
            approval_ts: None,
            audit_ts: None,
            reviewed_by: None,
            reviewed_at: None,
        })
        .collect();
    let events: Vec<_> = requests
        .iter()
        .zip(items)
        .map(|(r, p)| {
            let event = AuditEvent::Requested {
                kind: r.kind.as_str().into(),
                resource: r.resource.to_string(),
                duration: r.duration.to_string(),
                justification: r.justification.clone(),
                ticket: r.ticket.clone(),
                via: p.via.as_str().into(),
                extension: None,
                start_at: r.start_at.map(crate::store::format_time),
            };
            (
                Some(r.id),
                actor_of(&r.requester),
                event.name(),
                event.detail(),
            )
        })
        .collect();
    let seqs = crate::store::audit::append_many_after(tx, head, now, &events).await?;
    let mut jobs = Vec::with_capacity(requests.len() * 4);
    for (seq, (r, p)) in seqs.iter().zip(requests.iter().zip(items)) {
        let until = r.pending_until.unwrap_or(now);
        jobs.push((
            Job::AuditPost { seq: *seq },
            Placement::audit_event(Some(r.id), false),
            now,
        ));
        jobs.push((
            Job::ApprovalMessage { request: r.id },
            match &p.resource.approvers.channel {
                Some(channel) => Placement::approval(channel, audit_channel, &r.requester),
                None => Placement::none(),
            },
            now,
        ));
        jobs.extend(super::escalation::initial_jobs(
            &p.resource,
            r.id,
            now,
            until,
        ));
        jobs.push((
            Job::PendingTimeout { request: r.id },
            Placement::unique(keys::pending_timeout(r.id)),
            until,
        ));
    }
    queue::enqueue_many(tx, jobs, now).await?;
    for (r, p) in requests.iter().zip(items) {
        if let Some(note) = &p.route_note {
            requests::set_route_note(tx, r.id, note).await?;
        }
    }
    Ok(requests)
}

pub fn actor_of(requester: &Requester) -> String {
    requester.key()
}

/// Inserts a request (with its scheduled start, if any) and its `requested` audit event;
/// returns it as stored.
async fn insert(
    tx: &mut WriteTx,
    new: NewRequest<'_>,
    start_at: Option<DateTime<Utc>>,
    actor: String,
    via: Via,
) -> HandlerResult<Request> {
    let id = requests::insert(tx, &new).await?;
    if let Some(start) = start_at {
        requests::set_start(tx, id, start).await?;
    }
    let request = Request {
        id,
        kind: new.kind,
        parent: new.parent,
        requester: new.requester.clone(),
        resource: new.resource.clone(),
        duration: new.duration,
        justification: new.justification.to_owned(),
        ticket: new.ticket.map(str::to_owned),
        state: State::Pending,
        approvals_required: new.approvals_required,
        created_at: new.created_at,
        start_at,
        pending_until: new.pending_until,
        decided_at: None,
        decided_by: None,
        decision_note: None,
        granted_at: None,
        expires_at: None,
        ended_at: None,
        revoked_at: None,
        failure: None,
        approval_channel: None,
        approval_ts: None,
        audit_ts: None,
        reviewed_by: None,
        reviewed_at: None,
    };
    audit::record(
        tx,
        new.created_at,
        Some(request.parent.unwrap_or(id)),
        &actor,
        &AuditEvent::Requested {
            kind: request.kind.as_str().into(),
            resource: request.resource.to_string(),
            duration: request.duration.to_string(),
            justification: request.justification.clone(),
            ticket: request.ticket.clone(),
            via: via.as_str().into(),
            extension: request.parent.map(|_| id.0),
            start_at: start_at.map(crate::store::format_time),
        },
    )
    .await?;
    Ok(request)
}

/// How a new request goes on, from its evaluation.
#[derive(Debug, Clone, Copy)]
struct How<'a> {
    auto: bool,
    /// The schedule whose on-call approved it.
    on_call: Option<&'a str>,
    /// Why a rule could not approve it, for the approvers.
    note: Option<&'a str>,
}

/// Sends a new request down its route: approved by policy now, or posted to the approvers with
/// its escalation steps (the half-time nudge by default), its DMs and its pending timeout
/// scheduled.
async fn route(
    tx: &mut WriteTx,
    app: &App,
    request: Request,
    resource: &Resource,
    how: How<'_>,
    now: DateTime<Utc>,
) -> HandlerResult<Request> {
    if how.auto {
        return decision::approve_by_policy(tx, app, request, how.on_call, now).await;
    }
    let id = request.id;
    if let Some(note) = how.note {
        requests::set_route_note(tx, id, note).await?;
    }
    queue::enqueue(
        tx,
        &Job::ApprovalMessage { request: id },
        super::approvals_placement(app, &request),
        now,
        now,
    )
    .await?;
    // A decision is due by the pending timeout, or by a scheduled start if that comes first.
    let until = request
        .pending_until
        .unwrap_or_else(|| now + resource.pending_timeout.to_chrono());
    super::escalation::schedule(tx, resource, id, now, until).await?;
    queue::enqueue(
        tx,
        &Job::PendingTimeout { request: id },
        Placement::unique(keys::pending_timeout(id)),
        until,
        now,
    )
    .await?;
    Ok(request)
}

/// Withdraws one's own pending request, or one approved to start later, before its start.
pub async fn cancel(app: &App, who: &Requester, id: RequestId) -> HandlerResult<Request> {
    let stored = load(app, id).await?;
    if &stored.request.requester != who {
        return Err(HandlerError::user(format!(
            "Request {id} is not yours, so you cannot cancel it."
        )));
    }
    if stored.request.state == State::Approved
        && stored.request.kind == Kind::Access
        && stored.request.start_at.is_some()
    {
        return cancel_scheduled(app, &stored, &who.key()).await;
    }
    if stored.request.state != State::Pending {
        return Err(HandlerError::user(format!(
            "Request {id} is {}, so there is nothing to cancel.{}",
            stored.request.state.label(),
            if stored.request.state == State::Active {
                format!(" To give up the access, use `/jit release {}`.", id.0)
            } else {
                String::new()
            }
        )));
    }
    cancel_as(app, &stored, &who.key()).await
}

/// Cancels a pending request on someone's behalf (`actor`, as audited).
pub async fn cancel_as(app: &App, stored: &StoredRequest, actor: &str) -> HandlerResult<Request> {
    let id = stored.request.id;
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    if requests::decide(&mut tx, id, State::Cancelled, actor, None, now).await?
        == requests::Fenced::Lost
    {
        return Err(HandlerError::user(format!(
            "Request {id} was decided a moment ago, so it cannot be cancelled."
        )));
    }
    let target = stored.request.parent.unwrap_or(id);
    audit::record(
        &mut tx,
        now,
        Some(target),
        actor,
        &AuditEvent::Cancelled {
            extension: stored.request.parent.map(|_| id.0),
        },
    )
    .await?;
    let request = reload(&mut tx, id).await?;
    super::escalation::refresh_messages(&mut tx, app, &request, now).await?;
    tx.commit().await?;
    app.waker.wake();
    app.metrics.request("cancelled");
    tracing::info!(request_id = id.0, actor, "request cancelled");
    Ok(request)
}

/// Cancels an approved request before its scheduled start: nothing was issued, and nothing
/// will be (the grant job, due at the start, finds the request cancelled and does nothing; it
/// is brought forward so the queue does not keep it).
async fn cancel_scheduled(
    app: &App,
    stored: &StoredRequest,
    actor: &str,
) -> HandlerResult<Request> {
    let id = stored.request.id;
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    if requests::cancel_scheduled(&mut tx, id, now).await? == requests::Fenced::Lost {
        let current = reload(&mut tx, id).await?;
        return Err(HandlerError::user(format!(
            "Request {id} is {}: its start has come, so it can no longer be cancelled.{}",
            current.state.label(),
            if matches!(current.state, State::Approved | State::Active) {
                format!(" To give up the access, use `/jit release {}`.", id.0)
            } else {
                String::new()
            }
        )));
    }
    audit::record(
        &mut tx,
        now,
        Some(id),
        actor,
        &AuditEvent::Cancelled { extension: None },
    )
    .await?;
    crate::store::jobs::reschedule(&mut tx, &keys::grant(id), now, now).await?;
    queue::enqueue(
        &mut tx,
        &Job::ApprovalMessage { request: id },
        super::approvals_placement(app, &stored.request),
        now,
        now,
    )
    .await?;
    let request = reload(&mut tx, id).await?;
    if matches!(request.requester, Requester::Identity(_)) {
        super::identity::notify_owners(
            &mut tx,
            app,
            &request,
            blocks::owner_dm(&request, "cancelled before its scheduled start"),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    app.waker.wake();
    app.metrics.request("cancelled");
    tracing::info!(
        request_id = id.0,
        actor,
        "scheduled request cancelled before its start"
    );
    Ok(request)
}

pub async fn reload(tx: &mut WriteTx, id: RequestId) -> HandlerResult<Request> {
    Ok(requests::get(tx, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("request {id} vanished"))?
        .request)
}

/// My open requests, and for admins the break-glass grants waiting for review.
pub struct Listing {
    pub mine: Vec<StoredRequest>,
    pub unreviewed_breakglass: Option<Vec<StoredRequest>>,
}

pub async fn list(app: &App, who: &Requester) -> HandlerResult<Listing> {
    let mut conn = app.store.read().await?;
    let mine = requests::open_for_requester(&mut conn, who).await?;
    let is_admin = who
        .user()
        .is_some_and(|u| app.policy.is_admin(u, &app.directory));
    let unreviewed_breakglass = if is_admin {
        Some(requests::unreviewed_breakglass(&mut conn).await?)
    } else {
        None
    };
    Ok(Listing {
        mine,
        unreviewed_breakglass,
    })
}

/// Asks for more time on an active grant. The extension goes through the policy like any
/// request; it may be approved at once.
pub async fn extend(
    app: &App,
    who: &Requester,
    grant_id: RequestId,
    duration: GrantDuration,
    reason: Option<&str>,
    via: Via,
) -> HandlerResult<Submitted> {
    let grant = load(app, grant_id).await?.request;
    if &grant.requester != who {
        return Err(HandlerError::user(format!(
            "Grant {grant_id} is not yours, so you cannot extend it."
        )));
    }
    if grant.kind == Kind::Extension {
        return Err(HandlerError::user(format!(
            "{grant_id} is an extension; extend the grant it belongs to ({}).",
            grant.parent.map(|p| p.to_string()).unwrap_or_default()
        )));
    }
    if grant.state != State::Active {
        return Err(HandlerError::user(format!(
            "Grant {grant_id} is {}; only active grants can be extended.",
            grant.state.label()
        )));
    }
    let committed = {
        let mut conn = app.store.read().await?;
        committed_lifetime(&mut conn, &grant).await?
    };
    let evaluation = app
        .policy
        .evaluate_extension(
            grant.resource.as_str(),
            who,
            duration,
            committed,
            &app.directory,
        )
        .map_err(|r| {
            if matches!(r, Refusal::LifetimeExceeded { .. }) {
                app.metrics.request("refused");
            }
            HandlerError::user(r.to_string())
        })?;
    check_rate(app, who)?;
    let resource = evaluation.resource.clone();
    let auto = evaluation.route == Route::Auto;
    let on_call = evaluation.on_call_schedule().map(str::to_owned);
    let route_note = evaluation.on_call_note();
    let justification = reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("More time on {grant_id}: {}", grant.justification));
    let justification: String = justification.chars().take(MAX_JUSTIFICATION).collect();
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    if !auto && let Err(err) = check_pending(&mut tx, app, who).await {
        app.metrics.request("too_many_pending");
        return Err(err);
    }
    let request = insert(
        &mut tx,
        NewRequest {
            kind: Kind::Extension,
            parent: Some(grant_id),
            requester: who,
            resource: &resource.id,
            duration,
            justification: &justification,
            ticket: grant.ticket.as_deref(),
            approvals_required: resource.approvals_required,
            created_at: now,
            pending_until: (!auto).then(|| now + resource.pending_timeout.to_chrono()),
            origin_channel: None,
        },
        None,
        actor_of(who),
        via,
    )
    .await?;
    let how = How {
        auto,
        on_call: on_call.as_deref(),
        note: route_note.as_deref(),
    };
    let request = route(&mut tx, app, request, &resource, how, now).await?;
    tx.commit().await?;
    app.waker.wake();
    Ok(Submitted {
        request,
        resource,
        auto,
        on_call,
        route_note,
    })
}

/// How long `grant` lasts from its first issue, counting extensions approved or waiting that
/// would still add to it.
pub async fn committed_lifetime(
    conn: &mut crate::store::Conn,
    grant: &Request,
) -> HandlerResult<GrantDuration> {
    let so_far = match (grant.granted_at, grant.expires_at) {
        (Some(from), Some(to)) if to > from => (to - from).num_seconds().max(0) as u64,
        _ => grant.duration.as_secs(),
    };
    let waiting = requests::open_extension_secs(conn, grant.id).await?;
    Ok(GrantDuration::from_secs(so_far.saturating_add(waiting)))
}

/// Emergency access: granted at once where the resource allows it, broadcast loudly, and
/// reviewed by an admin afterwards.
pub async fn breakglass(
    app: &App,
    user: &SlackUserId,
    resource_id: &str,
    reason: &str,
) -> HandlerResult<Request> {
    let who = Requester::User(user.clone());
    if let Err(FieldError::Justification(m) | FieldError::Ticket(m)) = check_text(reason, None) {
        return Err(HandlerError::user(m));
    }
    let evaluation = app
        .policy
        .evaluate(resource_id, &who, None, &app.directory)
        .map_err(|r| HandlerError::user(r.to_string()))?;
    let resource = evaluation.resource.clone();
    if !resource.breakglass {
        return Err(HandlerError::user(format!(
            "Break-glass is not enabled for `{}`. Use `/jit request {} <duration> <justification>`.",
            resource.id, resource.id
        )));
    }
    check_rate(app, &who)?;
    let now = app.clock.now();
    let mut tx = app.store.begin_write().await?;
    let id = requests::insert(
        &mut tx,
        &NewRequest {
            kind: Kind::Breakglass,
            parent: None,
            requester: &who,
            resource: &resource.id,
            duration: resource.default_duration,
            justification: reason.trim(),
            ticket: None,
            approvals_required: 1,
            created_at: now,
            pending_until: None,
            origin_channel: None,
        },
    )
    .await?;
    audit::record(
        &mut tx,
        now,
        Some(id),
        &who.key(),
        &AuditEvent::Breakglass {
            reason: reason.trim().to_owned(),
        },
    )
    .await?;
    let request = reload(&mut tx, id).await?;
    let request = decision::approve_as(&mut tx, app, request, &who.key(), now, true).await?;
    tx.commit().await?;
    app.waker.wake();
    app.metrics.request("breakglass");
    tracing::warn!(request_id = request.id.0, resource = %request.resource, requester = %request.requester, "break-glass access taken");
    Ok(request)
}
