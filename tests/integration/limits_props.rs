//! Property tests: every Block Kit builder, fed random and extreme input (huge justifications,
//! many resources with long descriptions, many grants, credentials of 20,000 characters,
//! backticks, `<`, `&`, emoji, combining characters), produces only what Slack accepts. The
//! check is the simulator's own validator (`jit::slack::limits`), so the tests and the fake
//! Slack share one definition of the limits. Covered: the approval message, every DM, audit
//! posts (alone and coalesced), the audit anchor, App Home, `/jit list` (an admin's and
//! everyone else's), `/jit why` over random policies, and every modal.

use chrono::{DateTime, Duration, TimeZone, Utc};
use jit::audit::AuditEvent;
use jit::domain::duration::GrantDuration;
use jit::domain::ids::{RequestId, ResourceId, SlackChannelId, SlackGroupId, SlackUserId};
use jit::domain::policy::{
    Approvers, AutoApprove, Membership, Policy, Principals, ProviderConfig, Requester, Resource,
    Standing,
};
use jit::domain::request::{Kind, Request, State};
use jit::slack::blocks::{self, Msg};
use jit::slack::limits::{self, check_message, check_view};
use jit::slack::{commands, home, views};
use jit::store::audit::AuditRow;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

/// Pieces that are hard on a splitter: spans, mentions, entities, multi-unit characters.
const FRAGMENTS: &[&str] = &[
    "`",
    "```",
    "<",
    ">",
    "&",
    "&amp;",
    "<@U0ALICE>",
    "<#C0APPROVALS>",
    "\n",
    "\n\n",
    " ",
    "😀",
    "👨‍👩‍👧‍👦",
    "e\u{301}",
    "\u{301}",
    "\u{200d}",
    "*",
    "_",
    "~",
    ">quote ",
    "word ",
    "a",
    "é",
    "'",
    "\"",
    "\\",
    "\t",
    "<!channel>",
    "https://example.com/x?y=<z>&w",
    "|",
    "{time}",
    "🏳️‍🌈",
];

/// Text of any length, from empty to tens of thousands of units, of hard pieces.
fn odd_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(FRAGMENTS).prop_map(str::to_owned),
        1 => ("[a-z]{1,8}", 1usize..400).prop_map(|(s, n)| s.repeat(n)),
    ];
    prop_oneof![
        3 => proptest::collection::vec(piece.clone(), 0..40).prop_map(|v| v.concat()),
        1 => proptest::collection::vec(piece, 0..400).prop_map(|v| v.concat()),
        1 => (proptest::sample::select(FRAGMENTS), 1000usize..8000).prop_map(|(f, n)| f.repeat(n)),
    ]
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap()
}

fn user(n: usize) -> SlackUserId {
    SlackUserId::parse(&format!("U{n:08}")).unwrap()
}

const STATES: [State; 11] = [
    State::Pending,
    State::Approved,
    State::Active,
    State::Expired,
    State::Released,
    State::Revoked,
    State::Denied,
    State::Cancelled,
    State::TimedOut,
    State::Failed,
    State::Applied,
];

fn request() -> impl Strategy<Value = Request> {
    (
        (1i64..i64::MAX, 0usize..3, 0usize..11, 1u64..10_000_000),
        (odd_text(), proptest::option::of(odd_text()), odd_text()),
        (
            proptest::option::of(odd_text()),
            proptest::option::of(odd_text()),
        ),
        (1u32..50, "[a-z0-9._-]{1,64}", any::<bool>()),
    )
        .prop_map(
            |(
                (id, kind, state, secs),
                (justification, ticket, name),
                (note, failure),
                (required, resource, identity),
            )| {
                let at = t0();
                Request {
                    id: RequestId(id),
                    kind: [Kind::Access, Kind::Extension, Kind::Breakglass][kind],
                    parent: (kind == 1).then_some(RequestId(id / 2 + 1)),
                    requester: if identity {
                        Requester::Identity(name)
                    } else {
                        Requester::User(user(id as usize % 1000))
                    },
                    resource: ResourceId::parse(&resource).unwrap(),
                    duration: GrantDuration::from_secs(secs),
                    justification,
                    ticket,
                    state: STATES[state],
                    approvals_required: required,
                    created_at: at,
                    start_at: (id % 3 == 0).then(|| at + Duration::hours(9)),
                    pending_until: Some(at + Duration::minutes(30)),
                    decided_at: Some(at + Duration::minutes(1)),
                    decided_by: Some(
                        (0..required as usize)
                            .map(|n| user(n).to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    decision_note: note,
                    granted_at: Some(at),
                    expires_at: Some(at + Duration::hours(2)),
                    ended_at: None,
                    revoked_at: None,
                    failure,
                    approval_channel: None,
                    approval_ts: None,
                    audit_ts: None,
                    reviewed_by: None,
                    reviewed_at: None,
                }
            },
        )
}

fn resource() -> impl Strategy<Value = Resource> {
    ("[a-z0-9._-]{1,64}", odd_text(), 0usize..300, 1u64..400_000).prop_map(
        |(id, description, approvers, max)| {
            let max = GrantDuration::from_secs(max);
            Resource {
                id: ResourceId::parse(&id).unwrap(),
                description,
                provider: ProviderConfig::None,
                max_duration: max,
                default_duration: GrantDuration::from_secs(max.as_secs().div_ceil(2)),
                max_lifetime: jit::domain::policy::default_lifetime(max),
                requesters: None,
                approvers: Approvers {
                    channel: Some(SlackChannelId::parse("C0APPROVALS").unwrap()),
                    users: (0..approvers).map(user).collect(),
                    groups: (0..approvers / 10)
                        .map(|n| SlackGroupId::parse(&format!("S{n:06}")).unwrap())
                        .collect(),
                    notify: jit::domain::policy::Notify::Both,
                },
                approvals_required: 1,
                auto_approve: Some(AutoApprove {
                    max_duration: max,
                    who: Principals::default(),
                    oncall: None,
                }),
                breakglass: true,
                reminder_before: GrantDuration::from_secs(600),
                pending_timeout: GrantDuration::from_secs(1800),
                // Many steps naming many people: the plan and the escalated approvers are shown
                // in the approval message within Slack's limits.
                escalate: (0..(approvers % 11) as u64)
                    .map(|n| jit::domain::policy::EscalationStep {
                        after: GrantDuration::from_secs(60 * (n + 1)),
                        to: Some(jit::domain::policy::EscalationTarget {
                            users: (0..approvers)
                                .map(|u| user(u + 1000 * (n as usize + 1)))
                                .collect(),
                            groups: Vec::new(),
                            channel: Some(SlackChannelId::parse("C0ONCALL").unwrap()),
                        }),
                    })
                    .collect(),
                escalate_is_default: false,
                justification: Default::default(),
                // A tracker address: a request's ticket is linked, percent-encoded, in messages.
                ticket: jit::domain::policy::TicketRule {
                    url: (approvers % 2 == 0).then(|| {
                        "https://tracker.example.com/browse/{ticket}?view=<full>&x=1".into()
                    }),
                    ..Default::default()
                },
                max_start_ahead: GrantDuration::from_secs(7 * 86_400),
            }
        },
    )
}

fn policy() -> Policy {
    let admins: Vec<String> = (0..400).map(|n| format!("\"{}\"", user(n))).collect();
    let text = format!(
        "[slack]\naudit_channel = \"C0AUDIT\"\nadmins = {{ users = [{}] }}\n[[resource]]\nid = \"db\"\nprovider = \"none\"\nmax_duration = \"1h\"\napprovers = {{ channel = \"C0APPROVALS\", users = [\"U0ALICE\"] }}\n",
        admins.join(", ")
    );
    Policy::parse(&text, &|_: &str| Ok(String::new())).unwrap()
}

fn assert_message(what: &str, msg: &Msg) {
    let found = check_message(Some(&msg.text), Some(&msg.blocks));
    assert!(
        found.is_empty(),
        "{what}: Slack would refuse it: {:?}",
        found.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
}

fn assert_view(what: &str, view: &Value) {
    let found = check_view(view);
    assert!(
        found.is_empty(),
        "{what}: Slack would refuse it: {:?}",
        found.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Every event an audit post can render, with the given text in each of its text fields.
fn audit_events(text: &str) -> Vec<AuditEvent> {
    let t = || text.to_owned();
    vec![
        AuditEvent::Requested {
            kind: t(),
            resource: t(),
            duration: t(),
            justification: t(),
            ticket: Some(t()),
            via: t(),
            extension: Some(3),
            start_at: Some(t()),
        },
        AuditEvent::Requested {
            kind: t(),
            resource: t(),
            duration: t(),
            justification: t(),
            ticket: None,
            via: t(),
            extension: None,
            start_at: Some("2026-12-24T22:00:00.000Z".into()),
        },
        AuditEvent::ActivationRefused { reason: t() },
        AuditEvent::AutoApproved {
            extension: None,
            on_call: Some("PABC123".into()),
        },
        AuditEvent::Escalated {
            step: 3,
            after: t(),
            users: (0..300).map(|n| user(n).to_string()).chain([t()]).collect(),
            groups: vec![t(), "S0SRE".into()],
            channel: Some(t()),
            extension: Some(3),
        },
        AuditEvent::Approval {
            count: 1,
            required: 2,
            extension: None,
        },
        AuditEvent::Approved {
            approvers: (0..300).map(|n| user(n).to_string()).collect(),
            extension: None,
        },
        AuditEvent::Denied {
            reason: t(),
            extension: None,
        },
        AuditEvent::Cancelled { extension: None },
        AuditEvent::TimedOut { extension: None },
        AuditEvent::Nudged,
        AuditEvent::Granted {
            expires_at: t(),
            handle: t(),
            credentials: true,
        },
        AuditEvent::GrantFailed {
            error: t(),
            attempt: 3,
            last: true,
        },
        AuditEvent::Reminded { expires_at: t() },
        AuditEvent::Extended {
            extension: 4,
            expires_at: t(),
        },
        AuditEvent::ExtensionFailed {
            extension: 4,
            error: t(),
        },
        AuditEvent::Released,
        AuditEvent::Revoked { reason: t() },
        AuditEvent::Expired,
        AuditEvent::TornDown {
            still_held_by: (0..2000).collect(),
            detail: Some(t()),
        },
        AuditEvent::TeardownFailed {
            attempt: 2,
            error: t(),
        },
        AuditEvent::TeardownAlert {
            attempts: 9,
            error: t(),
        },
        AuditEvent::Breakglass { reason: t() },
        AuditEvent::Reviewed { revoke: true },
        AuditEvent::CredentialsRevealed,
        AuditEvent::CredentialsRevealFailed { error: t() },
        AuditEvent::CredentialsErased,
        AuditEvent::CleanedUp { detail: Some(t()) },
        AuditEvent::JobDead {
            job: t(),
            error: t(),
        },
        AuditEvent::TokenCreated {
            identity: t(),
            token_id: 1,
        },
        AuditEvent::TokenRevoked {
            identity: t(),
            token_id: 1,
        },
        AuditEvent::ApiCall {
            method: t(),
            path: t(),
            status: 200,
            token_id: 1,
        },
    ]
}

#[test]
fn every_message_builder_stays_within_slacks_limits() {
    let policy = policy();
    let channel = SlackChannelId::parse("C0APPROVALS").unwrap();
    let strategy = (
        request(),
        proptest::option::of(resource()),
        odd_text(),
        proptest::collection::vec("U[0-9A-Z]{1,11}", 0..300),
    );
    runner(40)
        .run(&strategy, |(request, resource, text, approvals)| {
            let r = resource.as_ref();
            assert_message(
                "approval message",
                &blocks::approval_message(&request, r, &policy, &approvals, 0, None),
            );
            if let Some(r) = r {
                for steps_run in [1, r.escalate.len() as u32] {
                    assert_message(
                        "escalated approval message",
                        &blocks::approval_message(
                            &request,
                            Some(r),
                            &policy,
                            &approvals,
                            steps_run,
                            Some("On-call auto-approval did not apply: PagerDuty has not answered for 3 minutes."),
                        ),
                    );
                    if let Some(nudge) = blocks::escalation_nudge(&request, r, steps_run) {
                        assert!(check_message(Some(&nudge), None).is_empty());
                    }
                }
            }
            let now = t0();
            let later = now + Duration::hours(1);
            assert_message("decision DM", &blocks::decision_dm(&request));
            if let Some(r) = r {
                for auto in [true, false] {
                    assert_message("submitted DM", &blocks::submitted_dm(&request, r, auto));
                }
            }
            for has in [true, false] {
                assert_message(
                    "issued DM",
                    &blocks::issued_dm(&request, later, Some(&text), has),
                );
            }
            assert_message("failed DM", &blocks::failed_dm(&request, &text));
            assert_message("reminder DM", &blocks::reminder_dm(&request, later, now));
            assert_message("ended DM", &blocks::ended_dm(&request, Some(&text)));
            assert_message("extended DM", &blocks::extended_dm(&request, later));
            assert_message("owner DM", &blocks::owner_dm(&request, &text));
            assert_message("simple", &blocks::simple(text.clone()));
            for code in [
                "not_in_channel",
                "is_archived",
                "channel_not_found",
                text.as_str(),
            ] {
                assert_message(
                    "undeliverable DM",
                    &blocks::undeliverable_dm(&request, &channel, code),
                );
                assert_message(
                    "timed-out DM",
                    &blocks::timed_out_dm(&request, Some((code, &channel))),
                );
            }
            let nudge = blocks::nudge(&request, r, 3);
            assert!(check_message(Some(&nudge), None).is_empty());
            assert_message("audit root", &blocks::audit_root(&request));
            for event in audit_events(&text) {
                let row = AuditRow {
                    seq: 42,
                    at: "2026-11-23T14:00:00Z".into(),
                    request_id: Some(request.id.0),
                    actor: text.clone(),
                    event: event.name(),
                    detail: event.detail().to_string(),
                    prev_hash: "0".repeat(64),
                    hash: "f".repeat(64),
                };
                let msg = blocks::audit_reply(&row, &policy);
                assert_message(&format!("audit reply {}", row.event), &msg);
                if row.event == "breakglass" {
                    let last = msg.blocks.as_array().unwrap().last().unwrap().clone();
                    assert_eq!(last["block_id"], "review", "the review buttons stay");
                }
            }
            Ok(())
        })
        .unwrap();
}

/// A backed-up audit channel posts a request's waiting events together: every coalesced reply
/// is one Slack accepts, holds whole events in order (each with its number and hash digits),
/// and replies taken one after another show every event exactly once. Alerts are never
/// carried by another event's reply.
#[test]
fn coalesced_audit_replies_stay_within_limits_and_drop_nothing() {
    let policy = policy();
    let strategy = (
        proptest::collection::vec((odd_text(), 0usize..64), 1..60),
        any::<bool>(),
    );
    runner(16)
        .run(&strategy, |(events, alert_inside)| {
            let all = audit_events("x");
            let rows: Vec<AuditRow> = events
                .iter()
                .enumerate()
                .map(|(i, (text, pick))| {
                    let mut event = audit_events(text)[pick % all.len()].clone();
                    if alert_inside && i == events.len() / 2 {
                        event = AuditEvent::Breakglass {
                            reason: text.clone(),
                        };
                    }
                    AuditRow {
                        seq: 100 + i as i64,
                        at: "2026-11-23T14:00:00Z".into(),
                        request_id: Some(7),
                        actor: "U0DEV".into(),
                        event: event.name(),
                        detail: event.detail().to_string(),
                        prev_hash: "0".repeat(64),
                        hash: format!("{:064x}", 0xabcdef0000u64 + i as u64),
                    }
                })
                .collect();
            let mut seen = Vec::new();
            let mut next = 0;
            while next < rows.len() {
                let (msg, held) = blocks::audit_replies(&rows[next], &rows[next + 1..], &policy);
                assert_message("coalesced audit reply", &msg);
                prop_assert!(held >= 1 && next + held <= rows.len());
                let held_rows = &rows[next..next + held];
                if held > 1 {
                    prop_assert!(
                        held_rows.iter().all(|r| !blocks::posted_alone(r)),
                        "an alert was carried by another event's reply"
                    );
                }
                let rendered = msg.blocks.to_string();
                for row in held_rows {
                    let marker = format!("audit #{} · `{}…`", row.seq, &row.hash[..12]);
                    prop_assert!(rendered.contains(&marker), "{marker} missing");
                    seen.push(row.seq);
                }
                // Markers appear in event order.
                let positions: Vec<usize> = held_rows
                    .iter()
                    .map(|r| rendered.find(&format!("audit #{} ", r.seq)).unwrap())
                    .collect();
                prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
                next += held;
            }
            let expected: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            prop_assert_eq!(seen, expected);
            Ok(())
        })
        .unwrap();
}

#[test]
fn app_home_and_list_stay_within_limits_with_many_grants() {
    let strategy = (
        proptest::collection::vec(request(), 0..130),
        proptest::collection::vec(request(), 0..130),
        any::<bool>(),
    );
    runner(24)
        .run(&strategy, |(mine, waiting, approver)| {
            let view = home::view(&mine, &waiting, approver);
            assert_view("App Home", &view);
            let rendered = view.to_string();
            // Every request is shown, or counted in the "… and N more" line.
            let shown = mine
                .iter()
                .filter(|r| rendered.contains(&format!("*{}* `", r.id)))
                .count();
            if shown < mine.len() {
                // A promise `/jit list` keeps: it shows at most 100.
                let list = if mine.len() <= 100 {
                    "`/jit list` shows them all".to_owned()
                } else {
                    "`/jit list` shows 100 of them".to_owned()
                };
                let more = format!("… and {} more ({list})", mine.len() - shown);
                prop_assert!(
                    rendered.contains(&more),
                    "{} of {} shown, no {more}",
                    shown,
                    mine.len()
                );
            }
            // Approvers always see some of what waits for them.
            if approver && !waiting.is_empty() {
                prop_assert!(rendered.contains("jit.approve"));
            }
            // The reply everyone but an admin gets: their own requests only.
            let own = commands::list_reply(&mine, None);
            assert_message("/jit list (not an admin)", &own);
            let own_blocks = own.blocks.to_string();
            prop_assert!(!own_blocks.contains("Break-glass grants waiting"));
            if limits::len(&own.text) < limits::MESSAGE_TEXT - 1 {
                prop_assert_eq!(own.text.matches('•').count(), mine.len().min(100));
            }
            if mine.len() > 100 {
                let more = format!("… and {} more", mine.len() - 100);
                prop_assert!(own_blocks.contains(&more), "no {more}");
            }
            let list = commands::list_reply(&mine, Some(&waiting));
            assert_message("/jit list", &list);
            // The fallback text never lists what the blocks do not show: as many entries, or
            // fewer when the text had to be cut at its own limit.
            let shown: String = list
                .blocks
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["text"]["text"].as_str().unwrap_or_default())
                .collect();
            let entries = |s: &str| s.matches('•').count();
            prop_assert!(entries(&list.text) <= entries(&shown));
            if limits::len(&list.text) < limits::MESSAGE_TEXT - 1 {
                prop_assert_eq!(entries(&list.text), entries(&shown));
                prop_assert_eq!(entries(&shown), mine.len().min(100) + waiting.len().min(50));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_modal_stays_within_slacks_limits() {
    let strategy = (
        proptest::collection::vec(resource(), 0..160),
        request(),
        proptest::collection::vec(("[A-Z_]{1,30}", odd_text()), 0..6),
        any::<prop::sample::Index>(),
    );
    runner(32)
        .run(&strategy, |(resources, request, pairs, pick)| {
            let refs: Vec<&Resource> = resources.iter().collect();
            let preselect = (!refs.is_empty()).then(|| refs[pick.index(refs.len())].id.as_str());
            assert_view(
                "request modal",
                &views::request_modal(&refs, preselect, "C0GENERAL"),
            );
            assert_view("deny modal", &views::deny_modal(&request));
            if let Some(r) = resources.first() {
                assert_view("extend modal", &views::extend_modal(&request, r));
            }
            assert_view(
                "reveal modal",
                &views::reveal_modal(&request, &pairs, "2026-11-23 16:00 UTC"),
            );
            Ok(())
        })
        .unwrap();
}

/// The code shown in a reveal modal, joined back: the pieces a reader would copy.
pub fn revealed_code(view: &Value) -> String {
    let mut out = String::new();
    for block in view["blocks"].as_array().unwrap() {
        let text = block["text"]["text"].as_str().unwrap_or_default();
        if let Some(code) = text.strip_prefix("```").and_then(|t| t.strip_suffix("```")) {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(code);
        }
    }
    out
}

#[test]
fn long_credentials_are_revealed_in_full_up_to_what_a_modal_holds() {
    let strategy = proptest::collection::vec(("[A-Z_]{1,20}", odd_text()), 1..4);
    let request = request().new_tree(&mut runner(1)).unwrap().current();
    runner(48)
        .run(&strategy, |pairs| {
            let view = views::reveal_modal(&request, &pairs, "later");
            assert_view("reveal modal", &view);
            let exports: String = pairs
                .iter()
                .map(|(k, v)| format!("export {k}='{}'", v.replace('\'', "'\\''")))
                .collect::<Vec<_>>()
                .join("\n");
            let escaped = jit::slack::text::escape(&exports);
            let shown = revealed_code(&view);
            let rendered = view.to_string();
            let cut = rendered.contains("continues in the next block");
            let partial = rendered.contains("Slack cannot show all of these credentials");
            let normalize = |s: &str| {
                if cut {
                    s.replace('\n', "")
                } else {
                    s.to_owned()
                }
            };
            if escaped.contains("```") {
                prop_assert!(partial, "a value with ``` gets the CLI note");
            } else if partial {
                prop_assert!(normalize(&escaped).starts_with(&normalize(&shown)));
                prop_assert!(limits::len(&escaped) > 90 * 2_900);
            } else if !escaped.trim().is_empty() {
                // A blank line at a section boundary is the only thing that may be lost.
                let squeeze = |s: &str| {
                    normalize(s)
                        .split('\n')
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                prop_assert_eq!(squeeze(&shown), squeeze(&escaped));
            }
            Ok(())
        })
        .unwrap();
    // 20,000 characters of one line: several sections, all of it, and the note on joining.
    let token = "k".repeat(20_000);
    let view = views::reveal_modal(&request, &[("TOKEN".into(), token.clone())], "later");
    assert_view("reveal modal", &view);
    assert!(view["blocks"].as_array().unwrap().len() >= 8);
    assert_eq!(
        revealed_code(&view).replace('\n', ""),
        format!("export TOKEN='{token}'")
    );
    assert!(view.to_string().contains("continues in the next block"));
    // More than a modal holds: the rest is pointed to the CLI and the API.
    let huge = "line of a very large credential file\n".repeat(9_000);
    let view = views::reveal_modal(&request, &[("FILE".into(), huge)], "later");
    assert_view("reveal modal", &view);
    let rendered = view.to_string();
    assert!(
        rendered.contains("more parts are not shown"),
        "{rendered:.300}"
    );
    assert!(rendered.contains("GET /api/v1/requests/"));
    assert!(rendered.contains("jit credentials"));
}

/// Group membership and workspace standing, as the directory would answer them.
struct Directory {
    in_every_group: bool,
    standing: Standing,
}

impl Membership for Directory {
    fn is_member(&self, _: &SlackUserId, _: &jit::domain::ids::SlackGroupId) -> bool {
        self.in_every_group
    }
    fn standing(&self, _: &SlackUserId) -> Standing {
        self.standing
    }
}

/// A TOML string (JSON's escapes are TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn toml_list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| toml_str(&i)).collect();
    format!("[{}]", items.join(", "))
}

/// One `[[resource]]` of a random policy: a long odd description, up to 300 named requesters,
/// approvers and auto-approvers, up to 30 groups each.
fn why_resource() -> impl Strategy<Value = String> {
    (
        ("[a-z0-9._-]{0,58}", odd_text()),
        proptest::option::of((1usize..300, 0usize..30)),
        (1usize..300, 0usize..30),
        proptest::option::of((0usize..300, 0usize..30)),
        (any::<bool>(), 0usize..5),
    )
        .prop_map(
            |((id, description), requesters, approvers, auto, (breakglass, max))| {
                let max = ["30m", "1h", "4h", "1d", "7d"][max];
                let users = |n: usize| (0..n).map(|i| user(i).to_string());
                let groups = |n: usize| (0..n).map(|i| format!("S{i:06}"));
                let mut text = format!(
                    "[[resource]]\nid = \"r{{n}}-{id}\"\ndescription = {}\nprovider = \"none\"\nmax_duration = \"{max}\"\nbreakglass = {breakglass}\napprovers = {{ channel = \"C0APPROVALS\", users = {}, groups = {} }}\n",
                    toml_str(&description),
                    toml_list(users(approvers.0)),
                    toml_list(groups(approvers.1)),
                );
                if let Some((u, g)) = requesters {
                    text.push_str(&format!(
                        "requesters = {{ users = {}, groups = {} }}\n",
                        toml_list(users(u)),
                        toml_list(groups(g))
                    ));
                }
                if let Some((u, g)) = auto {
                    text.push_str(&format!(
                        "auto_approve = {{ max_duration = \"{max}\", users = {}, groups = {} }}\n",
                        toml_list(users(u)),
                        toml_list(groups(g))
                    ));
                }
                text
            },
        )
}

#[test]
fn jit_why_stays_within_slacks_limits_for_any_policy() {
    let strategy = (
        proptest::collection::vec(why_resource(), 1..5),
        (0usize..400, any::<prop::sample::Index>()),
        proptest::option::of("[a-z0-9._-]{1,64}"),
        proptest::option::of(1u64..1_000_000),
        (any::<bool>(), 0usize..4),
    );
    runner(40)
        .run(
            &strategy,
            |(resources, (who, pick), unknown, secs, (in_groups, standing))| {
                let mut text =
                    "[slack]\naudit_channel = \"C0AUDIT\"\nadmins = { users = [\"U0SECLEAD\"] }\n"
                        .to_owned();
                for (n, resource) in resources.iter().enumerate() {
                    text.push_str(&resource.replace("{n}", &n.to_string()));
                }
                let policy = Policy::parse(&text, &|_: &str| Ok(String::new()))
                    .unwrap_or_else(|e| panic!("{e}\n{text:.2000}"));
                let ids: Vec<String> = policy
                    .resources()
                    .iter()
                    .map(|r| r.id.to_string())
                    .collect();
                // A resource of the policy, or (sometimes) one it does not have.
                let asked = unknown.unwrap_or_else(|| ids[pick.index(ids.len())].clone());
                let directory = Directory {
                    in_every_group: in_groups,
                    standing: [
                        Standing::Member,
                        Standing::Guest,
                        Standing::External,
                        Standing::Unknown,
                    ][standing],
                };
                let duration = secs.map(GrantDuration::from_secs);
                let msg = commands::why_reply(&policy, &directory, &user(who), &asked, duration);
                assert_message("/jit why", &msg);
                let shown = jit::slack::simulator::render_blocks(&msg.blocks);
                if let Some(resource) = policy.resource(&asked) {
                    // Every rule is shown, after a description of any length.
                    for rule in [
                        "Who may request:",
                        "Approvers:",
                        "Duration:",
                        "Auto-approval:",
                        "Break-glass:",
                    ] {
                        prop_assert!(shown.contains(rule), "no {rule} in {shown:.300}");
                    }
                    // The approvers are all named, however many there are.
                    if let Some(last) = resource.approvers.users.last() {
                        prop_assert!(shown.contains(&format!("<@{last}>")), "{last} not shown");
                    }
                } else {
                    prop_assert!(shown.starts_with(":warning:"), "{shown:.300}");
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn audit_anchors_stay_within_limits_and_keep_their_text() {
    let strategy = (
        any::<i64>(),
        prop_oneof![3 => "[0-9a-f]{64}", 1 => odd_text()],
    );
    runner(64)
        .run(&strategy, |(seq, hash)| {
            let msg = blocks::audit_anchor(seq, &hash);
            assert_message("audit anchor", &msg);
            // `jit audit verify --slack` reads the text back: it stays exactly the anchor's.
            let text = jit::audit::anchor::text(seq, &hash);
            if limits::len(&text) <= limits::MESSAGE_TEXT {
                prop_assert_eq!(&msg.text, &text);
            }
            if seq > 0 && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                prop_assert_eq!(
                    jit::audit::anchor::parse(&msg.text),
                    Some((seq, hash.clone()))
                );
            }
            Ok(())
        })
        .unwrap();
    assert_message(
        "audit anchor",
        &blocks::audit_anchor(i64::MAX, &"f".repeat(64)),
    );
}

/// More resources than a select holds: the form offers the first 100, in the policy's order,
/// and says how to request the others.
#[test]
fn the_request_form_with_150_resources_offers_100_and_says_so() {
    let mut tree_runner = runner(1);
    let resources: Vec<Resource> = (0..150)
        .map(|n| {
            let mut r = resource().new_tree(&mut tree_runner).unwrap().current();
            r.id = ResourceId::parse(&format!("res-{n:03}")).unwrap();
            r.description = "A resource with a long description. ".repeat(n % 7 * 20);
            r
        })
        .collect();
    let refs: Vec<&Resource> = resources.iter().collect();
    for preselect in [None, Some("res-042"), Some("res-120")] {
        let view = views::request_modal(&refs, preselect, "C0GENERAL");
        assert_view("request modal", &view);
        let select = &view["blocks"][0]["element"];
        let options = select["options"].as_array().unwrap();
        assert_eq!(options.len(), 100);
        assert_eq!(options[0]["value"], "res-000");
        assert_eq!(options[99]["value"], "res-099");
        let note = view["blocks"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .to_string();
        assert!(
            note.contains("Showing the first 100 of 150 resources; use `/jit request &lt;resource&gt; &lt;duration&gt; &lt;justification&gt;` for the others."),
            "{note}"
        );
        match preselect {
            Some("res-042") => assert_eq!(select["initial_option"]["value"], "res-042"),
            // Beyond the options: nothing is preselected rather than an option not offered.
            _ => assert!(select.get("initial_option").is_none()),
        }
    }
    // 100 exactly: all offered, no note.
    let view = views::request_modal(&refs[..100], None, "C0GENERAL");
    assert_view("request modal", &view);
    assert!(!view.to_string().contains("Showing the first"));
}

/// 130 requests of one's own: Home shows what fits and points to `/jit list` for 100 of them
/// (no more: it would not be true), and `/jit list` shows 100 and counts the other 30.
#[test]
fn home_promises_only_what_jit_list_shows() {
    let mut tree_runner = runner(1);
    let mine: Vec<Request> = (0..130)
        .map(|n| {
            let mut r = request().new_tree(&mut tree_runner).unwrap().current();
            r.id = RequestId(n + 1);
            r
        })
        .collect();
    let view = home::view(&mine, &[], false);
    assert_view("App Home", &view);
    let rendered = view.to_string();
    let shown = mine
        .iter()
        .filter(|r| rendered.contains(&format!("*{}* `", r.id)))
        .count();
    assert!(shown < 100, "{shown}");
    assert!(
        rendered.contains(&format!(
            "… and {} more (`/jit list` shows 100 of them)",
            130 - shown
        )),
        "{rendered:.500}"
    );
    assert!(!rendered.contains("shows them all"));
    let list = commands::list_reply(&mine, None);
    assert_message("/jit list", &list);
    let blocks = list.blocks.to_string();
    assert!(blocks.contains("… and 30 more"), "{blocks:.300}");
    assert!(blocks.contains(&format!("*{}* `", RequestId(100))));
    assert!(!blocks.contains(&format!("*{}* `", RequestId(101))));
}
