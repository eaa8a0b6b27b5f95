//! Plays Slack's part towards jit: builds slash commands, clicks and modal submissions the way
//! Slack sends them, signs them with the signing secret, and posts them to jit's HTTP routes.
//! Used by `jit demo`, the benchmarks and the test harness, so all three speak to the real
//! server exactly as Slack would.
//!
//! Like Slack, it refuses what it cannot show: a successful answer to a slash command or an
//! interaction is checked with [`super::limits::check_reply`], the validator the simulator
//! holds Web API calls to, and one that breaks a limit is an error naming the json-pointers.
//! So a builder regression in a synchronous reply fails the tests as a refused API call does.

use secrecy::SecretString;
use serde_json::{Value, json};

use crate::clock::SharedClock;

/// An answer from jit.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The JSON body, or `Null` when jit answered with an empty body.
    pub body: Value,
}

impl Answer {
    /// The `text` of an ephemeral reply.
    pub fn text(&self) -> String {
        self.body["text"].as_str().unwrap_or_default().to_owned()
    }
}

#[derive(Clone)]
pub struct SlackDriver {
    http: reqwest::Client,
    base_url: String,
    secret: SecretString,
    clock: SharedClock,
}

impl std::fmt::Debug for SlackDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlackDriver({})", self.base_url)
    }
}

/// A fresh `trigger_id`, as Slack gives one to every command, click and submission: two
/// deliveries of the same action are never the same bytes (jit refuses a replayed body).
pub fn trigger_id(user: &str, what: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{user}.{what}.{n}.trigger")
}

/// Slack's block_actions payload for a button click on a message in `channel`.
pub fn click_payload(user: &str, action_id: &str, value: &str, channel: &str) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0JITSIM"},
        "api_app_id": "A0JITAPP",
        "token": "unused",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": channel, "is_ephemeral": false},
        "trigger_id": trigger_id(user, action_id),
        "team": {"id": "T0JITSIM", "domain": "example"},
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": {"id": channel, "name": "channel"},
        "response_url": "https://hooks.slack.invalid/actions/1",
        "actions": [{
            "type": "button",
            "action_id": action_id,
            "block_id": "decision",
            "text": {"type": "plain_text", "text": action_id, "emoji": true},
            "value": value,
            "action_ts": "1700000010.123456"
        }]
    })
}

/// Slack's view_submission payload with `(block_id, action_id, value)` inputs; action ids ending
/// in `_select` are sent as selected options, the others as typed text.
pub fn submission_payload(
    user: &str,
    callback_id: &str,
    metadata: &str,
    inputs: &[(&str, &str, &str)],
) -> Value {
    let mut values = serde_json::Map::new();
    for (block, action, value) in inputs {
        let state = if action.ends_with("_select") {
            json!({"type": "static_select", "selected_option": {"text": {"type": "plain_text", "text": value}, "value": value}})
        } else if action.ends_with("_datetime") {
            // A datetimepicker's choice: unix seconds, as a number (empty: not chosen).
            json!({"type": "datetimepicker", "selected_date_time": value.parse::<i64>().ok()})
        } else {
            json!({"type": "plain_text_input", "value": value})
        };
        values.insert((*block).to_owned(), json!({ *action: state }));
    }
    json!({
        "type": "view_submission",
        "team": {"id": "T0JITSIM", "domain": "example"},
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0JITSIM"},
        "api_app_id": "A0JITAPP",
        "trigger_id": trigger_id(user, "submit"),
        "view": {
            "id": "V0MODAL",
            "type": "modal",
            "callback_id": callback_id,
            "private_metadata": metadata,
            "state": {"values": values}
        },
        "enterprise": null,
        "is_enterprise_install": false
    })
}

/// `answer`, if Slack would show it: a 2xx body that breaks one of Slack's limits is an error,
/// as Slack would refuse to show it (the person would see nothing, or "failed with the error").
fn within_limits(answer: Answer, what: &str) -> anyhow::Result<Answer> {
    if !(200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let found = super::limits::check_reply(&answer.body);
    if found.is_empty() {
        return Ok(answer);
    }
    let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
    anyhow::bail!(
        "Slack would refuse jit's answer to a {what}: {}",
        lines.join("; ")
    )
}

impl SlackDriver {
    /// `base_url` is jit's HTTP address; requests are signed with `secret` at `clock`'s time.
    pub fn new(base_url: &str, secret: SecretString, clock: SharedClock) -> Self {
        Self {
            http: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret,
            clock,
        }
    }

    /// Posts `body` to `path`, signed as Slack signs it.
    pub async fn post_signed(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> anyhow::Result<Answer> {
        let ts = self.clock.wall().timestamp();
        let signature = super::verify::sign(&self.secret, ts, body.as_bytes());
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header("content-type", content_type)
            .header("x-slack-request-timestamp", ts.to_string())
            .header("x-slack-signature", signature)
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Answer { status, body })
    }

    /// `/jit <text>` typed by `user` in `channel`.
    pub async fn slash(&self, user: &str, channel: &str, text: &str) -> anyhow::Result<Answer> {
        let body = serde_urlencoded::to_string([
            ("token", "unused"),
            ("team_id", "T0JITSIM"),
            ("channel_id", channel),
            ("user_id", user),
            ("command", "/jit"),
            ("text", text),
            ("response_url", "https://hooks.slack.invalid/commands/1"),
            ("trigger_id", &trigger_id(user, "command")),
        ])?;
        let answer = self
            .post_signed("/slack/commands", "application/x-www-form-urlencoded", body)
            .await?;
        within_limits(answer, "slash command")
    }

    /// An interaction payload (a click or a submission).
    pub async fn interaction(&self, payload: &Value) -> anyhow::Result<Answer> {
        let body = serde_urlencoded::to_string([("payload", payload.to_string())])?;
        let answer = self
            .post_signed(
                "/slack/interactions",
                "application/x-www-form-urlencoded",
                body,
            )
            .await?;
        within_limits(answer, "interaction")
    }

    /// An Events API body.
    /// An Events API body. Slack stamps every event callback with its workspace: a body
    /// without `team_id` gets the simulated one.
    pub async fn event(&self, body: &Value) -> anyhow::Result<Answer> {
        let mut body = body.clone();
        if body["type"] == "event_callback" && body.get("team_id").is_none() {
            body["team_id"] = json!(super::simulator::TEAM_ID);
        }
        self.post_signed("/slack/events", "application/json", body.to_string())
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Json;
    use axum::routing::post;
    use chrono::{TimeZone, Utc};

    use super::*;

    /// A stand-in for jit that answers with whatever it is given.
    async fn answering(command: Value, interaction: Value) -> SlackDriver {
        let router = axum::Router::new()
            .route(
                "/slack/commands",
                post(move || async move { Json(command) }),
            )
            .route(
                "/slack/interactions",
                post(move || async move { Json(interaction) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let clock =
            crate::clock::ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap());
        SlackDriver::new(&url, SecretString::from("secret"), Arc::new(clock))
    }

    #[tokio::test]
    async fn a_reply_slack_would_refuse_is_an_error() {
        let divider = json!({"type": "divider"});
        let driver = answering(
            json!({"response_type": "ephemeral", "text": "x", "blocks": vec![divider.clone(); 51]}),
            json!({"response_action": "update", "view": {"type": "modal",
                "title": {"type": "plain_text", "text": "Request access"},
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "a".repeat(3001)}}]}}),
        )
        .await;
        let err = driver
            .slash("U0DEV", "C0GENERAL", "list")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Slack would refuse jit's answer to a slash command: [ERROR] must be less than 51 items [json-pointer:/blocks]"
        );
        let err = driver
            .interaction(&click_payload("U0DEV", "jit.approve", "1", "C0APPROVALS"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "must be less than 3001 characters [json-pointer:/view/blocks/0/text/text]"
            ),
            "{err}"
        );

        let fine = answering(
            json!({"response_type": "ephemeral", "text": "x", "blocks": vec![divider; 50]}),
            json!({"response_action": "clear"}),
        )
        .await;
        assert_eq!(
            fine.slash("U0DEV", "C0GENERAL", "list")
                .await
                .unwrap()
                .status,
            200
        );
        let answer = fine
            .interaction(&click_payload("U0DEV", "jit.approve", "1", "C0APPROVALS"))
            .await
            .unwrap();
        assert_eq!(answer.body, json!({"response_action": "clear"}));
    }
}
