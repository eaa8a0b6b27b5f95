//! What Slack sends us, parsed tolerantly: only the fields jit uses, unknown fields ignored,
//! optional ones optional (see the fixtures in `tests/fixtures/slack/`).
//!
//! - **Events** are read from any JSON at all ([`EventBody`] is built from a `serde_json::Value`):
//!   `event.user` is a user id in `app_home_opened` and a whole user object in `team_join` and
//!   `user_change`, and an event jit does not know is [`EventBody::Other`] or an `InnerEvent`
//!   jit ignores, never a parse error. Slack retries a refused event and may disable the app.
//! - **Actions** jit did not create (a URL button, another app's surface, a workflow) parse
//!   too: an `action_id` or `value` of an odd shape reads as absent, and the handler ignores it.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An optional string that tolerates any other JSON shape (read as absent).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// A string that tolerates any other JSON shape (read as empty).
fn lenient_string_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    lenient_string(d).map(Option::unwrap_or_default)
}

/// The form body of a slash command.
#[derive(Debug, Clone, Deserialize)]
pub struct SlashCommand {
    pub command: String,
    #[serde(default)]
    pub text: String,
    pub user_id: String,
    #[serde(default)]
    pub channel_id: String,
    #[serde(default)]
    pub trigger_id: String,
    #[serde(default)]
    pub team_id: Option<String>,
    #[serde(default)]
    pub enterprise_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    /// The user's home workspace.
    #[serde(default, deserialize_with = "lenient_string")]
    pub team_id: Option<String>,
}

/// A workspace or organisation reference in an interaction (`team`, `enterprise`); null for
/// org-wide installs.
#[derive(Debug, Clone, Deserialize)]
pub struct TeamRef {
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
}

/// Which workspace (and organisation) a delivery says it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub team_id: Option<String>,
    pub enterprise_id: Option<String>,
}

impl SlashCommand {
    pub fn origin(&self) -> Origin {
        Origin {
            team_id: self.team_id.clone(),
            enterprise_id: self.enterprise_id.clone().filter(|e| !e.is_empty()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Channel {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Container {
    #[serde(default, deserialize_with = "lenient_string")]
    pub channel_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub message_ts: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    /// Empty when Slack sent none (or not a string).
    #[serde(default, deserialize_with = "lenient_string_or_empty")]
    pub action_id: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub value: Option<String>,
    #[serde(default, deserialize_with = "lenient_selected")]
    pub selected_option: Option<SelectedOption>,
}

fn lenient_selected<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SelectedOption>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

#[derive(Debug, Clone, Deserialize)]
pub struct SelectedOption {
    pub value: String,
}

/// One input element's state in a submitted view.
#[derive(Debug, Clone, Deserialize)]
pub struct InputState {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selected_option: Option<SelectedOption>,
    /// A `datetimepicker`'s choice: unix seconds (null or absent when left empty).
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub selected_date_time: Option<i64>,
}

fn lenient_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Value::deserialize(d)?.as_i64())
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewState {
    #[serde(default)]
    pub values: HashMap<String, HashMap<String, InputState>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct View {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub callback_id: Option<String>,
    #[serde(default)]
    pub private_metadata: Option<String>,
    #[serde(default)]
    pub state: ViewState,
}

impl View {
    /// The unix seconds a `datetimepicker` `block_id`/`action_id` was set to, if any.
    pub fn date_time(&self, block_id: &str, action_id: &str) -> Option<i64> {
        self.state
            .values
            .get(block_id)?
            .get(action_id)?
            .selected_date_time
    }

    /// The value of input `block_id`/`action_id`: typed text or the selected option.
    pub fn input(&self, block_id: &str, action_id: &str) -> Option<String> {
        let state = self.state.values.get(block_id)?.get(action_id)?;
        state
            .selected_option
            .as_ref()
            .map(|o| o.value.clone())
            .or_else(|| state.value.clone())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BlockActions {
    pub user: User,
    #[serde(default, deserialize_with = "lenient")]
    pub team: Option<TeamRef>,
    #[serde(default, deserialize_with = "lenient")]
    pub enterprise: Option<TeamRef>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub trigger_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub container: Option<Container>,
    #[serde(default, deserialize_with = "lenient")]
    pub channel: Option<Channel>,
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default, deserialize_with = "lenient")]
    pub view: Option<View>,
}

/// An optional part that reads as absent when its shape is not the expected one.
fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

impl BlockActions {
    /// The channel the clicked message is in, if it is a message.
    pub fn channel_id(&self) -> Option<&str> {
        self.channel
            .as_ref()
            .map(|c| c.id.as_str())
            .or_else(|| self.container.as_ref()?.channel_id.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ViewSubmission {
    pub user: User,
    pub view: View,
    #[serde(default, deserialize_with = "lenient")]
    pub team: Option<TeamRef>,
    #[serde(default, deserialize_with = "lenient")]
    pub enterprise: Option<TeamRef>,
}

fn origin_of(user: &User, team: &Option<TeamRef>, enterprise: &Option<TeamRef>) -> Origin {
    Origin {
        team_id: team
            .as_ref()
            .and_then(|t| t.id.clone())
            .or_else(|| user.team_id.clone()),
        enterprise_id: enterprise.as_ref().and_then(|e| e.id.clone()),
    }
}

impl Interaction {
    /// `None` for interaction types jit does not read.
    pub fn origin(&self) -> Option<Origin> {
        match self {
            Interaction::BlockActions(a) => Some(origin_of(&a.user, &a.team, &a.enterprise)),
            Interaction::ViewSubmission(v) => Some(origin_of(&v.user, &v.team, &v.enterprise)),
            Interaction::Other => None,
        }
    }
}

/// The `payload` of an interaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum Interaction {
    #[serde(rename = "block_actions")]
    BlockActions(BlockActions),
    #[serde(rename = "view_submission")]
    ViewSubmission(ViewSubmission),
    /// Types jit does not handle (view_closed, shortcuts, …): acknowledged and ignored.
    #[serde(other)]
    Other,
}

/// The form body of an interaction: one `payload` field holding JSON.
#[derive(Debug, Deserialize)]
pub struct InteractionForm {
    pub payload: String,
}

/// The fields of an event jit reads; every other field, and any odd shape, is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InnerEvent {
    /// `type`; empty if absent.
    pub kind: String,
    /// The user it is about: `event.user` when it is a user id, or its `id` when it is a user
    /// object (`team_join`, `user_change`).
    pub user: Option<String>,
    /// `app_home_opened`: which tab.
    pub tab: Option<String>,
}

impl InnerEvent {
    fn from_value(event: &Value) -> InnerEvent {
        let string = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let user = match event.get("user") {
            Some(Value::String(id)) => Some(id.clone()),
            Some(Value::Object(user)) => string(user.get("id")),
            _ => None,
        };
        InnerEvent {
            kind: string(event.get("type")).unwrap_or_default(),
            user,
            tab: string(event.get("tab")),
        }
    }
}

/// An Events API body. Built from any JSON value: what jit cannot use is [`EventBody::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "Value")]
pub enum EventBody {
    UrlVerification {
        challenge: String,
    },
    EventCallback {
        event: InnerEvent,
        event_id: Option<String>,
        origin: Origin,
    },
    Other,
}

impl From<Value> for EventBody {
    fn from(body: Value) -> EventBody {
        let string = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        match body.get("type").and_then(Value::as_str) {
            Some("url_verification") => match string("challenge") {
                Some(challenge) => EventBody::UrlVerification { challenge },
                None => EventBody::Other,
            },
            Some("event_callback") => match body.get("event").filter(|e| e.is_object()) {
                Some(event) => EventBody::EventCallback {
                    event: InnerEvent::from_value(event),
                    event_id: string("event_id"),
                    origin: Origin {
                        team_id: string("team_id"),
                        enterprise_id: string("enterprise_id"),
                    },
                },
                None => EventBody::Other,
            },
            _ => EventBody::Other,
        }
    }
}

/// A payload type Slack sends, and how to read it from a verified body.
pub trait SlackPayload: Sized {
    /// Whether a verified body that does not parse is still acknowledged with HTTP 200 (and
    /// ignored): Slack retries refused events and interactions and may disable the app, and a
    /// verified body is Slack's, only not one jit understands.
    const ACK_UNPARSEABLE: bool = false;

    fn parse(body: &[u8]) -> Result<Self, String>;
}

impl SlackPayload for SlashCommand {
    fn parse(body: &[u8]) -> Result<Self, String> {
        serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
    }
}

impl SlackPayload for Interaction {
    const ACK_UNPARSEABLE: bool = true;

    fn parse(body: &[u8]) -> Result<Self, String> {
        let form: InteractionForm =
            serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())?;
        serde_json::from_str(&form.payload).map_err(|e| e.to_string())
    }
}

impl SlackPayload for EventBody {
    const ACK_UNPARSEABLE: bool = true;

    fn parse(body: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fixtures() {
        let form = include_str!("../../../../tests/fixtures/slack/slash-command.form");
        let cmd: SlashCommand = serde_urlencoded::from_str(form.trim()).unwrap();
        assert_eq!(cmd.command, "/jit");
        assert_eq!(cmd.user_id, "U2147483697");
        assert_eq!(
            cmd.text,
            "request aws-prod-readonly 2h investigating INC-4242 latency spike"
        );

        let actions: Interaction = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/slack/block-actions.json"
        ))
        .unwrap();
        let Interaction::BlockActions(actions) = actions else {
            panic!("block_actions expected")
        };
        assert_eq!(actions.user.id, "U0APPROVER");
        assert_eq!(actions.channel_id(), Some("C0APPROVALS"));
        assert_eq!(
            actions.actions[0].value.as_deref(),
            Some("REPLACE_WITH_REQUEST_ID")
        );

        let submission: Interaction = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/slack/view-submission.json"
        ))
        .unwrap();
        let Interaction::ViewSubmission(submission) = submission else {
            panic!("view_submission expected")
        };
        assert_eq!(
            submission
                .view
                .input("resource", "resource_select")
                .as_deref(),
            Some("aws-prod-readonly")
        );
        assert_eq!(
            submission
                .view
                .input("justification", "justification_input")
                .as_deref(),
            Some("investigating INC-4242 latency spike")
        );
        assert_eq!(submission.view.input("ticket", "ticket_input"), None);
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let other: Interaction =
            serde_json::from_str(r#"{"type":"view_closed","user":{"id":"U1"},"new_field":1}"#)
                .unwrap();
        assert!(matches!(other, Interaction::Other));
        let event: EventBody =
            serde_json::from_str(r#"{"type":"url_verification","challenge":"abc","token":"x"}"#)
                .unwrap();
        assert!(matches!(event, EventBody::UrlVerification { challenge } if challenge == "abc"));
        let event: EventBody = serde_json::from_str(
            r#"{"type":"event_callback","team_id":null,"event":{"type":"app_home_opened","user":"U1","tab":"home","view":{}}}"#,
        )
        .unwrap();
        assert!(
            matches!(event, EventBody::EventCallback { event, .. } if event.kind == "app_home_opened")
        );
    }

    #[test]
    fn events_with_a_user_object_parse() {
        for (fixture, kind, user) in [
            (
                include_str!("../../../../tests/fixtures/slack/event-team-join.json"),
                "team_join",
                "U0NEWHIRE",
            ),
            (
                include_str!("../../../../tests/fixtures/slack/event-user-change.json"),
                "user_change",
                "U0ALICE",
            ),
        ] {
            let event = EventBody::parse(fixture.as_bytes()).unwrap();
            let EventBody::EventCallback {
                event, event_id, ..
            } = event
            else {
                panic!("event_callback expected")
            };
            assert_eq!(event.kind, kind);
            assert_eq!(event.user.as_deref(), Some(user));
            assert!(event_id.is_some());
        }
    }

    #[test]
    fn any_json_is_an_event_body() {
        for body in [
            "{}",
            "[]",
            "null",
            "42",
            r#"{"type":"event_callback"}"#,
            r#"{"type":"event_callback","event":"oops"}"#,
            r#"{"type":"event_callback","event":{"user":[1,2],"tab":7}}"#,
            r#"{"type":"url_verification","challenge":{"nested":true}}"#,
            r#"{"type":"app_rate_limited","minute_rate_limited":1518467820}"#,
        ] {
            let parsed = EventBody::parse(body.as_bytes()).unwrap();
            if let EventBody::EventCallback { event, .. } = parsed {
                assert_eq!(event, InnerEvent::default());
            }
        }
        assert!(EventBody::parse(b"not json").is_err());
    }

    #[test]
    fn actions_jit_did_not_create_parse() {
        let url_button: Interaction = serde_json::from_str(
            r#"{"type":"block_actions","user":{"id":"U1"},"container":{"type":"view","view_id":"V1"},
                "channel":null,"view":{"type":"home","state":"odd"},
                "actions":[{"type":"button","url":"https://example.com","action_id":{"x":1}},
                           {"type":"datepicker","selected_date":"2026-12-01","selected_option":"odd","value":3}]}"#,
        )
        .unwrap();
        let Interaction::BlockActions(actions) = url_button else {
            panic!("block_actions expected")
        };
        assert_eq!(actions.channel_id(), None);
        assert_eq!(actions.actions[0].action_id, "");
        assert_eq!(actions.actions[1].value, None);
        assert!(actions.actions[1].selected_option.is_none());
    }
}
