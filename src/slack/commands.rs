//! `/jit`: parse the text, act, and answer with an ephemeral message. Every answer is built
//! here; the only outbound call in this path is `views.open` for the form.

use serde_json::json;

use super::blocks::{self, Msg};
use super::payload::SlashCommand;
use super::{limits, text, views};
use crate::app::App;
use crate::domain::command::{self, Command};
use crate::domain::duration::GrantDuration;
use crate::domain::ids::{SlackChannelId, SlackUserId};
use crate::domain::policy::{Membership, OnCall, Policy, Requester, Route};
use crate::domain::request::{Request, State};
use crate::handlers::access::{self, Revoker};
use crate::handlers::request::{self, Submission, Via};
use crate::handlers::{HandlerError, decision};

/// What to send back to Slack for a slash command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandReply {
    /// Shown only to the person who typed the command.
    Ephemeral(Msg),
    /// Nothing to say (a modal was opened).
    Empty,
}

impl CommandReply {
    fn text(line: impl Into<String>) -> Self {
        CommandReply::Ephemeral(blocks::simple(line.into()))
    }

    /// The HTTP response body Slack expects, if any.
    pub fn body(&self) -> Option<serde_json::Value> {
        match self {
            CommandReply::Ephemeral(msg) => Some(json!({
                "response_type": "ephemeral",
                "text": msg.text,
                "blocks": msg.blocks,
            })),
            CommandReply::Empty => None,
        }
    }
}

fn error_reply(err: HandlerError) -> CommandReply {
    // Handler messages are plain text that may quote what people typed: escape them.
    CommandReply::text(format!(":warning: {}", text::escape(&err.user_message())))
}

/// Answers a slash command once per Slack delivery (see [`super::deliveries`]): a replay gets
/// the first answer and changes nothing. `/jit request`, the hot path, records its delivery in
/// the same transaction as the request; everything else records it first.
pub async fn answer(
    app: &App,
    cmd: &SlashCommand,
    delivery: Option<&super::deliveries::Delivery>,
) -> Option<serde_json::Value> {
    let origin = cmd.origin();
    if let Err(refused) = app
        .directory
        .serves(origin.team_id.as_deref(), origin.enterprise_id.as_deref())
    {
        return not_served(app, &refused, "a slash command").then(|| {
            CommandReply::text(match refused {
                super::directory::NotServed::NotYet => "jit has not yet confirmed which Slack workspace it serves (Slack did not answer at startup), so it acts on nothing. Please try again in a minute.",
                super::directory::NotServed::Elsewhere => "jit serves only the workspace it is installed in; requests from other workspaces are refused.",
            })
            .body()
        })?;
    }
    if matches!(command::parse(&cmd.text), Ok(Command::Request { .. })) {
        return handle(app, cmd, delivery).await.body();
    }
    super::deliveries::once(
        app,
        delivery,
        super::deliveries::still_handling(true),
        // Built only when it is needed: building it logs the internal error under a reference.
        || {
            error_reply(HandlerError::Internal(anyhow::anyhow!(
                "cannot record the Slack delivery"
            )))
            .body()
        },
        || async { handle(app, cmd, None).await.body() },
    )
    .await
}

/// Logs and counts a delivery from a workspace jit does not serve; `true` (answer it).
pub fn not_served(app: &App, refused: &super::directory::NotServed, what: &str) -> bool {
    let reason = match refused {
        super::directory::NotServed::NotYet => "workspace_unknown",
        super::directory::NotServed::Elsewhere => "other_workspace",
    };
    app.metrics.http_rejected(reason);
    tracing::warn!(
        reason,
        what,
        "refused a Slack delivery that is not from jit's workspace"
    );
    true
}

pub async fn handle(
    app: &App,
    cmd: &SlashCommand,
    delivery: Option<&super::deliveries::Delivery>,
) -> CommandReply {
    let Ok(user) = SlackUserId::parse(&cmd.user_id) else {
        return CommandReply::text("jit could not tell who you are (no valid user_id).");
    };
    let channel = SlackChannelId::parse(&cmd.channel_id).ok();
    let parsed = match command::parse(&cmd.text) {
        Ok(parsed) => parsed,
        Err(err) => {
            return CommandReply::text(format!(":warning: {}", text::escape(&err.user_message())));
        }
    };
    let who = Requester::User(user.clone());
    match parsed {
        Command::Help => CommandReply::text(text::escape(&command::help_text())),
        Command::OpenForm { resource } => {
            open_form(app, &user, &cmd.trigger_id, channel, resource.as_deref()).await
        }
        Command::Request {
            resource,
            duration,
            start,
            justification,
        } => {
            // `at 23:00` is the requester's 23:00: their Slack profile's offset, as cached (the
            // ack path never calls Slack). Unknown yet: UTC, and the reply says so.
            let tz = start.map(|_| app.directory.tz_offset(&user));
            let start_at = start.map(|s| s.resolve(app.clock.now(), tz.flatten().unwrap_or(0)));
            let submission = Submission {
                requester: who,
                resource: &resource,
                duration: Some(duration),
                justification: &justification,
                ticket: None,
                start_at,
                via: Via::Slack,
                origin_channel: channel,
                delivery: delivery.cloned(),
            };
            match request::submit(app, submission).await {
                Ok(Ok(submitted)) => {
                    let mut line = submitted_line(&submitted);
                    if tz == Some(None) {
                        line.push_str(" (jit does not know your Slack time zone yet, so the time you gave was read as UTC; `/jit cancel` and ask again with a `Z` or `+01:00` offset if that is wrong.)");
                    }
                    CommandReply::text(line)
                }
                Ok(Err(field)) => CommandReply::text(format!(
                    ":warning: {}\nUsage: `{}`",
                    text::escape(field.message()),
                    text::escape(&command::Subcommand::Request.usage())
                )),
                Err(err) => error_reply(err),
            }
        }
        Command::List => match request::list(app, &who).await {
            Ok(listing) => {
                let mine: Vec<_> = listing.mine.into_iter().map(|s| s.request).collect();
                let breakglass: Option<Vec<_>> = listing
                    .unreviewed_breakglass
                    .map(|list| list.into_iter().map(|s| s.request).collect());
                CommandReply::Ephemeral(list_reply(&mine, breakglass.as_deref()))
            }
            Err(err) => error_reply(err),
        },
        Command::Cancel { id } => match request::cancel(app, &who, id).await {
            Ok(_) => CommandReply::text(format!(":no_entry_sign: Request {id} is cancelled.")),
            Err(err) => error_reply(err),
        },
        Command::Why { resource, duration } => CommandReply::Ephemeral(why_reply(
            &app.policy,
            &app.directory,
            &user,
            &resource,
            duration,
        )),
        Command::Release { id } => match access::release(app, &who, id).await {
            Ok(_) => CommandReply::text(format!(
                ":lock: Releasing request {id}: the access is being removed now. You will get a DM when it is gone."
            )),
            Err(err) => error_reply(err),
        },
        Command::Extend { id, duration } => {
            match request::extend(app, &who, id, duration, None, Via::Slack).await {
                Ok(submitted) => CommandReply::text(if submitted.auto {
                    format!(
                        ":hourglass_flowing_sand: Extension {} of {id} by {} was approved by policy; adding the time now.",
                        submitted.request.id, duration
                    )
                } else {
                    format!(
                        ":inbox_tray: Extension {} of {id} by {} is waiting for approval from {} {}.",
                        submitted.request.id,
                        duration,
                        blocks::approvers_of(&submitted.resource),
                        blocks::where_asked(&submitted.resource)
                    )
                }),
                Err(err) => error_reply(err),
            }
        }
        Command::Revoke { id, reason } => {
            match access::revoke(app, Revoker::Slack(&user), id, &reason).await {
                Ok(_) => CommandReply::text(format!(
                    ":no_entry: Request {id} is revoked; the access is being removed now."
                )),
                Err(err) => error_reply(err),
            }
        }
        Command::Breakglass { resource, reason } => {
            match request::breakglass(app, &user, &resource, &reason).await {
                Ok(request) => CommandReply::text(format!(
                    ":rotating_light: Break-glass access to {} (request {}) is being issued now for {}. This was announced to the admins and will be reviewed.",
                    text::code(request.resource.as_str()),
                    request.id,
                    request.duration.humanize()
                )),
                Err(err) => error_reply(err),
            }
        }
    }
}

fn submitted_line(submitted: &request::Submitted) -> String {
    let r = &submitted.request;
    if let Some(start) = r.start_at {
        let until = start + r.duration.to_chrono();
        return if submitted.auto {
            format!(
                ":zap: Request {} for {} ({}) was approved by policy. :calendar: Access starts {} and lasts until {}; you will get a DM then. `/jit cancel {}` withdraws it until it starts.",
                r.id,
                text::code(r.resource.as_str()),
                r.duration.humanize(),
                text::time(start),
                text::time(until),
                r.id.0
            )
        } else {
            format!(
                ":inbox_tray: Request {} for {} ({}) was sent to {} {}. :calendar: If approved, access starts {} and lasts until {}; if nobody decides by {}, it expires. You will get a DM when it is decided.",
                r.id,
                text::code(r.resource.as_str()),
                r.duration.humanize(),
                blocks::approvers_of(&submitted.resource),
                blocks::where_asked(&submitted.resource),
                text::time(start),
                text::time(until),
                r.pending_until
                    .map(text::time)
                    .unwrap_or_else(|| text::time(start))
            )
        };
    }
    if submitted.auto {
        let because = submitted
            .on_call
            .as_deref()
            .map(|s| format!(" (you are on call in PagerDuty schedule {})", text::code(s)))
            .unwrap_or_default();
        format!(
            ":zap: Request {} for {} ({}) was approved by policy{because}. Access is being issued; you will get a DM.",
            r.id,
            text::code(r.resource.as_str()),
            r.duration.humanize()
        )
    } else {
        let note = submitted
            .route_note
            .as_deref()
            .map(|n| format!("\n:warning: {}", text::escape(n)))
            .unwrap_or_default();
        format!(
            ":inbox_tray: Request {} for {} ({}) was sent to {} {}. You will get a DM when it is decided.{note}",
            r.id,
            text::code(r.resource.as_str()),
            r.duration.humanize(),
            blocks::approvers_of(&submitted.resource),
            blocks::where_asked(&submitted.resource)
        )
    }
}

async fn open_form(
    app: &App,
    user: &SlackUserId,
    trigger_id: &str,
    channel: Option<SlackChannelId>,
    resource: Option<&str>,
) -> CommandReply {
    let who = Requester::User(user.clone());
    let resources: Vec<_> = app.policy.requestable_by(&who, &app.directory).collect();
    if let Some(wanted) = resource
        && !resources.iter().any(|r| r.id.as_str() == wanted)
    {
        return match app.policy.evaluate(wanted, &who, None, &app.directory) {
            Err(refusal) => {
                CommandReply::text(format!(":warning: {}", text::escape(&refusal.to_string())))
            }
            Ok(_) => CommandReply::text(format!(
                ":warning: You cannot request {}.",
                text::code(wanted)
            )),
        };
    }
    let metadata = channel.map(|c| c.to_string()).unwrap_or_default();
    let view = views::request_modal(&resources, resource, &metadata);
    match app.slack.open_view(trigger_id, &view).await {
        Ok(_) => CommandReply::Empty,
        Err(err) => {
            tracing::warn!(error = %err, "views.open failed for the request form");
            CommandReply::text(format!(
                ":warning: jit could not open the request form ({}). You can still type `{}`.",
                text::escape(err.code()),
                text::escape(&command::Subcommand::Request.usage())
            ))
        }
    }
}

/// At most this many of one's own requests in `/jit list`, and of unreviewed break-glass grants.
pub const LIST_MINE: usize = 100;
const LIST_BREAKGLASS: usize = 50;

/// `/jit list`: one's own open requests, and for admins the break-glass grants to review. Long
/// lists end with "… and N more"; the fallback text is the same lines the blocks show.
pub fn list_reply(mine: &[Request], breakglass: Option<&[Request]>) -> Msg {
    let mut lines = vec!["*Your pending and active requests*".to_owned()];
    if mine.is_empty() {
        lines.push("Nothing pending or active. `/jit request` asks for access.".into());
    }
    for r in mine.iter().take(LIST_MINE) {
        let status = match (r.state, r.expires_at) {
            (State::Active, Some(until)) => format!(
                "active until {} · `/jit release {}` · `/jit extend {} &lt;duration&gt;`",
                text::time(until),
                r.id.0,
                r.id.0
            ),
            (State::Pending, _) => format!(
                "{}{} · `/jit cancel {}`",
                r.state.label(),
                r.start_at
                    .map(|s| format!(" · starts {}", text::time(s)))
                    .unwrap_or_default(),
                r.id.0
            ),
            (State::Approved, _) if r.start_at.is_some() => format!(
                "approved · starts {} · `/jit cancel {}`",
                text::time(r.start_at.unwrap_or_default()),
                r.id.0
            ),
            (state, _) => state.label().to_owned(),
        };
        lines.push(format!(
            "• *{}* {} for {} · {status}",
            r.id,
            text::code(r.resource.as_str()),
            r.duration.humanize()
        ));
    }
    if mine.len() > LIST_MINE {
        lines.push(limits::more_line(
            mine.len() - LIST_MINE,
            "the oldest are shown; cancel or release some to see the rest",
        ));
    }
    if let Some(unreviewed) = breakglass {
        lines.push(String::new());
        lines.push("*Break-glass grants waiting for an admin's review*".into());
        if unreviewed.is_empty() {
            lines.push("None.".into());
        }
        for r in unreviewed.iter().take(LIST_BREAKGLASS) {
            lines.push(format!(
                "• *{}* {} took {} {} ({}): {}",
                r.id,
                text::requester(&r.requester),
                text::code(r.resource.as_str()),
                text::time(r.created_at),
                r.state.label(),
                text::escape_truncated(&r.justification, 200)
            ));
        }
        if unreviewed.len() > LIST_BREAKGLASS {
            lines.push(limits::more_line(
                unreviewed.len() - LIST_BREAKGLASS,
                "review these first; the rest follow",
            ));
        }
    }
    blocks::simple(lines.join("\n"))
}

/// The most of a resource's description `/jit why` shows.
const WHY_DESCRIPTION: usize = 1_500;

/// `/jit why`: which rule applies, who approves, the maximum, and whether auto-approval applies.
/// Pure: `membership` answers group membership and workspace standing (jit's directory).
pub fn why_reply(
    policy: &Policy,
    membership: &dyn Membership,
    user: &SlackUserId,
    resource_id: &str,
    duration: Option<GrantDuration>,
) -> Msg {
    let who = Requester::User(user.clone());
    let Some(resource) = policy.resource(resource_id) else {
        let refusal = policy
            .evaluate(resource_id, &who, duration, membership)
            .err()
            .map(|r| r.to_string())
            .unwrap_or_default();
        return blocks::simple(format!(":warning: {}", text::escape(&refusal)));
    };
    let mut lines = vec![format!(
        "*{}*{} · provider `{}`",
        text::code(resource.id.as_str()),
        if resource.description.is_empty() {
            String::new()
        } else {
            // Cut, so a policy's essay cannot push the rules below out of the message.
            format!(
                ": {}",
                text::escape_truncated(&resource.description, WHY_DESCRIPTION)
            )
        },
        resource.provider.kind()
    )];
    let may = match &resource.requesters {
        None => "anyone in the workspace".to_owned(),
        Some(p) => text::principals(p),
    };
    let evaluation = policy.evaluate(resource_id, &who, duration, membership);
    let allowed = !matches!(
        evaluation,
        Err(crate::domain::policy::Refusal::NotAllowed { .. }
            | crate::domain::policy::Refusal::NotNamed { .. })
    );
    lines.push(format!(
        "• Who may request: {may} ({})",
        if allowed {
            "that includes you"
        } else {
            "not you"
        }
    ));
    let asked_where = blocks::where_asked(resource);
    lines.push(format!(
        "• Approvers: {} {asked_where} · {} approval{} needed · nobody approves their own request",
        blocks::approvers_of(resource),
        resource.approvals_required,
        if resource.approvals_required == 1 {
            ""
        } else {
            "s"
        }
    ));
    lines.push(format!(
        "• Duration: at most {} ({}), {} by default · at most {} ({}) in all with extensions",
        resource.max_duration,
        resource.max_duration.humanize(),
        resource.default_duration,
        resource.max_lifetime,
        resource.max_lifetime.humanize()
    ));
    if let Some(rule) = resource.justification.describe() {
        lines.push(format!("• Justification: {}", text::escape(&rule)));
    }
    if let Some(rule) = resource.ticket.describe() {
        let linked = if resource.ticket.url.is_some() {
            " · linked to the tracker in the approval message"
        } else {
            ""
        };
        lines.push(format!("• Ticket: {}{linked}", text::escape(&rule)));
    }
    let asked = duration.unwrap_or(resource.default_duration);
    let auto = match &resource.auto_approve {
        None => "• Auto-approval: never for this resource".to_owned(),
        Some(rule) => {
            let schedules = rule.oncall.as_ref().map(|o| {
                o.pagerduty_schedules
                    .iter()
                    .map(|s| text::code(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            let whom = match (&schedules, rule.who.is_empty()) {
                (None, true) => "anyone who may request it".to_owned(),
                (None, false) => text::principals(&rule.who),
                (Some(s), true) => format!("whoever is on call in PagerDuty schedule {s}"),
                (Some(s), false) => format!(
                    "{} and whoever is on call in PagerDuty schedule {s}",
                    text::principals(&rule.who)
                ),
            };
            let verdict = match &evaluation {
                Ok(e) => match (e.route, &e.on_call) {
                    (Route::Auto, Some(OnCall::Yes { schedule })) => format!(
                        "*yes* for you at {asked}: you are on call now in {}",
                        text::code(schedule)
                    ),
                    (Route::Auto, _) => format!("*yes* for you at {asked}"),
                    _ if asked > rule.max_duration => {
                        format!("no for you at {asked} (longer than {})", rule.max_duration)
                    }
                    (_, Some(OnCall::No)) => {
                        "no for you now (you are not in the rule, and not on call now)".to_owned()
                    }
                    (_, Some(OnCall::Unknown { why })) => format!(
                        "no for you now: on-call cannot be checked ({}), so the rule fails closed",
                        text::escape(why)
                    ),
                    _ => "no for you (you are not in the rule)".to_owned(),
                },
                Err(e) => format!("no: {}", text::escape(&e.to_string())),
            };
            format!(
                "• Auto-approval: for {whom} up to {} — {verdict}",
                rule.max_duration
            )
        }
    };
    lines.push(auto);
    lines.push(format!(
        "• Pending requests expire after {}; reminders go out {} before a grant ends",
        resource.pending_timeout, resource.reminder_before
    ));
    lines.push(match resource.escalate.as_slice() {
        [] => "• Escalation: none (no reminder to the approvers)".to_owned(),
        _ if resource.escalate_is_default => format!(
            "• Escalation: the approvers are reminded after {} (half the pending time)",
            resource.escalate[0].after
        ),
        steps => format!(
            "• Escalation of a waiting request: {}",
            steps
                .iter()
                .map(|s| format!("after {} → {}", s.after, blocks::escalation_target(s)))
                .collect::<Vec<_>>()
                .join(" · ")
        ),
    });
    lines.push(format!(
        "• Scheduled start: up to {} ({}) ahead, e.g. `/jit request {} {} at 23:00 …` · it may be approved ahead of time, but expires if nobody has decided by the start · the policy is checked again at the start, and access lasts its duration from then",
        resource.max_start_ahead,
        resource.max_start_ahead.humanize(),
        text::escape(resource.id.as_str()),
        resource.default_duration
    ));
    lines.push(format!(
        "• Break-glass: {}",
        if resource.breakglass {
            "allowed (granted at once, announced to the admins, reviewed afterwards)"
        } else {
            "not allowed"
        }
    ));
    blocks::simple(lines.join("\n"))
}

/// Approve clicks and friends reuse the decision handlers; see [`super::interactions`].
pub use decision::ApproveOutcome;
