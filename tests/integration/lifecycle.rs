//! After approval: issue, remind, extend, release, revoke, tear down, and survive failures.

use chrono::Duration;
use jit::domain::ids::RequestId;
use jit::domain::request::State;

use crate::harness::*;

/// Requests `text` as DEV, approves it as ALICE and runs the grant.
async fn active_grant(h: &Harness, text: &str) -> RequestId {
    let id = h.request_access(DEV, text).await;
    h.run_jobs().await;
    h.click(ALICE, "jit.approve", id).await;
    h.run_jobs().await;
    assert_eq!(h.state(id).await, State::Active);
    id
}

driver_tests! {
    async fn full_lifecycle_issue_remind_teardown() {
        let h = Harness::start().await;
        let id = active_grant(&h, "db 1h deploy hotfix").await;
        let granted = h.request(id).await;
        assert_eq!(granted.granted_at, Some(t0()));
        assert_eq!(granted.expires_at, Some(t0() + Duration::hours(1)));
        let calls = h.provider_calls();
        assert_eq!(calls[0]["action"], "grant");
        assert_eq!(
            calls[0]["expires_at"], "2026-11-23T15:00:00.000Z",
            "the provider is told the exact expiry"
        );
        assert_eq!(calls[0]["requester"], DEV);

        // Nothing reaches the holder before the reminder.
        let dms_before = h.dm_texts(DEV).len();
        h.advance_and_run(Duration::minutes(49)).await;
        assert_eq!(h.dm_texts(DEV).len(), dms_before);
        h.advance_and_run(Duration::minutes(1)).await;
        let dms = h.dm_texts(DEV);
        let reminder = dms.last().unwrap();
        assert!(
            reminder.contains(":alarm_clock: Your access to `db` (request #1) ends"),
            "{reminder}"
        );
        assert!(reminder.contains("(in about 10 minutes)"), "{reminder}");
        assert!(reminder.contains("[Extend*] [Release now]"), "{reminder}");

        h.advance_and_run(Duration::minutes(9)).await;
        assert_eq!(h.state(id).await, State::Active);
        h.advance_and_run(Duration::minutes(1)).await;
        let ended = h.request(id).await;
        assert_eq!(ended.state, State::Expired);
        assert_eq!(
            ended.revoked_at,
            Some(t0() + Duration::hours(1)),
            "torn down on time"
        );
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
        let revoke = &h.provider_calls()[1];
        assert_eq!(revoke["handle"], "login:db:1");

        let dms = h.dm_texts(DEV);
        assert_eq!(
            dms.last().unwrap(),
            ":lock: Your access to `db` (request #1) expired. It has been removed."
        );
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
        let thread = h.audit_thread(id);
        insta::assert_snapshot!(
            thread
                .iter()
                .map(|m| m.lines().next().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Credentials are gone from the database once the grant ends.
        let mut conn = h.app.store.read().await.unwrap();
        assert!(
            jit::store::credentials::get(&mut conn, id)
                .await
                .unwrap()
                .is_none()
        );
    }
}

driver_tests! {
    async fn extend_within_and_beyond_the_maximum() {
        let h = Harness::start().await;
        let id = active_grant(&h, "db 1h long migration").await;

        let too_long = h.slash(DEV, "extend 1 5h").await;
        assert_eq!(
            too_long.text(),
            ":warning: `db` can be granted for at most 4h (4 hours); you asked for 5h."
        );
        let other = h.slash(BOB, "extend 1 1h").await;
        assert_eq!(
            other.text(),
            ":warning: Grant #1 is not yours, so you cannot extend it."
        );

        let reply = h.slash(DEV, "extend 1 2h").await;
        assert!(
            reply
                .text()
                .contains("Extension #2 of #1 by 2h is waiting for approval"),
            "{}",
            reply.text()
        );
        h.run_jobs().await;
        h.advance(Duration::minutes(5));
        h.click(BOB, "jit.approve", RequestId(2)).await;
        h.run_jobs().await;
        assert_eq!(h.state(RequestId(2)).await, State::Applied);
        let grant = h.request(id).await;
        assert_eq!(
            grant.expires_at,
            Some(t0() + Duration::hours(3)),
            "2h added to the original end"
        );
        assert_eq!(h.provider_actions(id), ["grant", "extend"]);
        assert!(
            h.dm_texts(DEV).last().unwrap().contains("now lasts until"),
            "{:?}",
            h.dm_texts(DEV)
        );

        // The teardown moved with the grant: nothing at the old expiry, once at the new one.
        h.advance_and_run(Duration::minutes(60)).await;
        assert_eq!(h.state(id).await, State::Active);
        h.advance_and_run(Duration::minutes(105)).await;
        h.advance_and_run(Duration::minutes(15)).await;
        assert_eq!(h.state(id).await, State::Expired);
        assert_eq!(h.provider_actions(id), ["grant", "extend", "revoke"]);
        let mut conn = h.app.store.read().await.unwrap();
        let revokes: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'revoke'"
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        assert_eq!(revokes, 1, "rescheduled, not duplicated");
        let reminders: Vec<String> = h
            .dm_texts(DEV)
            .into_iter()
            .filter(|d| d.contains(":alarm_clock:"))
            .collect();
        assert_eq!(
            reminders.len(),
            1,
            "one reminder, before the new expiry: {reminders:?}"
        );
        assert!(h.audit_events(id).await.contains(&"extended".to_owned()));
    }
}

driver_tests! {
    async fn extension_auto_approved_from_the_reminder_button() {
        let h = Harness::start().await;
        let reply = h.slash(ONCALL, "request db 15m pager").await;
        let id = Harness::id_in(&reply.text());
        h.run_jobs().await;
        h.advance_and_run(Duration::minutes(10)).await;
        // Extend button → modal → submission, auto-approved (on-call, and the whole grant stays
        // within the rule's 30m).
        let click = h.click(ONCALL, "jit.extend", id).await;
        assert_eq!(click.status, 200);
        let view = h.slack.opened_views().last().unwrap().view.clone();
        assert_eq!(view["callback_id"], "jit.extend_modal");
        let done = h
            .submit(
                ONCALL,
                "jit.extend_modal",
                &id.0.to_string(),
                &[("duration", "duration_select", "15m")],
            )
            .await;
        assert_eq!(done.body["response_action"], "clear");
        h.run_jobs().await;
        assert_eq!(
            h.request(id).await.expires_at,
            Some(t0() + Duration::minutes(30))
        );
    }
}

driver_tests! {
    async fn release_now_from_the_button_and_the_command() {
        let h = Harness::start().await;
        let id = active_grant(&h, "db 2h quick look").await;
        h.advance(Duration::minutes(10));
        let stranger = h.slash(BOB, "release 1").await;
        assert_eq!(
            stranger.text(),
            ":warning: Request #1 is not yours, so you cannot release it."
        );
        h.click(DEV, "jit.release", id).await;
        assert_eq!(h.state(id).await, State::Released);
        h.run_jobs().await;
        let released = h.request(id).await;
        assert_eq!(
            released.revoked_at,
            Some(t0() + Duration::minutes(10)),
            "torn down at once"
        );
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
        assert_eq!(
            h.dm_texts(DEV).last().unwrap(),
            ":lock: Your access to `db` (request #1) was released. It has been removed."
        );

        let id2 = active_grant(&h, "db 2h again").await;
        let reply = h.slash(DEV, &format!("release {}", id2.0)).await;
        assert!(
            reply.text().contains("Releasing request #2"),
            "{}",
            reply.text()
        );
        h.run_jobs().await;
        assert_eq!(h.provider_actions(id2), ["grant", "revoke"]);
        let again = h.slash(DEV, &format!("release {}", id2.0)).await;
        assert_eq!(
            again.text(),
            ":warning: Request #2 is released; there is no access to end."
        );
    }
}

driver_tests! {
    async fn admins_revoke_anyone_others_cannot() {
        let h = Harness::start().await;
        let id = active_grant(&h, "db 2h something").await;
        let refused = h.slash(BOB, "revoke 1 suspicious").await;
        assert_eq!(refused.text(), ":warning: Only jit admins can do that.");
        let reply = h.slash(SECLEAD, "revoke 1 left the team").await;
        assert_eq!(
            reply.text(),
            ":no_entry: Request #1 is revoked; the access is being removed now."
        );
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Revoked);
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
        let dms = h.dm_texts(DEV);
        assert!(dms.iter().any(|d| d == ":no_entry: Your access to `db` (request #1) was revoked by <@U0SECLEAD>: left the team"), "{dms:#?}");
        let events = h.audit_events(id).await;
        assert!(
            events.ends_with(&[
                "revoked".into(),
                "credentials_erased".into(),
                "torn_down".into()
            ]),
            "{events:?}"
        );
    }
}

driver_tests! {
    async fn pending_timeout_with_a_nudge_at_half_time() {
        let h = Harness::start().await;
        let id = h.request_access(DEV, "db 1h nobody home").await;
        h.run_jobs().await;
        h.advance_and_run(Duration::minutes(15)).await;
        let message = h.approval_message();
        let nudges = h.slack.thread(APPROVALS, &message.ts);
        assert_eq!(nudges.len(), 1);
        assert!(nudges[0].text.starts_with(":hourglass_flowing_sand: <@U0ALICE>, <@U0BOB>, <!subteam^S0SRE> — request #1 is still waiting"), "{}", nudges[0].text);
        h.advance_and_run(Duration::minutes(15)).await;
        assert_eq!(h.state(id).await, State::TimedOut);
        assert!(
            h.approval_message()
                .rendered()
                .contains(":hourglass: Expired without a decision")
        );
        assert!(!h.approval_message().rendered().contains("[Approve"));
        assert_eq!(
            h.dm_texts(DEV).last().unwrap(),
            ":hourglass: Your request #1 for `db` for *1 hour* expired: nobody decided in time. You can ask again."
        );
        assert_eq!(
            h.audit_events(id).await,
            ["requested", "nudged", "timed_out"]
        );
        // Only one nudge, even with more time passing.
        h.advance_and_run(Duration::hours(1)).await;
        assert_eq!(h.slack.thread(APPROVALS, &message.ts).len(), 1);
    }
}

driver_tests! {
    async fn breakglass_grants_at_once_and_needs_a_review() {
        let h = Harness::start().await;
        let refused = h.slash(DEV, "breakglass staging outage").await;
        assert!(
            refused
                .text()
                .contains("Break-glass is not enabled for `staging`")
        );
        let reply = h.slash(DEV, "breakglass db prod is down INC-9").await;
        assert!(
            reply
                .text()
                .starts_with(":rotating_light: Break-glass access to `db` (request #1)"),
            "{}",
            reply.text()
        );
        let id = RequestId(1);
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
        let thread = h.audit_thread(id);
        assert!(
            thread[0].contains(":rotating_light: <@U0SECLEAD>, <!subteam^S0SECURITY> *BREAK-GLASS*"),
            "{}",
            thread[0]
        );
        assert!(thread[0].contains("[Reviewed*] [Revoke!]"), "{}", thread[0]);
        // Break-glass alerts are broadcast to the channel, not only the thread.
        let calls = h.slack.calls();
        assert!(
            calls
                .iter()
                .any(|c| c.method == "chat.postMessage" && c.body["reply_broadcast"] == true)
        );

        let list = h.slash(SECLEAD, "list").await;
        let text = list.body["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            text.contains(
                "*Break-glass grants waiting for an admin's review*\n• *#1* <@U0DEV> took `db`"
            ),
            "{text}"
        );
        let not_admin = h.slash(DEV, "list").await;
        assert!(
            !not_admin.body["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("Break-glass")
        );

        // Only admins review.
        let payload = Harness::click_payload(BOB, "jit.review", "1", AUDIT);
        h.interaction(payload).await;
        h.run_jobs().await;
        assert_eq!(h.ephemeral_texts(BOB), ["Only jit admins can do that."]);
        let payload = Harness::click_payload(SECLEAD, "jit.review", "1", AUDIT);
        h.interaction(payload).await;
        h.run_jobs().await;
        let reviewed = h.request(id).await;
        assert_eq!(reviewed.reviewed_by.as_deref(), Some(SECLEAD));
        assert_eq!(reviewed.state, State::Active, "reviewed, not revoked");
        let list = h.slash(SECLEAD, "list").await;
        assert!(
            list.body["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("review*\nNone.")
        );
        assert_eq!(
            h.audit_events(id).await,
            ["breakglass", "granted", "reviewed"]
        );

        // Review with revoke.
        h.slash(DEV, "breakglass db again").await;
        h.run_jobs().await;
        h.interaction(Harness::click_payload(
            SECLEAD,
            "jit.review_revoke",
            "2",
            AUDIT,
        ))
        .await;
        h.run_jobs().await;
        assert_eq!(h.state(RequestId(2)).await, State::Revoked);
        assert_eq!(h.provider_actions(RequestId(2)), ["grant", "revoke"]);
    }
}

driver_tests! {
    async fn overlapping_grants_are_reference_counted() {
        let h = Harness::start().await;
        let first = h.request_access(DEV, "db-shared 1h first").await;
        h.run_jobs().await;
        h.advance(Duration::minutes(30));
        let second = h.request_access(DEV, "db-shared 2h second").await;
        h.run_jobs().await;
        assert_eq!(h.state(first).await, State::Active);
        assert_eq!(h.state(second).await, State::Active);
        let handles: Vec<String> = h
            .provider_calls()
            .iter()
            .map(|c| c["handle"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            handles,
            ["member:db-shared:U0DEV", "member:db-shared:U0DEV"],
            "the same access"
        );

        // The first ends: the access stays, because the second still holds it.
        h.advance_and_run(Duration::minutes(30)).await;
        assert_eq!(h.state(first).await, State::Expired);
        assert!(h.request(first).await.revoked_at.is_some());
        assert_eq!(
            h.provider_actions(first),
            ["grant"],
            "no revoke while another grant holds the access"
        );
        assert!(
            h.audit_thread(first)
                .iter()
                .any(|m| m.contains("the access stays while #2 still holds it"))
        );

        // The last one ends: now it is revoked.
        h.advance_and_run(Duration::hours(2)).await;
        assert_eq!(h.state(second).await, State::Expired);
        assert_eq!(h.provider_actions(second), ["grant", "revoke"]);
    }
}

driver_tests! {
    async fn a_failing_teardown_retries_alerts_once_and_revokes_once() {
        let h = Harness::start().await;
        let id = active_grant(&h, "db 1h flaky").await;
        h.fail_provider(2, 1);
        h.advance_and_run(Duration::hours(1)).await;
        assert_eq!(h.state(id).await, State::Expired);
        assert!(
            h.request(id).await.revoked_at.is_none(),
            "not torn down yet"
        );
        // Backoff: a few seconds, then longer; jitter keeps it within ±25%.
        h.advance_and_run(Duration::seconds(3)).await;
        h.advance_and_run(Duration::seconds(6)).await;
        let request = h.request(id).await;
        assert!(request.revoked_at.is_some(), "torn down after two failures");
        assert_eq!(
            h.provider_actions(id),
            ["grant", "revoke!1", "revoke!1", "revoke"]
        );
        let events = h.audit_events(id).await;
        assert_eq!(
            events.iter().filter(|e| *e == "teardown_failed").count(),
            1,
            "{events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| *e == "teardown_alert").count(),
            1,
            "{events:?}"
        );
        assert_eq!(
            events.iter().filter(|e| *e == "torn_down").count(),
            1,
            "{events:?}"
        );
        let alert = h
            .audit_thread(id)
            .into_iter()
            .find(|m| m.contains("Teardown is failing"))
            .unwrap();
        assert!(
            alert.starts_with(":rotating_light: <@U0SECLEAD>, <!subteam^S0SECURITY>"),
            "{alert}"
        );
        // More time passing changes nothing: no duplicate revoke.
        h.advance_and_run(Duration::hours(1)).await;
        assert_eq!(
            h.provider_actions(id),
            ["grant", "revoke!1", "revoke!1", "revoke"]
        );
    }
}

driver_tests! {
    async fn grant_failures_retry_when_retryable_and_fail_loudly_when_fatal() {
        let h = Harness::start().await;
        // Exit 75: try again later.
        h.fail_provider(1, 75);
        let id = h.request_access(DEV, "db 1h retry").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Approved);
        h.advance_and_run(Duration::seconds(3)).await;
        assert_eq!(h.state(id).await, State::Active);
        assert_eq!(h.provider_actions(id), ["grant!75", "grant"]);

        // Any other exit status: fatal.
        h.fail_provider(1, 3);
        let id = h.request_access(DEV, "db 1h fatal").await;
        h.run_jobs().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        let failed = h.request(id).await;
        assert_eq!(failed.state, State::Failed);
        assert!(
            failed
                .failure
                .as_deref()
                .unwrap()
                .contains("failed (exit 3): simulated failure of grant"),
            "{:?}",
            failed.failure
        );
        assert!(
            h.dm_texts(DEV)
                .last()
                .unwrap()
                .contains(":warning: Your request #2 for `db` was approved, but issuing access failed")
        );
        assert!(
            h.approval_message()
                .rendered()
                .contains("but issuing failed"),
            "{}",
            h.approval_message().rendered()
        );
        assert!(
            h.audit_thread(id)
                .iter()
                .any(|m| m.contains("Issuing failed (attempt 1, giving up)"))
        );
    }
}

driver_tests! {
    async fn an_abandoned_lease_is_reclaimed_and_the_stale_completion_is_fenced_out() {
        let h = Harness::start().await;
        let id = active_grant(&h, "db 1h lease").await;
        h.advance(Duration::hours(1));
        // A worker claims the teardown and dies without finishing.
        let now = h.clock_now();
        let mut tx = h.app.store.begin_write().await.unwrap();
        let claimed = jit::store::jobs::claim(&mut tx, now, now + Duration::minutes(2), 10, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let stale = claimed
            .iter()
            .find(|j| j.kind == "revoke")
            .expect("the teardown was claimed")
            .clone();
        // Before the lease runs out, nobody else takes it.
        h.run_jobs().await;
        assert!(h.request(id).await.revoked_at.is_none());
        // After it, the job is reclaimed and completes once.
        h.advance_and_run(Duration::minutes(3)).await;
        assert!(h.request(id).await.revoked_at.is_some());
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
        // The stale worker's late completion changes nothing.
        let mut tx = h.app.store.begin_write().await.unwrap();
        let late = jit::store::jobs::complete(&mut tx, stale.id, stale.attempts, h.clock_now())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(late, jit::store::requests::Fenced::Lost);
    }
}

driver_tests! {
    async fn downtime_longer_than_a_grant_tears_down_at_restart() {
        let h = Harness::start().await;
        let id = active_grant(&h, "db 1h before the outage").await;
        // A job was running when the process died.
        let now = h.clock_now();
        let mut tx = h.app.store.begin_write().await.unwrap();
        jit::store::on!(&mut tx, |c| sqlx::query("UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = $1 WHERE kind = 'remind'")
            .bind((now + chrono::Duration::from_std(h.app.settings.lease).unwrap()).timestamp_millis())
            .execute(&mut *c)
            .await
            .map(|_| ()))
            .unwrap();
        tx.commit().await.unwrap();
        // Three hours of downtime, then a restart.
        h.advance(Duration::hours(3));
        assert_eq!(
            jit::handlers::jobs::recover(&h.app).await.unwrap(),
            1,
            "the orphaned job is reclaimed"
        );
        h.run_jobs().await;
        let ended = h.request(id).await;
        assert_eq!(ended.state, State::Expired);
        assert_eq!(
            ended.revoked_at,
            Some(t0() + Duration::hours(3)),
            "overdue teardown ran at once"
        );
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
        // The stale reminder is not sent after the grant ended.
        assert!(!h.dm_texts(DEV).iter().any(|d| d.contains(":alarm_clock:")));
    }
}

driver_tests! {
    async fn a_backward_clock_step_never_extends_access() {
        let h = Harness::start().await;
        let id = active_grant(&h, "db 1h clocks").await;
        // The wall clock steps back two hours (an NTP correction), then 61 minutes really pass.
        h.clock.set_wall(t0() - Duration::hours(2));
        h.advance_and_run(Duration::minutes(61)).await;
        let ended = h.request(id).await;
        assert_eq!(
            ended.state,
            State::Expired,
            "expired after 61 real minutes despite the step"
        );
        assert_eq!(
            ended.expires_at,
            Some(t0() + Duration::hours(1)),
            "the expiry never moved"
        );
        assert_eq!(h.provider_actions(id), ["grant", "revoke"]);
    }
}
