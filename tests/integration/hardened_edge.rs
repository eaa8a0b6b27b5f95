//! The hardened edge (security review, second round): each test does what the attacker did.

use jit::domain::request::State;

use crate::harness::*;

driver_tests! {
    /// An admin who took break-glass could mark it reviewed themselves.
    async fn nobody_reviews_their_own_breakglass() {
        let h = Harness::start().await;
        h.slack.set_group_members("S0SECURITY", &[CAROL]);
        h.app
            .directory
            .refresh(&jit::domain::ids::SlackGroupId::parse("S0SECURITY").unwrap())
            .await;
        let reply = h.slash(SECLEAD, "breakglass db the site is down").await;
        let id = Harness::id_in(&reply.text());
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);

        for action in ["jit.review", "jit.review_revoke"] {
            h.interaction(Harness::click_payload(
                SECLEAD,
                action,
                &id.0.to_string(),
                AUDIT,
            ))
            .await;
            h.run_jobs().await;
            let review = h.request(id).await;
            assert_eq!(
                review.reviewed_by, None,
                "{action} by the taker changes nothing"
            );
            assert_eq!(review.state, State::Active);
        }
        assert!(
            h.ephemeral_texts(SECLEAD)
                .iter()
                .any(|t| t.contains("another admin has to review it")),
            "{:?}",
            h.ephemeral_texts(SECLEAD)
        );
        // Another admin can.
        h.interaction(Harness::click_payload(
            CAROL,
            "jit.review",
            &id.0.to_string(),
            AUDIT,
        ))
        .await;
        assert_eq!(h.request(id).await.reviewed_by.as_deref(), Some(CAROL));
    }
}

driver_tests! {
    /// Stale group membership (Slack unreachable for longer than the documented maximum) grants
    /// no approver rights: fail closed, and say why.
    async fn stale_group_membership_grants_no_rights() {
        use jit::slack::simulator::Fault;
        let h = Harness::start().await;
        h.slack
            .inject("usergroups.users.list", Fault::ServerError(503), 1000);
        h.advance(chrono::Duration::seconds(
            jit::slack::directory::MAX_STALENESS.as_secs() as i64 + 60,
        ));
        h.app
            .directory
            .refresh_all(&jit::slack::directory::groups_in(&h.app.policy))
            .await;
        let id = h.request_access(DEV, "db 1h needs an sre").await;
        h.run_jobs().await;
        h.click("U0SRE1", "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(
            h.state(id).await,
            State::Pending,
            "stale membership approves nothing"
        );
        let told = h.ephemeral_texts("U0SRE1");
        assert!(
            told.iter()
                .any(|t| t.contains("has not been able to read who is in") && t.contains("S0SRE")),
            "{told:?}"
        );
        // Slack answers again: the next click refreshes the group and the member may approve.
        h.slack.clear_faults();
        h.advance(chrono::Duration::minutes(1));
        h.click("U0SRE1", "jit.approve", id).await;
        assert_eq!(h.state(id).await, State::Approved);
    }
}

/// Slack unreachable for longer than the staleness maximum: every group's cached membership is
/// then stale.
async fn make_groups_stale(h: &Harness) {
    use jit::slack::simulator::Fault;
    h.slack
        .inject("usergroups.users.list", Fault::ServerError(503), 1000);
    h.advance(chrono::Duration::seconds(
        jit::slack::directory::MAX_STALENESS.as_secs() as i64 + 60,
    ));
    h.app
        .directory
        .refresh_all(&jit::slack::directory::groups_in(&h.app.policy))
        .await;
}

driver_tests! {
    /// Stale admin rights: an admin only through a group (S0SECURITY) whose membership jit could
    /// not read for longer than the maximum can neither review nor revoke, and is told why; once
    /// Slack answers again, they can.
    async fn stale_group_membership_grants_no_admin_rights() {
        let h = Harness::start().await;
        h.slack.set_group_members("S0SECURITY", &[CAROL]);
        h.app
            .directory
            .refresh(&jit::domain::ids::SlackGroupId::parse("S0SECURITY").unwrap())
            .await;
        let reply = h.slash(SECLEAD, "breakglass db the site is down").await;
        let id = Harness::id_in(&reply.text());
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);

        make_groups_stale(&h).await;
        // Review (and review-and-revoke) by the stale group's member: refused.
        for action in ["jit.review", "jit.review_revoke"] {
            h.interaction(Harness::click_payload(
                CAROL,
                action,
                &id.0.to_string(),
                AUDIT,
            ))
            .await;
            h.run_jobs().await;
            let request = h.request(id).await;
            assert_eq!(request.reviewed_by, None, "{action}: no review");
            assert_eq!(request.state, State::Active, "{action}: not revoked");
        }
        let stale_line = "Only jit admins can do that, and jit has not been able to read who is in";
        assert!(
            h.ephemeral_texts(CAROL)
                .iter()
                .any(|t| t.contains(stale_line) && t.contains("S0SECURITY")),
            "{:?}",
            h.ephemeral_texts(CAROL)
        );
        // `/jit revoke` by the same admin: refused, with the same reason.
        let reply = h.slash(CAROL, &format!("revoke {} suspicious", id.0)).await;
        assert!(reply.text().contains(stale_line), "{}", reply.text());
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        assert_eq!(h.provider_actions(id), ["grant"], "nothing torn down");

        // Slack answers again: the group is read afresh on the next click and the admin may review.
        h.slack.clear_faults();
        h.advance(chrono::Duration::minutes(1));
        h.interaction(Harness::click_payload(
            CAROL,
            "jit.review",
            &id.0.to_string(),
            AUDIT,
        ))
        .await;
        assert_eq!(h.request(id).await.reviewed_by.as_deref(), Some(CAROL));
    }
}

driver_tests! {
    /// Auto-approval through a stale group: `db` auto-approves members of S0ONCALL; with their
    /// membership stale, a member's request waits for an approver like anyone's. Fresh again, it
    /// is approved by policy.
    async fn a_stale_group_auto_approves_nothing() {
        let h = Harness::start().await;
        make_groups_stale(&h).await;
        let reply = h.slash(ONCALL, "request db 30m paged at night").await;
        assert!(reply.text().contains("was sent to"), "{}", reply.text());
        let id = Harness::id_in(&reply.text());
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Pending, "not auto-approved");
        assert!(h.provider_actions(id).is_empty(), "nothing granted");

        // The control: once membership is fresh, the same request is approved by policy.
        h.slack.clear_faults();
        h.app
            .directory
            .refresh_all(&jit::slack::directory::groups_in(&h.app.policy))
            .await;
        let reply = h.slash(ONCALL, "request db 30m paged again").await;
        assert!(
            reply.text().contains("approved by policy"),
            "{}",
            reply.text()
        );
        let fresh = Harness::id_in(&reply.text());
        h.run_jobs().await;
        assert_eq!(h.state(fresh).await, State::Active);
    }
}

driver_tests! {
    /// An Enterprise Grid organisation, installed org-wide (`JIT_SLACK_TEAM_ID=E…`): deliveries
    /// from any workspace of the organisation are served; from another organisation, or with no
    /// organisation at all, they are refused.
    async fn an_org_wide_install_serves_its_organisation_only() {
        let h = Harness::start().await;
        h.app
            .directory
            .set_workspace(jit::slack::api::WorkspaceInfo {
                team_id: "E0ORG".into(),
                enterprise_id: Some("E0ORG".into()),
                enterprise_install: true,
            });
        let slash = |team: &str, enterprise: &str, text: &str| {
            serde_urlencoded::to_string([
                ("team_id", team),
                ("enterprise_id", enterprise),
                ("is_enterprise_install", "true"),
                ("channel_id", ORIGIN),
                ("user_id", DEV),
                ("command", "/jit"),
                ("text", text),
                ("trigger_id", &format!("{team}.{enterprise}.trigger")),
            ])
            .unwrap()
        };
        let send = |body: String| async {
            let reply = h
                .post_signed("/slack/commands", "application/x-www-form-urlencoded", body)
                .await;
            assert_eq!(reply.status(), 200);
            reply.text().await.unwrap()
        };
        // A workspace of the organisation other than the one jit's token was made in: served.
        let text = send(slash(
            "T0SISTER",
            "E0ORG",
            "request db 1h from a sister workspace",
        ))
        .await;
        assert!(text.contains("was sent to"), "{text}");
        let id = Harness::id_in(&text);
        assert_eq!(request_count(&h).await, 1);
        // Another organisation, or none: refused, nothing stored.
        for (team, enterprise) in [("T0FOREIGN", "E0FOREIGN"), ("T0JITSIM", "")] {
            let text = send(slash(team, enterprise, "request db 1h from outside")).await;
            assert!(
                text.contains("serves only the workspace it is installed in"),
                "{team}/{enterprise:?}: {text}"
            );
        }
        assert_eq!(request_count(&h).await, 1);

        // A click from another organisation decides nothing; one from the organisation does.
        h.run_jobs().await;
        let mut click = Harness::click_payload(ALICE, "jit.approve", &id.0.to_string(), APPROVALS);
        click["enterprise"] = serde_json::json!({"id": "E0FOREIGN", "name": "Elsewhere Inc"});
        click["team"] = serde_json::Value::Null;
        h.interaction(click.clone()).await;
        assert_eq!(h.state(id).await, State::Pending, "nothing decided");
        click["enterprise"] = serde_json::json!({"id": "E0ORG", "name": "Our Org"});
        click["trigger_id"] = serde_json::json!("org.click.trigger");
        h.interaction(click).await;
        assert_eq!(h.state(id).await, State::Approved);
    }
}

/// One signed request, captured: the same body with the same headers, sent again and again.
struct Captured {
    path: &'static str,
    content_type: &'static str,
    body: String,
    ts: String,
    sig: String,
}

impl Captured {
    fn slash(h: &Harness, user: &str, text: &str) -> Captured {
        let body = serde_urlencoded::to_string([
            ("token", "unused"),
            ("team_id", "T0JITSIM"),
            ("channel_id", ORIGIN),
            ("user_id", user),
            ("command", "/jit"),
            ("text", text),
            ("response_url", "https://hooks.slack.invalid/commands/1"),
            ("trigger_id", "captured.trigger"),
        ])
        .unwrap();
        Self::of(
            h,
            "/slack/commands",
            "application/x-www-form-urlencoded",
            body,
        )
    }

    fn interaction(h: &Harness, payload: &serde_json::Value) -> Captured {
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        Self::of(
            h,
            "/slack/interactions",
            "application/x-www-form-urlencoded",
            body,
        )
    }

    fn of(h: &Harness, path: &'static str, content_type: &'static str, body: String) -> Captured {
        let (ts, sig) = h.sign(&body);
        Captured {
            path,
            content_type,
            body,
            ts,
            sig,
        }
    }

    /// Sends it `times` times; returns each answer (status and body text).
    async fn replay(&self, h: &Harness, times: usize) -> Vec<(u16, String)> {
        self.replay_to(h, &h.url, times).await
    }

    /// Sends it `times` times to the server at `url`.
    async fn replay_to(&self, h: &Harness, url: &str, times: usize) -> Vec<(u16, String)> {
        let mut answers = Vec::new();
        for _ in 0..times {
            let response = h
                .http
                .post(format!("{url}{}", self.path))
                .header("content-type", self.content_type)
                .header("x-slack-request-timestamp", &self.ts)
                .header("x-slack-signature", &self.sig)
                .body(self.body.clone())
                .send()
                .await
                .unwrap();
            answers.push((response.status().as_u16(), response.text().await.unwrap()));
        }
        answers
    }
}

async fn request_count(h: &Harness) -> usize {
    let mut conn = h.app.store.read().await.unwrap();
    jit::store::requests::list(&mut conn, false, 1000)
        .await
        .unwrap()
        .len()
}

fn assert_same(answers: &[(u16, String)]) {
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 200);
}

driver_tests! {
    /// Review point 2: the same signed `/jit request` sent three times within the window created
    /// three requests. Each state-changing kind is replayed here; each has one effect, and every
    /// replay gets the first answer.
    async fn replays_of_every_state_changing_kind_have_one_effect() {
        let h = Harness::start().await;

        // Request.
        let request = Captured::slash(&h, DEV, "request db 1h replayed justification");
        let answers = request.replay(&h, 3).await;
        assert_same(&answers);
        assert!(answers[0].1.contains("was sent to"), "{answers:?}");
        assert_eq!(request_count(&h).await, 1);
        let id = Harness::id_in(&answers[0].1);
        h.run_jobs().await;

        // Approve: one approval, and no "already approved" for the replays.
        let approve = Captured::interaction(
            &h,
            &Harness::click_payload(ALICE, "jit.approve", &id.0.to_string(), APPROVALS),
        );
        assert_same(&approve.replay(&h, 3).await);
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        assert!(
            h.ephemeral_texts(ALICE).is_empty(),
            "{:?}",
            h.ephemeral_texts(ALICE)
        );
        assert_eq!(h.provider_actions(id), ["grant"]);

        // Extend: one extension.
        let extend = Captured::slash(&h, DEV, &format!("extend {} 30m", id.0));
        let answers = extend.replay(&h, 3).await;
        assert_same(&answers);
        assert_eq!(request_count(&h).await, 2);

        // Deny (the extension), by its modal's submission: one denial, the same `clear`.
        let ext = Harness::id_in(&answers[0].1);
        let mut deny: serde_json::Value =
            serde_json::from_str(include_str!("../fixtures/slack/view-submission.json")).unwrap();
        deny["user"]["id"] = serde_json::json!(ALICE);
        deny["team"]["id"] = serde_json::json!(jit::slack::simulator::TEAM_ID);
        deny["view"]["callback_id"] = serde_json::json!("jit.deny_modal");
        deny["view"]["private_metadata"] = serde_json::json!(ext.0.to_string());
        deny["view"]["state"]["values"] = serde_json::json!({
            "reason": {"reason_input": {"type": "plain_text_input", "value": "not now"}}
        });
        let answers = Captured::interaction(&h, &deny).replay(&h, 3).await;
        assert_same(&answers);
        assert!(answers[0].1.contains("clear"), "{answers:?}");
        assert_eq!(h.state(ext).await, State::Denied);
        let mut conn = h.app.store.read().await.unwrap();
        let denials = jit::store::audit::for_request(&mut conn, id)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.event == "denied")
            .count();
        drop(conn);
        assert_eq!(denials, 1);

        // Release: released once, the same answer each time.
        let release = Captured::slash(&h, DEV, &format!("release {}", id.0));
        let answers = release.replay(&h, 3).await;
        assert_same(&answers);
        assert!(answers[0].1.contains("Releasing"), "{answers:?}");
        h.run_jobs().await;
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);

        // Break-glass: one emergency grant.
        let before = request_count(&h).await;
        let breakglass = Captured::slash(&h, DEV, "breakglass db the site is down");
        assert_same(&breakglass.replay(&h, 3).await);
        assert_eq!(request_count(&h).await, before + 1);
    }
}

/// jit started again on the same database: a new app, with nothing in memory from the first
/// one, serving on a new address. Returns the app, its URL and its server task.
async fn restarted(
    h: &Harness,
) -> (
    std::sync::Arc<jit::app::App>,
    String,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::Arc;
    let store = h.db.connect().await;
    store.migrate().await.unwrap();
    store
        .open_audit_chain(audit_key(), h.clock_now())
        .await
        .unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/provider.py");
    let text = POLICY
        .replace("{log}", h.provider_log.to_str().unwrap())
        .replace("{script}", script.to_str().unwrap());
    let policy =
        jit::domain::policy::Policy::parse(&text, &|p: &str| std::fs::read_to_string(p)).unwrap();
    let (providers, _) = jit::providers::Providers::with_local(policy.resources(), None);
    let app = jit::bootstrap::build(jit::bootstrap::Parts {
        policy,
        store,
        clock: Arc::new(jit::clock::ManualClock::new(h.clock_now())),
        slack_api_url: h.slack.api_url(),
        bot_token: secrecy::SecretString::from(BOT_TOKEN),
        signing_secrets: vec![secrecy::SecretString::from(SIGNING_SECRET)],
        cipher: jit::crypto::Cipher::from_bytes(&[7u8; 32]),
        providers,
        settings: jit::app::Settings::default(),
        posts_per_channel_per_second: std::num::NonZeroU32::new(1000).unwrap(),
        webhooks: None,
        pagerduty: None,
    })
    .unwrap();
    app.directory
        .refresh_all(&jit::slack::directory::groups_in(&app.policy))
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = jit::server::router(app.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (app, url, server)
}

driver_tests! {
    /// Replays are refused across restarts: the record of what was delivered is in the database,
    /// so a new instance on the same database answers a captured request (and a captured click) as
    /// the first one did, with no second effect.
    async fn a_replay_after_a_restart_has_no_second_effect() {
        let h = Harness::start().await;
        let request = Captured::slash(&h, DEV, "request db 1h captured before the restart");
        let first = request.replay(&h, 1).await;
        assert!(first[0].1.contains("was sent to"), "{first:?}");
        let id = Harness::id_in(&first[0].1);
        h.run_jobs().await;
        let approve = Captured::interaction(
            &h,
            &Harness::click_payload(ALICE, "jit.approve", &id.0.to_string(), APPROVALS),
        );
        let approved = approve.replay(&h, 1).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);

        // The restart: a new app on the same database, inside the signatures' five minutes.
        let (app, url, server) = restarted(&h).await;
        let again = request.replay_to(&h, &url, 2).await;
        assert_eq!(
            again,
            [first[0].clone(), first[0].clone()],
            "the first answer"
        );
        assert_eq!(request_count(&h).await, 1, "no second request");
        let again = approve.replay_to(&h, &url, 2).await;
        assert_eq!(again, [approved[0].clone(), approved[0].clone()]);
        let mut conn = app.store.read().await.unwrap();
        let approvals = jit::store::audit::for_request(&mut conn, id)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.event == "approved")
            .count();
        drop(conn);
        assert_eq!(approvals, 1, "no second approval");
        assert_eq!(h.provider_actions(id), ["grant"], "no second grant");
        // A fresh request, signed now, is still served by the restarted instance.
        let fresh = Captured::slash(&h, DEV, "request staging 1h after the restart");
        let answer = fresh.replay_to(&h, &url, 1).await;
        assert!(answer[0].1.contains("approved by policy"), "{answer:?}");
        assert_eq!(request_count(&h).await, 2);
        server.abort();
    }
}

driver_tests! {
    /// Slack's own retries of an event carry `X-Slack-Retry-Num` and a fresh signature; they keep
    /// working (200) and have no second effect either.
    async fn slack_event_retries_have_no_second_effect() {
        let h = Harness::start().await;
        let event = serde_json::json!({
            "type": "event_callback",
            "team_id": "T0JITSIM",
            "event_id": "Ev0RETRIED",
            "event": {"type": "app_home_opened", "user": DEV, "tab": "home"}
        })
        .to_string();
        for retry in 0..3 {
            let (ts, sig) = h.sign(&event);
            let mut post = h
                .http
                .post(format!("{}/slack/events", h.url))
                .header("content-type", "application/json")
                .header("x-slack-request-timestamp", ts)
                .header("x-slack-signature", sig);
            if retry > 0 {
                post = post
                    .header("x-slack-retry-num", retry.to_string())
                    .header("x-slack-retry-reason", "http_timeout");
            }
            assert_eq!(post.body(event.clone()).send().await.unwrap().status(), 200);
            h.advance(chrono::Duration::seconds(1));
        }
        h.run_jobs().await;
        assert_eq!(h.slack.call_count("views.publish"), 1, "one Home refresh");
    }
}

driver_tests! {
    /// Review point 4: `team_id` was never checked, so anyone in another workspace who could reach
    /// the URL with a valid signature (a shared app, Slack Connect) was served.
    async fn deliveries_from_another_workspace_are_refused() {
        let h = Harness::start().await;
        let other_team = |mut payload: serde_json::Value| {
            payload["team"]["id"] = serde_json::json!("T0ELSEWHERE");
            payload["user"]["team_id"] = serde_json::json!("T0ELSEWHERE");
            payload
        };
        // A slash command.
        let body = serde_urlencoded::to_string([
            ("team_id", "T0ELSEWHERE"),
            ("channel_id", ORIGIN),
            ("user_id", DEV),
            ("command", "/jit"),
            ("text", "request staging 1h from elsewhere"),
            ("trigger_id", "x.1.trigger"),
        ])
        .unwrap();
        let reply = h
            .post_signed("/slack/commands", "application/x-www-form-urlencoded", body)
            .await;
        assert_eq!(reply.status(), 200);
        let text = reply.text().await.unwrap();
        assert!(
            text.contains("serves only the workspace it is installed in"),
            "{text}"
        );
        assert_eq!(request_count(&h).await, 0);

        // A click on a real request's Approve button.
        let id = h.request_access(DEV, "db 1h real request").await;
        h.run_jobs().await;
        let click = Harness::click_payload(ALICE, "jit.approve", &id.0.to_string(), APPROVALS);
        let reply = h.interaction(other_team(click)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(h.state(id).await, State::Pending, "nothing decided");

        // An event.
        let event = serde_json::json!({"type": "event_callback", "team_id": "T0ELSEWHERE",
            "event_id": "EvElsewhere", "event": {"type": "app_home_opened", "user": DEV, "tab": "home"}});
        let reply = h
            .post_signed("/slack/events", "application/json", event.to_string())
            .await;
        assert_eq!(reply.status(), 200);
        h.run_jobs().await;
        assert_eq!(h.slack.call_count("views.publish"), 0);
    }
}

driver_tests! {
    /// Guests and people of other workspaces may request only where the policy names them, get no
    /// rights through groups, and are refused with a clear message; people jit does not know yet
    /// are treated the same until they are looked up (never in the ack path).
    async fn guests_and_outsiders_have_only_the_rights_the_policy_names() {
        use jit::slack::simulator::UserKind;
        let h = Harness::start().await;
        h.slack
            .set_user_kind("U0GUEST", "guest", None, UserKind::Guest);
        h.slack
            .set_user_kind("U0SHARED", "shared", None, UserKind::External);
        h.slack
            .set_user_kind(CAROL, "carol", None, UserKind::SingleChannelGuest);
        h.slack
            .set_user_kind("U0SRE1", "sre1", None, UserKind::Guest);
        h.app
            .directory
            .refresh_all(&jit::slack::directory::groups_in(&h.app.policy))
            .await;

        // `staging` lets anyone in the workspace request (and auto-approves): not a guest.
        for (user, who) in [
            ("U0GUEST", "a guest of the workspace"),
            ("U0SHARED", "not (yet) known to jit as a member"),
            ("U0NEVERSEEN", "not (yet) known to jit as a member"),
        ] {
            let reply = h.slash(user, "request staging 1h let me in").await;
            assert!(
                reply.text().contains(&format!("You are {who}")),
                "{user}: {}",
                reply.text()
            );
        }
        assert_eq!(request_count(&h).await, 0);
        // `restricted` names CAROL (a single-channel guest here) by ID: she may.
        let reply = h.slash(CAROL, "request restricted 1h named by id").await;
        assert!(reply.text().contains("was sent to"), "{}", reply.text());

        // A guest in an approver group (S0SRE) gets no approver rights through it.
        let id = h.request_access(DEV, "db 1h needs an approver").await;
        h.run_jobs().await;
        h.click("U0SRE1", "jit.approve", id).await;
        assert_eq!(h.state(id).await, State::Pending);
        // A member named as approver still decides.
        h.click(ALICE, "jit.approve", id).await;
        assert_eq!(h.state(id).await, State::Approved);

        // Someone new is looked up in the background after their first try, then served.
        h.slack.set_user("U0NEWHIRE", "newhire", None);
        let first = h.slash("U0NEWHIRE", "request staging 1h first day").await;
        assert!(first.text().contains("not (yet) known"), "{}", first.text());
        // The lookup runs in the background; ask again until it has landed (at most 10 s).
        let mut second = first;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            second = h.slash("U0NEWHIRE", "request staging 1h first day").await;
            if !second.text().contains("not (yet) known") {
                break;
            }
        }
        assert!(
            second.text().contains("approved by policy"),
            "{}",
            second.text()
        );
    }
}

driver_tests! {
    /// Until jit knows which workspace it serves (auth.test failed at startup and no
    /// JIT_SLACK_TEAM_ID), it acts on no Slack delivery.
    async fn an_unknown_workspace_serves_nothing() {
        let h = Harness::start().await;
        // A fresh directory that never learned its workspace.
        h.app.directory.forget_workspace();
        let reply = h.slash(DEV, "request staging 1h too early").await;
        assert!(
            reply
                .text()
                .contains("has not yet confirmed which Slack workspace"),
            "{}",
            reply.text()
        );
        assert_eq!(request_count(&h).await, 0);
    }
}
