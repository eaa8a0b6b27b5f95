//! A flood cannot delay approvals: the per-requester cap on pending requests on every path
//! (slash command, form, extension, API, concurrent submissions), the order of a channel's
//! messages (approval messages before audit posts, requesters taking turns), and a backed-up
//! audit channel posting a request's events together without dropping or hiding any.

use std::collections::HashMap;

use jit::domain::ids::RequestId;
use jit::domain::request::State;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::harness::*;

/// The harness policy with the default `max_pending_per_user` (3).
fn default_cap_policy() -> String {
    let policy = POLICY.replace("max_pending_per_user = 1000\n", "");
    assert!(!policy.contains("max_pending_per_user"));
    policy
}

async fn with_policy(policy: String) -> Harness {
    Harness::with_options(Options {
        policy,
        ..Options::default()
    })
    .await
}

async fn request_count(h: &Harness) -> usize {
    let mut conn = h.app.store.read().await.unwrap();
    jit::store::requests::list(&mut conn, false, 1000)
        .await
        .unwrap()
        .len()
}

const CAP_TEXT: &str = ":warning: You already have 3 requests waiting for approval, the most one person may have at once. To ask for another, withdraw one with `/jit cancel &lt;id&gt;` (`/jit list` shows them with their ids), or wait until one is decided.";

driver_tests! {
    async fn the_pending_cap_refuses_past_it_on_every_slack_path_and_frees_on_cancel() {
        let h = with_policy(default_cap_policy()).await;
        assert_eq!(h.app.policy.limits.max_pending_per_user, 3);
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(h.request_access(DEV, &format!("db 1h job {n}")).await);
        }
        // The fourth waits for nobody: refused, with the cap and how to free a slot.
        let refused = h.slash(DEV, "request db 1h one more").await;
        assert_eq!(refused.status, 200);
        assert_eq!(refused.text(), CAP_TEXT);
        assert_eq!(request_count(&h).await, 3, "nothing was stored");
        // The form says the same, next to a field, and stores nothing.
        let form = h
            .submit(
                DEV,
                "jit.request_modal",
                ORIGIN,
                &[
                    ("resource", "resource_select", "db"),
                    ("duration", "duration_select", "1h"),
                    ("justification", "justification_input", "from the form"),
                ],
            )
            .await;
        assert_eq!(form.body["response_action"], "errors", "{}", form.body);
        let shown = form.body["errors"]["justification"].as_str().unwrap();
        assert!(
            shown.starts_with("You already have 3 requests waiting for approval")
                && shown.contains("`/jit cancel <id>`"),
            "{shown}"
        );
        assert_eq!(request_count(&h).await, 3);
        // Someone else is not affected.
        h.request_access(BOB, "db 1h their own").await;
        // A request approved by policy at once never waits: not counted, not refused.
        let auto = h.slash(DEV, "request staging 1h quick look").await;
        assert!(
            auto.text().contains("was approved by policy"),
            "{}",
            auto.text()
        );
        h.run_jobs().await;
        assert_eq!(
            h.slack.messages(APPROVALS).len(),
            4,
            "three of DEV's and BOB's: no message for a refused request"
        );

        // Withdrawing one frees a slot.
        let cancelled = h.slash(DEV, &format!("cancel {}", ids[0].0)).await;
        assert!(
            cancelled.text().contains("is cancelled"),
            "{}",
            cancelled.text()
        );
        let again = h.request_access(DEV, "db 1h after the cancel").await;
        assert_eq!(h.state(again).await, State::Pending);
        assert_eq!(
            h.slash(DEV, "request db 1h over again").await.text(),
            CAP_TEXT
        );

        // A decision frees a slot too.
        h.click(ALICE, "jit.approve", ids[1]).await;
        h.run_jobs().await;
        assert_eq!(h.state(ids[1]).await, State::Active);

        // Extensions wait for approval too: they count, and are refused at the cap.
        h.request_access(DEV, "db 1h fills the slot").await;
        let extend = h.slash(DEV, &format!("extend {} 30m", ids[1].0)).await;
        assert_eq!(extend.text(), CAP_TEXT);
        h.slash(DEV, &format!("cancel {}", ids[2].0)).await;
        let extend = h.slash(DEV, &format!("extend {} 30m", ids[1].0)).await;
        assert!(
            extend.text().contains("is waiting for approval"),
            "{}",
            extend.text()
        );
        assert_eq!(
            h.slash(DEV, "request db 1h beyond the extension")
                .await
                .text(),
            CAP_TEXT,
            "the waiting extension holds a slot"
        );

        let metrics = h
            .http
            .get(format!("{}/metrics", h.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("jit_requests_total{outcome=\"too_many_pending\"} 5"),
            "{metrics}"
        );
    }
}

driver_tests! {
    async fn the_api_answers_too_many_pending_with_a_stable_code() {
        let h = with_policy(default_cap_policy()).await;
        let (_, token) = jit::handlers::identity::create_token(
            &h.app.store,
            &h.app.policy,
            "ci",
            "cli:test",
            h.clock_now(),
        )
        .await
        .unwrap();
        let create = || async {
            let response = h
                .http
                .post(format!("{}/api/v1/requests", h.url))
                .bearer_auth(token.expose_secret())
                .json(&json!({"resource": "ci-db", "duration": "1h", "justification": "deploy"}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        };
        for _ in 0..3 {
            let (status, body) = create().await;
            assert_eq!(status, 202, "{body}");
        }
        let (status, body) = create().await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "too_many_pending");
        assert_eq!(
            body["message"],
            "Identity `ci` already has 3 requests waiting for approval, the most one requester may have at once. Ask again once one of them is approved, denied or expired; `GET /api/v1/requests` lists them."
        );
        assert_eq!(request_count(&h).await, 3);
        // A decision frees a slot.
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", RequestId(1)).await;
        h.run_jobs().await;
        let (status, body) = create().await;
        assert_eq!(status, 202, "{body}");
    }
}

driver_tests! {
    /// Submissions racing each other (one group-commit batch, or several) cannot pass the cap
    /// together: it is counted inside the transaction that stores them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submissions_cannot_pass_the_cap_together() {
        let h = with_policy(default_cap_policy()).await;
        let texts: Vec<String> = (0..24)
            .map(|n| format!("request db 1h flood {n}"))
            .collect();
        let replies = futures::future::join_all(texts.iter().map(|t| h.slash(MALLORY, t))).await;
        let accepted = replies
            .iter()
            .filter(|r| r.text().contains("was sent to"))
            .count();
        let refused = replies.iter().filter(|r| r.text() == CAP_TEXT).count();
        assert_eq!((accepted, refused), (3, 21), "{replies:#?}");
        assert_eq!(request_count(&h).await, 3);
    }
}

driver_tests! {
    /// One Slack channel's pace goes to approval messages before audit posts when approvers share
    /// the audit channel, and in any approvers' channel each requester's first waiting message goes
    /// before anyone's second, the requester with the fewest waiting first: a newcomer's request is
    /// not pushed behind a flood. Threads and a request's own messages keep their order.
    async fn approval_messages_go_first_and_requesters_take_turns() {
        for shared in [true, false] {
            let policy = if shared {
                POLICY.replace("\"C0APPROVALS\"", "\"C0AUDIT\"")
            } else {
                POLICY.to_owned()
            };
            let h = with_policy(policy).await;
            let channel = if shared { AUDIT } else { APPROVALS };
            let mut flood = Vec::new();
            for who in [MALLORY, CAROL] {
                for n in 0..3 {
                    flood.push(h.request_access(who, &format!("db 1h flood {n}")).await);
                }
            }
            let legit = h.request_access(DEV, "db 1h the real incident").await;
            h.run_jobs().await;

            let top: Vec<String> = h
                .slack
                .messages(channel)
                .into_iter()
                .map(|m| m.text)
                .collect();
            let approval = |id: RequestId| {
                top.iter()
                    .position(|t| t.starts_with(&format!("Access request {id}:")))
                    .unwrap_or_else(|| panic!("no approval message for {id}: {top:#?}"))
            };
            // The first in line, then the newcomer (one waiting, against three each), then each
            // flooder's first, then each one's second, then third.
            let order: Vec<usize> = [
                flood[0], legit, flood[3], flood[1], flood[4], flood[2], flood[5],
            ]
            .into_iter()
            .map(approval)
            .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "shared={shared}: {top:#?}"
            );
            let approvals_seen = top
                .iter()
                .filter(|t| t.starts_with("Access request"))
                .count();
            assert_eq!(approvals_seen, 7);
            if shared {
                // Every audit thread starts after the last approval message: an audit post waiting
                // at the head of the line, not yet started, stepped back for them.
                let roots: Vec<usize> = top
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.starts_with("Audit thread for request"))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(roots.len(), 7);
                assert!(
                    roots.iter().all(|i| *i > order[6]),
                    "audit posts wait for the approval messages: {top:#?}"
                );
                assert_eq!(order[0], 0, "{top:#?}");
            }
            // The legitimate request's thread reads in order, every event once, and its approval
            // message was posted before its update.
            h.click(ALICE, "jit.approve", legit).await;
            h.run_jobs().await;
            assert_eq!(h.state(legit).await, State::Active);
            let shown: Vec<i64> = h
                .audit_thread(legit)
                .iter()
                .flat_map(|reply| seqs_in(reply))
                .collect();
            let mut conn = h.app.store.read().await.unwrap();
            let expected: Vec<i64> = jit::store::audit::for_request(&mut conn, legit)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            drop(conn);
            assert!(expected.len() >= 3, "{expected:?}");
            assert_eq!(shown, expected, "shared={shared}");
            let message = h
                .slack
                .messages(channel)
                .into_iter()
                .find(|m| m.text.starts_with(&format!("Access request {legit}:")))
                .unwrap();
            assert!(message.edits >= 1, "its update followed its post");
            assert!(
                message.rendered().contains("Approved by"),
                "{}",
                message.rendered()
            );
        }
    }
}

/// The audit event numbers a reply shows, in order.
fn seqs_in(reply: &str) -> Vec<i64> {
    reply
        .lines()
        .filter_map(|line| {
            line.split(" · ")
                .nth(1)?
                .strip_prefix("audit #")?
                .parse()
                .ok()
        })
        .collect()
}

/// Every `audit #N · `hash`` marker in the audit channel's threads, with how often it appears.
fn markers(h: &Harness) -> HashMap<i64, (usize, String)> {
    let mut seen: HashMap<i64, (usize, String)> = HashMap::new();
    for root in h.slack.messages(AUDIT) {
        for reply in h.slack.thread(AUDIT, &root.ts) {
            for line in reply.rendered().lines() {
                let Some(part) = line.split(" · ").nth(1) else {
                    continue;
                };
                let Some(seq) = part.strip_prefix("audit #") else {
                    continue;
                };
                let hash = line
                    .split('`')
                    .nth(1)
                    .unwrap_or_default()
                    .trim_end_matches('…')
                    .to_owned();
                let entry = seen.entry(seq.parse().unwrap()).or_insert((0, hash));
                entry.0 += 1;
            }
        }
    }
    seen
}

driver_tests! {
    /// A backed-up audit channel posts the waiting events of one request in one reply, each with
    /// its number and hash digits; nothing is dropped or posted twice; break-glass is posted on its
    /// own (broadcast, with its buttons) and ahead of the other waiting posts.
    async fn a_backed_up_audit_channel_coalesces_events_and_keeps_alerts_alone() {
        let h = Harness::start().await;
        assert_eq!(h.app.settings.audit_coalesce_backlog, 10);
        let first = h.request_access(DEV, "db 1h the first").await;
        h.click(ALICE, "jit.approve", first).await;
        for n in 0..11 {
            h.request_access(BOB, &format!("db 1h backlog {n}")).await;
        }
        let glass = h.slash(CAROL, "breakglass db prod is down").await;
        assert_eq!(glass.status, 200);
        h.run_jobs().await;

        let mut conn = h.app.store.read().await.unwrap();
        let events = jit::store::audit::page(&mut conn, 0, 10_000).await.unwrap();
        let stuck: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE kind LIKE 'slack.%' AND state <> 'done'",
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        drop(conn);
        assert_eq!(stuck, 0, "every message job done");
        // Every event shown once, with its own hash digits.
        let seen = markers(&h);
        for event in &events {
            let (times, hash) = seen
                .get(&event.seq)
                .unwrap_or_else(|| panic!("event {} ({}) not posted", event.seq, event.event));
            assert_eq!(*times, 1, "event {} posted once", event.seq);
            assert_eq!(hash, &event.hash[..12], "event {}", event.seq);
        }
        assert_eq!(seen.len(), events.len());

        // The first request's events waited behind its first: one reply carries them, in order.
        let thread = h.audit_thread(first);
        let own: Vec<&jit::store::audit::AuditRow> = events
            .iter()
            .filter(|e| e.request_id == Some(first.0))
            .collect();
        assert!(own.len() >= 3, "{own:?}");
        let together = thread
            .iter()
            .find(|r| r.contains("events of this request, posted together"))
            .unwrap_or_else(|| panic!("no coalesced reply: {thread:#?}"));
        let positions: Vec<usize> = own
            .iter()
            .filter_map(|e| together.find(&format!("audit #{} ", e.seq)))
            .collect();
        assert!(positions.len() >= 2, "{together}");
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{together}");
        assert!(
            thread.len() < own.len(),
            "fewer replies than events: {thread:#?}"
        );

        // Break-glass: its own reply, broadcast, with the review buttons, never carried.
        let calls = h.slack.calls();
        let broadcast: Vec<&Value> = calls
            .iter()
            .filter(|c| c.method == "chat.postMessage" && c.body["reply_broadcast"] == true)
            .map(|c| &c.body)
            .collect();
        assert_eq!(broadcast.len(), 1, "{broadcast:#?}");
        let alert = broadcast[0].to_string();
        assert!(alert.contains("jit.review"), "{alert}");
        assert_eq!(alert.matches("audit #").count(), 1, "{alert}");
        // It went ahead of the backlog: before the last backlog request's audit thread began.
        let top: Vec<String> = h
            .slack
            .messages(AUDIT)
            .into_iter()
            .map(|m| m.text)
            .collect();
        let glass_id = Harness::id_in(&glass.text());
        let glass_root = top
            .iter()
            .position(|t| t == &format!("Audit thread for request {glass_id}"))
            .unwrap();
        let last_backlog = top
            .iter()
            .position(|t| t == &format!("Audit thread for request {}", RequestId(12)))
            .unwrap();
        assert!(glass_root < last_backlog, "{top:#?}");

        let metrics = h
            .http
            .get(format!("{}/metrics", h.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let coalesced: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("jit_audit_events_coalesced_total "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(coalesced >= 2, "{coalesced}");
    }
}
