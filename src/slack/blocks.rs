//! Block Kit messages. Each function renders one message from domain values; user text is
//! escaped (see [`super::text`]) and long text is truncated below Slack's limits, so a post
//! never fails on size.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::text;
use crate::audit::AuditEvent;
use crate::domain::ids::RequestId;
use crate::domain::policy::{Policy, Principals, Resource};
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

fn section(mrkdwn: impl Into<String>) -> Value {
    let mut text: String = mrkdwn.into();
    if text.chars().count() > 2900 {
        text = text.chars().take(2899).collect::<String>() + "…";
    }
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})
}

fn context(mrkdwn: impl Into<String>) -> Value {
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn.into()}]})
}

fn button(action_id: &str, label: &str, value: String, style: Option<&str>) -> Value {
    let mut b = json!({
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label, "emoji": true},
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
    if let Some(r) = resource.filter(|r| !r.description.is_empty()) {
        headline.push_str(&format!(
            "\n_{}_",
            text::escape_truncated(&r.description, 200)
        ));
    }
    let mut blocks = vec![section(headline)];
    if let crate::domain::policy::Requester::Identity(name) = &request.requester {
        let owner = policy
            .identity(name)
            .map(|i| text::principals(&i.owner))
            .unwrap_or_else(|| "unknown".into());
        blocks.push(context(format!(
            ":robot_face: Non-human identity {}, owned by {owner}",
            text::code(name)
        )));
    }
    blocks.push(section(text::quote(&request.justification, MAX_USER_TEXT)));
    if let Some(ticket) = &request.ticket {
        blocks.push(context(format!(
            "Ticket: {}",
            text::escape_truncated(ticket, 200)
        )));
    }
    let approvers = resource.map(approvers_of).unwrap_or_else(|| "—".into());
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
                    " · expires without a decision {}",
                    text::time(until)
                ));
            }
            status
        }
        _ => decision_line(request),
    };
    blocks.push(context(status));
    if request.state == State::Pending {
        blocks.push(actions(
            "decision",
            vec![
                button(ids::APPROVE, "Approve", id.0.to_string(), Some("primary")),
                button(ids::DENY, "Deny", id.0.to_string(), Some("danger")),
            ],
        ));
    }
    Msg {
        text: format!(
            "{} {id}: {} asks for {} ({})",
            kind_label(request),
            plain_requester(request),
            request.resource,
            request.state.label()
        ),
        blocks: Value::Array(blocks),
    }
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
        State::Cancelled => format!(":no_entry_sign: Cancelled by the requester{at}"),
        State::TimedOut => format!(":hourglass: Expired without a decision{at}"),
        State::Failed => format!(
            ":warning: Approved by {by}{at}, but issuing failed: {}",
            text::escape_truncated(request.failure.as_deref().unwrap_or("unknown error"), 500)
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
                    ":white_check_mark: Your request {id} for {} was approved by {}. Issuing access now.",
                    what(request),
                    request
                        .decided_by
                        .as_deref()
                        .map(decided_by_mentions)
                        .unwrap_or_default()
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
        State::TimedOut => format!(
            ":hourglass: Your request {id} for {} expired: nobody decided in time. You can ask again.",
            what(request)
        ),
        _ => format!("Your request {id} is now {}.", request.state.label()),
    };
    Msg {
        text: line.clone(),
        blocks: json!([section(line)]),
    }
}

/// A DM confirming a request that came in through the modal (which has no reply of its own).
pub fn submitted_dm(request: &Request, resource: &Resource, auto: bool) -> Msg {
    let line = if auto {
        format!(
            ":zap: Your request {} for {} was approved by policy. Issuing access now.",
            request.id,
            what(request)
        )
    } else {
        format!(
            ":inbox_tray: Your request {} for {} is waiting for approval from {} in {}.",
            request.id,
            what(request),
            approvers_of(resource),
            text::channel(&resource.approvers.channel)
        )
    };
    Msg {
        text: line.clone(),
        blocks: json!([section(line)]),
    }
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
    let mut blocks = vec![section(line.clone())];
    if let Some(instructions) = instructions {
        blocks.push(section(text::escape_truncated(instructions, 2000)));
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
    Msg {
        text: format!(
            "You now have {} until {}.",
            request.resource,
            text::utc(expires_at)
        ),
        blocks: Value::Array(blocks),
    }
}

pub fn failed_dm(request: &Request, error: &str) -> Msg {
    let line = format!(
        ":warning: Your request {} for {} was approved, but issuing access failed: {}",
        request.id,
        text::code(request.resource.as_str()),
        text::escape_truncated(error, 1000)
    );
    Msg {
        text: line.clone(),
        blocks: json!([section(line)]),
    }
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
    Msg {
        text: format!(
            "Your access to {} ends at {}.",
            request.resource,
            text::utc(expires_at)
        ),
        blocks: json!([
            section(line),
            actions(
                "reminder",
                vec![
                    button(ids::EXTEND, "Extend", id.clone(), Some("primary")),
                    button(ids::RELEASE, "Release now", id, None),
                ]
            )
        ]),
    }
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
    Msg {
        text: line.clone(),
        blocks: json!([section(line)]),
    }
}

pub fn extended_dm(grant: &Request, expires_at: DateTime<Utc>) -> Msg {
    let line = format!(
        ":hourglass_flowing_sand: Your access to {} (request {}) now lasts until {}.",
        text::code(grant.resource.as_str()),
        grant.id,
        text::time(expires_at)
    );
    Msg {
        text: line.clone(),
        blocks: json!([section(line)]),
    }
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
    Msg {
        text: line.clone(),
        blocks: json!([section(line)]),
    }
}

pub fn simple(line: String) -> Msg {
    Msg {
        text: line.clone(),
        blocks: json!([section(line)]),
    }
}

/// The reply in the approvers' thread at half the pending timeout.
pub fn nudge(request: &Request, resource: Option<&Resource>) -> String {
    format!(
        ":hourglass_flowing_sand: {} — request {} is still waiting for a decision; it expires {}.",
        resource.map(approvers_of).unwrap_or_default(),
        request.id,
        request
            .pending_until
            .map(text::time)
            .unwrap_or_else(|| "soon".into())
    )
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
    Msg {
        text: format!("Audit thread for request {}", request.id),
        blocks: json!([section(line)]),
    }
}

/// One audit event as a thread reply. Alerts mention the admins.
pub fn audit_reply(row: &AuditRow, policy: &Policy) -> Msg {
    let at = crate::store::parse_time(&row.at).ok();
    let when = at.map(text::time).unwrap_or_else(|| row.at.clone());
    let who = text::actor(&row.actor);
    let event = AuditEvent::from_row(&row.event, &row.detail);
    let body = match &event {
        Some(e) => describe(e, &who),
        None => format!("{who}: {}", text::code(&row.event)),
    };
    let alert = event.as_ref().is_some_and(AuditEvent::is_alert);
    let prefix = if alert {
        format!(":rotating_light: {} ", text::principals(&policy.admins))
    } else {
        String::new()
    };
    let line = format!("{prefix}{body}");
    Msg {
        text: format!("#{} {}", row.seq, row.event),
        blocks: json!([
            section(line),
            context(format!(
                "{when} · audit #{} · `{}`",
                row.seq,
                &row.hash[..12]
            ))
        ]),
    }
}

fn ext(extension: &Option<i64>) -> String {
    extension
        .map(|e| format!(" (extension {})", RequestId(e)))
        .unwrap_or_default()
}

fn describe(event: &AuditEvent, who: &str) -> String {
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
        } => {
            format!(
                "{who} requested{} {} for {} via {via}{}\n{}",
                if kind == "access" {
                    String::new()
                } else {
                    format!(" ({kind})")
                },
                text::code(resource),
                text::code(duration),
                ext(extension),
                text::quote(justification, MAX_USER_TEXT)
            ) + &ticket
                .as_deref()
                .map(|t| format!("\nTicket: {}", text::escape_truncated(t, 200)))
                .unwrap_or_default()
        }
        AutoApproved { extension } => format!(":zap: Approved by policy{}", ext(extension)),
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
        Breakglass { reason } => format!(
            "*BREAK-GLASS*: {who} took emergency access without approval: {}\nAn admin must review it (`/jit list` shows unreviewed grants).",
            text::escape_truncated(reason, MAX_USER_TEXT)
        ),
        Reviewed { revoke } => format!(
            "{who} reviewed the break-glass grant{}",
            if *revoke { " and revoked it" } else { "" }
        ),
        CredentialsRevealed => format!(":eyes: {who} revealed the credentials"),
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
