//! The App Home tab: a person's own requests with Release and Extend, a "Request access" button,
//! and for approvers the requests waiting for them, within Slack's 100 blocks (see [`view`]).

use serde_json::{Value, json};

use super::blocks::ids;
use super::{limits, text};
use crate::app::App;
use crate::domain::ids::SlackUserId;
use crate::domain::policy::Requester;
use crate::domain::request::{Request, State};
use crate::store::requests;

fn button(action_id: &str, label: &str, value: String, style: Option<&str>) -> Value {
    let mut b = json!({
        "type": "button",
        "action_id": action_id,
        "text": limits::plain(label, limits::BUTTON_TEXT),
        "value": value,
    });
    if let Some(style) = style {
        b["style"] = json!(style);
    }
    b
}

fn line(request: &Request) -> String {
    let status = match (request.state, request.expires_at) {
        (State::Active, Some(until)) => format!("active until {}", text::time(until)),
        (State::Approved, _) if request.start_at.is_some() => "approved".to_owned(),
        (state, _) => state.label().to_owned(),
    };
    let status = match (request.state, request.start_at) {
        (State::Pending | State::Approved, Some(start)) => {
            format!("{status} · starts {}", text::time(start))
        }
        _ => status,
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
    let mine: Vec<Request> = requests::open_for_requester(&mut conn, &who)
        .await?
        .into_iter()
        .map(|s| s.request)
        .collect();
    let approvable: Vec<&str> = app
        .policy
        .resources()
        .iter()
        .filter(|r| r.is_decider(user, r.escalate.len() as u32, &app.directory))
        .map(|r| r.id.as_str())
        .collect();
    // Someone an escalation step names sees a request once that step has run.
    let waiting: Vec<Request> = requests::pending_on(&mut conn, &approvable)
        .await?
        .into_iter()
        .filter(|s| {
            app.policy
                .resource(s.request.resource.as_str())
                .is_some_and(|r| r.is_decider(user, s.escalation_step, &app.directory))
        })
        .map(|s| s.request)
        .filter(|r| r.requester != who)
        .collect();
    drop(conn);
    Ok(view(&mine, &waiting, !approvable.is_empty()))
}

fn my_item(request: &Request) -> Vec<Value> {
    let mut blocks = vec![limits::section(&line(request))];
    if request.state == State::Active {
        let id = request.id.0.to_string();
        blocks.push(json!({"type": "actions", "elements": [
            button(ids::EXTEND, "Extend", id.clone(), None),
            button(ids::RELEASE, "Release now", id, Some("danger")),
        ]}));
    }
    blocks
}

fn waiting_item(request: &Request) -> Vec<Value> {
    let id = request.id.0.to_string();
    vec![
        limits::section(&format!(
            "{} · {}\n{}",
            line(request),
            text::requester(&request.requester),
            text::quote(&request.justification, 300)
        )),
        json!({"type": "actions", "elements": [
            button(ids::APPROVE, "Approve", id.clone(), Some("primary")),
            button(ids::DENY, "Deny", id, Some("danger")),
        ]}),
    ]
}

/// How many of `items` fit in `budget` blocks.
fn fitting(items: &[Vec<Value>], budget: usize) -> usize {
    let mut used = 0;
    items
        .iter()
        .take_while(|item| {
            used += item.len();
            used <= budget
        })
        .count()
}

/// The Home view: my open requests, and for approvers what waits for them. Within Slack's 100
/// blocks whatever the numbers: each list gets half of the room (more when the other needs
/// less), and a list that does not fit ends with "… and N more".
pub fn view(mine: &[Request], waiting: &[Request], approver: bool) -> Value {
    let mut blocks = vec![
        json!({"type": "header", "text": limits::plain("Just-in-time access", limits::HEADER_TEXT)}),
        json!({"type": "actions", "block_id": "home_actions", "elements": [
            button(ids::OPEN_FORM, "Request access", "form".into(), Some("primary"))
        ]}),
        limits::section("*Your requests*"),
    ];
    // Fixed blocks: the three above, then per list its "nothing" or "more" line, and for
    // approvers a divider and a heading.
    let fixed = blocks.len() + 1 + if approver { 3 } else { 0 };
    let room = limits::VIEW_BLOCKS - fixed;
    let mine_items: Vec<Vec<Value>> = mine.iter().map(my_item).collect();
    let waiting_items: Vec<Vec<Value>> = if approver {
        waiting.iter().map(waiting_item).collect()
    } else {
        Vec::new()
    };
    let need_mine: usize = mine_items.iter().map(Vec::len).sum();
    let need_waiting: usize = waiting_items.iter().map(Vec::len).sum();
    let budget_mine = need_mine.min((room / 2).max(room.saturating_sub(need_waiting)));
    let shown_mine = fitting(&mine_items, budget_mine);
    let used_mine: usize = mine_items[..shown_mine].iter().map(Vec::len).sum();
    let shown_waiting = fitting(&waiting_items, room - used_mine);

    if mine.is_empty() {
        blocks.push(limits::context("Nothing pending or active."));
    }
    blocks.extend(mine_items.into_iter().take(shown_mine).flatten());
    if shown_mine < mine.len() {
        // `/jit list` has its own cap: promise only what it shows.
        let list = if mine.len() <= super::commands::LIST_MINE {
            "`/jit list` shows them all".to_owned()
        } else {
            format!("`/jit list` shows {} of them", super::commands::LIST_MINE)
        };
        blocks.push(limits::context(&limits::more_line(
            mine.len() - shown_mine,
            &list,
        )));
    }
    if approver {
        blocks.push(json!({"type": "divider"}));
        blocks.push(limits::section("*Waiting for your decision*"));
        if waiting.is_empty() {
            blocks.push(limits::context("No requests are waiting for you."));
        }
        blocks.extend(waiting_items.into_iter().take(shown_waiting).flatten());
        if shown_waiting < waiting.len() {
            blocks.push(limits::context(&limits::more_line(
                waiting.len() - shown_waiting,
                "their messages in the approvers' channels have the buttons",
            )));
        }
    }
    json!({"type": "home", "blocks": blocks})
}
