//! Several replicas on one PostgreSQL database: each test runs two or three jit apps (their own
//! store connections, HTTP servers and workers) on one schema, with one fake Slack and one clock,
//! and checks that what one replica does holds for the others. PostgreSQL only.

use chrono::Duration;
use jit::domain::request::State;

use crate::harness::*;

/// Two or three replicas, the first the harness every other test uses.
async fn replicas(n: usize) -> Vec<Harness> {
    let first = Harness::start().await;
    assert_eq!(first.driver(), jit::store::Driver::Postgres);
    let mut all = vec![first];
    for _ in 1..n {
        let next = all[0].replica().await;
        all.push(next);
    }
    all
}

macro_rules! pg_test {
    ($(#[doc = $doc:literal])* async fn $name:ident() $body:block) => {
        $(#[doc = $doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(not(jit_postgres_tests), ignore = "needs JIT_TEST_POSTGRES_URL at build time")]
        async fn $name() {
            crate::db::DRIVER
                .scope(jit::store::Driver::Postgres, async $body)
                .await
        }
    };
}

pg_test! {
    /// Approve clicks for one request land on different replicas at once (and twice on one):
    /// exactly one decision and one grant.
    async fn concurrent_approvals_on_different_replicas_make_one_decision() {
        let r = replicas(3).await;
        for round in 0..5 {
            let id = r[0]
                .request_access(DEV, &format!("db 1h concurrent round {round}"))
                .await;
            r[1].run_jobs().await;
            let clicks = [
                r[0].click(ALICE, "jit.approve", id),
                r[1].click(BOB, "jit.approve", id),
                r[2].click(ALICE, "jit.approve", id),
                r[2].click(BOB, "jit.approve", id),
            ];
            let replies = futures::future::join_all(clicks).await;
            assert!(replies.iter().all(|r| r.status == 200));
            // Workers of all three replicas run what is due, at once.
            futures::future::join_all(r.iter().map(|h| h.run_jobs())).await;
            assert_eq!(r[0].state(id).await, State::Active);
            let stored = r[1].stored(id).await;
            assert!(
                stored.request.decided_by.is_some(),
                "one decision is recorded"
            );
            let grants = r[2]
                .provider_actions(id)
                .into_iter()
                .filter(|a| a == "grant")
                .count();
            assert_eq!(grants, 1, "one grant: {:?}", r[2].provider_actions(id));
            let approved = {
                let mut conn = r[0].app.store.read().await.unwrap();
                jit::store::audit::for_request(&mut conn, id)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.event == "approved")
                    .count()
            };
            assert_eq!(approved, 1, "one approval in the audit log");
        }
        // One chain, whoever appended.
        let mut conn = r[2].app.store.read().await.unwrap();
        assert!(matches!(
            jit::store::audit::verify(&mut conn, &audit_key()).await.unwrap(),
            jit::store::audit::Verification::Intact { .. }
        ));
    }
}

pg_test! {
    /// A signed delivery handled by one replica and replayed to another has no second effect:
    /// the replay refusal is in the database.
    async fn a_replay_to_another_replica_has_no_second_effect() {
        let r = replicas(2).await;
        let body = serde_urlencoded::to_string([
            ("token", "x"),
            ("team_id", "T0JITSIM"),
            ("team_domain", "example"),
            ("channel_id", ORIGIN),
            ("channel_name", "general"),
            ("user_id", DEV),
            ("user_name", "dev"),
            ("command", "/jit"),
            ("text", "request db 1h replayed elsewhere"),
            ("api_app_id", "A0JIT"),
            ("response_url", "https://hooks.slack.com/commands/T0/1/x"),
            ("trigger_id", "1.2.x"),
        ])
        .unwrap();
        let (ts, sig) = r[0].sign(&body);
        let mut answers = Vec::new();
        for h in [&r[0], &r[1], &r[1]] {
            let reply = h
                .http
                .post(format!("{}/slack/commands", h.url))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", &ts)
                .header("x-slack-signature", &sig)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 200);
            answers.push(reply.text().await.unwrap());
        }
        assert_eq!(answers[0], answers[1], "the replay gets the first answer");
        let mut conn = r[1].app.store.read().await.unwrap();
        let all = jit::store::requests::list(&mut conn, false, 100).await.unwrap();
        assert_eq!(all.len(), 1, "one request from three deliveries");
    }
}

pg_test! {
    /// Workers of three replicas run at once over many jobs: every grant is issued once, and
    /// each person's access lane still runs one job at a time.
    async fn workers_on_several_replicas_run_each_job_once() {
        let r = replicas(3).await;
        let mut ids = Vec::new();
        for i in 0..24 {
            // Auto-approved (on call, 30m max): the grant job is due at once.
            ids.push(r[i % 3].request_access(ONCALL, &format!("db 20m burst {i}")).await);
        }
        futures::future::join_all(r.iter().map(|h| h.run_jobs())).await;
        for _ in 0..3 {
            futures::future::join_all(r.iter().map(|h| h.run_jobs())).await;
        }
        for id in &ids {
            assert_eq!(r[0].state(*id).await, State::Active, "{id}");
            let grants = r[0]
                .provider_actions(*id)
                .into_iter()
                .filter(|a| a == "grant")
                .count();
            assert_eq!(grants, 1, "request {id} granted once");
        }
        // At expiry, every teardown runs once, whichever replica claims it.
        r[0].advance(Duration::minutes(21));
        futures::future::join_all(r.iter().map(|h| h.run_jobs())).await;
        futures::future::join_all(r.iter().map(|h| h.run_jobs())).await;
        for id in &ids {
            let revokes = r[1]
                .provider_actions(*id)
                .into_iter()
                .filter(|a| a == "revoke")
                .count();
            assert!(revokes <= 1, "request {id} revoked at most once per holder");
            assert_eq!(r[1].state(*id).await, State::Expired, "{id}");
        }
    }
}

pg_test! {
    /// A replica claims a teardown and dies before finishing it: another replica takes it over
    /// once the lease runs out, and the dead one's late outcome is fenced out.
    async fn a_dead_replicas_job_is_taken_over_after_its_lease() {
        let r = replicas(2).await;
        let id = r[0].request_access(ONCALL, "db 20m dies mid-teardown").await;
        r[0].run_jobs().await;
        assert_eq!(r[0].state(id).await, State::Active);
        r[0].advance(Duration::minutes(20));
        // Replica 0 claims the due revoke and "dies" holding it.
        let now = r[0].clock_now();
        let lease = now + chrono::Duration::from_std(r[0].app.settings.lease).unwrap();
        let mut tx = r[0].app.store.begin_write().await.unwrap();
        let claimed = jit::store::jobs::claim(&mut tx, now, lease, 100, None).await.unwrap();
        tx.commit().await.unwrap();
        let revoke = claimed
            .into_iter()
            .find(|j| j.kind == "revoke")
            .expect("the revoke was due");
        // Within the lease, replica 1 leaves it alone.
        r[1].run_jobs().await;
        assert_eq!(r[1].state(id).await, State::Active);
        // Past it, replica 1 takes it over.
        r[1].advance(chrono::Duration::from_std(r[0].app.settings.lease).unwrap() + Duration::seconds(1));
        r[1].run_jobs().await;
        assert_eq!(r[1].state(id).await, State::Expired);
        let mut tx = r[0].app.store.begin_write().await.unwrap();
        assert_eq!(
            jit::store::jobs::complete(&mut tx, revoke.id, revoke.attempts, r[0].clock_now())
                .await
                .unwrap(),
            jit::store::requests::Fenced::Lost,
            "the dead replica's outcome changes nothing"
        );
        tx.commit().await.unwrap();
    }
}

pg_test! {
    /// A replica claims a teardown while it holds its liveness lock, and dies: another replica
    /// takes the job over as soon as PostgreSQL has ended the dead one's session, long before
    /// the lease runs out (the clock does not move). While the first is alive, its job is left
    /// alone.
    async fn a_dead_replicas_job_is_taken_over_when_its_session_ends_not_its_lease() {
        let r = replicas(2).await;
        let id = r[0].request_access(ONCALL, "db 20m dies mid-teardown").await;
        r[0].run_jobs().await;
        assert_eq!(r[0].state(id).await, State::Active);
        r[0].advance(Duration::minutes(20));

        let alive = r[0].app.store.hold_liveness().expect("PostgreSQL holds a liveness lock");
        let holder = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                if let Some(holder) = r[0].app.store.holder() {
                    return holder;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the liveness lock is taken");
        let now = r[0].clock_now();
        let lease = now + Duration::hours(1);
        let mut tx = r[0].app.store.begin_write().await.unwrap();
        let claimed = jit::store::jobs::claim(&mut tx, now, lease, 100, r[0].app.store.holder())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let revoke = claimed
            .into_iter()
            .find(|j| j.kind == "revoke")
            .expect("the revoke was due");

        // Alive: replica 1 leaves the job alone (twice, a second apart).
        for _ in 0..2 {
            r[1].run_jobs().await;
            assert_eq!(r[1].state(id).await, State::Active);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }

        // Replica 0 dies: its process (the lock's task) is gone and its session ends.
        drop(alive);
        let sessions: Vec<i32> = jit::store::on!(&mut r[1].app.store.read().await.unwrap(), |c| {
            sqlx::query_scalar(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 \
                 AND classid::bigint = $1 AND objid::bigint = $2",
            )
            .bind(i64::from(jit::store::LIVENESS_LOCK_CLASS))
            .bind(holder)
            .fetch_all(&mut *c)
            .await
        })
        .unwrap();
        for pid in sessions {
            r[1].app
                .store
                .execute_script(&format!("SELECT pg_terminate_backend({pid})"))
                .await
                .unwrap();
        }
        let taken_over = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                r[1].run_jobs().await;
                if r[1].state(id).await == State::Expired {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            taken_over.is_ok(),
            "the dead replica's teardown was taken over within seconds, its lease (1 h) not run out"
        );
        assert!(r[1].clock_now() < lease);
        let mut tx = r[0].app.store.begin_write().await.unwrap();
        assert_eq!(
            jit::store::jobs::complete(&mut tx, revoke.id, revoke.attempts, r[0].clock_now())
                .await
                .unwrap(),
            jit::store::requests::Fenced::Lost,
            "the dead replica's outcome changes nothing"
        );
        tx.commit().await.unwrap();
    }
}

pg_test! {
    /// A commit on one replica wakes the others (LISTEN/NOTIFY): their worker and their API
    /// long-polls hear of it without waiting for a poll.
    async fn a_commit_on_one_replica_wakes_the_others() {
        let r = replicas(2).await;
        let listener = tokio::spawn(jit::handlers::jobs::listen_for_wakes(r[1].app.clone()));
        let mut changes = r[1].app.waker.changes();
        changes.borrow_and_update();
        // The listener is connected once a commit's notification arrives; commit until one does.
        let woken = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            let mut i = 0;
            loop {
                r[0].request_access(DEV, &format!("db 1h wake {i}")).await;
                i += 1;
                if tokio::time::timeout(std::time::Duration::from_millis(500), changes.changed())
                    .await
                    .is_ok()
                {
                    return i;
                }
            }
        })
        .await
        .expect("another replica's commit reached this replica's waker");
        assert!(woken >= 1);
        listener.abort();
    }
}

pg_test! {
    /// Slack's pace per channel is taken in the database: a channel whose slots another replica
    /// used up defers this replica's post until one is free, and nothing is lost.
    async fn the_channel_pace_is_shared_by_the_replicas() {
        let r = replicas(2).await;
        assert!(r[0].app.settings.shared_pacing && r[1].app.settings.shared_pacing);
        // Another replica has spent the approvers' channel's slots for the next minute and a half.
        let until = r[0].clock_now() + Duration::seconds(90);
        r[0].sql(&format!(
            "INSERT INTO slack_pace (channel, tat) VALUES ('{APPROVALS}', {})",
            until.timestamp_millis()
        ))
        .await;
        let id = r[1].request_access(DEV, "db 1h paced").await;
        r[1].run_jobs().await;
        assert!(r[1].slack.messages(APPROVALS).is_empty(), "deferred, not posted");
        assert!(r[1].stored(id).await.request.approval_ts.is_none());
        r[0].advance(Duration::seconds(95));
        r[0].run_jobs().await;
        assert_eq!(r[0].slack.messages(APPROVALS).len(), 1, "posted once a slot was free");
        assert!(r[0].stored(id).await.request.approval_ts.is_some());
    }
}
