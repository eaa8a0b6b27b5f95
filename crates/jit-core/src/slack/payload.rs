//! What Slack sends us, parsed tolerantly: only the fields jit uses, unknown fields ignored,
//! optional ones optional (see the fixtures in `tests/fixtures/slack/`).

use std::collections::HashMap;

use serde::Deserialize;

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
}

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Channel {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub channel_id: Option<String>,
    #[serde(default)]
    pub message_ts: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    pub action_id: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub selected_option: Option<SelectedOption>,
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
    #[serde(default)]
    pub trigger_id: Option<String>,
    #[serde(default)]
    pub container: Option<Container>,
    #[serde(default)]
    pub channel: Option<Channel>,
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default)]
    pub view: Option<View>,
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

#[derive(Debug, Clone, Deserialize)]
pub struct InnerEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tab: Option<String>,
}

/// An Events API body.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum EventBody {
    #[serde(rename = "url_verification")]
    UrlVerification { challenge: String },
    #[serde(rename = "event_callback")]
    EventCallback {
        event: InnerEvent,
        #[serde(default)]
        event_id: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// A payload type Slack sends, and how to read it from a verified body.
pub trait SlackPayload: Sized {
    fn parse(body: &[u8]) -> Result<Self, String>;
}

impl SlackPayload for SlashCommand {
    fn parse(body: &[u8]) -> Result<Self, String> {
        serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
    }
}

impl SlackPayload for Interaction {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let form: InteractionForm =
            serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())?;
        serde_json::from_str(&form.payload).map_err(|e| e.to_string())
    }
}

impl SlackPayload for EventBody {
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
}
