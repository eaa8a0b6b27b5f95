//! What real Slack does that jit's own flows do not: long credentials, full App Homes and
//! lists, channels that refuse the approvers' message, refusals that explain themselves, odd
//! successful answers, events and actions jit did not ask for, and `ssl_check`. Driven through
//! the real router with signed requests against the simulator, which enforces Slack's limits.

use chrono::Duration;
use jit::domain::ids::RequestId;
use jit::slack::limits;
use jit::slack::simulator::{ChannelState, Fault};
use serde_json::{Value, json};

use crate::harness::*;
use crate::limits_props::revealed_code;

/// The harness policy plus resources whose exec provider issues long credentials.
fn big_credentials_policy() -> String {
    format!(
        "{POLICY}\n{}",
        r#"
[[resource]]
id = "kube"
description = "The production Kubernetes cluster"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
timeout = "10s"
parameters = { log = "{log}", big_credentials = 5000 }
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "2h" }

[[resource]]
id = "vault"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
timeout = "10s"
parameters = { log = "{log}", long_token = 20000 }
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "2h" }
"#
    )
}

async fn big_harness() -> Harness {
    Harness::with_options(Options {
        policy: big_credentials_policy(),
        ..Options::default()
    })
    .await
}

fn reveal_views(h: &Harness) -> Vec<Value> {
    h.slack
        .opened_views()
        .into_iter()
        .filter(|v| v.view["callback_id"] == "jit.reveal_modal")
        .map(|v| v.view)
        .collect()
}

/// The credential `name` the provider issued for `id`, as the provider printed it.
fn issued(h: &Harness, id: RequestId, name: &str) -> String {
    let log = std::fs::read_to_string(&h.provider_log).unwrap();
    assert!(log.contains(&format!("\"request_id\": {}", id.0)));
    // The provider logs the secret; the credential is rebuilt from the reveal below and
    // compared with what the provider would print for this secret.
    let secret = h
        .provider_calls()
        .into_iter()
        .find(|c| c["request_id"] == json!(id.0) && c["action"] == "grant")
        .unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!name.is_empty());
    secret
}

fn count(events: &[String], name: &str) -> usize {
    events.iter().filter(|e| *e == name).count()
}

driver_tests! {
    async fn a_5000_character_kubeconfig_is_revealed_in_full_and_audited_once() {
        let h = big_harness().await;
        let id = h
            .request_access(DEV, "kube 1h rolling the deployment")
            .await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, jit::domain::request::State::Active);
        let secret = issued(&h, id, "KUBECONFIG");

        h.click(DEV, "jit.reveal", id).await;
        let views = reveal_views(&h);
        assert_eq!(views.len(), 1, "Slack accepted the credentials window");
        let view = &views[0];
        assert!(limits::check_view(view).is_empty());
        let sections = view["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| {
                b["text"]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("```"))
            })
            .count();
        assert!(sections >= 2, "the kubeconfig spans several code sections");
        let code = revealed_code(view);
        assert!(code.contains(&format!("client-key-data: {secret}")));
        assert!(code.contains("export KUBECONFIG='apiVersion: v1\nkind: Config\n"));
        assert!(code.contains("server: https://k8s.example.com:6443"));
        let kubeconfig = code
            .split("export KUBECONFIG='")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        assert_eq!(kubeconfig.len(), 5000, "every character is shown");
        assert!(!view.to_string().contains("cannot show all"));

        let events = h.audit_events(id).await;
        assert_eq!(count(&events, "credentials_revealed"), 1);
        assert_eq!(count(&events, "credentials_reveal_failed"), 0);
    }
}

driver_tests! {
    async fn a_20000_character_token_is_revealed_in_full_with_a_note_on_joining() {
        let h = big_harness().await;
        let id = h.request_access(DEV, "vault 1h rotating keys").await;
        h.run_jobs().await;
        let secret = issued(&h, id, "TOKEN");
        h.click(DEV, "jit.reveal", id).await;
        let views = reveal_views(&h);
        assert_eq!(views.len(), 1);
        let rendered = views[0].to_string();
        assert!(rendered.contains("continues in the next block"));
        let joined = revealed_code(&views[0]).replace('\n', "");
        let token = joined
            .split("export TOKEN='")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        assert_eq!(token.len(), 20_000);
        assert!(token.starts_with(&secret));
    }
}

driver_tests! {
    async fn a_refused_credentials_window_is_audited_as_failed_with_slacks_explanation_only() {
        let logs = logs();
        let h = big_harness().await;
        let id = h.request_access(DEV, "kube 1h debugging").await;
        h.run_jobs().await;
        let secret = issued(&h, id, "KUBECONFIG");

        h.slack.inject(
            "views.open",
            Fault::ApiError("expired_trigger_id".into()),
            1,
        );
        h.click(DEV, "jit.reveal", id).await;
        h.run_jobs().await;
        assert!(reveal_views(&h).is_empty());
        assert_eq!(
            h.ephemeral_texts(DEV).last().unwrap(),
            "jit could not open the credentials window (expired_trigger_id); click Reveal credentials again."
        );
        let events = h.audit_events(id).await;
        assert_eq!(count(&events, "credentials_revealed"), 0);
        assert_eq!(count(&events, "credentials_reveal_failed"), 1);
        let thread = h.audit_thread(id).join("\n");
        assert!(
            thread.contains("tried to reveal the credentials, but Slack refused the window (`expired_trigger_id`); nothing was shown"),
            "{thread}"
        );

        // A refusal that explains itself: the json-pointers reach the log, the view never does.
        let pointer =
            "[ERROR] must be less than 3001 characters [json-pointer:/view/blocks/1/text/text]";
        h.slack.inject(
            "views.open",
            Fault::Refused {
                code: "invalid_arguments".into(),
                messages: vec![pointer.into()],
            },
            1,
        );
        h.click(DEV, "jit.reveal", id).await;
        let events = h.audit_events(id).await;
        assert_eq!(count(&events, "credentials_reveal_failed"), 2);
        let text = logs.text();
        assert!(text.contains(pointer), "Slack's explanation is logged");
        assert!(
            !text.contains(&secret),
            "the credentials never reach the log"
        );

        // Then it works, and only that one is a reveal.
        h.click(DEV, "jit.reveal", id).await;
        let events = h.audit_events(id).await;
        assert_eq!(count(&events, "credentials_revealed"), 1);
        assert_eq!(reveal_views(&h).len(), 1);
    }
}

/// Gives ALICE `grants` active grants and `waiting` requests by DEV waiting for her decision.
async fn busy_alice(
    h: &Harness,
    grants: usize,
    waiting: usize,
) -> (Vec<RequestId>, Vec<RequestId>) {
    let mut mine = Vec::new();
    for n in 0..grants {
        mine.push(
            h.request_access(ALICE, &format!("db-shared 1h task {n}"))
                .await,
        );
    }
    let mut theirs = Vec::new();
    for n in 0..waiting {
        theirs.push(
            h.request_access(
                DEV,
                &format!("db 2h {} {n}", "a long justification".repeat(20)),
            )
            .await,
        );
    }
    h.run_jobs().await;
    for id in &mine {
        assert_eq!(h.state(*id).await, jit::domain::request::State::Active);
    }
    (mine, theirs)
}

driver_tests! {
    async fn app_home_with_25_grants_and_25_waiting_requests_is_published_within_100_blocks() {
        let h = Harness::start().await;
        let (mine, theirs) = busy_alice(&h, 25, 25).await;
        let opened = json!({"type": "event_callback", "team_id": "T0JITSIM", "event_id": "Ev9", "event": {"type": "app_home_opened", "user": ALICE, "tab": "home"}});
        let r = h
            .post_signed("/slack/events", "application/json", opened.to_string())
            .await;
        assert_eq!(r.status(), 200);
        h.run_jobs().await;
        let home = h
            .slack
            .published_view(ALICE)
            .expect("Slack accepted the Home view");
        let blocks = home["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 100);
        let rendered = jit::slack::simulator::render_blocks(&home);
        let shown_mine = mine
            .iter()
            .filter(|id| rendered.contains(&format!("*{id}* `db-shared`")))
            .count();
        let shown_theirs = theirs
            .iter()
            .filter(|id| rendered.contains(&format!("*{id}* `db`")))
            .count();
        assert!(shown_mine > 0 && shown_theirs > 0);
        assert!(shown_mine + shown_theirs < 50, "not everything fits");
        assert!(
            rendered.contains(&format!(
                "… and {} more (`/jit list` shows them all)",
                25 - shown_mine
            )),
            "{rendered}"
        );
        assert!(rendered.contains(&format!("… and {} more (", 25 - shown_theirs)));
        assert_eq!(h.slack.call_count("views.publish"), 1);
    }
}

driver_tests! {
    async fn jit_list_with_30_grants_shows_every_one_and_its_text_agrees() {
        let h = Harness::start().await;
        let (mine, _) = busy_alice(&h, 30, 0).await;
        let reply = h.slash(ALICE, "list").await;
        assert_eq!(reply.status, 200);
        let blocks = &reply.body["blocks"];
        assert!(limits::check_message(Some(&reply.text()), Some(blocks)).is_empty());
        let shown: String = blocks
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["text"]["text"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join("\n");
        for id in &mine {
            let entry = format!("• *{id}* `db-shared` for 1 hour · active until");
            assert!(shown.contains(&entry), "{entry} is in the blocks");
            assert!(reply.text().contains(&entry), "{entry} is in the text");
        }
        for section in blocks.as_array().unwrap() {
            let text = section["text"]["text"].as_str().unwrap();
            assert_eq!(
                text.matches('`').count() % 2,
                0,
                "no open code span: {text}"
            );
            assert_eq!(text.matches('<').count(), text.matches('>').count());
        }
        assert_eq!(
            reply.text().matches('•').count(),
            shown.matches('•').count()
        );
    }
}

#[tokio::test]
async fn a_request_whose_approvers_channel_refuses_it_tells_the_requester_and_times_out_truthfully()
{
    let h = Harness::start().await;
    h.slack
        .set_channel_state(APPROVALS, ChannelState::NotInChannel);
    let id = h.request_access(DEV, "db 1h fixing INC-9").await;
    h.run_jobs().await;

    // Refused once, never retried; the request is marked.
    let posts_to_approvals = |h: &Harness| {
        h.slack
            .calls()
            .iter()
            .filter(|c| c.method == "chat.postMessage" && c.body["channel"] == APPROVALS)
            .count()
    };
    assert_eq!(posts_to_approvals(&h), 1);
    assert!(h.slack.messages(APPROVALS).is_empty());
    assert_eq!(
        h.stored(id).await.delivery_failure.as_deref(),
        Some("not_in_channel")
    );
    // The requester is told at once, with the reason and what to do.
    let dm = h.dm_texts(DEV).join("\n");
    assert!(
        dm.contains(&format!(
            "Your request {id} for `db` for *1 hour* could not be sent to the approvers: the jit app is not a member of <#C0APPROVALS>."
        )),
        "{dm}"
    );
    assert!(dm.contains(
        "Ask a Slack admin to invite the jit app to <#C0APPROVALS> (`/invite @jit` in the channel)"
    ));
    // The admins are alerted at the top of the audit channel.
    let alerts: Vec<String> = h
        .slack
        .messages(AUDIT)
        .iter()
        .map(|m| m.rendered())
        .filter(|m| m.contains("gave up"))
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].contains("<@U0SECLEAD>"));
    assert!(alerts[0].contains(&format!("request {id} could not be posted")));
    assert!(alerts[0].contains("not_in_channel"));

    // The nudge and the timeout post nothing more in that channel; the timeout is truthful.
    h.advance_and_run(Duration::minutes(16)).await;
    h.advance_and_run(Duration::minutes(15)).await;
    assert_eq!(h.state(id).await, jit::domain::request::State::TimedOut);
    assert_eq!(posts_to_approvals(&h), 1);
    let last = h.dm_texts(DEV).last().unwrap().clone();
    assert_eq!(
        last,
        format!(
            ":hourglass: Your request {id} for `db` for *1 hour* expired without a decision: it never reached the approvers, because the jit app is not a member of <#C0APPROVALS>. Ask a Slack admin to invite the jit app to <#C0APPROVALS> (`/invite @jit` in the channel), then ask again."
        )
    );
    assert!(!last.contains("nobody decided"));
    // One alert only: the timeout did not try the channel again.
    let alerts = h
        .slack
        .messages(AUDIT)
        .iter()
        .filter(|m| m.rendered().contains("gave up"))
        .count();
    assert_eq!(alerts, 1);
}

driver_tests! {
    async fn an_archived_approvers_channel_is_explained_too() {
        let h = Harness::start().await;
        h.slack.set_channel_state(APPROVALS, ChannelState::Archived);
        let id = h.request_access(DEV, "db 1h fixing INC-10").await;
        h.run_jobs().await;
        assert_eq!(
            h.stored(id).await.delivery_failure.as_deref(),
            Some("is_archived")
        );
        let dm = h.dm_texts(DEV).join("\n");
        assert!(dm.contains("<#C0APPROVALS> is archived"), "{dm}");
        assert!(dm.contains("unarchive it"));
        // A request that did reach its channel keeps the usual wording.
        h.slack.set_channel_state(APPROVALS, ChannelState::Member);
        let other = h.request_access(DEV, "db 1h fixing INC-11").await;
        h.run_jobs().await;
        assert!(h.stored(other).await.delivery_failure.is_none());
        h.advance_and_run(Duration::minutes(31)).await;
        let texts = h.dm_texts(DEV).join("\n");
        assert!(texts.contains(&format!(
            "Your request {other} for `db` for *1 hour* expired: nobody decided in time."
        )));
        assert!(texts.contains(&format!("Your request {id} for `db` for *1 hour* expired without a decision: it never reached the approvers, because <#C0APPROVALS> is archived.")));
    }
}

driver_tests! {
    async fn a_missing_approvers_channel_is_explained_and_the_timeout_is_truthful() {
        let h = Harness::start().await;
        h.slack.set_channel_state(APPROVALS, ChannelState::NotFound);
        let id = h.request_access(DEV, "db 1h fixing INC-13").await;
        h.run_jobs().await;
        assert_eq!(
            h.stored(id).await.delivery_failure.as_deref(),
            Some("channel_not_found")
        );
        assert!(h.slack.messages(APPROVALS).is_empty());
        let why = "<#C0APPROVALS> does not exist or the jit app cannot see it";
        let dm = h.dm_texts(DEV).join("\n");
        assert!(
            dm.contains(&format!(
                ":warning: Your request {id} for `db` for *1 hour* could not be sent to the approvers: {why}. They were not notified"
            )),
            "{dm}"
        );
        assert!(
            dm.contains(
                "If the channel is gone, an admin must name another approvers' channel in the policy."
            ),
            "{dm}"
        );
        assert!(dm.contains(&format!("`/jit cancel {}` withdraws this one.", id.0)));
        let alerts: Vec<String> = h
            .slack
            .messages(AUDIT)
            .iter()
            .map(|m| m.rendered())
            .filter(|m| m.contains("gave up"))
            .collect();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert!(alerts[0].contains("channel_not_found"), "{}", alerts[0]);

        h.advance_and_run(Duration::minutes(31)).await;
        assert_eq!(h.state(id).await, jit::domain::request::State::TimedOut);
        let last = h.dm_texts(DEV).last().unwrap().clone();
        assert!(
            last.starts_with(&format!(
                ":hourglass: Your request {id} for `db` for *1 hour* expired without a decision: it never reached the approvers, because {why}."
            )),
            "{last}"
        );
        assert!(!h.dm_texts(DEV).join("\n").contains("nobody decided"));
        let posts = h
            .slack
            .calls()
            .iter()
            .filter(|c| c.method == "chat.postMessage" && c.body["channel"] == APPROVALS)
            .count();
        assert_eq!(posts, 1, "refused once, never tried again");
    }
}

driver_tests! {
    /// An identity's request (through the API) whose approvers' message is refused: the identity
    /// has no Slack DM, so its owners are told, as the README promises, and again at the timeout.
    async fn a_refused_approval_post_for_an_identity_reaches_its_owners() {
        let h = Harness::start().await;
        h.slack
            .set_channel_state(APPROVALS, ChannelState::NotInChannel);
        let (_, token) = jit::handlers::identity::create_token(
            &h.app.store,
            &h.app.policy,
            "ci",
            "cli:test",
            h.clock_now(),
        )
        .await
        .unwrap();
        let created: Value = h
            .http
            .post(format!("{}/api/v1/requests", h.url))
            .bearer_auth(secrecy::ExposeSecret::expose_secret(&token))
            .json(&json!({"resource": "ci-db", "duration": "1h", "justification": "deploy build 77"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = RequestId(created["id"].as_i64().expect("a request id"));
        h.run_jobs().await;
        assert_eq!(
            h.stored(id).await.delivery_failure.as_deref(),
            Some("not_in_channel")
        );
        // CAROL owns `ci`: told at once, with the reason and what to do.
        let owner = h.dm_texts(CAROL).join("\n");
        assert!(
            owner.contains(&format!(
                ":warning: :robot_face: The request {id} of identity `ci`, which you own, for `ci-db` for *1 hour* could not be sent to the approvers: the jit app is not a member of <#C0APPROVALS>."
            )),
            "{owner}"
        );
        assert!(owner.contains("Ask a Slack admin to invite the jit app to <#C0APPROVALS>"));
        assert!(
            !owner.contains("/jit cancel"),
            "an owner cannot cancel it: {owner}"
        );
        // Nobody else is DMed about it (the approvers never saw it; BOB owns another identity).
        for other in [DEV, ALICE, BOB] {
            assert!(
                !h.dm_texts(other).join("\n").contains(&id.to_string()),
                "{other} was told"
            );
        }
        // The timeout tells the owners the truth too.
        h.advance_and_run(Duration::minutes(31)).await;
        assert_eq!(h.state(id).await, jit::domain::request::State::TimedOut);
        let last = h.dm_texts(CAROL).last().unwrap().clone();
        assert!(
            last.contains(&format!(
                "(request {id}): expired without a decision: it never reached the approvers, because the jit app is not a member of <#C0APPROVALS>"
            )),
            "{last}"
        );
    }
}

driver_tests! {
    async fn a_refusal_that_explains_itself_reaches_the_alert_with_its_json_pointers() {
        let h = Harness::start().await;
        let pointer = "[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]";
        h.slack.inject(
            &format!("chat.postMessage@{APPROVALS}"),
            Fault::Refused {
                code: "invalid_blocks".into(),
                messages: vec![pointer.into()],
            },
            1,
        );
        let id = h.request_access(DEV, "db 1h fixing INC-12").await;
        h.run_jobs().await;
        assert_eq!(
            h.stored(id).await.delivery_failure.as_deref(),
            Some("invalid_blocks")
        );
        let alert = h
            .slack
            .messages(AUDIT)
            .iter()
            .map(|m| m.rendered())
            .find(|m| m.contains("gave up"))
            .expect("an alert");
        assert!(
            alert.contains("json-pointer:/blocks/0/text/text"),
            "{alert}"
        );
        let dm = h.dm_texts(DEV).join("\n");
        assert!(
            dm.contains("Slack refused the post in <#C0APPROVALS> (`invalid_blocks`)"),
            "{dm}"
        );
    }
}

driver_tests! {
    async fn odd_successful_answers_are_successes_and_nothing_is_posted_twice() {
        let h = Harness::start().await;
        // Every answer of the whole flow carries fields and shapes jit has never seen.
        h.slack.inject("*", Fault::OddAnswer, 1_000);
        let id = h.request_access(DEV, "db 1h fixing INC-13").await;
        h.run_jobs().await;
        assert_eq!(h.slack.messages(APPROVALS).len(), 1, "one approval message");
        assert_eq!(
            h.slack
                .calls()
                .iter()
                .filter(|c| c.method == "chat.postMessage" && c.body["channel"] == APPROVALS)
                .count(),
            1,
            "the accepted post was not repeated"
        );
        let posted = h.slack.messages(APPROVALS)[0].ts.clone();
        assert_eq!(
            h.request(id).await.approval_ts.as_deref(),
            Some(posted.as_str())
        );

        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, jit::domain::request::State::Active);
        let message = &h.slack.messages(APPROVALS)[0];
        assert!(
            message.edits >= 1,
            "the approval message was updated in place"
        );
        assert_eq!(h.slack.messages(APPROVALS).len(), 1);
        // The DM (conversations.open, then chat.postMessage) and the email lookup worked.
        assert!(
            h.dm_texts(DEV)
                .iter()
                .any(|t| t.contains("You now have `db`"))
        );
        let grant = h
            .provider_calls()
            .into_iter()
            .find(|c| c["action"] == "grant")
            .unwrap();
        assert_eq!(grant["requester_email"], "dev@example.com");
        // The credentials window opened, and the reveal was recorded as one.
        h.click(DEV, "jit.reveal", id).await;
        assert_eq!(reveal_views(&h).len(), 1);
        assert_eq!(count(&h.audit_events(id).await, "credentials_revealed"), 1);
        assert!(h.slack.faults_left() < 1_000);
        // No job failed on an answer it could not read.
        let mut conn = h.app.store.read().await.unwrap();
        let dead: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'dead'")
            .fetch_one(&mut *c)
            .await)
            .unwrap();
        assert_eq!(dead, 0);
    }
}

driver_tests! {
    async fn every_verified_event_is_answered_200_whatever_its_shape() {
        let h = Harness::start().await;
        let before = h.slack.calls().len();
        for fixture in [
            include_str!("../fixtures/slack/event-team-join.json"),
            include_str!("../fixtures/slack/event-user-change.json"),
            r#"{"type":"event_callback","event":"not an object"}"#,
            r#"{"type":"event_callback","event":{"type":"app_home_opened","user":{"id":"U0ALICE"},"tab":"messages"}}"#,
            r#"{"type":"app_rate_limited","token":"x","team_id":"T1","minute_rate_limited":1518467820,"api_app_id":"A1"}"#,
            r#"[1, 2, 3]"#,
            "not json at all",
        ] {
            let r = h
                .post_signed("/slack/events", "application/json", fixture.to_owned())
                .await;
            assert_eq!(r.status(), 200, "{fixture:.60}");
            assert_eq!(r.text().await.unwrap(), "");
        }
        h.run_jobs().await;
        assert_eq!(h.slack.calls().len(), before, "nothing was done for them");
        // Unsigned is still refused.
        let r = h
            .http
            .post(format!("{}/slack/events", h.url))
            .header("content-type", "application/json")
            .body(include_str!("../fixtures/slack/event-team-join.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
}

driver_tests! {
    /// `team_join` and `user_change` from jit's own workspace, with `event.user` an object as
    /// Slack sends it: past the workspace check, through `events::handle`, answered 200 with an
    /// empty body, recorded as a delivery, and nothing else happens or is logged as a problem.
    async fn user_object_events_from_our_own_workspace_are_answered_200_and_do_nothing() {
        let h = Harness::start().await;
        // This test's own log lines (the runtime is single-threaded: the server runs here too).
        let logged = LogBuffer::default();
        let _scope = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(logged.clone())
                .with_ansi(false)
                .finish(),
        );
        let team = jit::slack::simulator::TEAM_ID;
        let count = |sql: &'static str| {
            let h = &h;
            async move {
                let mut conn = h.app.store.read().await.unwrap();
                jit::store::on!(&mut conn, |c| sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&mut *c)
                    .await)
                    .unwrap()
            }
        };
        let calls = h.slack.calls().len();
        let jobs = count("SELECT COUNT(*) FROM jobs").await;
        for (fixture, event_id) in [
            (
                include_str!("../fixtures/slack/event-team-join.json"),
                "Ev0OWNJOIN",
            ),
            (
                include_str!("../fixtures/slack/event-user-change.json"),
                "Ev0OWNCHANGE",
            ),
        ] {
            let mut body: Value = serde_json::from_str(fixture).unwrap();
            body["team_id"] = json!(team);
            body["event_id"] = json!(event_id);
            body["event"]["user"]["team_id"] = json!(team);
            body["authorizations"][0]["team_id"] = json!(team);
            assert!(body["event"]["user"].is_object(), "the user is an object");
            let answer = h.driver.event(&body).await.unwrap();
            assert_eq!(answer.status, 200, "{event_id}");
            assert_eq!(answer.body, Value::Null, "{event_id}");
        }
        h.run_jobs().await;
        // Handled once each (the workspace check let them through)...
        assert_eq!(
            count("SELECT COUNT(*) FROM slack_deliveries WHERE key IN ('event:Ev0OWNJOIN', 'event:Ev0OWNCHANGE')").await,
            2
        );
        // ...and nothing came of them.
        assert_eq!(h.slack.calls().len(), calls);
        assert_eq!(count("SELECT COUNT(*) FROM jobs").await, jobs);
        assert_eq!(count("SELECT COUNT(*) FROM requests").await, 0);
        let text = logged.text();
        for problem in [" ERROR ", " WARN ", "cannot read", "could not be parsed"] {
            assert!(!text.contains(problem), "`{problem}` logged:\n{text}");
        }
        // The same event from another workspace is refused with a warning: this capture sees it.
        let foreign: Value =
            serde_json::from_str(include_str!("../fixtures/slack/event-team-join.json")).unwrap();
        assert_eq!(h.driver.event(&foreign).await.unwrap().status, 200);
        assert!(logged.text().contains(" WARN "), "{}", logged.text());
    }
}

driver_tests! {
    async fn actions_jit_did_not_create_are_answered_200_and_ignored() {
        let logs = logs();
        let h = Harness::start().await;
        let before = h.slack.calls().len();
        let home = h.slack.dm_channel_for(DEV);
        let mut payloads = vec![
            // A jit button without a request number.
            Harness::click_payload(DEV, "jit.approve", "", APPROVALS),
            Harness::click_payload(DEV, "jit.release", "not-a-number", &home),
            // Another app's action id.
            Harness::click_payload(DEV, "someone.else.button", "42", APPROVALS),
        ];
        // A URL button on App Home: no channel, no value.
        let mut url_button = Harness::click_payload(DEV, "open_docs", "", APPROVALS);
        url_button["channel"] = Value::Null;
        url_button["container"] = json!({"type": "view", "view_id": "V0HOME"});
        url_button["actions"][0] = json!({"type": "button", "action_id": "open_docs", "url": "https://example.com", "block_id": "b"});
        payloads.push(url_button);
        // A workflow step's odd shapes.
        let mut workflow = Harness::click_payload(DEV, "x", "", APPROVALS);
        workflow["actions"] =
            json!([{"type": "workflow_button", "action_id": {"odd": true}, "value": 7}]);
        workflow["view"] = json!("not a view");
        payloads.push(workflow);
        for payload in payloads {
            let reply = h.interaction(payload).await;
            assert_eq!(reply.status, 200);
        }
        h.run_jobs().await;
        assert!(h.slack.ephemerals(DEV).is_empty());
        assert!(h.slack.dms(DEV).is_empty());
        assert_eq!(h.slack.calls().len(), before);
        assert!(
            logs.text()
                .contains("ignoring an action jit did not create")
        );
    }
}

driver_tests! {
    async fn ssl_check_is_answered_before_verification_and_does_nothing() {
        let h = Harness::start().await;
        let before = h.slack.calls().len();
        let unsigned = |path: &'static str, body: &'static str| {
            h.http
                .post(format!("{}{path}", h.url))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
        };
        for body in ["ssl_check=1&token=gIkuvaNzQIHg97ATvDxqgjtO", "ssl_check=1"] {
            let r = unsigned("/slack/commands", body).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "");
            let r = h
                .post_signed(
                    "/slack/commands",
                    "application/x-www-form-urlencoded",
                    body.to_owned(),
                )
                .await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.unwrap(), "");
        }
        // Only that exact form skips verification.
        for body in [
            "ssl_check=1&command=%2Fjit&text=list&user_id=U0DEV",
            "ssl_check=0&token=x",
            "ssl_check=1&ssl_check=1",
            "token=x",
        ] {
            let r = unsigned("/slack/commands", body).await.unwrap();
            assert_eq!(r.status(), 401, "{body}");
        }
        let r = unsigned("/slack/interactions", "ssl_check=1")
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        h.run_jobs().await;
        assert_eq!(h.slack.calls().len(), before);
        let mut conn = h.app.store.read().await.unwrap();
        let requests: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar("SELECT COUNT(*) FROM requests")
            .fetch_one(&mut *c)
            .await)
            .unwrap();
        assert_eq!(requests, 0);
    }
}

driver_tests! {
    async fn jit_why_stays_within_limits_with_a_huge_resource() {
        let approvers: Vec<String> = (0..400).map(|n| format!("\"U{n:08}\"")).collect();
        let policy = format!(
            "{POLICY}\n[[resource]]\nid = \"wide\"\ndescription = \"{}\"\nprovider = \"none\"\nmax_duration = \"1h\"\napprovers = {{ channel = \"C0APPROVALS\", users = [{}] }}\nauto_approve = {{ max_duration = \"30m\", users = [{}] }}\n",
            "A resource with a <very> long & `odd` description. ".repeat(200),
            approvers.join(", "),
            approvers.join(", ")
        );
        let h = Harness::with_options(Options {
            policy,
            ..Options::default()
        })
        .await;
        let reply = h.slash(DEV, "why wide 2h").await;
        assert_eq!(reply.status, 200);
        let blocks = &reply.body["blocks"];
        assert!(limits::check_message(Some(&reply.text()), Some(blocks)).is_empty());
        assert!(
            blocks.as_array().unwrap().len() > 1,
            "split across sections"
        );
        let shown = jit::slack::simulator::render_blocks(blocks);
        assert!(shown.contains("<@U00000399>"));
        assert!(shown.contains("&lt;very&gt;"), "user text stays escaped");
    }
}

driver_tests! {
    /// Slack took a post but its answer was lost (a replica killed between Slack's answer and
    /// recording it looks the same to the next attempt): the retry finds the message by its
    /// metadata and posts nothing twice, and the message it found is the one later updated. The
    /// same for the audit thread and a DM.
    async fn a_post_whose_answer_was_lost_is_not_posted_again() {
        let h = Harness::start().await;
        h.slack
            .inject(&format!("chat.postMessage@{APPROVALS}"), Fault::AnswerLost, 1);
        let id = h.request_access(DEV, "db 1h the answer got lost").await;
        h.run_jobs().await;
        // The approval message job failed (502) and is retried after its backoff.
        h.advance_and_run(Duration::seconds(10)).await;
        let approvals: Vec<_> = h.slack.messages(APPROVALS);
        assert_eq!(approvals.len(), 1, "one approval message: {approvals:?}");
        let found = h.slack.call_count("conversations.history");
        assert!(found >= 1, "the retry looked for its earlier post");
        assert_eq!(
            h.stored(id).await.request.approval_ts.as_deref(),
            Some(approvals[0].ts.as_str()),
            "the post found again is recorded"
        );
        // Approving updates that message in place; still one.
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        let approvals = h.slack.messages(APPROVALS);
        assert_eq!(approvals.len(), 1);
        assert!(approvals[0].edits >= 1, "the found message was updated");

        // The audit thread's replies and a DM, their answers lost once each.
        h.slack
            .inject(&format!("chat.postMessage@{AUDIT}"), Fault::AnswerLost, 2);
        h.slack.inject("chat.postMessage", Fault::AnswerLost, 1);
        let second = h.request_access(DEV, "db 1h again").await;
        for _ in 0..6 {
            h.advance_and_run(Duration::seconds(30)).await;
        }
        h.click(BOB, "jit.approve", second).await;
        for _ in 0..6 {
            h.advance_and_run(Duration::seconds(30)).await;
        }
        let twice: Vec<_> = h
            .slack
            .posts_by_key()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect();
        assert!(twice.is_empty(), "posted twice: {twice:?}");
        assert!(
            h.slack.posts_by_key().keys().any(|k| k.starts_with("audit-root:")),
            "posts are tagged"
        );
        assert!(h.slack.calls().iter().filter(|c| !c.ok && c.status == 502).count() >= 3);
        let thread = h.audit_thread(second);
        assert!(!thread.is_empty());
    }

    /// With the history scopes missing the lookup fails: the post goes out anyway (a possible
    /// duplicate beats a lost message) and the job is not stuck.
    async fn a_failed_lookup_still_posts() {
        let h = Harness::start().await;
        let scopes: Vec<&str> = jit::slack::api::SCOPES
            .iter()
            .map(|s| s.name)
            .filter(|s| !s.ends_with(":history"))
            .collect();
        h.slack.set_scopes(&scopes);
        h.slack
            .inject(&format!("chat.postMessage@{APPROVALS}"), Fault::ServerError(503), 1);
        let id = h.request_access(DEV, "db 1h no history scope").await;
        h.run_jobs().await;
        h.advance_and_run(Duration::seconds(10)).await;
        assert_eq!(h.slack.messages(APPROVALS).len(), 1);
        assert!(h.stored(id).await.request.approval_ts.is_some());
    }
}
