//! Scheduled start (issue 15, point 2): `/jit request db 2h at 23:00`, `at <RFC 3339>`, the
//! form's date-time picker and the API's `start_at`. Approval may come ahead of time; access is
//! issued at the start and lasts its duration from then; the policy is checked again at the
//! start; no decision by the start expires the request; the requester may cancel until the
//! start; `max_start_ahead` caps how far ahead a start may be. The clock is driven through
//! approval, activation and teardown, across a restart between approval and start.

use chrono::{DateTime, Duration, Utc};
use jit::domain::ids::RequestId;
use jit::domain::request::State;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::harness::*;

/// `db` as in the harness; `team-db` may be requested by the members of S0DEVS only; `lab` is
/// approved by policy and may be scheduled at most 2 hours ahead.
const SCHEDULED_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[defaults]
reminder_before = "10m"
pending_timeout = "30m"
max_start_ahead = "2d"

[limits]
requests_per_user_per_minute = 1000
max_pending_per_user = 1000

[[resource]]
id = "db"
description = "Production database"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
timeout = "10s"
parameters = { log = "{log}" }
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0BOB"] }
requesters = { users = ["U0DEV", "U0NEWBIE"], identities = ["ci"] }

[[resource]]
id = "team-db"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
parameters = { log = "{log}" }
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
requesters = { groups = ["S0DEVS"] }

[[resource]]
id = "lab"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
parameters = { log = "{log}" }
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "4h" }
max_start_ahead = "2h"

[[identity]]
name = "ci"
owner = { users = ["U0CAROL"] }
resources = ["db"]
"#;

async fn scheduled_harness() -> Harness {
    let h = Harness::with_options(Options {
        policy: SCHEDULED_POLICY.to_owned(),
        ..Options::default()
    })
    .await;
    h.slack.set_group_members("S0DEVS", &[DEV]);
    h.app
        .directory
        .refresh_all(&jit::slack::directory::groups_in(&h.app.policy))
        .await;
    h
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

async fn token(h: &Harness, identity: &str) -> String {
    let (_, token) = jit::handlers::identity::create_token(
        &h.app.store,
        &h.app.policy,
        identity,
        "cli:test",
        h.clock_now(),
    )
    .await
    .unwrap();
    token.expose_secret().to_owned()
}

async fn api_request(h: &Harness, token: &str, body: Value) -> (u16, Value) {
    let response = h
        .http
        .post(format!("{}/api/v1/requests", h.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn request_count(h: &Harness) -> usize {
    let mut conn = h.app.store.read().await.unwrap();
    jit::store::requests::list(&mut conn, false, 100)
        .await
        .unwrap()
        .len()
}

/// The harness clock moved to `to` (forward only), then the due jobs run.
async fn run_until(h: &Harness, to: DateTime<Utc>) {
    let now = h.clock_now();
    assert!(to >= now, "the clock only moves forward here");
    h.advance_and_run(to - now).await;
}

driver_tests! {
    /// The whole life of a scheduled grant: `at 07:00` typed by someone in UTC-8 is 15:00 UTC;
    /// approved at once, nothing is issued before the start, jit restarts in between, access is
    /// issued at 15:00 for its two hours from then (not from the approval), and torn down at
    /// 17:00. Everyone is told, and the audit thread tells the story.
    async fn approved_ahead_issued_at_the_start_across_a_restart_and_torn_down() {
        let h = scheduled_harness().await;
        // t0 is 14:00 UTC: 06:00 in UTC-8, where the requester is.
        h.slack.set_user_tz(DEV, -8 * 3600);
        h.app.directory.refresh_users().await;
        let reply = h
            .slash(DEV, "request db 2h at 07:00 failover drill, CHG-7")
            .await;
        let text = reply.text();
        let id = Harness::id_in(&text);
        assert!(
            text.contains("If approved, access starts <!date^1795446000^"),
            "07:00 in UTC-8 is 15:00 UTC (1795446000): {text}"
        );
        let request = h.request(id).await;
        assert_eq!(request.start_at, Some(at("2026-11-23T15:00:00Z")));
        assert_eq!(
            request.pending_until,
            Some(at("2026-11-23T14:30:00Z")),
            "the pending timeout, which comes before the start"
        );
        h.run_jobs().await;
        let approval = h.approval_message().rendered();
        assert!(
            approval.contains("*Scheduled:* access starts <!date^1795446000^")
                && approval.contains("lasts 2 hours from then"),
            "{approval}"
        );

        // Approved ahead of time: approved, not issued.
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Approved);
        assert!(h.provider_actions(id).is_empty(), "nothing before the start");
        let approved = h.approval_message().rendered();
        assert!(
            approved.contains("Approved by <@U0ALICE>")
                && approved.contains("access starts <!date^1795446000^"),
            "{approved}"
        );
        assert!(
            h.dm_texts(DEV)
                .iter()
                .any(|d| d.contains("Access will be issued at its scheduled start")),
            "{:?}",
            h.dm_texts(DEV)
        );
        let list = h.slash(DEV, "list").await.text();
        assert!(
            list.contains("approved · starts <!date^1795446000^")
                && list.contains(&format!("`/jit cancel {}`", id.0)),
            "{list}"
        );
        run_until(&h, at("2026-11-23T14:59:59Z")).await;
        assert_eq!(h.state(id).await, State::Approved);
        assert!(h.provider_actions(id).is_empty(), "nothing before the start");

        // A restart between approval and start: a new jit on the same database.
        let h = {
            let restarted = h.replica().await;
            drop(h);
            restarted
        };
        assert!(h.provider_actions(id).is_empty());
        run_until(&h, at("2026-11-23T15:00:00Z")).await;
        let active = h.request(id).await;
        assert_eq!(active.state, State::Active);
        assert_eq!(active.granted_at, Some(at("2026-11-23T15:00:00Z")));
        assert_eq!(
            active.expires_at,
            Some(at("2026-11-23T17:00:00Z")),
            "two hours from the start, not from the approval at 14:00"
        );
        assert_eq!(h.provider_actions(id), ["grant"]);
        let grant = h.provider_calls().into_iter().find(|c| c["action"] == "grant").unwrap();
        assert!(
            grant["expires_at"].as_str().unwrap().starts_with("2026-11-23T17:00:00"),
            "the provider is told the end of the window: {grant}"
        );
        assert!(
            h.dm_texts(DEV).iter().any(|d| d.contains(":unlock: You now have `db` until")),
            "{:?}",
            h.dm_texts(DEV)
        );

        run_until(&h, at("2026-11-23T16:59:59Z")).await;
        assert_eq!(h.state(id).await, State::Active);
        assert_eq!(h.provider_actions(id), ["grant"]);
        run_until(&h, at("2026-11-23T17:00:00Z")).await;
        assert_eq!(h.state(id).await, State::Expired);
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
        assert_eq!(
            h.audit_events(id).await,
            [
                "requested",
                "approved",
                "granted",
                "reminded",
                "expired",
                "credentials_erased",
                "torn_down"
            ]
        );
        let thread = h.audit_thread(id).join("\n");
        assert!(
            thread.contains("requested `db` for `2h` starting <!date^1795446000^"),
            "{thread}"
        );
    }

    /// `at <RFC 3339>` on the slash command, with and without a zone, and a requester whose
    /// time zone jit does not know yet (read as UTC, and the reply says so).
    async fn a_date_and_time_on_the_slash_command() {
        let h = scheduled_harness().await;
        h.slack.set_user_tz(DEV, 3600);
        h.app.directory.refresh_users().await;
        let zoned = h
            .request_access(DEV, "db 1h at 2026-11-24T09:30Z patching, CHG-8")
            .await;
        assert_eq!(h.request(zoned).await.start_at, Some(at("2026-11-24T09:30:00Z")));
        // Without a zone: the requester's (UTC+1).
        let local = h
            .request_access(DEV, "db 1h AT 2026-11-24T09:30 patching again")
            .await;
        assert_eq!(h.request(local).await.start_at, Some(at("2026-11-24T08:30:00Z")));
        // Someone jit has not read from Slack yet (named in the policy, so they may ask): UTC,
        // and the reply says so.
        h.slack.set_user("U0NEWBIE", "newbie", None);
        h.slack.set_user_tz("U0NEWBIE", 7200);
        let reply = h.slash("U0NEWBIE", "request db 1h at 15:00 trying things").await;
        let text = reply.text();
        let id = Harness::id_in(&text);
        assert_eq!(h.request(id).await.start_at, Some(at("2026-11-23T15:00:00Z")));
        assert!(text.contains("read as UTC"), "{text}");
        // A justification that merely begins with "at" is a justification.
        let plain = h
            .request_access(DEV, "db 1h at the customer's request")
            .await;
        let request = h.request(plain).await;
        assert_eq!(request.start_at, None);
        assert_eq!(request.justification, "at the customer's request");
    }

    /// The form's optional date-time picker (Slack sends unix seconds): it is in the form Slack
    /// accepted, an empty one means "once approved", and a chosen time schedules the start.
    async fn the_form_has_a_date_time_picker() {
        let h = scheduled_harness().await;
        let reply = h.slash(DEV, "request").await;
        assert_eq!(reply.status, 200);
        let opened = h.slack.opened_views();
        let view = &opened.last().expect("the form was opened").view;
        let picker = view["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["block_id"] == "start")
            .expect("a start block");
        assert_eq!(picker["optional"], true);
        assert_eq!(picker["element"]["type"], "datetimepicker");
        assert_eq!(picker["element"]["action_id"], "start_datetime");

        let start = at("2026-11-23T16:00:00Z");
        let done = h
            .submit(
                DEV,
                "jit.request_modal",
                ORIGIN,
                &[
                    ("resource", "resource_select", "db"),
                    ("duration", "duration_select", "1h"),
                    ("justification", "justification_input", "index rebuild in the window"),
                    ("start", "start_datetime", &start.timestamp().to_string()),
                ],
            )
            .await;
        assert_eq!(done.body, json!({"response_action": "clear"}));
        h.run_jobs().await;
        let dm = h.dm_texts(DEV).join("\n");
        assert!(dm.contains("starting <!date^1795449600^"), "{dm}");
        let mut conn = h.app.store.read().await.unwrap();
        let mine = jit::store::requests::list(&mut conn, false, 10).await.unwrap();
        drop(conn);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].request.start_at, Some(start));

        // Too far ahead for `db` (2 days): refused next to the picker, nothing stored.
        let far = at("2026-11-26T14:00:00Z");
        let refused = h
            .submit(
                DEV,
                "jit.request_modal",
                ORIGIN,
                &[
                    ("resource", "resource_select", "db"),
                    ("duration", "duration_select", "1h"),
                    ("justification", "justification_input", "index rebuild in the window"),
                    ("start", "start_datetime", &far.timestamp().to_string()),
                ],
            )
            .await;
        assert_eq!(refused.body["response_action"], "errors");
        let message = refused.body["errors"]["start"].as_str().unwrap();
        assert!(message.contains("at most 2d (2 days) ahead"), "{message}");
        assert_eq!(request_count(&h).await, 1);
    }

    /// The API's `start_at`, with stable codes for a start in the past, too far ahead or not a
    /// date; `GET` shows the start.
    async fn the_api_takes_start_at() {
        let h = scheduled_harness().await;
        let token = token(&h, "ci").await;
        let body = |start: &str| {
            json!({"resource": "db", "duration": "1h", "justification": "deploy in the window", "start_at": start})
        };
        let (status, created) = api_request(&h, &token, body("2026-11-23T18:00:00+01:00")).await;
        assert_eq!(status, 202, "{created}");
        let id = RequestId(created["id"].as_i64().unwrap());
        assert_eq!(h.request(id).await.start_at, Some(at("2026-11-23T17:00:00Z")));
        let shown: Value = h
            .http
            .get(format!("{}/api/v1/requests/{}", h.url, id.0))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(shown["start_at"], "2026-11-23T17:00:00.000Z");

        for (start, code) in [
            ("2026-11-23T13:00:00Z", "start_in_past"),
            ("2026-11-23T14:00:00Z", "start_in_past"),
            ("2026-11-25T14:00:01Z", "start_too_far_ahead"),
            ("tomorrow", "invalid_start_at"),
            ("2026-11-23T18:00", "invalid_start_at"),
        ] {
            let (status, error) = api_request(&h, &token, body(start)).await;
            assert_eq!(status, 400, "{start}: {error}");
            assert_eq!(error["code"], code, "{start}: {error}");
        }
        assert_eq!(request_count(&h).await, 1, "nothing refused was stored");
    }

    /// The `jit` CLI as a client: `--start-at` is the API's `start_at`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cli_takes_start_at() {
        let h = scheduled_harness().await;
        let token = token(&h, "ci").await;
        let run = |args: Vec<&'static str>| {
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_jit"))
                .args(args)
                .env_clear()
                .env("JIT_URL", &h.url)
                .env("JIT_TOKEN", &token)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        };
        let out = run(vec![
            "request", "db", "1h", "--reason", "deploy in the window", "--start-at",
            "2026-11-23T20:00:00Z",
        ])
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
        assert!(stderr.contains("to start at 2026-11-23T20:00:00Z"), "{stderr}");
        assert_eq!(h.request(RequestId(1)).await.start_at, Some(at("2026-11-23T20:00:00Z")));
        let out = run(vec![
            "request", "db", "1h", "--reason", "too late", "--start-at", "2026-11-23T13:00:00Z",
        ])
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("has already passed"), "{stderr}");
        assert_eq!(request_count(&h).await, 1);
    }

    /// A start in the past or further ahead than `max_start_ahead` is refused on the slash
    /// command with what was wrong; nothing is stored or posted.
    async fn a_start_in_the_past_or_too_far_ahead_is_refused() {
        let h = scheduled_harness().await;
        let past = h.slash(DEV, "request db 1h at 2026-11-23T13:59Z too late").await;
        assert!(
            past.text().contains("The start you asked for (2026-11-23 13:59 UTC) has already passed"),
            "{}",
            past.text()
        );
        let far = h.slash(DEV, "request db 1h at 2026-11-25T14:01Z too early").await;
        assert!(
            far.text().contains("`db` may be scheduled at most 2d (2 days) ahead; the start you asked for (2026-11-25 14:01 UTC) is 2 days 1 minute from now."),
            "{}",
            far.text()
        );
        let lab = h.slash(DEV, "request lab 1h at 16:01 experiment").await;
        assert!(lab.text().contains("`lab` may be scheduled at most 2h"), "{}", lab.text());
        let bad = h.slash(DEV, "request db 1h at 25:00 nonsense").await;
        assert!(bad.text().contains("`25:00` is not a start time"), "{}", bad.text());
        assert_eq!(request_count(&h).await, 0);
        h.run_jobs().await;
        assert!(h.slack.messages(APPROVALS).is_empty());
        // `/jit why` says how far ahead a start may be.
        let why = h.slash(DEV, "why lab").await.text();
        assert!(why.contains("Scheduled start: up to 2h (2 hours) ahead"), "{why}");
    }

    /// Nobody decides before the start: the request expires then (even though its pending
    /// timeout is later), the requester is told why, the message says so, and a late click
    /// approves nothing.
    async fn no_decision_by_the_start_expires_the_request() {
        let h = scheduled_harness().await;
        let id = h.request_access(DEV, "db 1h at 14:20 quick fix").await;
        let request = h.request(id).await;
        assert_eq!(request.pending_until, request.start_at, "the start comes first");
        h.run_jobs().await;
        assert!(
            h.approval_message().rendered().contains("(its start)"),
            "{}",
            h.approval_message().rendered()
        );
        run_until(&h, at("2026-11-23T14:10:00Z")).await;
        assert!(h.audit_events(id).await.contains(&"nudged".to_owned()), "nudged at half time");
        run_until(&h, at("2026-11-23T14:20:00Z")).await;
        assert_eq!(h.state(id).await, State::TimedOut);
        assert!(
            h.dm_texts(DEV)
                .iter()
                .any(|d| d.contains("expired: nobody decided before its scheduled start")),
            "{:?}",
            h.dm_texts(DEV)
        );
        let message = h.approval_message().rendered();
        assert!(message.contains("nobody decided before its scheduled start"), "{message}");
        h.click(ALICE, "jit.approve", id).await;
        run_until(&h, at("2026-11-23T15:30:00Z")).await;
        assert_eq!(h.state(id).await, State::TimedOut);
        assert!(h.provider_actions(id).is_empty(), "never issued");
    }

    /// The requester cancels an approved request before its start: it is never issued, the
    /// approvers' message and the audit thread say so. Once access has started, cancel
    /// points at release instead.
    async fn cancel_before_the_start_means_never_issued() {
        let h = scheduled_harness().await;
        let id = h.request_access(DEV, "db 1h at 15:00 planned work").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Approved);
        // App Home shows it approved, with its start.
        let open = json!({"type": "event_callback", "team_id": "T0JITSIM", "event_id": "EvHome1",
            "event": {"type": "app_home_opened", "user": DEV, "tab": "home"}});
        h.post_signed("/slack/events", "application/json", open.to_string()).await;
        h.run_jobs().await;
        let home = jit::slack::simulator::render_blocks(&h.slack.published_view(DEV).unwrap());
        assert!(
            home.contains(&format!("*{id}* `db` for 1 hour · approved · starts <!date^1795446000^")),
            "{home}"
        );
        let other = h.slash(BOB, &format!("cancel {}", id.0)).await;
        assert!(other.text().contains("is not yours"), "{}", other.text());
        let reply = h.slash(DEV, &format!("cancel {}", id.0)).await;
        assert!(reply.text().contains("is cancelled"), "{}", reply.text());
        assert_eq!(h.state(id).await, State::Cancelled);
        run_until(&h, at("2026-11-23T16:30:00Z")).await;
        assert_eq!(h.state(id).await, State::Cancelled);
        assert!(h.provider_actions(id).is_empty(), "never issued");
        assert_eq!(h.audit_events(id).await, ["requested", "approved", "cancelled"]);
        let message = h.approval_message().rendered();
        assert!(
            message.contains("then cancelled by the requester")
                && message.contains("before its start; nothing was issued"),
            "{message}"
        );
        let mut conn = h.app.store.read().await.unwrap();
        assert!(
            !jit::store::jobs::is_live(&mut conn, &jit::jobs::keys::grant(id)).await.unwrap(),
            "the grant job is gone"
        );
        drop(conn);

        // Started: no longer cancelled, released instead.
        let started = h.request_access(DEV, "db 1h at 16:45 later work").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", started).await;
        run_until(&h, at("2026-11-23T16:45:00Z")).await;
        assert_eq!(h.state(started).await, State::Active);
        let late = h.slash(DEV, &format!("cancel {}", started.0)).await;
        assert!(
            late.text().contains(&format!("use `/jit release {}`", started.0)),
            "{}",
            late.text()
        );
        assert_eq!(h.state(started).await, State::Active);
    }

    /// The policy is checked again at the start: a requester who left the group that may
    /// request, or a resource removed from the policy, means no grant, and the requester is told.
    async fn the_policy_is_checked_again_at_the_start() {
        let h = scheduled_harness().await;
        let lost = h.request_access(DEV, "team-db 1h at 15:00 planned work").await;
        let removed = h.request_access(DEV, "lab 1h at 15:30 lab work").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", lost).await;
        h.run_jobs().await;
        assert_eq!(h.state(lost).await, State::Approved);
        assert_eq!(h.state(removed).await, State::Approved, "approved by policy");

        // DEV leaves S0DEVS before the start. At the start jit has not read Slack yet (as just
        // after a restart): it cannot tell a lost right from a list not loaded, so it waits,
        // and issues nothing.
        h.slack.set_group_members("S0DEVS", &[]);
        h.advance(at("2026-11-23T15:00:00Z") - h.clock_now());
        h.app.directory.forget_workspace();
        h.run_jobs().await;
        assert_eq!(h.state(lost).await, State::Approved, "waiting for Slack");
        assert!(h.provider_actions(lost).is_empty(), "nothing issued");
        // Once it has read who is in the group: the right is gone, and there is no grant.
        h.app
            .directory
            .refresh_all(&jit::slack::directory::groups_in(&h.app.policy))
            .await;
        h.advance_and_run(Duration::seconds(30)).await;
        let refused = h.request(lost).await;
        assert_eq!(refused.state, State::Failed);
        assert!(h.provider_actions(lost).is_empty(), "nothing issued");
        assert_eq!(
            h.audit_events(lost).await,
            ["requested", "approved", "activation_refused"]
        );
        assert!(
            h.dm_texts(DEV).iter().any(|d| d.contains(&format!(
                "Your request {lost} for `team-db`"
            )) && d.contains("You are not allowed to request `team-db`")),
            "{:?}",
            h.dm_texts(DEV)
        );
        let message = h
            .slack
            .messages(APPROVALS)
            .into_iter()
            .find(|m| m.rendered().contains(&format!("Access request {lost}")))
            .unwrap()
            .rendered();
        assert!(
            message.contains("at its scheduled start access was not issued"),
            "{message}"
        );

        // `lab` is removed from the policy, and jit restarted with it, before the start.
        let without_lab = SCHEDULED_POLICY
            .split("[[resource]]\nid = \"lab\"")
            .next()
            .unwrap()
            .to_owned()
            + "[[identity]]\nname = \"ci\"\nowner = { users = [\"U0CAROL\"] }\nresources = [\"db\"]\n";
        let h = {
            let restarted = h.restart_with_policy(&without_lab).await;
            drop(h);
            restarted
        };
        assert!(h.app.policy.resource("lab").is_none());
        run_until(&h, at("2026-11-23T15:30:00Z")).await;
        assert_eq!(h.state(removed).await, State::Failed);
        assert!(h.provider_actions(removed).is_empty(), "nothing issued");
        assert!(
            h.audit_events(removed).await.ends_with(&["activation_refused".to_owned()]),
            "{:?}",
            h.audit_events(removed).await
        );
        assert!(
            h.dm_texts(DEV)
                .iter()
                .any(|d| d.contains(&format!("Your request {removed} for `lab`"))
                    && d.contains("There is no resource `lab`")),
            "{:?}",
            h.dm_texts(DEV)
        );
    }

    /// A grant job that failed at the start in a way that may have acted (a provider timeout,
    /// here exit 75) checks the policy again on its next attempt: the right is gone by then, so
    /// nothing is issued, and whatever the first attempt may have done is revoked.
    async fn a_refusal_on_a_later_attempt_revokes_what_the_first_may_have_done() {
        let h = scheduled_harness().await;
        let id = h.request_access(DEV, "team-db 1h at 15:00 planned work").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        h.fail_provider(1, 75);
        h.advance(at("2026-11-23T15:00:00Z") - h.clock_now());
        let groups = jit::slack::directory::groups_in(&h.app.policy);
        h.app.directory.refresh_all(&groups).await;
        h.run_jobs().await;
        assert_eq!(h.provider_actions(id), ["grant!75"]);
        assert_eq!(h.state(id).await, State::Approved, "to be retried");
        h.slack.set_group_members("S0DEVS", &[]);
        h.app.directory.refresh_all(&groups).await;
        h.advance_and_run(Duration::seconds(10)).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Failed);
        assert_eq!(h.provider_actions(id), ["grant!75", "revoke"]);
        let events = h.audit_events(id).await;
        for event in ["grant_failed", "grant_uncertain", "activation_refused", "torn_down"] {
            assert!(events.contains(&event.to_owned()), "{event}: {events:?}");
        }
    }

    /// Approved by policy with a future start: approved at once, issued at the start only.
    async fn auto_approved_with_a_start_is_issued_at_the_start() {
        let h = scheduled_harness().await;
        let reply = h.slash(DEV, "request lab 30m at 15:00 try the new index").await;
        let text = reply.text();
        assert!(text.contains("was approved by policy") && text.contains("Access starts"), "{text}");
        let id = Harness::id_in(&text);
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Approved);
        assert!(h.provider_actions(id).is_empty());
        run_until(&h, at("2026-11-23T14:59:00Z")).await;
        assert!(h.provider_actions(id).is_empty());
        run_until(&h, at("2026-11-23T15:00:00Z")).await;
        let active = h.request(id).await;
        assert_eq!(active.state, State::Active);
        assert_eq!(active.expires_at, Some(at("2026-11-23T15:30:00Z")));
        run_until(&h, at("2026-11-23T15:30:00Z")).await;
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
        // A late worker (jit down through the whole window) issues nothing.
        let missed = h.request_access(DEV, "lab 30m at 16:00 missed window").await;
        h.run_jobs().await;
        h.advance(Duration::hours(1));
        h.run_jobs().await;
        assert_eq!(h.state(missed).await, State::Failed);
        assert!(h.provider_actions(missed).is_empty());
        assert!(
            h.request(missed).await.failure.unwrap().contains("had ended before jit could issue it"),
        );
    }
}
