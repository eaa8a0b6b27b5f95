//! Modals: the request form, the deny reason, the extend form and the credentials reveal.
//! Block and action ids here are what [`crate::slack::interactions`] reads back. Every text,
//! option and block count goes through [`super::limits`].

use serde_json::{Value, json};

use super::blocks::ids;
use super::{limits, text};
use crate::domain::duration::GrantDuration;
use crate::domain::policy::Resource;
use crate::domain::request::Request;

pub const RESOURCE_BLOCK: (&str, &str) = ("resource", "resource_select");
pub const DURATION_BLOCK: (&str, &str) = ("duration", "duration_select");
pub const JUSTIFICATION_BLOCK: (&str, &str) = ("justification", "justification_input");
pub const TICKET_BLOCK: (&str, &str) = ("ticket", "ticket_input");
/// A `datetimepicker`: Slack shows it in the person's own time zone and sends back unix seconds.
pub const START_BLOCK: (&str, &str) = ("start", "start_datetime");
pub const REASON_BLOCK: (&str, &str) = ("reason", "reason_input");

/// Durations offered in the forms (each still checked against the resource's maximum).
const DURATION_CHOICES: &[u64] = &[
    15 * 60,
    30 * 60,
    3600,
    2 * 3600,
    4 * 3600,
    8 * 3600,
    12 * 3600,
    24 * 3600,
];

const MAX_OPTIONS: usize = limits::OPTIONS;

/// Labels, placeholders and the like: plain text within `max`.
fn plain_within(text: &str, max: usize) -> Value {
    limits::plain(text, max)
}

fn label(text: &str) -> Value {
    plain_within(text, limits::LABEL)
}

fn placeholder(text: &str) -> Value {
    plain_within(text, limits::PLACEHOLDER)
}

fn option(label: &str, value: &str) -> Value {
    json!({
        "text": plain_within(label, limits::OPTION_TEXT),
        "value": limits::truncate_plain(value, limits::OPTION_VALUE),
    })
}

fn section(mrkdwn: &str) -> Value {
    limits::section(mrkdwn)
}

fn duration_option(d: GrantDuration) -> Value {
    option(&d.humanize(), &d.to_string())
}

/// The offered durations up to `max`, always including `default` and `max` themselves.
fn duration_options(default: GrantDuration, max: GrantDuration) -> Vec<Value> {
    let mut choices: Vec<GrantDuration> = DURATION_CHOICES
        .iter()
        .map(|s| GrantDuration::from_secs(*s))
        .filter(|d| *d <= max)
        .collect();
    for d in [default, max] {
        if !choices.contains(&d) {
            choices.push(d);
        }
    }
    choices.sort();
    choices.into_iter().map(duration_option).collect()
}

fn modal(
    callback_id: &str,
    title: &str,
    submit: Option<&str>,
    metadata: &str,
    blocks: Vec<Value>,
) -> Value {
    let mut view = json!({
        "type": "modal",
        "callback_id": callback_id,
        "title": plain_within(title, limits::MODAL_TITLE),
        "close": plain_within("Cancel", limits::MODAL_TITLE),
        "private_metadata": metadata,
        "blocks": limits::fit_view(blocks, 0),
    });
    if let Some(submit) = submit {
        view["submit"] = plain_within(submit, limits::MODAL_TITLE);
    }
    view
}

/// The request form. `metadata` travels back with the submission (the channel it was opened in).
pub fn request_modal(resources: &[&Resource], preselect: Option<&str>, metadata: &str) -> Value {
    if resources.is_empty() {
        return modal(
            ids::REQUEST_MODAL,
            "Request access",
            None,
            metadata,
            vec![section(
                "There is nothing you may request. `/jit why <resource>` explains who may request what.",
            )],
        );
    }
    let options: Vec<Value> = resources
        .iter()
        .take(MAX_OPTIONS)
        .map(|r| {
            let label = if r.description.is_empty() {
                r.id.to_string()
            } else {
                format!("{} ({})", r.id, r.description)
            };
            option(&label, r.id.as_str())
        })
        .collect();
    let mut resource_select = json!({
        "type": "static_select",
        "action_id": RESOURCE_BLOCK.1,
        "placeholder": placeholder("Choose a resource"),
        "options": options,
    });
    let selected = preselect.and_then(|id| resources.iter().find(|r| r.id.as_str() == id));
    if let Some(r) = selected {
        let index = resources.iter().position(|x| x.id == r.id).unwrap_or(0);
        if index < MAX_OPTIONS {
            resource_select["initial_option"] = resource_select["options"][index].clone();
        }
    }
    // Offer durations up to the longest maximum; the chosen resource's own limit is checked on submit.
    let max = resources
        .iter()
        .map(|r| r.max_duration)
        .max()
        .unwrap_or(GrantDuration::from_hours(1));
    let default = selected
        .map(|r| r.default_duration)
        .unwrap_or(GrantDuration::from_hours(1))
        .min(max);
    let mut blocks = vec![
        json!({"type": "input", "block_id": RESOURCE_BLOCK.0, "label": label("Resource"), "element": resource_select}),
        json!({"type": "input", "block_id": DURATION_BLOCK.0, "label": label("For how long"), "element": {
            "type": "static_select",
            "action_id": DURATION_BLOCK.1,
            "options": duration_options(default, max),
            "initial_option": duration_option(default),
        }}),
        json!({"type": "input", "block_id": JUSTIFICATION_BLOCK.0, "label": label("Justification"), "element": {
            "type": "plain_text_input",
            "action_id": JUSTIFICATION_BLOCK.1,
            "multiline": true,
            "max_length": 2000,
            "placeholder": placeholder("What are you doing, and why do you need this access?"),
        }}),
        json!({"type": "input", "block_id": TICKET_BLOCK.0, "optional": true, "label": label("Ticket"), "element": {
            "type": "plain_text_input",
            "action_id": TICKET_BLOCK.1,
            "max_length": 200,
            "placeholder": placeholder("e.g. INC-123"),
        }}),
    ];
    let ahead = selected
        .map(|r| r.max_start_ahead)
        .or_else(|| resources.iter().map(|r| r.max_start_ahead).max())
        .unwrap_or(GrantDuration::from_hours(24));
    blocks.push(json!({"type": "input", "block_id": START_BLOCK.0, "optional": true,
        "label": label("Start later (optional)"),
        "hint": plain_within(&format!(
            "For a maintenance window: access is issued at this time (up to {} ahead) and lasts the duration from then. Leave it empty to start once approved.",
            ahead.humanize()
        ), 2000),
        "element": {"type": "datetimepicker", "action_id": START_BLOCK.1}}));
    // The preselected resource's rules, under their fields (checked on submit for any resource).
    if let Some(r) = selected {
        if let Some(rule) = r.justification.describe() {
            blocks[2]["hint"] = plain_within(&format!("{}: {rule}", r.id), 2000);
        }
        if let Some(rule) = r.ticket.describe() {
            blocks[3]["hint"] = plain_within(&format!("{}: {rule}", r.id), 2000);
        }
    }
    if resources.len() > MAX_OPTIONS {
        blocks.push(limits::context(&format!(
            "Showing the first {MAX_OPTIONS} of {} resources; use `/jit request &lt;resource&gt; &lt;duration&gt; &lt;justification&gt;` for the others.",
            resources.len()
        )));
    }
    modal(
        ids::REQUEST_MODAL,
        "Request access",
        Some("Request"),
        metadata,
        blocks,
    )
}

/// Asks an approver why they deny. `metadata` is the request id.
pub fn deny_modal(request: &Request) -> Value {
    modal(
        ids::DENY_MODAL,
        "Deny request",
        Some("Deny"),
        &request.id.0.to_string(),
        vec![
            section(&format!(
                "Deny request {} by {} for {}?",
                request.id,
                text::requester(&request.requester),
                text::code(request.resource.as_str())
            )),
            json!({"type": "input", "block_id": REASON_BLOCK.0, "label": label("Reason (shown to the requester)"), "element": {
                "type": "plain_text_input",
                "action_id": REASON_BLOCK.1,
                "multiline": true,
                "max_length": 1000,
            }}),
        ],
    )
}

/// Asks the holder for how much longer. `metadata` is the grant's id.
pub fn extend_modal(grant: &Request, resource: &Resource) -> Value {
    let default = resource.default_duration.min(resource.max_duration);
    modal(
        ids::EXTEND_MODAL,
        "Extend access",
        Some("Extend"),
        &grant.id.0.to_string(),
        vec![
            section(&format!(
                "Add time to {} (request {}). Extensions go through the policy like any request.",
                text::code(grant.resource.as_str()),
                grant.id
            )),
            json!({"type": "input", "block_id": DURATION_BLOCK.0, "label": label("Add"), "element": {
                "type": "static_select",
                "action_id": DURATION_BLOCK.1,
                "options": duration_options(default, resource.max_duration),
                "initial_option": duration_option(default),
            }}),
            json!({"type": "input", "block_id": REASON_BLOCK.0, "optional": true, "label": label("Why"), "element": {
                "type": "plain_text_input",
                "action_id": REASON_BLOCK.1,
                "max_length": 1000,
            }}),
        ],
    )
}

/// Blocks of the reveal modal besides the credentials: the intro and up to two notes.
const REVEAL_OTHER_BLOCKS: usize = 3;

/// The credentials, shown in a modal (modals are not kept in channel history): every value in
/// full, across as many code sections as it takes. What a modal cannot hold is said, with where
/// to get the whole value.
pub fn reveal_modal(request: &Request, pairs: &[(String, String)], expires: &str) -> Value {
    let exports: String = pairs
        .iter()
        .map(|(k, v)| format!("export {k}='{}'", v.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join("\n");
    let mut blocks = vec![section(&format!(
        "{} (request {}), valid until {expires}. Paste into your shell; do not share.",
        text::code(request.resource.as_str()),
        request.id
    ))];
    let (mut pieces, cut_a_line) =
        limits::code_pieces(&text::escape(&exports), limits::SECTION_TEXT);
    let room = limits::VIEW_BLOCKS - REVEAL_OTHER_BLOCKS;
    let left_out = pieces.len().saturating_sub(room);
    pieces.truncate(room);
    blocks.extend(pieces.into_iter().map(|piece| section(&piece)));
    if cut_a_line {
        blocks.push(limits::context(
            ":scissors: A line was longer than one Slack block: it continues in the next block. Paste the blocks one after the other without a line break in between.",
        ));
    }
    if left_out > 0 || exports.contains("```") {
        blocks.push(limits::context(&format!(
            ":warning: {} Slack cannot show all of these credentials in one window. The CLI (`jit credentials {}`) and the API (`GET /api/v1/requests/{}/credentials`) return the whole value to the identity that requested the grant.",
            if left_out > 0 {
                format!("{left_out} more part{} not shown.", if left_out == 1 { " is" } else { "s are" })
            } else {
                "A value contains ```, which Slack would show as formatting.".to_owned()
            },
            request.resource,
            request.id.0
        )));
    }
    modal(
        ids::REVEAL_MODAL,
        "Your credentials",
        None,
        &request.id.0.to_string(),
        blocks,
    )
}
