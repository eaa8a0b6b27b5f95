//! Escalation of waiting requests (`escalate = [{ after, to }]`): each step fires at its time on
//! the clock, tells the people it adds, lets them decide from then on (and not before), updates
//! the approval message and is recorded in the audit thread; a decision stops the steps; without
//! `escalate` the one step is the half-time nudge.

use chrono::Duration;
use jit::domain::ids::SlackGroupId;
use jit::domain::request::State;

use crate::harness::*;

const ESCALATION_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[defaults]
pending_timeout = "60m"

[limits]
requests_per_user_per_minute = 1000
max_pending_per_user = 1000

[[resource]]
id = "prod"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
escalate = [
  { after = "10m", to = { users = ["U0BOB"], groups = ["S0LEADS"] } },
  { after = "30m", to = { channel = "C0ONCALL" } },
  { after = "45m" },
]

[[resource]]
id = "plain"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }

[[resource]]
id = "quiet"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
escalate = []
"#;

pub const ONCALL_CHANNEL: &str = "C0ONCALL";

async fn escalation_harness() -> Harness {
    let h = Harness::with_options(Options {
        policy: ESCALATION_POLICY.to_owned(),
        ..Options::default()
    })
    .await;
    h.slack.set_group_members("S0LEADS", &[CAROL]);
    h.app
        .directory
        .refresh(&SlackGroupId::parse("S0LEADS").unwrap())
        .await;
    h
}

/// The approvers' message of request `id` (the channel holds several in some tests).
fn message_of(h: &Harness, id: jit::domain::ids::RequestId) -> jit::slack::simulator::Message {
    h.slack
        .messages(APPROVALS)
        .into_iter()
        .find(|m| m.text.contains(&format!("{id}:")))
        .expect("the request's approval message")
}

driver_tests! {
    /// Step 1 at 10 minutes: Bob and the leads group may decide from then on, not before; they
    /// are mentioned in the approval thread, the message lists them and marks the step, and the
    /// audit thread records it. Bob's approval then stops the later steps.
    async fn an_escalation_step_adds_approvers_at_its_time_and_a_decision_stops_the_rest() {
        let h = escalation_harness().await;
        let id = h.request_access(DEV, "prod 1h rotate the certificates").await;
        h.run_jobs().await;
        let message = message_of(&h, id);
        let rendered = message.rendered();
        assert!(rendered.contains("Approvers: <@U0ALICE> · needs 1 approval"), "{rendered}");
        assert!(
            rendered.contains(":arrow_double_up: Escalation: after 10m → <@U0BOB>, <!subteam^S0LEADS>"),
            "{rendered}"
        );

        // Before the step, neither Bob nor a lead may decide, and Bob's App Home lists nothing.
        let home = jit::slack::home::render(&h.app, &jit::domain::ids::SlackUserId::parse(BOB).unwrap())
            .await
            .unwrap()
            .to_string();
        assert!(!home.contains("#1"), "{home}");
        h.advance_and_run(Duration::minutes(9)).await;
        for who in [BOB, CAROL] {
            h.click(who, "jit.approve", id).await;
            h.run_jobs().await;
            assert_eq!(
                h.ephemeral_texts(who).last().map(String::as_str),
                Some("You are not an approver for this resource. (request #1)")
            );
        }
        assert_eq!(h.state(id).await, State::Pending);
        assert!(h.slack.thread(APPROVALS, &message.ts).is_empty());

        // The step runs at 10 minutes.
        h.advance_and_run(Duration::minutes(1)).await;
        let thread = h.slack.thread(APPROVALS, &message.ts);
        assert_eq!(thread.len(), 1, "{thread:?}");
        assert!(
            thread[0].text.starts_with(
                ":arrow_double_up: <@U0BOB>, <!subteam^S0LEADS> — request #1 has waited since"
            ),
            "{}",
            thread[0].text
        );
        assert!(thread[0].text.contains("you may approve or deny it now"));
        let rendered = message_of(&h, id).rendered();
        assert!(
            rendered.contains("Approvers: <@U0ALICE>, <@U0BOB>, <!subteam^S0LEADS> · needs 1 approval"),
            "{rendered}"
        );
        assert!(rendered.contains("after 10m → <@U0BOB>, <!subteam^S0LEADS> (done)"), "{rendered}");
        assert!(rendered.contains("[Approve"), "{rendered}");
        assert_eq!(h.stored(id).await.escalation_step, 1);
        assert_eq!(h.audit_events(id).await, ["requested", "escalated"]);
        let audit = h.audit_thread(id);
        assert!(
            audit.iter().any(|line| line.contains(
                ":arrow_double_up: Escalated (step 1, after `10m`): <@U0BOB>, <!subteam^S0LEADS> may now decide"
            )),
            "{audit:?}"
        );

        // Bob's App Home lists the request among those waiting for him, now that he may decide.
        let home = jit::slack::home::render(&h.app, &jit::domain::ids::SlackUserId::parse(BOB).unwrap())
            .await
            .unwrap()
            .to_string();
        assert!(home.contains("#1"), "{home}");

        // Now Bob may decide.
        h.click(BOB, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        let rendered = message_of(&h, id).rendered();
        assert!(rendered.contains(":white_check_mark: Approved by <@U0BOB>"), "{rendered}");
        assert!(!rendered.contains("[Approve"), "{rendered}");
        assert!(!rendered.contains("Escalation:"), "{rendered}");

        // The decision stopped the escalation: no channel copy at 30m, no reminder at 45m.
        h.advance_and_run(Duration::minutes(50)).await;
        assert!(h.slack.messages(ONCALL_CHANNEL).is_empty());
        assert_eq!(h.slack.thread(APPROVALS, &message.ts).len(), 1);
        assert_eq!(h.stored(id).await.escalation_step, 1);
        let events = h.audit_events(id).await;
        assert_eq!(events.iter().filter(|e| *e == "escalated").count(), 1, "{events:?}");
        assert!(!events.contains(&"nudged".to_owned()), "{events:?}");
    }
}

driver_tests! {
    /// A lead reached through the group approves once the step ran; a channel step posts the
    /// request in that channel with the buttons, and the decision updates that copy in place; a
    /// step without `to` reminds the approvers so far; steps overdue together (downtime) all run.
    async fn a_channel_step_posts_a_copy_that_follows_the_decision() {
        let h = escalation_harness().await;
        let id = h.request_access(DEV, "prod 1h rotate the certificates").await;
        h.run_jobs().await;
        // Down for 31 minutes: steps 1 and 2 are both due, and both run, in order.
        h.advance_and_run(Duration::minutes(31)).await;
        assert_eq!(h.stored(id).await.escalation_step, 2);
        assert_eq!(h.audit_events(id).await, ["requested", "escalated", "escalated"]);
        let copies = h.slack.messages(ONCALL_CHANNEL);
        assert_eq!(copies.len(), 1, "{copies:?}");
        let copy = copies[0].rendered();
        assert!(copy.contains("[Approve"), "{copy}");
        assert!(copy.contains("<@U0DEV> asks for `prod`"), "{copy}");
        let audit = h.audit_thread(id);
        assert!(
            audit.iter().any(|l| l.contains("Escalated (step 2, after `30m`): posted in <#C0ONCALL>")),
            "{audit:?}"
        );

        // Step 3 (no `to`) at 45 minutes is a reminder in the approval thread.
        h.advance_and_run(Duration::minutes(14)).await;
        let message = message_of(&h, id);
        let thread = h.slack.thread(APPROVALS, &message.ts);
        assert_eq!(thread.len(), 2, "{thread:?}");
        assert!(
            thread[1].text.starts_with(
                ":hourglass_flowing_sand: <@U0ALICE>, <@U0BOB>, <!subteam^S0LEADS> — request #1 is still waiting"
            ),
            "{}",
            thread[1].text
        );
        assert_eq!(h.audit_events(id).await.last().unwrap(), "nudged");

        // Carol, a lead, approves from the on-call channel's copy.
        h.interaction(Harness::click_payload(CAROL, "jit.approve", &id.0.to_string(), ONCALL_CHANNEL))
            .await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        for rendered in [h.slack.messages(ONCALL_CHANNEL)[0].rendered(), message_of(&h, id).rendered()] {
            assert!(rendered.contains(":white_check_mark: Approved by <@U0CAROL>"), "{rendered}");
            assert!(!rendered.contains("[Approve"), "{rendered}");
        }
        // Updated in place twice: when step 3 ran (its plan shows the step done), then decided.
        assert_eq!(h.slack.messages(ONCALL_CHANNEL)[0].edits, 2);
    }
}

driver_tests! {
    /// Without `escalate` the one step is the half-time nudge (a `nudge` job at 30 of 60 minutes,
    /// recorded as `nudged`); `escalate = []` has none.
    async fn the_default_step_is_the_half_time_nudge_and_an_empty_list_has_none() {
        let h = escalation_harness().await;
        let plain = h.request_access(DEV, "plain 1h check the logs").await;
        let quiet = h.request_access(DEV, "quiet 1h check the logs").await;
        h.run_jobs().await;
        let mut conn = h.app.store.read().await.unwrap();
        let keys: Vec<String> = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT unique_key FROM jobs WHERE kind = 'nudge' ORDER BY unique_key"
        )
        .fetch_all(&mut *c)
        .await)
        .unwrap();
        drop(conn);
        assert_eq!(keys, [format!("nudge:{}", plain.0)]);
        h.advance_and_run(Duration::minutes(29)).await;
        assert!(h.slack.thread(APPROVALS, &message_of(&h, plain).ts).is_empty());
        h.advance_and_run(Duration::minutes(1)).await;
        let nudges = h.slack.thread(APPROVALS, &message_of(&h, plain).ts);
        assert_eq!(nudges.len(), 1);
        assert!(nudges[0].text.starts_with(":hourglass_flowing_sand: <@U0ALICE> — request #1 is still waiting"));
        assert_eq!(h.audit_events(plain).await, ["requested", "nudged"]);
        assert!(h.slack.thread(APPROVALS, &message_of(&h, quiet).ts).is_empty());
        assert_eq!(h.audit_events(quiet).await, ["requested"]);
        // The default adds nobody: the message shows no escalation plan.
        assert!(!message_of(&h, plain).rendered().contains("Escalation"));
        h.advance_and_run(Duration::minutes(31)).await;
        assert_eq!(h.state(plain).await, State::TimedOut);
        assert_eq!(h.state(quiet).await, State::TimedOut);
        assert_eq!(h.slack.thread(APPROVALS, &message_of(&h, plain).ts).len(), 1);
    }
}

driver_tests! {
    /// `/jit why` shows the steps; the nudge job of a step that runs twice (a retry) does nothing
    /// the second time.
    async fn why_shows_the_escalation_and_a_step_runs_once() {
        let h = escalation_harness().await;
        let why = h.slash(DEV, "why prod").await.text();
        assert!(
            why.contains("• Escalation of a waiting request: after 10m → <@U0BOB>, <!subteam^S0LEADS> · after 30m → posted in <#C0ONCALL> · after 45m → a reminder to the approvers"),
            "{why}"
        );
        let plain = h.slash(DEV, "why plain").await.text();
        assert!(plain.contains("• Escalation: the approvers are reminded after 30m (half the pending time)"), "{plain}");
        let quiet = h.slash(DEV, "why quiet").await.text();
        assert!(quiet.contains("• Escalation: none"), "{quiet}");

        let id = h.request_access(DEV, "prod 1h rotate the certificates").await;
        h.run_jobs().await;
        h.advance_and_run(Duration::minutes(10)).await;
        let again = jit::handlers::escalation::run_step(&h.app, id, 0).await.unwrap();
        assert_eq!(again, jit::queue::worker::Outcome::Done);
        h.run_jobs().await;
        assert_eq!(h.audit_events(id).await, ["requested", "escalated"]);
        assert_eq!(h.slack.thread(APPROVALS, &message_of(&h, id).ts).len(), 1);
    }
}

driver_tests! {
    /// An extension waiting for approval escalates like a request: the step is recorded in the
    /// grant's audit thread, and the escalated approver may then approve the extension.
    async fn an_extension_escalates_too() {
        let h = escalation_harness().await;
        let grant = h.request_access(DEV, "prod 1h rotate the certificates").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", grant).await;
        h.run_jobs().await;
        assert_eq!(h.state(grant).await, State::Active);
        let reply = h.slash(DEV, &format!("extend {} 30m", grant.0)).await.text();
        let extension = Harness::id_in(&reply[reply.find("Extension").expect(&reply)..]);
        assert_ne!(extension, grant);
        h.run_jobs().await;
        assert_eq!(h.state(extension).await, State::Pending);
        h.click(BOB, "jit.approve", extension).await;
        h.run_jobs().await;
        assert_eq!(h.state(extension).await, State::Pending, "Bob may not decide yet");
        h.advance_and_run(Duration::minutes(10)).await;
        assert_eq!(h.stored(extension).await.escalation_step, 1);
        let audit = h.audit_thread(grant);
        assert!(
            audit.iter().any(|l| l.contains(&format!(
                "Escalated (step 1, after `10m`) (extension {extension}): <@U0BOB>"
            ))),
            "{audit:?}"
        );
        h.click(BOB, "jit.approve", extension).await;
        h.run_jobs().await;
        assert_eq!(h.state(extension).await, State::Applied);
    }
}
