//! Request → approve / deny, the form, bad input, and who may decide.

use chrono::Duration;
use jit::domain::request::State;
use jit::slack::simulator::Fault;
use serde_json::json;

use crate::harness::*;

driver_tests! {
    async fn request_then_approve() {
        let h = Harness::start().await;
        let calls_before = h.slack.calls().len();
        let reply = h
            .slash(DEV, "request db 2h investigating INC-123 <!channel>")
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["response_type"], "ephemeral");
        insta::assert_snapshot!(reply.text(), @":inbox_tray: Request #1 for `db` (2 hours) was sent to <@U0ALICE>, <@U0BOB>, <!subteam^S0SRE> in <#C0APPROVALS>. You will get a DM when it is decided.");
        let id = Harness::id_in(&reply.text());
        assert_eq!(h.state(id).await, State::Pending);
        // The ack made no Slack call.
        assert_eq!(h.slack.calls().len(), calls_before, "{:?}", h.slack.calls());

        h.run_jobs().await;
        let message = h.approval_message();
        insta::assert_snapshot!(message.rendered(), @r"
        :key: *Access request #1*
        <@U0DEV> asks for `db` for *2 hours*
        _Production database_
        >investigating INC-123 &lt;!channel&gt;
        Approvers: <@U0ALICE>, <@U0BOB>, <!subteam^S0SRE> · needs 1 approval · expires without a decision <!date^1795444200^{date_short_pretty} {time}|2026-11-23 14:30 UTC>
        [Approve*] [Deny!]
        ");

        h.advance(Duration::minutes(3));
        let click = h.click(ALICE, "jit.approve", id).await;
        assert_eq!(click.status, 200);
        assert_eq!(h.state(id).await, State::Approved);
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);

        let message = h.approval_message();
        assert_eq!(message.edits, 1);
        insta::assert_snapshot!(message.rendered(), @r"
        :key: *Access request #1*
        <@U0DEV> asks for `db` for *2 hours*
        _Production database_
        >investigating INC-123 &lt;!channel&gt;
        :white_check_mark: Approved by <@U0ALICE> <!date^1795442580^{date_short_pretty} {time}|2026-11-23 14:03 UTC>
        ");
        let dms = h.dm_texts(DEV);
        assert_eq!(dms.len(), 2, "{dms:#?}");
        insta::assert_snapshot!(dms[0], @":white_check_mark: Your request #1 for `db` for *2 hours* was approved by <@U0ALICE>. Issuing access now.");
        assert!(
            dms[1].contains(":unlock: You now have `db` until"),
            "{}",
            dms[1]
        );
        assert!(
            dms[1].contains("[Reveal credentials*] [Release now]"),
            "{}",
            dms[1]
        );

        assert_eq!(
            h.audit_events(id).await,
            ["requested", "approved", "granted"]
        );
        let thread = h.audit_thread(id);
        assert_eq!(thread.len(), 3, "{thread:#?}");
        assert!(
            thread[0].contains("<@U0DEV> requested `db` for `2h` via slack"),
            "{}",
            thread[0]
        );
        assert!(
            thread[1].contains(":white_check_mark: Approved by <@U0ALICE>"),
            "{}",
            thread[1]
        );
        assert_eq!(h.provider_actions(id), ["grant"]);
    }
}

driver_tests! {
    async fn request_then_deny_with_a_reason() {
        let h = Harness::start().await;
        let id = h.request_access(DEV, "db 1h poke around").await;
        h.run_jobs().await;

        let click = h.click(BOB, "jit.deny", id).await;
        assert_eq!(click.status, 200);
        let opened = h.slack.opened_views();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].view["callback_id"], "jit.deny_modal");
        assert_eq!(opened[0].view["private_metadata"], id.0.to_string());
        assert_eq!(
            h.state(id).await,
            State::Pending,
            "opening the form decides nothing"
        );

        let empty = h
            .submit(
                BOB,
                "jit.deny_modal",
                &id.0.to_string(),
                &[("reason", "reason_input", "  ")],
            )
            .await;
        assert_eq!(empty.body["response_action"], "errors");
        assert_eq!(
            empty.body["errors"]["reason"],
            "Please give a reason for the requester."
        );
        assert_eq!(h.state(id).await, State::Pending);

        let done = h
            .submit(
                BOB,
                "jit.deny_modal",
                &id.0.to_string(),
                &[("reason", "reason_input", "not during the freeze")],
            )
            .await;
        assert_eq!(done.body, json!({"response_action": "clear"}));
        assert_eq!(h.state(id).await, State::Denied);
        h.run_jobs().await;

        let message = h.approval_message();
        assert!(
            message.rendered().contains(":x: Denied by <@U0BOB>"),
            "{}",
            message.rendered()
        );
        assert!(message.rendered().contains("not during the freeze"));
        assert!(!message.rendered().contains("[Approve"), "buttons are gone");
        let dms = h.dm_texts(DEV);
        insta::assert_snapshot!(dms.join("\n"), @":x: Your request #1 for `db` for *1 hour* was denied by <@U0BOB>: not during the freeze");
        assert_eq!(h.audit_events(id).await, ["requested", "denied"]);
        assert!(h.provider_actions(id).is_empty());

        // A late Approve changes nothing.
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Denied);
        assert_eq!(
            h.ephemeral_texts(ALICE),
            ["Request #1 is already denied; nothing was changed."]
        );
    }
}

driver_tests! {
    async fn the_form_opens_and_submits_with_inline_errors() {
        let h = Harness::start().await;
        let reply = h.slash(DEV, "").await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body,
            serde_json::Value::Null,
            "an empty ack once the modal is open"
        );
        let opened = h.slack.opened_views();
        assert_eq!(opened.len(), 1);
        assert!(
            opened[0].trigger_id.starts_with("U0DEV.command.")
                && opened[0].trigger_id.ends_with(".trigger"),
            "the trigger_id of the command: {}",
            opened[0].trigger_id
        );
        let view = &opened[0].view;
        assert_eq!(view["callback_id"], "jit.request_modal");
        assert_eq!(view["private_metadata"], ORIGIN);
        let options: Vec<&str> = view["blocks"][0]["element"]["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["value"].as_str().unwrap())
            .collect();
        assert_eq!(
            options,
            ["db", "db-shared", "two-person", "staging", "ci-db"],
            "restricted is not offered to DEV"
        );

        let too_long = h
            .submit(
                DEV,
                "jit.request_modal",
                ORIGIN,
                &[
                    ("resource", "resource_select", "db"),
                    ("duration", "duration_select", "8h"),
                    ("justification", "justification_input", "fixing"),
                ],
            )
            .await;
        assert_eq!(too_long.body["response_action"], "errors");
        assert_eq!(
            too_long.body["errors"]["duration"],
            "`db` can be granted for at most 4h (4 hours); you asked for 8h."
        );
        let empty = h
            .submit(
                DEV,
                "jit.request_modal",
                ORIGIN,
                &[
                    ("resource", "resource_select", "db"),
                    ("duration", "duration_select", "1h"),
                ],
            )
            .await;
        assert_eq!(
            empty.body["errors"]["justification"],
            "Please say why you need access: the justification is empty."
        );
        let ok = h
            .submit(
                DEV,
                "jit.request_modal",
                ORIGIN,
                &[
                    ("resource", "resource_select", "db"),
                    ("duration", "duration_select", "1h"),
                    ("justification", "justification_input", "rotate the keys"),
                    ("ticket", "ticket_input", "INC-7"),
                ],
            )
            .await;
        assert_eq!(ok.body, json!({"response_action": "clear"}));
        h.run_jobs().await;
        let request = h.request(jit::domain::ids::RequestId(1)).await;
        assert_eq!(request.ticket.as_deref(), Some("INC-7"));
        assert_eq!(request.justification, "rotate the keys");
        assert!(h.approval_message().rendered().contains("Ticket: INC-7"));
        insta::assert_snapshot!(h.dm_texts(DEV).join("\n"), @":inbox_tray: Your request #1 for `db` for *1 hour* is waiting for approval from <@U0ALICE>, <@U0BOB>, <!subteam^S0SRE> in <#C0APPROVALS>.");

        // The fixture's own submission names a resource this policy does not have.
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../fixtures/slack/view-submission.json")).unwrap();
        let mut fixture = fixture;
        fixture["view"]["callback_id"] = json!("jit.request_modal");
        // Sent from the harness's workspace (the fixture's is Slack's example one).
        fixture["team"]["id"] = json!(jit::slack::simulator::TEAM_ID);
        let reply = h.interaction(fixture).await;
        assert_eq!(
            reply.body["errors"]["resource"].as_str().unwrap(),
            "There is no resource `aws-prod-readonly`. `/jit request` without arguments lists the resources you can request."
        );
    }
}

driver_tests! {
    async fn the_form_failing_to_open_says_what_to_type() {
        let h = Harness::start().await;
        h.slack.inject(
            "views.open",
            Fault::ApiError("expired_trigger_id".into()),
            1,
        );
        let reply = h.slash(DEV, "request").await;
        insta::assert_snapshot!(reply.text(), @":warning: jit could not open the request form (expired_trigger_id). You can still type `/jit request &lt;resource&gt; &lt;duration&gt; [at &lt;time&gt;] &lt;justification…&gt;`.");
    }
}

driver_tests! {
    async fn every_bad_input_gets_a_clear_reply() {
        let h = Harness::start().await;
        let cases = [
            "frobnicate",
            "request dbb 1h fixing",
            "request nosuchthing 1h fixing",
            "request db 90 fixing",
            "request db 5h fixing",
            "request db 1h",
            "request restricted 30m fixing",
            "cancel abc",
            "cancel 99",
            "why",
            "revoke 1 because",
            "breakglass staging outage",
        ];
        let mut out = Vec::new();
        for text in cases {
            let reply = h.slash(DEV, text).await;
            assert_eq!(reply.status, 200, "{text}");
            assert_eq!(reply.body["response_type"], "ephemeral", "{text}");
            out.push(format!("/jit {text}\n=> {}", reply.text()));
        }
        insta::assert_snapshot!(out.join("\n\n"));
        let mut conn = h.app.store.read().await.unwrap();
        assert!(
            jit::store::requests::list(&mut conn, false, 10)
                .await
                .unwrap()
                .is_empty(),
            "nothing was stored"
        );
    }
}

driver_tests! {
    async fn requesters_never_approve_their_own_and_strangers_never_decide() {
        let h = Harness::start().await;
        let id = h.request_access(ALICE, "db 1h my own").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.click(MALLORY, "jit.approve", id).await;
        h.click(MALLORY, "jit.deny", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Pending);
        assert_eq!(
            h.ephemeral_texts(ALICE),
            ["You cannot approve or deny your own request. (request #1)"]
        );
        assert_eq!(
            h.ephemeral_texts(MALLORY),
            [
                "You are not an approver for this resource. (request #1)",
                "You are not an approver for this resource. (request #1)"
            ]
        );
        assert!(
            h.slack.opened_views().is_empty(),
            "no deny form for a stranger"
        );
        // A forged deny submission is refused too.
        let forged = h
            .submit(
                MALLORY,
                "jit.deny_modal",
                "1",
                &[("reason", "reason_input", "no")],
            )
            .await;
        assert_eq!(forged.body["response_action"], "errors");
        assert_eq!(h.state(id).await, State::Pending);
        assert_eq!(h.audit_events(id).await, ["requested"]);

        // A member of an approver group may decide: membership is refreshed on a miss.
        h.slack.set_user("U0NEWSRE", "newsre", None);
        h.slack.set_group_members("S0SRE", &["U0SRE1", "U0NEWSRE"]);
        h.advance(Duration::seconds(31));
        h.click("U0NEWSRE", "jit.approve", id).await;
        assert_eq!(h.state(id).await, State::Approved);
    }
}

driver_tests! {
    async fn two_of_n_needs_two_distinct_approvers() {
        let h = Harness::start().await;
        let id = h.request_access(DEV, "two-person 1h migration").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Pending);
        assert_eq!(
            h.ephemeral_texts(ALICE),
            [
                "Your approval of request #1 is recorded (1 of 2); it needs 1 more.",
                "You have already approved request #1."
            ]
        );
        assert!(
            h.approval_message()
                .rendered()
                .contains("approved so far by <@U0ALICE> (1 of 2)")
        );
        h.advance(Duration::minutes(1));
        h.click(CAROL, "jit.approve", id).await;
        assert_eq!(h.state(id).await, State::Approved);
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        assert!(
            h.approval_message()
                .rendered()
                .contains("Approved by <@U0ALICE>, <@U0CAROL>"),
            "{}",
            h.approval_message().rendered()
        );
        assert_eq!(
            h.audit_events(id).await,
            ["requested", "approval", "approved", "granted"]
        );
        assert_eq!(h.provider_actions(id), ["grant"]);
    }
}

driver_tests! {
    async fn ten_concurrent_clicks_make_one_decision() {
        let h = Harness::start().await;
        let id = h.request_access(DEV, "db 1h incident").await;
        h.run_jobs().await;
        let clicks = (0..10).map(|i| {
            let who = if i % 2 == 0 { ALICE } else { BOB };
            h.click(who, "jit.approve", id)
        });
        let replies = futures::future::join_all(clicks).await;
        assert!(replies.iter().all(|r| r.status == 200));
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        let events = h.audit_events(id).await;
        assert_eq!(
            events.iter().filter(|e| *e == "approved").count(),
            1,
            "{events:?}"
        );
        assert_eq!(h.provider_actions(id), ["grant"]);
        let mut conn = h.app.store.read().await.unwrap();
        let grants: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'grant'"
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        assert_eq!(grants, 1);
    }
}

driver_tests! {
    async fn auto_approval_by_policy() {
        let h = Harness::start().await;
        let reply = h.slash(ONCALL, "request db 30m pager went off").await;
        insta::assert_snapshot!(reply.text(), @":zap: Request #1 for `db` (30 minutes) was approved by policy. Access is being issued; you will get a DM.");
        let id = Harness::id_in(&reply.text());
        assert_eq!(h.state(id).await, State::Approved);
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        assert!(
            h.slack.messages(APPROVALS).is_empty(),
            "nothing for approvers to do"
        );
        assert_eq!(
            h.audit_events(id).await,
            ["requested", "auto_approved", "granted"]
        );
        assert_eq!(h.request(id).await.decided_by.as_deref(), Some("policy"));
        // Longer than the rule's limit: goes to the approvers.
        let id = h.request_access(ONCALL, "db 31m pager went off").await;
        assert_eq!(h.state(id).await, State::Pending);
    }
}

driver_tests! {
    async fn cancel_my_own_pending_request() {
        let h = Harness::start().await;
        let id = h.request_access(DEV, "db 1h oops").await;
        h.run_jobs().await;
        let reply = h.slash(BOB, "cancel 1").await;
        assert_eq!(
            reply.text(),
            ":warning: Request #1 is not yours, so you cannot cancel it."
        );
        let reply = h.slash(DEV, "cancel #1").await;
        assert_eq!(reply.text(), ":no_entry_sign: Request #1 is cancelled.");
        assert_eq!(h.state(id).await, State::Cancelled);
        let reply = h.slash(DEV, "cancel 1").await;
        assert!(
            reply
                .text()
                .contains("is cancelled, so there is nothing to cancel"),
            "{}",
            reply.text()
        );
        h.run_jobs().await;
        assert!(
            h.approval_message()
                .rendered()
                .contains("Cancelled by the requester")
        );
    }
}

driver_tests! {
    async fn list_why_and_help() {
        let h = Harness::start().await;
        h.request_access(DEV, "db 1h first").await;
        h.request_access(DEV, "staging 2h second").await;
        h.run_jobs().await;
        let list = h.slash(DEV, "list").await;
        let text = list.body["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            text.contains("*#2* `staging` for 2 hours · active until"),
            "{text}"
        );
        assert!(
            text.contains("*#1* `db` for 1 hour · waiting for approval · `/jit cancel 1`"),
            "{text}"
        );

        let why = h.slash(ONCALL, "why db 20m").await;
        insta::assert_snapshot!(why.body["blocks"][0]["text"]["text"].as_str().unwrap());
        let why = h.slash(DEV, "why restricted").await;
        assert!(
            why.body["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("(not you)")
        );

        let help = h.slash(DEV, "help").await;
        assert!(
            help.text()
                .contains("/jit request &lt;resource&gt; &lt;duration&gt; [at &lt;time&gt;] &lt;justification…&gt;")
        );
    }
}

driver_tests! {
    async fn a_429_from_slack_is_retried_after_retry_after() {
        let h = Harness::start().await;
        let id = h.request_access(DEV, "db 1h rate limited").await;
        // The next post (the request's approval message) is answered 429 with Retry-After: 7.
        h.slack.inject(
            "chat.postMessage",
            Fault::RateLimited {
                retry_after_secs: 7,
            },
            1,
        );
        let mut conn = h.app.store.read().await.unwrap();
        jit::store::on!(&mut conn, |c| sqlx::query(
            "UPDATE jobs SET run_at = run_at + 1 WHERE kind = 'slack.audit'"
        )
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        drop(conn);
        h.run_jobs().await;
        assert!(
            h.slack.messages(APPROVALS).is_empty(),
            "the first post was rate limited"
        );
        h.advance(Duration::seconds(6));
        h.run_jobs().await;
        assert!(
            h.slack.messages(APPROVALS).is_empty(),
            "Retry-After is honoured"
        );
        assert_eq!(
            h.slack.messages(AUDIT).len(),
            1,
            "other channels go on meanwhile"
        );
        h.advance(Duration::seconds(2));
        h.run_jobs().await;
        assert_eq!(
            h.slack.messages(APPROVALS).len(),
            1,
            "delivered after Retry-After"
        );
        assert_eq!(
            h.approval_message().text,
            format!("Access request {id}: U0DEV asks for db (waiting for approval)")
        );
        let mut conn = h.app.store.read().await.unwrap();
        let attempts: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT attempts FROM jobs WHERE kind = 'slack.approval'"
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        assert_eq!(
            attempts, 1,
            "a rate limit does not count as a failed attempt"
        );
    }
}

driver_tests! {
    async fn concurrent_submissions_are_stored_together_and_completely() {
        let h = Harness::start().await;
        let texts: Vec<String> = (0..30)
            .map(|i| format!("request db 1h together {i}"))
            .collect();
        let replies = futures::future::join_all(texts.iter().map(|t| h.slash(DEV, t))).await;
        assert!(
            replies
                .iter()
                .all(|r| r.text().starts_with(":inbox_tray: Request #"))
        );
        let by_text: Vec<i64> = replies
            .iter()
            .map(|r| Harness::id_in(&r.text()).0)
            .collect();
        let mut ids = by_text.clone();
        ids.sort_unstable();
        assert_eq!(
            ids,
            (1..=30).collect::<Vec<_>>(),
            "each got its own request"
        );
        let mut conn = h.app.store.read().await.unwrap();
        let verdict = jit::store::audit::verify(&mut conn, &crate::harness::audit_key())
            .await
            .unwrap();
        assert!(
            matches!(
                verdict,
                jit::store::audit::Verification::Intact { rows: 30, .. }
            ),
            "{verdict:?}"
        );
        let per_kind: Vec<(String, i64)> = jit::store::on!(&mut conn, |c| sqlx::query_as(
            "SELECT kind, COUNT(*) FROM jobs GROUP BY kind ORDER BY kind"
        )
        .fetch_all(&mut *c)
        .await)
        .unwrap();
        let per_kind: Vec<(&str, i64)> = per_kind.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            per_kind,
            [
                ("nudge", 30),
                ("pending_timeout", 30),
                ("slack.approval", 30),
                ("slack.audit", 30)
            ]
        );
        // Each Slack channel's messages form one chain: one head, the rest waiting behind it.
        let chains: Vec<(String, String, i64)> = jit::store::on!(&mut conn, |c| sqlx::query_as(
            "SELECT lane, state, COUNT(*) FROM jobs WHERE lane IS NOT NULL GROUP BY lane, state ORDER BY lane, state",
        )
        .fetch_all(&mut *c)
        .await)
        .unwrap();
        assert_eq!(
            chains,
            [
                ("slack:C0APPROVALS".to_owned(), "blocked".to_owned(), 29),
                ("slack:C0APPROVALS".to_owned(), "queued".to_owned(), 1),
                ("slack:audit".to_owned(), "blocked".to_owned(), 29),
                ("slack:audit".to_owned(), "queued".to_owned(), 1),
            ]
        );
        drop(conn);
        h.run_jobs().await;
        assert_eq!(h.slack.messages(APPROVALS).len(), 30);
        for (i, id) in by_text.iter().enumerate() {
            let thread = h.audit_thread(jit::domain::ids::RequestId(*id));
            assert_eq!(thread.len(), 1, "request #{id}'s audit thread");
            assert!(
                thread[0].contains(&format!(">together {i}\n")),
                "#{id} holds submission {i}: {thread:?}"
            );
            let request = h.request(jit::domain::ids::RequestId(*id)).await;
            assert_eq!(request.justification, format!("together {i}"));
        }
    }
}
