//! Button clicks (`block_actions`) and modal submissions (`view_submission`).
//!
//! Clicks are answered with an empty 200; anything the clicker should read goes out as an
//! ephemeral message (or a DM) through the queue. An action jit did not create (another app's
//! surface, a URL button, a workflow, an unknown `action_id`, or a jit button without a request
//! number) is answered 200 and ignored, with a debug line only. Modals open within the three seconds the
//! click's `trigger_id` lives. Submissions answer with `response_action`: inline field errors,
//! or `clear`.

use serde_json::{Value, json};

use super::blocks::{self, ids};
use super::payload::{BlockActions, Interaction, View, ViewSubmission};
use super::{text, views};
use crate::app::App;
use crate::domain::duration::GrantDuration;
use crate::domain::ids::{RequestId, SlackChannelId, SlackUserId};
use crate::domain::policy::Requester;
use crate::domain::request::State;
use crate::handlers::access;
use crate::handlers::decision::{self, ApproveOutcome};
use crate::handlers::request::{self, FieldError, Submission, Via};
use crate::handlers::{HandlerError, load};
use crate::jobs::Job;
use crate::queue::{self, Placement};

/// What to send back to Slack for an interaction.
#[derive(Debug, Clone, PartialEq)]
pub enum InteractionReply {
    Empty,
    /// A `response_action` body for a view submission.
    Json(Value),
}

/// Answers an interaction once per Slack delivery (see [`super::deliveries`]): a replayed click
/// or submission gets the first answer and changes nothing.
pub async fn answer(
    app: &App,
    interaction: Interaction,
    delivery: Option<&super::deliveries::Delivery>,
) -> Option<Value> {
    if let Some(origin) = interaction.origin()
        && let Err(refused) = app
            .directory
            .serves(origin.team_id.as_deref(), origin.enterprise_id.as_deref())
    {
        super::commands::not_served(app, &refused, "an interaction");
        return None;
    }
    super::deliveries::once(
        app,
        delivery,
        None,
        || None,
        || async {
            match handle(app, interaction).await {
                InteractionReply::Empty => None,
                InteractionReply::Json(body) => Some(body),
            }
        },
    )
    .await
}

pub async fn handle(app: &App, interaction: Interaction) -> InteractionReply {
    match interaction {
        Interaction::BlockActions(actions) => {
            block_actions(app, actions).await;
            InteractionReply::Empty
        }
        Interaction::ViewSubmission(submission) => view_submission(app, submission).await,
        Interaction::Other => InteractionReply::Empty,
    }
}

/// Tells the clicker something: ephemeral in the channel of the click, or a DM from App Home.
async fn feedback(app: &App, channel: Option<&str>, user: &SlackUserId, line: String) {
    let now = app.clock.now();
    let job = match channel.and_then(|c| SlackChannelId::parse(c).ok()) {
        Some(channel) => Job::Ephemeral {
            channel,
            user: user.clone(),
            text: line,
        },
        None => Job::Dm {
            user: user.clone(),
            text: line,
            blocks: None,
        },
    };
    let result = async {
        let mut tx = app.store.begin_write().await?;
        queue::enqueue(&mut tx, &job, Placement::none(), now, now).await?;
        tx.commit().await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => app.waker.wake(),
        Err(err) => tracing::error!(
            error = format!("{err:#}"),
            "cannot queue feedback for a click"
        ),
    }
}

fn request_id(value: Option<&str>) -> Option<RequestId> {
    value.and_then(|v| RequestId::parse(v).ok())
}

async fn block_actions(app: &App, actions: BlockActions) {
    let Ok(user) = SlackUserId::parse(&actions.user.id) else {
        return;
    };
    let channel = actions.channel_id().map(str::to_owned);
    let channel = channel.as_deref();
    let trigger = actions.trigger_id.clone().unwrap_or_default();
    for action in &actions.actions {
        let id = request_id(action.value.as_deref());
        let said = match (action.action_id.as_str(), id) {
            (ids::OPEN_FORM, _) => open_form(app, &user, &trigger).await,
            (ids::APPROVE, Some(id)) => match decision::approve(app, &user, id).await {
                Ok(ApproveOutcome::Approved(_)) => None,
                Ok(ApproveOutcome::Partial { count, required }) => Some(format!(
                    "Your approval of request {id} is recorded ({count} of {required}); it needs {} more.",
                    required - count
                )),
                Ok(ApproveOutcome::AlreadyApprovedByYou) => {
                    Some(format!("You have already approved request {id}."))
                }
                Ok(ApproveOutcome::AlreadyDecided(r)) => Some(format!(
                    "Request {id} is already {}; nothing was changed.",
                    r.state.label()
                )),
                Ok(ApproveOutcome::Expired(r)) => Some(format!(
                    "Request {id} expired {} without a decision, so it can no longer be approved; nothing was changed. The requester can ask again.",
                    r.pending_until.map(text::time).unwrap_or_default()
                )),
                Err(err) => Some(err.user_message()),
            },
            (ids::DENY, Some(id)) => open_deny(app, &user, id, &trigger).await,
            (ids::EXTEND, Some(id)) => open_extend(app, &user, id, &trigger).await,
            (ids::RELEASE, Some(id)) => {
                match access::release(app, &Requester::User(user.clone()), id).await {
                    Ok(_) => Some(format!(
                        "Releasing request {id}: the access is being removed now."
                    )),
                    Err(err) => Some(err.user_message()),
                }
            }
            (ids::REVEAL, Some(id)) => reveal(app, &user, id, &trigger).await,
            (ids::REVIEW, Some(id)) | (ids::REVIEW_REVOKE, Some(id)) => {
                let revoke = action.action_id == ids::REVIEW_REVOKE;
                match access::review(app, &user, id, revoke).await {
                    Ok(_) => Some(format!(
                        "Break-glass grant {id} is marked reviewed{}.",
                        if revoke { " and is being revoked" } else { "" }
                    )),
                    Err(err) => Some(err.user_message()),
                }
            }
            // Not jit's (a URL button, another surface, a workflow), or a jit button without a
            // request number: nothing to do, and nothing to say.
            (other, id) => {
                tracing::debug!(
                    action = other,
                    has_request = id.is_some(),
                    "ignoring an action jit did not create"
                );
                None
            }
        };
        if let Some(line) = said {
            feedback(app, channel, &user, text::escape(&line)).await;
        }
    }
}

async fn open_form(app: &App, user: &SlackUserId, trigger: &str) -> Option<String> {
    let who = Requester::User(user.clone());
    let resources: Vec<_> = app.policy.requestable_by(&who, &app.directory).collect();
    let view = views::request_modal(&resources, None, "");
    match app.slack.open_view(trigger, &view).await {
        Ok(_) => None,
        Err(err) => Some(format!(
            "jit could not open the request form ({}).",
            err.code()
        )),
    }
}

async fn open_deny(app: &App, user: &SlackUserId, id: RequestId, trigger: &str) -> Option<String> {
    let stored = match load(app, id).await {
        Ok(stored) => stored,
        Err(err) => return Some(err.user_message()),
    };
    if let Err(err) = decision::authorize(app, &stored, user).await {
        return Some(err.user_message());
    }
    let request = stored.request;
    if request.state != State::Pending {
        return Some(format!(
            "Request {id} is already {}; nothing was changed.",
            request.state.label()
        ));
    }
    match app
        .slack
        .open_view(trigger, &views::deny_modal(&request))
        .await
    {
        Ok(_) => None,
        Err(err) => Some(format!(
            "jit could not open the deny form ({}); please click Deny again.",
            err.code()
        )),
    }
}

async fn open_extend(
    app: &App,
    user: &SlackUserId,
    id: RequestId,
    trigger: &str,
) -> Option<String> {
    let request = match load(app, id).await {
        Ok(stored) => stored.request,
        Err(err) => return Some(err.user_message()),
    };
    if request.requester.user() != Some(user) {
        return Some(format!("Grant {id} is not yours, so you cannot extend it."));
    }
    if request.state != State::Active {
        return Some(format!(
            "Grant {id} is {}; only active grants can be extended.",
            request.state.label()
        ));
    }
    let Some(resource) = app.policy.resource(request.resource.as_str()) else {
        return Some(format!(
            "`{}` is no longer in the policy.",
            request.resource
        ));
    };
    match app
        .slack
        .open_view(trigger, &views::extend_modal(&request, resource))
        .await
    {
        Ok(_) => None,
        Err(err) => Some(format!(
            "jit could not open the extend form ({}); you can use `/jit extend {} <duration>`.",
            err.code(),
            id.0
        )),
    }
}

/// Opens the credentials window, and only then records the reveal: as revealed when Slack
/// opened it, as failed (with Slack's error code) when it did not.
async fn reveal(app: &App, user: &SlackUserId, id: RequestId, trigger: &str) -> Option<String> {
    let who = Requester::User(user.clone());
    let (request, pairs) = match access::open_credentials(app, &who, id).await {
        Ok(found) => found,
        Err(err) => return Some(err.user_message()),
    };
    let expires = request.expires_at.map(text::utc).unwrap_or_default();
    let view = views::reveal_modal(&request, &pairs, &expires);
    drop(pairs);
    let opened = app.slack.open_view(trigger, &view).await;
    drop(view);
    let outcome = match &opened {
        Ok(_) => access::RevealOutcome::Shown,
        Err(err) => access::RevealOutcome::Failed { error: err.code() },
    };
    if let Err(err) = access::record_reveal(app, &who, id, outcome).await {
        tracing::error!(
            request_id = id.0,
            outcome = ?outcome,
            error = %err,
            "cannot record a credentials reveal in the audit log"
        );
    }
    match opened {
        Ok(_) => None,
        // The error names Slack's code and json-pointers only; the view itself is never logged.
        Err(err) => {
            tracing::warn!(request_id = id.0, error = %err, "views.open refused the credentials window");
            Some(format!(
                "jit could not open the credentials window ({}); click Reveal credentials again.",
                err.code()
            ))
        }
    }
}

fn errors(block: &str, message: &str) -> InteractionReply {
    InteractionReply::Json(json!({
        "response_action": "errors",
        "errors": { block: message },
    }))
}

fn clear() -> InteractionReply {
    InteractionReply::Json(json!({"response_action": "clear"}))
}

fn field_block(field: &FieldError) -> &'static str {
    match field {
        FieldError::Resource(_) => views::RESOURCE_BLOCK.0,
        FieldError::Duration(_) => views::DURATION_BLOCK.0,
        FieldError::Justification(_) | FieldError::JustificationRule(_) => {
            views::JUSTIFICATION_BLOCK.0
        }
        FieldError::Ticket(_) | FieldError::TicketRule(_) => views::TICKET_BLOCK.0,
        FieldError::Start { .. } => views::START_BLOCK.0,
    }
}

fn duration_of(view: &View) -> Result<GrantDuration, String> {
    let text = view
        .input(views::DURATION_BLOCK.0, views::DURATION_BLOCK.1)
        .ok_or_else(|| "Choose how long you need access.".to_owned())?;
    GrantDuration::parse(&text).map_err(|e| e.to_string())
}

async fn view_submission(app: &App, submission: ViewSubmission) -> InteractionReply {
    let Ok(user) = SlackUserId::parse(&submission.user.id) else {
        return InteractionReply::Empty;
    };
    let view = &submission.view;
    match view.callback_id.as_deref() {
        Some(ids::REQUEST_MODAL) => submit_request(app, &user, view).await,
        Some(ids::DENY_MODAL) => {
            let Some(id) = request_id(view.private_metadata.as_deref()) else {
                return errors(
                    views::REASON_BLOCK.0,
                    "This form lost its request number; close it and click Deny again.",
                );
            };
            let reason = view
                .input(views::REASON_BLOCK.0, views::REASON_BLOCK.1)
                .unwrap_or_default();
            match decision::deny(app, &user, id, &reason).await {
                Ok(_) => clear(),
                Err(err) => errors(views::REASON_BLOCK.0, &err.user_message()),
            }
        }
        Some(ids::EXTEND_MODAL) => {
            let Some(id) = request_id(view.private_metadata.as_deref()) else {
                return errors(
                    views::DURATION_BLOCK.0,
                    "This form lost its grant number; close it and click Extend again.",
                );
            };
            let duration = match duration_of(view) {
                Ok(d) => d,
                Err(message) => return errors(views::DURATION_BLOCK.0, &message),
            };
            let reason = view.input(views::REASON_BLOCK.0, views::REASON_BLOCK.1);
            let who = Requester::User(user.clone());
            match request::extend(app, &who, id, duration, reason.as_deref(), Via::Slack).await {
                Ok(_) => clear(),
                Err(err) => errors(views::DURATION_BLOCK.0, &err.user_message()),
            }
        }
        _ => InteractionReply::Empty,
    }
}

async fn submit_request(app: &App, user: &SlackUserId, view: &View) -> InteractionReply {
    let Some(resource) = view.input(views::RESOURCE_BLOCK.0, views::RESOURCE_BLOCK.1) else {
        return errors(views::RESOURCE_BLOCK.0, "Choose a resource.");
    };
    let duration = match duration_of(view) {
        Ok(d) => d,
        Err(message) => return errors(views::DURATION_BLOCK.0, &message),
    };
    let justification = view
        .input(views::JUSTIFICATION_BLOCK.0, views::JUSTIFICATION_BLOCK.1)
        .unwrap_or_default();
    let ticket = view.input(views::TICKET_BLOCK.0, views::TICKET_BLOCK.1);
    let start_at = match view.date_time(views::START_BLOCK.0, views::START_BLOCK.1) {
        None => None,
        Some(secs) => match chrono::DateTime::from_timestamp(secs, 0) {
            Some(at) => Some(at),
            None => {
                return errors(
                    views::START_BLOCK.0,
                    "That is not a date and time jit can use.",
                );
            }
        },
    };
    let origin = view
        .private_metadata
        .as_deref()
        .and_then(|c| SlackChannelId::parse(c).ok());
    let submission = Submission {
        requester: Requester::User(user.clone()),
        resource: &resource,
        duration: Some(duration),
        justification: &justification,
        ticket: ticket.as_deref(),
        start_at,
        via: Via::Slack,
        origin_channel: origin,
        delivery: None,
    };
    match request::submit(app, submission).await {
        Ok(Ok(submitted)) => {
            let msg = blocks::submitted_dm(&submitted.request, &submitted.resource, submitted.auto);
            let now = app.clock.now();
            let queued = async {
                let mut tx = app.store.begin_write().await?;
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
                tx.commit().await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(err) = queued {
                tracing::error!(
                    error = format!("{err:#}"),
                    "cannot queue the confirmation DM"
                );
            }
            app.waker.wake();
            clear()
        }
        Ok(Err(field)) => errors(field_block(&field), field.message()),
        Err(HandlerError::User(message)) => errors(views::JUSTIFICATION_BLOCK.0, &message),
        Err(err) => errors(views::JUSTIFICATION_BLOCK.0, &err.user_message()),
    }
}
