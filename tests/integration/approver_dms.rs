//! Approver DMs (`approvers.notify = "dm" | "both"`): each approver, group members included, gets
//! the request as a DM with the same buttons; a click there is authorised like one in the channel;
//! when anyone decides, every copy is updated in place; a stale copy's button changes nothing; a
//! copy is posted once and within Slack's pace.

use chrono::Duration;
use jit::domain::ids::RequestId;
use jit::domain::request::State;

use crate::harness::*;

const DM_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[defaults]
pending_timeout = "60m"

[limits]
requests_per_user_per_minute = 1000
max_pending_per_user = 1000

[[resource]]
id = "two"
provider = "none"
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0BOB", "U0CAROL"], groups = ["S0SRE"], notify = "both" }
approvals_required = 2

[[resource]]
id = "dm-only"
provider = "none"
max_duration = "2h"
# No channel: the request is asked by DM only.
approvers = { users = ["U0ALICE", "U0BOB"], notify = "dm" }
escalate = [
  { after = "10m", to = { users = ["U0CAROL"] } },
  { after = "20m" },
]

[[resource]]
id = "own"
provider = "none"
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE", "U0DEV"], notify = "dm" }
"#;

async fn dm_harness() -> Harness {
    Harness::with_options(Options {
        policy: DM_POLICY.to_owned(),
        ..Options::default()
    })
    .await
}

/// The DM copies of request `id` in `user`'s DM channel.
fn dm_copies(h: &Harness, user: &str, id: RequestId) -> Vec<jit::slack::simulator::Message> {
    h.slack
        .dms(user)
        .into_iter()
        .filter(|m| m.text.starts_with(&format!("Access request {id}:")))
        .collect()
}

/// A click on a button of `user`'s DM copy.
async fn click_in_dm(h: &Harness, user: &str, action: &str, id: RequestId) -> Reply {
    h.interaction(Harness::click_payload(
        user,
        action,
        &id.0.to_string(),
        &h.slack.dm_channel_for(user),
    ))
    .await
}

async fn copies_recorded(h: &Harness, id: RequestId) -> Vec<(String, Option<String>)> {
    let mut conn = h.app.store.read().await.unwrap();
    jit::store::requests::copies(&mut conn, id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.channel, c.recipient))
        .collect()
}

driver_tests! {
    /// notify = "both", 2 of 4: Alice approves from her DM, Bob from the channel; every copy
    /// (the channel's and each DM) shows the partial approval, then the decision, without
    /// buttons; Carol's stale copy is refused cleanly; each copy was posted once.
    async fn two_of_n_across_dms_and_the_channel_updates_every_copy() {
        let h = dm_harness().await;
        let reply = h.slash(DEV, "request two 1h migrate the orders table").await.text();
        assert!(reply.contains("<!subteam^S0SRE> in <#C0APPROVALS> and by DM."), "{reply}");
        let id = Harness::id_in(&reply);
        h.run_jobs().await;
        // The channel's message and a DM to each approver, the group's member too; none to the
        // requester.
        assert!(h.approval_message().rendered().contains("[Approve"));
        for who in [ALICE, BOB, CAROL, "U0SRE1"] {
            let copies = dm_copies(&h, who, id);
            assert_eq!(copies.len(), 1, "{who}: {copies:?}");
            let rendered = copies[0].rendered();
            assert!(rendered.contains("[Approve"), "{rendered}");
            assert!(rendered.contains("[Deny"), "{rendered}");
            assert!(rendered.contains("<@U0DEV> asks for `two` for *1 hour*"), "{rendered}");
        }
        assert!(dm_copies(&h, DEV, id).is_empty());
        let recorded = copies_recorded(&h, id).await;
        assert_eq!(recorded.len(), 4, "{recorded:?}");
        assert!(recorded.iter().all(|(channel, who)| who
            .as_deref()
            .is_some_and(|w| *channel == h.slack.dm_channel_for(w))));

        // Alice approves from her DM: 1 of 2, shown on every copy, buttons kept.
        click_in_dm(&h, ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(
            h.ephemeral_texts(ALICE).last().map(String::as_str),
            Some("Your approval of request #1 is recorded (1 of 2); it needs 1 more.")
        );
        assert_eq!(h.state(id).await, State::Pending);
        let mut every = vec![h.approval_message()];
        for who in [ALICE, BOB, CAROL, "U0SRE1"] {
            every.extend(dm_copies(&h, who, id));
        }
        for copy in &every {
            let rendered = copy.rendered();
            assert!(rendered.contains("approved so far by <@U0ALICE> (1 of 2)"), "{rendered}");
            assert!(rendered.contains("[Approve"), "{rendered}");
        }
        // Alice's second click, from the channel this time, changes nothing.
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(
            h.ephemeral_texts(ALICE).last().map(String::as_str),
            Some("You have already approved request #1.")
        );

        // Bob approves from the channel: approved; every copy updated in place.
        h.click(BOB, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        let mut every = vec![h.approval_message()];
        for who in [ALICE, BOB, CAROL, "U0SRE1"] {
            let copies = dm_copies(&h, who, id);
            assert_eq!(copies.len(), 1, "updated, not posted again: {copies:?}");
            every.extend(copies);
        }
        for copy in &every {
            let rendered = copy.rendered();
            assert!(
                rendered.contains(":white_check_mark: Approved by <@U0ALICE>, <@U0BOB>"),
                "{rendered}"
            );
            assert!(!rendered.contains("[Approve"), "{rendered}");
            assert!(!rendered.contains("[Deny"), "{rendered}");
        }

        // Carol clicks Approve on a stale copy (as if her client had not refreshed): refused
        // cleanly, nothing changes.
        click_in_dm(&h, CAROL, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(
            h.ephemeral_texts(CAROL).last().map(String::as_str),
            Some("Request #1 is already active; nothing was changed.")
        );
        assert_eq!(h.state(id).await, State::Active);
        let approvals = {
            let mut conn = h.app.store.read().await.unwrap();
            jit::store::requests::approvals(&mut conn, id).await.unwrap()
        };
        assert_eq!(approvals, [ALICE, BOB]);
        let events = h.audit_events(id).await;
        assert_eq!(events.iter().filter(|e| e.starts_with("approv")).count(), 2, "{events:?}");

        // Each copy was posted once.
        for (key, posts) in h.slack.posts_by_key() {
            assert_eq!(posts, 1, "{key} was posted {posts} times");
        }
    }
}

driver_tests! {
    /// notify = "dm": nothing in the channel; a DM to each approver; a non-approver's click on
    /// a DM copy is refused like in the channel; escalation DMs the new approver, who may then
    /// decide; a plain reminder step reminds by DM those who have not approved; the decision
    /// (a denial) updates every DM copy.
    async fn dm_only_asks_by_dm_escalates_by_dm_and_every_copy_follows_the_denial() {
        let h = dm_harness().await;
        let reply = h.slash(DEV, "request dm-only 1h look at the billing queue").await.text();
        assert!(
            reply.contains("was sent to <@U0ALICE>, <@U0BOB> by DM. You will get a DM when it is decided."),
            "{reply}"
        );
        let id = Harness::id_in(&reply);
        h.run_jobs().await;
        assert!(h.slack.messages(APPROVALS).is_empty(), "notify = dm posts nothing in the channel");
        assert_eq!(dm_copies(&h, ALICE, id).len(), 1);
        assert_eq!(dm_copies(&h, BOB, id).len(), 1);
        assert!(dm_copies(&h, CAROL, id).is_empty());

        // Carol is not an approver yet: a crafted click in her DM is refused.
        click_in_dm(&h, CAROL, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(
            h.ephemeral_texts(CAROL).last().map(String::as_str),
            Some("You are not an approver for this resource. (request #1)")
        );
        assert_eq!(h.state(id).await, State::Pending);

        // Step 1 at 10 minutes: Carol gets the request by DM, with its buttons.
        h.advance_and_run(Duration::minutes(10)).await;
        let carol = dm_copies(&h, CAROL, id);
        assert_eq!(carol.len(), 1);
        let rendered = carol[0].rendered();
        assert!(rendered.contains("[Approve"), "{rendered}");
        assert!(
            rendered.contains("Approvers: <@U0ALICE>, <@U0BOB>, <@U0CAROL>"),
            "{rendered}"
        );
        // Alice's and Bob's copies show the escalation too.
        assert!(dm_copies(&h, ALICE, id)[0].rendered().contains("<@U0CAROL>"));
        assert_eq!(h.audit_events(id).await, ["requested", "escalated"]);

        // Step 2 at 20 minutes, a reminder: a DM line to each approver with a copy.
        let before: Vec<usize> = [ALICE, BOB, CAROL].iter().map(|u| h.slack.dms(u).len()).collect();
        h.advance_and_run(Duration::minutes(10)).await;
        for (who, n) in [ALICE, BOB, CAROL].iter().zip(before) {
            let dms = h.slack.dms(who);
            assert_eq!(dms.len(), n + 1, "{who}");
            assert!(
                dms.last().unwrap().text.starts_with(":hourglass_flowing_sand: <@U0ALICE>, <@U0BOB>, <@U0CAROL> — request #1 is still waiting"),
                "{}",
                dms.last().unwrap().text
            );
        }

        // Carol, escalated, denies from her DM (the deny form, then its submission).
        click_in_dm(&h, CAROL, "jit.deny", id).await;
        let opened = h.slack.opened_views();
        assert_eq!(opened.len(), 1, "the deny form opened");
        assert_eq!(opened[0].view["callback_id"], "jit.deny_modal");
        h.submit(
            CAROL,
            "jit.deny_modal",
            &id.0.to_string(),
            &[("reason", "reason_input", "not during the freeze")],
        )
        .await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Denied);
        for who in [ALICE, BOB, CAROL] {
            let copies = dm_copies(&h, who, id);
            assert_eq!(copies.len(), 1, "{who}");
            let rendered = copies[0].rendered();
            assert!(
                rendered.contains(":x: Denied by <@U0CAROL>") && rendered.contains("not during the freeze"),
                "{rendered}"
            );
            assert!(!rendered.contains("[Approve"), "{rendered}");
        }
        assert!(h.slack.messages(APPROVALS).is_empty());
    }
}

driver_tests! {
    /// The requester, listed as an approver, gets no copy of their own request.
    async fn the_requester_gets_no_copy_of_their_own_request() {
        let h = dm_harness().await;
        let id = h.request_access(DEV, "own 1h look at the billing queue").await;
        h.run_jobs().await;
        assert_eq!(dm_copies(&h, ALICE, id).len(), 1);
        assert!(dm_copies(&h, DEV, id).is_empty());
        assert_eq!(copies_recorded(&h, id).await.len(), 1);
    }
}

driver_tests! {
    /// Slack's pace (one message a second per channel, here after a burst of one): two requests
    /// back to back put two copies in each approver's DM; the second is refused 429 at first,
    /// waits its Retry-After, and is then posted, once. Nothing is lost or doubled, and no job
    /// gives up.
    async fn dm_copies_wait_for_slacks_pace_and_are_posted_once() {
        let h = dm_harness().await;
        h.slack.set_post_pace(Some((1, 1)));
        let first = h.request_access(DEV, "dm-only 1h look at the billing queue").await;
        let second = h.request_access(DEV, "dm-only 1h look at the payments queue").await;
        h.run_jobs().await;
        for _ in 0..10 {
            if [ALICE, BOB].iter().all(|u| {
                dm_copies(&h, u, first).len() == 1 && dm_copies(&h, u, second).len() == 1
            }) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            h.advance_and_run(Duration::seconds(2)).await;
        }
        assert!(h.slack.paced_posts() >= 1, "the pace was reached");
        for who in [ALICE, BOB] {
            assert_eq!(dm_copies(&h, who, first).len(), 1, "{who}");
            assert_eq!(dm_copies(&h, who, second).len(), 1, "{who}");
        }
        for (key, posts) in h.slack.posts_by_key() {
            assert_eq!(posts, 1, "{key} was posted {posts} times");
        }
        let mut conn = h.app.store.read().await.unwrap();
        let dead: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE state = 'dead'"
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        assert_eq!(dead, 0);
    }
}

const SOLO_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[limits]
requests_per_user_per_minute = 1000
max_pending_per_user = 1000

[[resource]]
id = "solo"
provider = "none"
max_duration = "2h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"], notify = "dm" }
"#;

/// A harness whose request #1's DM copy to Alice is held back (its `conversations.open` was
/// answered 429), with every other job of the request done.
async fn copy_held_back() -> (Harness, RequestId) {
    let h = Harness::with_options(Options {
        policy: SOLO_POLICY.to_owned(),
        ..Options::default()
    })
    .await;
    h.slack.inject(
        "conversations.open",
        jit::slack::simulator::Fault::RateLimited {
            retry_after_secs: 1,
        },
        1,
    );
    let id = h
        .request_access(DEV, "solo 1h look at the billing queue")
        .await;
    h.run_jobs().await;
    assert!(dm_copies(&h, ALICE, id).is_empty(), "held back by the 429");
    (h, id)
}

driver_tests! {
    /// The copy's post reached Slack but its answer was lost (as when a replica dies between
    /// Slack's answer and recording it): the retry finds the tagged post and records it instead
    /// of posting again; the decision then updates that one copy.
    async fn a_dm_copy_whose_answer_was_lost_is_not_posted_twice() {
        let (h, id) = copy_held_back().await;
        h.slack
            .inject("chat.postMessage", jit::slack::simulator::Fault::AnswerLost, 1);
        h.advance_and_run(Duration::seconds(2)).await;
        assert_eq!(dm_copies(&h, ALICE, id).len(), 1, "posted, answer lost");
        assert!(copies_recorded(&h, id).await.is_empty(), "not recorded yet");
        for _ in 0..5 {
            h.advance_and_run(Duration::seconds(30)).await;
        }
        assert_eq!(dm_copies(&h, ALICE, id).len(), 1, "not posted again");
        assert_eq!(copies_recorded(&h, id).await.len(), 1, "found and recorded");
        click_in_dm(&h, ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        let copy = &dm_copies(&h, ALICE, id)[0];
        assert!(copy.rendered().contains(":white_check_mark: Approved by <@U0ALICE>"));
        assert!(!copy.rendered().contains("[Approve"));
        for (key, posts) in h.slack.posts_by_key() {
            assert_eq!(posts, 1, "{key} was posted {posts} times");
        }
    }
}

driver_tests! {
    /// The request is decided while its DM copy is on its way to Slack: the decision's updates
    /// do not know the copy yet, so the copy, once recorded, sees the decision and updates
    /// itself; nobody is left with live buttons on a decided request.
    async fn a_copy_posted_while_the_request_is_decided_updates_itself() {
        let (h, id) = copy_held_back().await;
        h.slack.inject(
            "chat.postMessage",
            jit::slack::simulator::Fault::Hang(std::time::Duration::from_millis(1500)),
            1,
        );
        h.advance(Duration::seconds(2));
        let app = h.app.clone();
        let worker = tokio::spawn(async move { jit::handlers::jobs::run_due(&app).await.unwrap() });
        // The copy's post is under way (conversations.open answered, chat.postMessage waiting).
        for _ in 0..50 {
            if h.slack.call_count("conversations.open") >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(dm_copies(&h, ALICE, id).is_empty(), "still on its way");
        click_in_dm(&h, ALICE, "jit.approve", id).await;
        assert_eq!(h.state(id).await, State::Approved, "decided, the grant job not run yet");
        worker.await.unwrap();
        h.run_jobs().await;
        let copies = dm_copies(&h, ALICE, id);
        assert_eq!(copies.len(), 1);
        let rendered = copies[0].rendered();
        assert!(rendered.contains(":white_check_mark: Approved by <@U0ALICE>"), "{rendered}");
        assert!(!rendered.contains("[Approve"), "{rendered}");
        assert_eq!(copies[0].edits, 1, "updated by the copy's own job");
    }
}
