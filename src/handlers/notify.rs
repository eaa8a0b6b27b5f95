//! Slack messages, sent by queue jobs so that a Slack outage delays them and loses none.
//! A rate limit defers the job without counting an attempt; a fatal Slack error (bad channel,
//! missing scope) buries it at once and raises an alert.

use crate::app::App;
use crate::domain::ids::{RequestId, SlackChannelId, SlackUserId};
use crate::queue::worker::Outcome;
use crate::slack::api::SlackError;
use crate::slack::blocks;
use crate::store::audit as audit_store;
use crate::store::requests;

fn outcome(result: Result<(), SlackError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(SlackError::RateLimited { retry_after }) => Outcome::Defer(retry_after),
        Err(SlackError::Transient(e)) => Outcome::Retry(format!("Slack: {e}")),
        Err(SlackError::Fatal { code }) => Outcome::Fail(format!("Slack refused the call: {code}")),
    }
}

/// Posts the approvers' message, or updates it to the request's current state.
pub async fn approval_message(app: &App, id: RequestId) -> anyhow::Result<Outcome> {
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
    let msg = blocks::approval_message(request, resource, &app.policy, &approvals);
    match (&request.approval_channel, &request.approval_ts) {
        (Some(channel), Some(ts)) => Ok(outcome(
            app.slack
                .update_message(channel.as_str(), ts, &msg.text, Some(&msg.blocks))
                .await,
        )),
        _ => {
            let Some(resource) = resource else {
                return Ok(Outcome::Fail(format!(
                    "`{}` is not in the policy any more; cannot post request {id}",
                    request.resource
                )));
            };
            let channel = &resource.approvers.channel;
            let ts = match app
                .slack
                .post_message(channel.as_str(), None, &msg.text, Some(&msg.blocks), false)
                .await
            {
                Ok(ts) => ts,
                Err(e) => return Ok(outcome(Err(e))),
            };
            let mut tx = app.store.begin_write().await?;
            let _ = requests::set_approval_message(&mut tx, id, channel, &ts).await?;
            tx.commit().await?;
            Ok(Outcome::Done)
        }
    }
}

/// Reminds the approvers in the approval message's thread.
pub async fn approval_nudge(app: &App, id: RequestId) -> anyhow::Result<Outcome> {
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
    let resource = app.policy.resource(request.resource.as_str());
    let text = blocks::nudge(request, resource);
    let Some(channel) = request
        .approval_channel
        .clone()
        .or_else(|| resource.map(|r| r.approvers.channel.clone()))
    else {
        return Ok(Outcome::Done);
    };
    Ok(outcome(
        app.slack
            .post_message(
                channel.as_str(),
                request.approval_ts.as_deref(),
                &text,
                None,
                false,
            )
            .await
            .map(|_| ()),
    ))
}

/// Posts one audit event: as a reply in its request's thread (starting the thread if needed),
/// or at the top of the audit channel.
pub async fn audit_post(app: &App, seq: i64) -> anyhow::Result<Outcome> {
    let (row, stored) = {
        let mut conn = app.store.read().await?;
        let Some(row) = audit_store::get(&mut conn, seq).await? else {
            return Ok(Outcome::Fail(format!("audit event {seq} does not exist")));
        };
        let stored = match row.request_id {
            Some(id) => requests::get(&mut conn, RequestId(id)).await?,
            None => None,
        };
        (row, stored)
    };
    let channel = app.policy.audit_channel.clone();
    let msg = blocks::audit_reply(&row, &app.policy);
    let mut blocks_value = msg.blocks.clone();
    if row.event == "breakglass"
        && let (Some(id), Some(array)) = (row.request_id, blocks_value.as_array_mut())
    {
        array.push(blocks::review_buttons(RequestId(id)));
    }
    let alert =
        crate::audit::AuditEvent::from_row(&row.event, &row.detail).is_some_and(|e| e.is_alert());
    let thread = match &stored {
        None => None,
        Some(stored) => match &stored.request.audit_ts {
            Some(ts) => Some(ts.clone()),
            None => {
                let root = blocks::audit_root(&stored.request);
                let ts = match app
                    .slack
                    .post_message(
                        channel.as_str(),
                        None,
                        &root.text,
                        Some(&root.blocks),
                        false,
                    )
                    .await
                {
                    Ok(ts) => ts,
                    Err(e) => return Ok(outcome(Err(e))),
                };
                let mut tx = app.store.begin_write().await?;
                let _ = requests::set_audit_root(&mut tx, stored.request.id, &ts).await?;
                tx.commit().await?;
                Some(ts)
            }
        },
    };
    Ok(outcome(
        app.slack
            .post_message(
                channel.as_str(),
                thread.as_deref(),
                &msg.text,
                Some(&blocks_value),
                alert && thread.is_some(),
            )
            .await
            .map(|_| ()),
    ))
}

pub async fn dm(
    app: &App,
    user: &SlackUserId,
    text: &str,
    blocks: Option<&serde_json::Value>,
) -> anyhow::Result<Outcome> {
    let channel = match app.slack.open_dm(user.as_str()).await {
        Ok(c) => c,
        Err(e) => return Ok(outcome(Err(e))),
    };
    Ok(outcome(
        app.slack
            .post_message(&channel, None, text, blocks, false)
            .await
            .map(|_| ()),
    ))
}

pub async fn ephemeral(
    app: &App,
    channel: &SlackChannelId,
    user: &SlackUserId,
    text: &str,
) -> anyhow::Result<Outcome> {
    Ok(outcome(
        app.slack
            .post_ephemeral(channel.as_str(), user.as_str(), text)
            .await,
    ))
}

/// Publishes a user's App Home.
pub async fn home(app: &App, user: &SlackUserId) -> anyhow::Result<Outcome> {
    let view = crate::slack::home::render(app, user).await?;
    Ok(outcome(app.slack.publish_home(user.as_str(), &view).await))
}
