//! The App Home tab: a person's own requests with Release and Extend, a "Request access" button,
//! and for approvers the requests waiting for them.

use serde_json::{Value, json};

use super::blocks::ids;
use super::text;
use crate::app::App;
use crate::domain::ids::SlackUserId;
use crate::domain::policy::Requester;
use crate::domain::request::{Request, State};
use crate::store::requests;

/// Slack allows 100 blocks in a view; keep room for headers.
const MAX_ITEMS: usize = 40;

fn button(action_id: &str, label: &str, value: String, style: Option<&str>) -> Value {
    let mut b = json!({"type": "button", "action_id": action_id, "text": {"type": "plain_text", "text": label}, "value": value});
    if let Some(style) = style {
        b["style"] = json!(style);
    }
    b
}

fn line(request: &Request) -> String {
    let status = match (request.state, request.expires_at) {
        (State::Active, Some(until)) => format!("active until {}", text::time(until)),
        (state, _) => state.label().to_owned(),
    };
    format!(
        "*{}* {} for {} · {status}",
        request.id,
        text::code(request.resource.as_str()),
        request.duration.humanize()
    )
}

pub async fn render(app: &App, user: &SlackUserId) -> anyhow::Result<Value> {
    let who = Requester::User(user.clone());
    let mut conn = app.store.read().await?;
    let mine = requests::open_for_requester(&mut conn, &who).await?;
    let approvable: Vec<&str> = app
        .policy
        .resources()
        .iter()
        .filter(|r| r.approvers.includes(user, &app.directory))
        .map(|r| r.id.as_str())
        .collect();
    let waiting: Vec<_> = requests::pending_on(&mut conn, &approvable)
        .await?
        .into_iter()
        .filter(|s| s.request.requester != who)
        .collect();
    drop(conn);

    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": "Just-in-time access"}}),
        json!({"type": "actions", "block_id": "home_actions", "elements": [
            button(ids::OPEN_FORM, "Request access", String::new(), Some("primary"))
        ]}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": "*Your requests*"}}),
    ];
    if mine.is_empty() {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": "Nothing pending or active."}]}));
    }
    for stored in mine.iter().take(MAX_ITEMS) {
        let request = &stored.request;
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": line(request)}}));
        let id = request.id.0.to_string();
        if request.state == State::Active {
            blocks.push(json!({"type": "actions", "elements": [
                button(ids::EXTEND, "Extend", id.clone(), None),
                button(ids::RELEASE, "Release now", id, Some("danger")),
            ]}));
        }
    }
    if !approvable.is_empty() {
        blocks.push(json!({"type": "divider"}));
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": "*Waiting for your decision*"}}));
        if waiting.is_empty() {
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": "No requests are waiting for you."}]}));
        }
        for stored in waiting.iter().take(MAX_ITEMS) {
            let request = &stored.request;
            blocks.push(
                json!({"type": "section", "text": {"type": "mrkdwn", "text": format!(
                    "{} · {}\n{}",
                    line(request),
                    text::requester(&request.requester),
                    text::quote(&request.justification, 300)
                )}}),
            );
            let id = request.id.0.to_string();
            blocks.push(json!({"type": "actions", "elements": [
                button(ids::APPROVE, "Approve", id.clone(), Some("primary")),
                button(ids::DENY, "Deny", id, Some("danger")),
            ]}));
        }
    }
    Ok(json!({"type": "home", "blocks": blocks}))
}
