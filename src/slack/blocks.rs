//! Block Kit messages. Each function renders one message from domain values; user text is
//! escaped (see [`super::text`]), and every block goes through [`super::limits`]: long text is
//! split across sections (or shortened where a single line is expected), block counts are
//! capped with the buttons kept, and the fallback `text` stays within its limit, so a post never
//! fails on size.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{limits, text};
use crate::audit::AuditEvent;
use crate::domain::ids::{RequestId, SlackChannelId};
use crate::domain::policy::{EscalationStep, Policy, Principals, Requester, Resource};
use crate::domain::request::{Kind, Request, State};
use crate::store::audit::AuditRow;

/// Stable action and callback ids: Slack sends them back, and tests send them in.
pub mod ids {
    pub const APPROVE: &str = "jit.approve";
    pub const DENY: &str = "jit.deny";
    pub const EXTEND: &str = "jit.extend";
    pub const RELEASE: &str = "jit.release";
    pub const REVEAL: &str = "jit.reveal";
    pub const REVIEW: &str = "jit.review";
    pub const REVIEW_REVOKE: &str = "jit.review_revoke";
    pub const OPEN_FORM: &str = "jit.open_form";

    pub const REQUEST_MODAL: &str = "jit.request_modal";
    pub const DENY_MODAL: &str = "jit.deny_modal";
    pub const EXTEND_MODAL: &str = "jit.extend_modal";
    pub const REVEAL_MODAL: &str = "jit.reveal_modal";
}

/// Justifications and reasons are shown up to this many characters.
const MAX_USER_TEXT: usize = 1500;

/// A message: fallback text (notifications, screen readers) and blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub text: String,
    pub blocks: Value,
}

impl Msg {
    /// A message within Slack's limits: at most [`limits::MESSAGE_BLOCKS`] blocks, the last
    /// `keep_last` (its buttons) always kept, and the fallback `text` within
    /// [`limits::MESSAGE_TEXT`].
    pub fn new(text: &str, blocks: Vec<Value>, keep_last: usize) -> Msg {
        Msg {
            text: limits::fallback(text),
            blocks: Value::Array(limits::fit_message(blocks, keep_last)),
        }
    }
}

/// All of `mrkdwn`, in as many sections as it takes.
fn sections(mrkdwn: &str) -> Vec<Value> {
    limits::sections(mrkdwn)
}

fn context(mrkdwn: impl AsRef<str>) -> Value {
    limits::context(mrkdwn.as_ref())
}

fn button(action_id: &str, label: &str, value: String, style: Option<&str>) -> Value {
    let mut b = json!({
        "type": "button",
        "action_id": action_id,
        "text": limits::plain(label, limits::BUTTON_TEXT),
        "value": value,
    });
    if let Some(style) = style {
        b["style"] = json!(style);
    }
    b
}

fn actions(block_id: &str, elements: Vec<Value>) -> Value {
    json!({"type": "actions", "block_id": block_id, "elements": elements})
}

/// "`aws-prod` for 2 hours".
fn what(request: &Request) -> String {
    format!(
        "{} for *{}*",
        text::code(request.resource.as_str()),
        request.duration.humanize()
    )
}

/// "starts <time>": a scheduled start, in each reader's own time zone.
pub fn starts(request: &Request) -> Option<String> {
    request
        .start_at
        .map(|at| format!(":calendar: starts {}", text::time(at)))
}

fn kind_label(request: &Request) -> &'static str {
    match request.kind {
        Kind::Access => "Access request",
        Kind::Extension => "Extension request",
        Kind::Breakglass => "Break-glass access",
    }
}

/// Who approves a resource, as mentions.
pub fn approvers_of(resource: &Resource) -> String {
    text::principals(&Principals {
        users: resource.approvers.users.clone(),
        groups: resource.approvers.groups.clone(),
        identities: Vec::new(),
    })
}

/// Where a resource's approvers are asked: "in #approvals", "by DM" or "in #approvals and by DM".
pub fn where_asked(resource: &Resource) -> String {
    let channel = resource.approvers.channel.as_ref().map(text::channel);
    match (resource.approvers.notify, channel) {
        (crate::domain::policy::Notify::Dm, _) | (_, None) => "by DM".to_owned(),
        (crate::domain::policy::Notify::Channel, Some(channel)) => format!("in {channel}"),
        (crate::domain::policy::Notify::Both, Some(channel)) => {
            format!("in {channel} and by DM")
        }
    }
}

/// Who may decide a request whose first `steps_run` escalation steps have run, as mentions.
pub fn deciders_of(resource: &Resource, steps_run: u32) -> String {
    let (users, groups) = resource.deciders(steps_run);
    text::principals(&Principals {
        users,
        groups,
        identities: Vec::new(),
    })
}

/// Whom and where an escalation step reaches, as mentions ("a reminder" for a plain one).
pub fn escalation_target(step: &EscalationStep) -> String {
    match &step.to {
        None => "a reminder to the approvers".into(),
        Some(to) => {
            let mut parts = Vec::new();
            let people = text::principals(&Principals {
                users: to.users.clone(),
                groups: to.groups.clone(),
                identities: Vec::new(),
            });
            if !to.users.is_empty() || !to.groups.is_empty() {
                parts.push(people);
            }
            if let Some(channel) = &to.channel {
                parts.push(format!("posted in {}", text::channel(channel)));
            }
            parts.join(", ")
        }
    }
}

/// The escalation plan as one line, each step marked once it ran: "escalation: after 10m
/// → @bob (done) · after 20m → posted in #oncall (14:20)".
pub fn escalation_plan(request: &Request, resource: &Resource, steps_run: u32) -> Option<String> {
    if resource.escalate.is_empty() || resource.escalate_is_default {
        return None;
    }
    let steps: Vec<String> = resource
        .escalate
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let when = if (i as u32) < steps_run {
                "done".to_owned()
            } else {
                text::time(request.created_at + step.after.to_chrono())
            };
            format!(
                "after {} → {} ({when})",
                step.after,
                escalation_target(step)
            )
        })
        .collect();
    Some(format!(
        ":arrow_double_up: Escalation: {}",
        steps.join(" · ")
    ))
}

fn decided_by_mentions(decided_by: &str) -> String {
    decided_by
        .split(',')
        .filter(|s| !s.is_empty())
        .map(text::actor)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The approvers' message, rendered for the request's current state.
pub fn approval_message(
    request: &Request,
    resource: Option<&Resource>,
    policy: &Policy,
    approvals: &[String],
    steps_run: u32,
    route_note: Option<&str>,
) -> Msg {
    let id = request.id;
    let mut headline = format!(
        ":key: *{} {id}*\n{} asks for {}",
        kind_label(request),
        text::requester(&request.requester),
        what(request)
    );
    if let Some(parent) = request.parent {
        headline.push_str(&format!(" more on grant {parent}"));
    }
    if let Some(start) = request.start_at {
        headline.push_str(&format!(
            "\n:calendar: *Scheduled:* access starts {} and lasts {} from then (until {})",
            text::time(start),
            request.duration.humanize(),
            text::time(start + request.duration.to_chrono())
        ));
    }
    if let Some(r) = resource.filter(|r| !r.description.is_empty()) {
        headline.push_str(&format!(
            "\n_{}_",
            text::escape_truncated(&r.description, 200)
        ));
    }
    let mut blocks = sections(&headline);
    if let crate::domain::policy::Requester::Identity(name) = &request.requester {
        let owner = policy
            .identity(name)
            .map(|i| text::principals(&i.owner))
            .unwrap_or_else(|| "unknown".into());
        blocks.push(context(format!(
            ":robot_face: Non-human identity {}, owned by {owner}",
            text::name(name)
        )));
    }
    blocks.extend(sections(&text::quote(
        &request.justification,
        MAX_USER_TEXT,
    )));
    if let Some(ticket) = &request.ticket {
        blocks.push(context(format!(
            "Ticket: {}",
            text::ticket(ticket, resource.map(|r| &r.ticket))
        )));
    }
    if let Some(note) = route_note {
        blocks.push(context(format!(":warning: {}", text::escape(note))));
    }
    let approvers = resource
        .map(|r| deciders_of(r, steps_run))
        .unwrap_or_else(|| "—".into());
    let pending_now = request.state == State::Pending;
    if pending_now && let Some(plan) = resource.and_then(|r| escalation_plan(request, r, steps_run))
    {
        blocks.push(context(plan));
    }
    let status = match request.state {
        State::Pending => {
            let mut status = format!(
                "Approvers: {approvers} · needs {} approval{}",
                request.approvals_required,
                if request.approvals_required == 1 {
                    ""
                } else {
                    "s"
                }
            );
            if !approvals.is_empty() {
                status.push_str(&format!(
                    " · approved so far by {} ({} of {})",
                    decided_by_mentions(&approvals.join(",")),
                    approvals.len(),
                    request.approvals_required
                ));
            }
            if let Some(until) = request.pending_until {
                status.push_str(&format!(
                    " · expires without a decision {}{}",
                    text::time(until),
                    if request.start_at == Some(until) {
                        " (its start)"
                    } else {
                        ""
                    }
                ));
            }
            status
        }
        _ => decision_line(request),
    };
    blocks.push(context(status));
    let pending = request.state == State::Pending;
    if pending {
        blocks.push(actions(
            "decision",
            vec![
                button(ids::APPROVE, "Approve", id.0.to_string(), Some("primary")),
                button(ids::DENY, "Deny", id.0.to_string(), Some("danger")),
            ],
        ));
    }
    Msg::new(
        &format!(
            "{} {id}: {} asks for {}{} ({})",
            kind_label(request),
            plain_requester(request),
            request.resource,
            request
                .start_at
                .map(|s| format!(" from {}", text::utc(s)))
                .unwrap_or_default(),
            request.state.label()
        ),
        blocks,
        usize::from(pending),
    )
}

fn plain_requester(request: &Request) -> String {
    request.requester.key()
}

/// One line saying how a request was decided and where it stands.
pub fn decision_line(request: &Request) -> String {
    let at = request
        .decided_at
        .map(|t| format!(" {}", text::time(t)))
        .unwrap_or_default();
    let by = request
        .decided_by
        .as_deref()
        .map(decided_by_mentions)
        .unwrap_or_default();
    let note = request
        .decision_note
        .as_deref()
        .map(|n| format!(": {}", text::escape_truncated(n, 500)))
        .unwrap_or_default();
    match request.state {
        State::Pending => "Waiting for approval".into(),
        State::Denied => format!(":x: Denied by {by}{at}{note}"),
        State::Cancelled => {
            let ended = request
                .ended_at
                .map(|t| format!(" {}", text::time(t)))
                .unwrap_or_default();
            if request.decided_by.is_some() && request.start_at.is_some() {
                format!(
                    ":no_entry_sign: Approved by {by}{at}, then cancelled by the requester{ended} before its start; nothing was issued"
                )
            } else {
                format!(":no_entry_sign: Cancelled by the requester{at}")
            }
        }
        State::TimedOut
            if request.start_at.is_some() && request.start_at == request.pending_until =>
        {
            format!(
                ":hourglass: Expired without a decision{at}: nobody decided before its scheduled start"
            )
        }
        State::TimedOut => format!(":hourglass: Expired without a decision{at}"),
        State::Failed if request.start_at.is_some() && request.granted_at.is_none() => format!(
            ":warning: Approved by {by}{at}, but at its scheduled start access was not issued: {}",
            text::escape_truncated(request.failure.as_deref().unwrap_or("unknown error"), 500)
        ),
        State::Failed => format!(
            ":warning: Approved by {by}{at}, but issuing failed: {}",
            text::escape_truncated(request.failure.as_deref().unwrap_or("unknown error"), 500)
        ),
        State::Approved if request.start_at.is_some() => format!(
            ":white_check_mark: Approved by {by}{at} · access starts {}",
            text::time(request.start_at.unwrap_or_default())
        ),
        _ => format!(":white_check_mark: Approved by {by}{at}"),
    }
}

/// A DM to the requester about a decision.
pub fn decision_dm(request: &Request) -> Msg {
    let id = request.id;
    let line = match request.state {
        State::Approved | State::Active | State::Applied => {
            if request.kind == Kind::Extension {
                format!(
                    ":white_check_mark: Your extension {id} ({}) was approved; adding the time now.",
                    what(request)
                )
            } else {
                format!(
                    ":white_check_mark: Your request {id} for {} was approved by {}. {}",
                    what(request),
                    request
                        .decided_by
                        .as_deref()
                        .map(decided_by_mentions)
                        .unwrap_or_default(),
                    issue_when(request)
                )
            }
        }
        State::Denied => format!(
            ":x: Your request {id} for {} was denied by {}: {}",
            what(request),
            request
                .decided_by
                .as_deref()
                .map(decided_by_mentions)
                .unwrap_or_default(),
            text::escape_truncated(
                request.decision_note.as_deref().unwrap_or(""),
                MAX_USER_TEXT
            )
        ),
        State::TimedOut
            if request.start_at.is_some() && request.start_at == request.pending_until =>
        {
            format!(
                ":hourglass: Your request {id} for {} expired: nobody decided before its scheduled start. You can ask again.",
                what(request)
            )
        }
        State::TimedOut => format!(
            ":hourglass: Your request {id} for {} expired: nobody decided in time. You can ask again.",
            what(request)
        ),
        _ => format!("Your request {id} is now {}.", request.state.label()),
    };
    simple(line)
}

/// Why an approvers' channel refused a post for good, and what to do about it, for people.
/// `code` is Slack's error code.
pub fn undeliverable(code: &str, channel: &SlackChannelId) -> (String, String) {
    let c = text::channel(channel);
    let invite = format!(
        "Ask a Slack admin to invite the jit app to {c} (`/invite @jit` in the channel), then ask again."
    );
    let (why, what) = match code {
        "not_in_channel" => (format!("the jit app is not a member of {c}"), invite),
        "channel_not_found" => (
            format!("{c} does not exist or the jit app cannot see it"),
            format!("{invite} If the channel is gone, an admin must name another approvers' channel in the policy."),
        ),
        "is_archived" | "channel_is_archived" => (
            format!("{c} is archived"),
            "Ask an admin to unarchive it, or to name another approvers' channel in the policy, then ask again.".to_owned(),
        ),
        code if code.starts_with("restricted_action") => (
            format!("the jit app may not post in {c}"),
            format!("Ask a Slack admin to allow the jit app to post in {c}, then ask again."),
        ),
        other => (
            format!("Slack refused the post in {c} ({})", text::code(other)),
            "The jit admins have been alerted; ask them before trying again.".to_owned(),
        ),
    };
    (why, what)
}

/// A DM to the requester whose request could not be posted to its approvers; for a non-human
/// identity, to its owners (who cannot cancel it: it expires undecided).
pub fn undeliverable_dm(request: &Request, channel: &SlackChannelId, code: &str) -> Msg {
    let (why, todo) = undeliverable(code, channel);
    let (whose, withdraw) = match &request.requester {
        Requester::User(_) => (
            format!("Your request {}", request.id),
            format!(" `/jit cancel {}` withdraws this one.", request.id.0),
        ),
        identity @ Requester::Identity(_) => (
            format!(
                ":robot_face: The request {} of {}, which you own,",
                request.id,
                text::requester(identity)
            ),
            " It expires undecided; the identity gets no access from it.".to_owned(),
        ),
    };
    simple(format!(
        ":warning: {whose} for {} could not be sent to the approvers: {why}. They were not notified (approvers still see it in jit's App Home). {todo}{withdraw}",
        what(request),
    ))
}

/// The requester's DM when a request expires undecided. `undelivered`: why its approvers'
/// message was never posted, if it was not (then nobody was asked in time).
pub fn timed_out_dm(request: &Request, undelivered: Option<(&str, &SlackChannelId)>) -> Msg {
    match undelivered {
        None => decision_dm(request),
        Some((code, channel)) => {
            let (why, todo) = undeliverable(code, channel);
            simple(format!(
                ":hourglass: Your request {} for {} expired without a decision: it never reached the approvers, because {why}. {todo}",
                request.id,
                what(request)
            ))
        }
    }
}

/// What happens next to an approved request: issued now, or at its scheduled start.
pub fn issue_when(request: &Request) -> String {
    match request.start_at {
        Some(start) => format!(
            "Access will be issued at its scheduled start, {}, and last {} from then; `/jit cancel {}` withdraws it until then.",
            text::time(start),
            request.duration.humanize(),
            request.id.0
        ),
        None => "Issuing access now.".into(),
    }
}

/// A DM confirming a request that came in through the modal (which has no reply of its own).
pub fn submitted_dm(request: &Request, resource: &Resource, auto: bool) -> Msg {
    let line = if auto {
        format!(
            ":zap: Your request {} for {} was approved by policy. {}",
            request.id,
            what(request),
            issue_when(request)
        )
    } else {
        format!(
            ":inbox_tray: Your request {} for {}{} is waiting for approval from {} {}.",
            request.id,
            what(request),
            request
                .start_at
                .map(|s| format!(" starting {}", text::time(s)))
                .unwrap_or_default(),
            approvers_of(resource),
            where_asked(resource)
        )
    };
    simple(line)
}

/// The requester's DM when a scheduled request is not issued at its start.
pub fn activation_refused_dm(request: &Request, reason: &str) -> Msg {
    simple(format!(
        ":no_entry_sign: Your request {} for {} was approved to start {}, but at its start jit did not issue it: {} Nothing was granted; ask again if you still need it.",
        request.id,
        what(request),
        request.start_at.map(text::time).unwrap_or_default(),
        text::escape_truncated(reason, 1000)
    ))
}

/// The holder's DM once access is issued. Secrets are never in it: a button opens them.
pub fn issued_dm(
    request: &Request,
    expires_at: DateTime<Utc>,
    instructions: Option<&str>,
    has_credentials: bool,
) -> Msg {
    let id = request.id;
    let line = format!(
        ":unlock: You now have {} until {} (request {id}).",
        text::code(request.resource.as_str()),
        text::time(expires_at)
    );
    let mut blocks = sections(&line);
    if let Some(instructions) = instructions {
        blocks.extend(sections(&text::escape_truncated(instructions, 2000)));
    }
    let mut buttons = Vec::new();
    if has_credentials {
        blocks.push(context(
            "Your credentials are not in this message. *Reveal credentials* shows them in a window only you can see; each reveal is audited.",
        ));
        buttons.push(button(
            ids::REVEAL,
            "Reveal credentials",
            id.0.to_string(),
            Some("primary"),
        ));
    }
    buttons.push(button(ids::RELEASE, "Release now", id.0.to_string(), None));
    blocks.push(actions("grant", buttons));
    Msg::new(
        &format!(
            "You now have {} until {}.",
            request.resource,
            text::utc(expires_at)
        ),
        blocks,
        1,
    )
}

pub fn failed_dm(request: &Request, error: &str) -> Msg {
    let line = format!(
        ":warning: Your request {} for {} was approved, but issuing access failed: {}",
        request.id,
        text::code(request.resource.as_str()),
        text::escape_truncated(error, 1000)
    );
    simple(line)
}

pub fn reminder_dm(request: &Request, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> Msg {
    let minutes = ((expires_at - now).num_seconds().max(0) + 59) / 60;
    let line = format!(
        ":alarm_clock: Your access to {} (request {}) ends {} (in about {minutes} minute{}).",
        text::code(request.resource.as_str()),
        request.id,
        text::time(expires_at),
        if minutes == 1 { "" } else { "s" }
    );
    let id = request.id.0.to_string();
    let mut blocks = sections(&line);
    blocks.push(actions(
        "reminder",
        vec![
            button(ids::EXTEND, "Extend", id.clone(), Some("primary")),
            button(ids::RELEASE, "Release now", id, None),
        ],
    ));
    Msg::new(
        &format!(
            "Your access to {} ends at {}.",
            request.resource,
            text::utc(expires_at)
        ),
        blocks,
        1,
    )
}

pub fn ended_dm(request: &Request, note: Option<&str>) -> Msg {
    let how = match request.state {
        State::Expired => "expired".to_owned(),
        State::Released => "was released".to_owned(),
        State::Revoked => format!(
            "was revoked{}",
            note.map(|n| format!(": {}", text::escape_truncated(n, 500)))
                .unwrap_or_default()
        ),
        other => other.label().to_owned(),
    };
    let line = format!(
        ":lock: Your access to {} (request {}) {how}. It has been removed.",
        text::code(request.resource.as_str()),
        request.id
    );
    simple(line)
}

pub fn extended_dm(grant: &Request, expires_at: DateTime<Utc>) -> Msg {
    let line = format!(
        ":hourglass_flowing_sand: Your access to {} (request {}) now lasts until {}.",
        text::code(grant.resource.as_str()),
        grant.id,
        text::time(expires_at)
    );
    simple(line)
}

/// A DM to the owners of a non-human identity about its request.
pub fn owner_dm(request: &Request, status: &str) -> Msg {
    let line = format!(
        ":robot_face: {} asked for {} (request {}): {}\n{}",
        text::requester(&request.requester),
        what(request),
        request.id,
        status,
        text::quote(&request.justification, 500)
    );
    simple(line)
}

/// A message of one text: all of it in sections, the same text as the fallback.
pub fn simple(line: String) -> Msg {
    Msg::new(&line, sections(&line), 0)
}

/// The reply in the approvers' thread at half the pending timeout, or at a step without `to`
/// (text only): it mentions everyone who may decide by now.
pub fn nudge(request: &Request, resource: Option<&Resource>, steps_run: u32) -> String {
    limits::fallback(&format!(
        ":hourglass_flowing_sand: {} — request {} is still waiting for a decision; it expires {}.",
        resource
            .map(|r| deciders_of(r, steps_run))
            .unwrap_or_default(),
        request.id,
        request
            .pending_until
            .map(text::time)
            .unwrap_or_else(|| "soon".into())
    ))
}

/// The reply in the approvers' thread when escalation step `step` (1-based) ran: it mentions
/// the people the step added. `None` for a step that adds nobody.
pub fn escalation_nudge(request: &Request, resource: &Resource, step: u32) -> Option<String> {
    let to = resource
        .escalate
        .get((step as usize).checked_sub(1)?)?
        .to
        .as_ref()?;
    if to.users.is_empty() && to.groups.is_empty() {
        return None;
    }
    let people = text::principals(&Principals {
        users: to.users.clone(),
        groups: to.groups.clone(),
        identities: Vec::new(),
    });
    Some(limits::fallback(&format!(
        ":arrow_double_up: {people} — request {} has waited since {} and is escalated to you: you may approve or deny it now. It expires {}.",
        request.id,
        text::time(request.created_at),
        request
            .pending_until
            .map(text::time)
            .unwrap_or_else(|| "soon".into())
    )))
}

/// The root of a request's audit thread.
pub fn audit_root(request: &Request) -> Msg {
    let line = format!(
        ":scroll: *{} {}* · {} · {} · {}",
        kind_label(request),
        request.id,
        text::requester(&request.requester),
        what(request),
        text::time(request.created_at)
    );
    Msg::new(
        &format!("Audit thread for request {}", request.id),
        sections(&line),
        0,
    )
}

/// One audit event as a thread reply. Alerts mention the admins.
pub fn audit_reply(row: &AuditRow, policy: &Policy) -> Msg {
    let mut blocks = event_blocks(row, policy);
    let mut keep_last = 1;
    if row.event == "breakglass"
        && let Some(id) = row.request_id
    {
        blocks.push(review_buttons(RequestId(id)));
        keep_last = 2;
    }
    Msg::new(&format!("#{} {}", row.seq, row.event), blocks, keep_last)
}

/// What a reply shows of one audit event: its line, then its time, number and hash digits.
fn event_blocks(row: &AuditRow, policy: &Policy) -> Vec<Value> {
    let at = crate::store::parse_time(&row.at).ok();
    let when = at.map(text::time).unwrap_or_else(|| row.at.clone());
    let who = text::actor(&row.actor);
    let event = AuditEvent::from_row(&row.event, &row.detail);
    let body = match &event {
        Some(e) => describe(e, &who, policy),
        None => format!("{who}: {}", text::code(&row.event)),
    };
    let alert = event.as_ref().is_some_and(AuditEvent::is_alert);
    let prefix = if alert {
        format!(":rotating_light: {} ", text::principals(&policy.admins))
    } else {
        String::new()
    };
    let line = format!("{prefix}{body}");
    let mut blocks = sections(&line);
    // A short hash for people to compare by eye; `jit audit verify --head` needs at least 32
    // digits (it prints the full head), and the anchors carry all 64.
    blocks.push(context(format!(
        "{when} · audit #{} · `{}…`",
        row.seq,
        row.hash.get(..12).unwrap_or(&row.hash)
    )));
    blocks
}

/// Whether an audit event must be posted on its own: alerts (broadcast to the channel, with
/// the admins mentioned) and break-glass (its reply carries the review buttons).
pub fn posted_alone(row: &AuditRow) -> bool {
    row.event == "breakglass"
        || AuditEvent::from_row(&row.event, &row.detail).is_some_and(|e| e.is_alert())
}

/// Several audit events of one request in one thread reply, for when the audit channel is
/// backed up: each event shown as its own reply would show it (line, time, number and hash
/// digits), in order, under a line saying they were posted together. Returns the message and
/// how many events, `first` and then `later` in order, it holds: as many as fit in one message
/// within Slack's limits, at least `first`. The rest wait for the next reply. An event
/// [`posted_alone`] ends the run (and is never coalesced itself).
pub fn audit_replies(first: &AuditRow, later: &[AuditRow], policy: &Policy) -> (Msg, usize) {
    if later.is_empty() || posted_alone(first) {
        return (audit_reply(first, policy), 1);
    }
    let rows: Vec<&AuditRow> = std::iter::once(first).chain(later).collect();
    // One block for the heading; the rest for events, each whole.
    let room = limits::MESSAGE_BLOCKS - 1;
    let mut events: Vec<Vec<Value>> = Vec::new();
    let mut used = 0;
    for row in rows.iter().copied() {
        if posted_alone(row) {
            break;
        }
        let blocks = event_blocks(row, policy);
        if used + blocks.len() > room {
            break;
        }
        used += blocks.len();
        events.push(blocks);
    }
    if events.len() < 2 {
        return (audit_reply(first, policy), 1);
    }
    let held = &rows[..events.len()];
    let heading = context(format!(
        ":inbox_tray: {} events of this request, posted together while the audit channel is busy",
        held.len()
    ));
    let text = held
        .iter()
        .map(|r| format!("#{} {}", r.seq, r.event))
        .collect::<Vec<_>>()
        .join(" · ");
    let blocks = std::iter::once(heading)
        .chain(events.into_iter().flatten())
        .collect();
    (Msg::new(&text, blocks, 0), held.len())
}

/// The audit chain's head, posted to the audit channel as an anchor outside the database. The
/// fallback text is what `jit audit verify --slack` reads back: keep it exactly
/// [`crate::audit::anchor::text`].
pub fn audit_anchor(seq: i64, hash: &str) -> Msg {
    Msg::new(
        &crate::audit::anchor::text(seq, hash),
        vec![context(format!(
            ":link: Audit log head: row {seq}, hash `{hash}`. `jit audit verify --slack` checks the log against this message."
        ))],
        0,
    )
}

fn ext(extension: &Option<i64>) -> String {
    extension
        .map(|e| format!(" (extension {})", RequestId(e)))
        .unwrap_or_default()
}

fn describe(event: &AuditEvent, who: &str, policy: &Policy) -> String {
    use AuditEvent::*;
    match event {
        Requested {
            kind,
            resource,
            duration,
            justification,
            ticket,
            via,
            extension,
            start_at,
        } => {
            format!(
                "{who} requested{} {} for {}{} via {via}{}\n{}",
                if kind == "access" {
                    String::new()
                } else {
                    format!(" ({kind})")
                },
                text::code(resource),
                text::code(duration),
                start_at
                    .as_deref()
                    .and_then(|s| crate::store::parse_time(s).ok())
                    .map(|s| format!(" starting {}", text::time(s)))
                    .unwrap_or_default(),
                ext(extension),
                text::quote(justification, MAX_USER_TEXT)
            ) + &ticket
                .as_deref()
                .map(|t| {
                    let rule = policy.resource(resource).map(|r| &r.ticket);
                    format!("\nTicket: {}", text::ticket(t, rule))
                })
                .unwrap_or_default()
        }
        AutoApproved {
            extension,
            on_call: None,
        } => format!(":zap: Approved by policy{}", ext(extension)),
        AutoApproved {
            extension,
            on_call: Some(schedule),
        } => format!(
            ":zap: Approved by policy{}: the requester is on call in PagerDuty schedule {}",
            ext(extension),
            text::code(schedule)
        ),
        Approval {
            count,
            required,
            extension,
        } => format!("{who} approved ({count} of {required}){}", ext(extension)),
        Approved {
            approvers,
            extension,
        } => format!(
            ":white_check_mark: Approved by {}{}",
            decided_by_mentions(&approvers.join(",")),
            ext(extension)
        ),
        Denied { reason, extension } => format!(
            ":x: {who} denied{}: {}",
            ext(extension),
            text::escape_truncated(reason, MAX_USER_TEXT)
        ),
        Cancelled { extension } => format!("{who} cancelled the request{}", ext(extension)),
        TimedOut { extension } => {
            format!(":hourglass: Expired without a decision{}", ext(extension))
        }
        Nudged => "Nudged the approvers".into(),
        Escalated {
            step,
            after,
            users,
            groups,
            channel,
            extension,
        } => {
            let mut parts = Vec::new();
            let mut people: Vec<String> = users
                .iter()
                .map(|u| match crate::domain::ids::SlackUserId::parse(u) {
                    Ok(u) => text::user(&u),
                    Err(_) => text::code(u),
                })
                .collect();
            people.extend(groups.iter().map(|g| {
                match crate::domain::ids::SlackGroupId::parse(g) {
                    Ok(g) => text::group(&g),
                    Err(_) => text::code(g),
                }
            }));
            if !people.is_empty() {
                parts.push(format!("{} may now decide", people.join(", ")));
            }
            if let Some(channel) = channel {
                parts.push(match SlackChannelId::parse(channel) {
                    Ok(c) => format!("posted in {}", text::channel(&c)),
                    Err(_) => format!("posted in {}", text::code(channel)),
                });
            }
            format!(
                ":arrow_double_up: Escalated (step {step}, after {}){}: {}",
                text::code(after),
                ext(extension),
                parts.join("; ")
            )
        }
        Granted {
            expires_at,
            handle,
            credentials,
        } => format!(
            ":unlock: Access issued until {} (handle {}){}",
            text::code(expires_at),
            text::code(handle),
            if *credentials {
                "; credentials stored encrypted until the grant ends"
            } else {
                ""
            }
        ),
        GrantFailed {
            error,
            attempt,
            last,
        } => format!(
            ":warning: Issuing failed (attempt {attempt}{}): {}",
            if *last { ", giving up" } else { ", will retry" },
            text::escape_truncated(error, 1000)
        ),
        ActivationRefused { reason } => format!(
            ":no_entry_sign: Not issued at the scheduled start: {}",
            text::escape_truncated(reason, 1000)
        ),
        GrantUncertain { handle } => format!(
            ":warning: Issuing may have done something before it failed; jit treats it as issued (handle {}) and removes it",
            text::code(handle)
        ),
        Reminded { expires_at } => format!(
            "Reminded the holder; access ends {}",
            text::code(expires_at)
        ),
        Extended {
            extension,
            expires_at,
        } => format!(
            ":hourglass_flowing_sand: Extended by {} until {}",
            RequestId(*extension),
            text::code(expires_at)
        ),
        ExtensionFailed { extension, error } => format!(
            ":warning: Extension {} could not be applied: {}",
            RequestId(*extension),
            text::escape_truncated(error, 1000)
        ),
        Released => format!("{who} released the access"),
        Revoked { reason } => format!(
            ":no_entry: {who} revoked the access: {}",
            text::escape_truncated(reason, MAX_USER_TEXT)
        ),
        Expired => ":alarm_clock: The grant expired".into(),
        TornDown {
            still_held_by,
            detail,
        } => {
            if still_held_by.is_empty() {
                format!(
                    ":lock: Access removed{}",
                    detail
                        .as_deref()
                        .map(|d| format!(" ({})", text::escape_truncated(d, 500)))
                        .unwrap_or_default()
                )
            } else {
                format!(
                    ":lock: Grant ended; the access stays while {} still hold{} it",
                    still_held_by
                        .iter()
                        .map(|i| RequestId(*i).to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if still_held_by.len() == 1 { "s" } else { "" }
                )
            }
        }
        TeardownFailed { attempt, error } => format!(
            ":warning: Teardown attempt {attempt} failed, retrying: {}",
            text::escape_truncated(error, 1000)
        ),
        TeardownAlert { attempts, error } => format!(
            "*Teardown is failing* after {attempts} attempts. jit keeps retrying; check the provider. Last error: {}",
            text::escape_truncated(error, 1000)
        ),
        TeardownAttention { detail } => format!(
            "*Teardown needs attention*: {}",
            text::escape_truncated(detail, 2500)
        ),
        Breakglass { reason } => format!(
            "*BREAK-GLASS*: {who} took emergency access without approval: {}\nAn admin must review it (`/jit list` shows unreviewed grants).",
            text::escape_truncated(reason, MAX_USER_TEXT)
        ),
        Reviewed { revoke } => format!(
            "{who} reviewed the break-glass grant{}",
            if *revoke { " and revoked it" } else { "" }
        ),
        CredentialsRevealed => format!(":eyes: {who} revealed the credentials"),
        CredentialsRevealFailed { error } => format!(
            ":warning: {who} tried to reveal the credentials, but Slack refused the window ({}); nothing was shown",
            text::code(error)
        ),
        CredentialsErased => "Stored credentials erased".into(),
        CleanedUp { detail } => format!(
            "Provider cleanup done{}",
            detail
                .as_deref()
                .map(|d| format!(" ({})", text::escape_truncated(d, 500)))
                .unwrap_or_default()
        ),
        TokenCreated { identity, token_id } => format!(
            "{who} created API token {token_id} for identity {}",
            text::code(identity)
        ),
        TokenRevoked { identity, token_id } => format!(
            "{who} revoked API token {token_id} of identity {}",
            text::code(identity)
        ),
        ApiCall {
            method,
            path,
            status,
            ..
        } => format!("{who} called `{method} {}` ({status})", text::escape(path)),
        JobDead { job, error } => format!(
            "*A {} job gave up* after its last attempt: {}",
            text::code(job),
            text::escape_truncated(error, 1000)
        ),
        WebhookFailing {
            url,
            attempts,
            error,
        } => format!(
            "*The webhook {} has failed {attempts} times in a row*; its events wait and will be sent once it answers: {}",
            text::code(url),
            text::escape_truncated(error, 1000)
        ),
    }
}

/// Break-glass review buttons, posted with the break-glass alert.
pub fn review_buttons(request: RequestId) -> Value {
    actions(
        "review",
        vec![
            button(
                ids::REVIEW,
                "Reviewed",
                request.0.to_string(),
                Some("primary"),
            ),
            button(
                ids::REVIEW_REVOKE,
                "Revoke",
                request.0.to_string(),
                Some("danger"),
            ),
        ],
    )
}
