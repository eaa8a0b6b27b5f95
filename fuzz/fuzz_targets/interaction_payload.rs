//! Slack request bodies, parsed exactly as the server does after verifying the signature:
//! through `jit_core::slack::payload::SlackPayload`. Never panics, whatever the body.
#![no_main]

use jit_core::slack::payload::{EventBody, Interaction, SlackPayload, SlashCommand};
use libfuzzer_sys::fuzz_target;

/// The block and action ids jit's own views read (`jit_core::slack::views`), plus an odd one.
const INPUTS: [(&str, &str); 6] = [
    ("resource", "resource_select"),
    ("duration", "duration_select"),
    ("justification", "justification_input"),
    ("ticket", "ticket_input"),
    ("reason", "reason_input"),
    ("", ""),
];

fuzz_target!(|body: &[u8]| {
    match <Interaction as SlackPayload>::parse(body) {
        Ok(Interaction::ViewSubmission(submission)) => {
            for (block, action) in INPUTS {
                if let Some(value) = submission.view.input(block, action) {
                    assert!(!value.is_empty());
                    assert_eq!(value.trim(), value);
                }
            }
            // Every input present, under its own ids.
            for (block, actions) in &submission.view.state.values {
                for action in actions.keys() {
                    let _ = submission.view.input(block, action);
                }
            }
        }
        Ok(Interaction::BlockActions(actions)) => {
            let _ = actions.channel_id();
            if let Some(view) = &actions.view {
                for (block, action) in INPUTS {
                    let _ = view.input(block, action);
                }
            }
        }
        Ok(Interaction::Other) | Err(_) => {}
    }
    if let Ok(cmd) = <SlashCommand as SlackPayload>::parse(body) {
        // The server hands the text to the grammar next.
        let _ = jit_core::domain::command::parse(&cmd.text);
    }
    let _ = <EventBody as SlackPayload>::parse(body);
});
