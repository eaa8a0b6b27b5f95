//! The store's driver suite: every test here runs on SQLite and on PostgreSQL (`name::sqlite`,
//! `name::postgres`), against the same public functions of `jit::store`, the way River's
//! `riverdrivertest` holds each of its drivers to one behaviour. A driver passes when the whole
//! suite does. PostgreSQL tests get a schema of their own, so they run in parallel.

#[macro_use]
#[path = "support/db.rs"]
mod db;

use chrono::{DateTime, Duration, TimeZone, Utc};
use jit::crypto::AuditKey;
use jit::domain::duration::GrantDuration;
use jit::domain::ids::{RequestId, ResourceId, SlackUserId};
use jit::domain::policy::Requester;
use jit::domain::request::{Kind, State};
use jit::store::audit::{self, Verification};
use jit::store::jobs::*;
use jit::store::requests::{self, Fenced, NewRequest};
use jit::store::{Store, batch, credentials, deliveries, millis, on, pace, tokens};
use serde_json::json;

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap() + Duration::seconds(seconds)
}

async fn new_request(store: &Store, who: &str) -> RequestId {
    let requester = Requester::User(SlackUserId::parse(who).unwrap());
    let resource = ResourceId::parse("db").unwrap();
    let mut tx = store.begin_write().await.unwrap();
    let id = requests::insert(
        &mut tx,
        &NewRequest {
            kind: Kind::Access,
            parent: None,
            requester: &requester,
            resource: &resource,
            duration: GrantDuration::from_secs(3600),
            justification: "fixing INC-1",
            ticket: Some("INC-1"),
            approvals_required: 2,
            created_at: t(0),
            pending_until: Some(t(1800)),
            origin_channel: None,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn keyed_store() -> (db::TestDb, Store, AuditKey) {
    let db = db::TestDb::current().await;
    let store = db.store().await;
    let key = AuditKey::from_bytes([0x42; 32]);
    store.open_audit_chain(key.clone(), t(0)).await.unwrap();
    (db, store, key)
}

driver_tests! {
    /// Slack's pace per channel (GCRA): a burst, then one slot per interval, each channel on its
    /// own; a refusal says how long until the next slot. Replicas taking slots at once (separate
    /// stores) never get more than the pace allows.
    async fn the_posting_pace_allows_a_burst_then_one_slot_per_interval() {
        let db = db::TestDb::current().await;
        let store = db.store().await;
        let second = std::time::Duration::from_secs(1);
        let take = |at: DateTime<Utc>, channel: &'static str| {
            let store = store.clone();
            async move {
                let mut tx = store.begin_write().await.unwrap();
                let slot = pace::take(&mut tx, channel, at, second, 3).await.unwrap();
                tx.commit().await.unwrap();
                slot
            }
        };
        for _ in 0..3 {
            assert_eq!(take(t(0), "C1").await, Ok(()), "the burst");
        }
        assert_eq!(take(t(0), "C1").await, Err(std::time::Duration::from_secs(1)));
        assert_eq!(take(t(0), "C2").await, Ok(()), "another channel has its own pace");
        assert_eq!(take(t(1), "C1").await, Ok(()), "one more a second later");
        assert!(take(t(1), "C1").await.is_err());
        // Three replicas (stores of their own) try 30 posts at once in the same instant.
        let mut racers = Vec::new();
        for _ in 0..3 {
            let other = db.connect().await;
            racers.push(tokio::spawn(async move {
                let mut granted = 0;
                for _ in 0..10 {
                    let mut tx = other.begin_write().await.unwrap();
                    if pace::take(&mut tx, "C9", t(100), second, 3).await.unwrap().is_ok() {
                        granted += 1;
                    }
                    tx.commit().await.unwrap();
                }
                granted
            }));
        }
        let mut granted = 0;
        for racer in racers {
            granted += racer.await.unwrap();
        }
        assert_eq!(granted, 3, "a burst of 3 between them, not per replica");
    }

    /// A request round-trips every field, and decisions are fenced: the second one loses.
    async fn requests_round_trip_and_decisions_are_fenced() {
        let db = db::TestDb::current().await;
        let store = db.store().await;
        let id = new_request(&store, "U0DEV").await;
        let mut conn = store.read().await.unwrap();
        let stored = requests::get(&mut conn, id).await.unwrap().unwrap();
        assert_eq!(stored.request.state, State::Pending);
        assert_eq!(stored.request.ticket.as_deref(), Some("INC-1"));
        assert_eq!(stored.request.pending_until, Some(t(1800)));
        assert_eq!(stored.request.approvals_required, 2);
        drop(conn);

        let mut tx = store.begin_write().await.unwrap();
        assert!(requests::add_approval(&mut tx, id, "U0BOB", t(10)).await.unwrap());
        assert!(!requests::add_approval(&mut tx, id, "U0BOB", t(11)).await.unwrap(), "once per approver");
        assert!(requests::add_approval(&mut tx, id, "U0ALICE", t(12)).await.unwrap());
        assert_eq!(requests::approvals(&mut tx, id).await.unwrap(), ["U0BOB", "U0ALICE"]);
        assert_eq!(
            requests::decide(&mut tx, id, State::Approved, "U0ALICE", None, t(12)).await.unwrap(),
            Fenced::Applied
        );
        assert_eq!(
            requests::decide(&mut tx, id, State::Denied, "U0BOB", Some("no"), t(13)).await.unwrap(),
            Fenced::Lost,
            "a request is decided once"
        );
        tx.commit().await.unwrap();
        let mut conn = store.read().await.unwrap();
        let counts = requests::pending_counts(&mut conn, &["U0DEV".into(), "U0NOBODY".into()]).await.unwrap();
        assert!(counts.is_empty(), "nothing pending any more: {counts:?}");
        let stored = requests::get(&mut conn, id).await.unwrap().unwrap();
        assert_eq!(stored.request.state, State::Approved);
        assert_eq!(stored.request.decided_by.as_deref(), Some("U0ALICE"));
    }

    /// A scheduled start round-trips, is set only on a pending request, and a cancel of an
    /// approved request is fenced on the start still being ahead (times compared as stored).
    async fn a_scheduled_start_fences_its_cancel() {
        let db = db::TestDb::current().await;
        let store = db.store().await;
        let early = new_request(&store, "U0DEV").await;
        let late = new_request(&store, "U0DEV").await;
        let mut tx = store.begin_write().await.unwrap();
        for id in [early, late] {
            requests::set_start(&mut tx, id, t(3600)).await.unwrap();
            assert_eq!(
                requests::decide(&mut tx, id, State::Approved, "U0ALICE", None, t(10)).await.unwrap(),
                Fenced::Applied
            );
        }
        // Approved: the start is no longer changed.
        requests::set_start(&mut tx, early, t(60)).await.unwrap();
        assert_eq!(
            requests::cancel_scheduled(&mut tx, early, t(3599)).await.unwrap(),
            Fenced::Applied,
            "a second before the start"
        );
        assert_eq!(
            requests::cancel_scheduled(&mut tx, early, t(3599)).await.unwrap(),
            Fenced::Lost,
            "once"
        );
        assert_eq!(
            requests::cancel_scheduled(&mut tx, late, t(3600)).await.unwrap(),
            Fenced::Lost,
            "at the start, the grant job owns it"
        );
        tx.commit().await.unwrap();
        let mut conn = store.read().await.unwrap();
        let early = requests::get(&mut conn, early).await.unwrap().unwrap().request;
        assert_eq!(early.start_at, Some(t(3600)));
        assert_eq!(early.state, State::Cancelled);
        assert_eq!(early.ended_at, Some(t(3599)));
        let late = requests::get(&mut conn, late).await.unwrap().unwrap().request;
        assert_eq!(late.state, State::Approved);
        assert_eq!(late.start_at, Some(t(3600)));
    }

    /// Many requests in one statement come back with their ids in order.
    async fn requests_insert_many_keeps_the_order() {
        let db = db::TestDb::current().await;
        let store = db.store().await;
        let requesters: Vec<Requester> = (0..5)
            .map(|i| Requester::User(SlackUserId::parse(&format!("U0R{i}")).unwrap()))
            .collect();
        let resource = ResourceId::parse("db").unwrap();
        let new: Vec<NewRequest<'_>> = requesters
            .iter()
            .map(|r| NewRequest {
                kind: Kind::Access,
                parent: None,
                requester: r,
                resource: &resource,
                duration: GrantDuration::from_secs(60),
                justification: "batch",
                ticket: None,
                approvals_required: 1,
                created_at: t(0),
                pending_until: Some(t(60)),
                origin_channel: None,
            })
            .collect();
        let mut tx = store.begin_write().await.unwrap();
        let ids = requests::insert_many(&mut tx, &new).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(ids.len(), 5);
        let mut conn = store.read().await.unwrap();
        for (id, who) in ids.iter().zip(&requesters) {
            let got = requests::get(&mut conn, RequestId(*id)).await.unwrap().unwrap();
            assert_eq!(&got.request.requester, who);
        }
        let counts = requests::pending_counts(&mut conn, &["U0R1".into()]).await.unwrap();
        assert_eq!(counts.get("U0R1"), Some(&1));
    }

    /// What a grant issued: the later expiry wins for one handle, and `None` (with the grant) wins
    /// over any time.
    async fn issuances_keep_the_latest_expiry() {
        let db = db::TestDb::current().await;
        let store = db.store().await;
        let id = new_request(&store, "U0DEV").await;
        let mut tx = store.begin_write().await.unwrap();
        requests::record_issuance(&mut tx, id, "s1", t(0), Some(t(900))).await.unwrap();
        requests::record_issuance(&mut tx, id, "s1", t(5), Some(t(600))).await.unwrap();
        requests::record_issuance(&mut tx, id, "s2", t(10), Some(t(100))).await.unwrap();
        requests::record_issuance(&mut tx, id, "s2", t(20), Some(t(4000))).await.unwrap();
        requests::record_issuance(&mut tx, id, "s3", t(30), Some(t(50))).await.unwrap();
        requests::record_issuance(&mut tx, id, "s3", t(40), None).await.unwrap();
        let got = requests::issuances(&mut tx, id).await.unwrap();
        tx.commit().await.unwrap();
        let got: Vec<_> = got.into_iter().map(|i| (i.handle, i.expires_at)).collect();
        assert_eq!(
            got,
            [
                ("s1".to_owned(), Some(t(900))),
                ("s2".to_owned(), Some(t(4000))),
                ("s3".to_owned(), None)
            ]
        );
    }

    /// A batch's reads in one statement: the deliveries handled before (with the request each
    /// created), the pending counts of its requesters, and the audit chain's head; appending after
    /// a head another append has since moved fails, and the chain stays whole.
    async fn a_batch_reads_deliveries_pending_counts_and_the_audit_head_at_once() {
        let (_db, store, key) = keyed_store().await;
        let mut tx = store.begin_write().await.unwrap();
        let reads = batch::read(&mut tx, &["k1"], &["U0DEV".into()]).await.unwrap();
        assert_eq!(reads.head, audit::Head::Empty, "no audit row yet");
        assert!(reads.seen.is_empty() && reads.pending.is_empty(), "{reads:?}");
        tx.commit().await.unwrap();

        let first = new_request(&store, "U0DEV").await;
        new_request(&store, "U0DEV").await;
        new_request(&store, "U0OTHER").await;
        let mut tx = store.begin_write().await.unwrap();
        deliveries::claim_many(&mut tx, &[("k1", t(60), first)]).await.unwrap();
        assert!(deliveries::claim(&mut tx, "k2", t(60)).await.unwrap());
        let seq = audit::append(&mut tx, t(5), Some(first), "U0DEV", "requested", &json!({})).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin_write().await.unwrap();
        let reads = batch::read(
            &mut tx,
            &["k1", "k2", "k3"],
            &["U0DEV".into(), "U0NOBODY".into()],
        )
        .await
        .unwrap();
        assert_eq!(reads.seen.len(), 2, "{reads:?}");
        assert_eq!(reads.seen.get("k1"), Some(&Some(first.0)));
        assert_eq!(reads.seen.get("k2"), Some(&None), "handled, no request made");
        assert_eq!(reads.pending.get("U0DEV"), Some(&2));
        assert_eq!(reads.pending.len(), 1, "U0OTHER was not asked about, U0NOBODY has none");
        let row = audit::get(&mut tx, seq).await.unwrap().unwrap();
        assert_eq!(
            reads.head,
            audit::Head::At { seq, hash: row.hash.clone(), at: row.at.clone() }
        );
        let after = audit::append_many_after(
            &mut tx,
            reads.head.clone(),
            t(6),
            &[(None, "U0A".into(), "b".into(), json!({}))],
        )
        .await
        .unwrap();
        assert_eq!(after, vec![seq + 1]);
        // Another append moved the head: appending after the old one is refused, not forked.
        let stale = audit::append_many_after(
            &mut tx,
            reads.head,
            t(7),
            &[(None, "U0B".into(), "c".into(), json!({}))],
        )
        .await;
        assert!(stale.is_err(), "appended after a stale head: {stale:?}");
        tx.rollback().await.unwrap();
        let mut conn = store.read().await.unwrap();
        assert!(matches!(
            audit::verify(&mut conn, &key).await.unwrap(),
            Verification::Intact { rows: 1, .. }
        ));
    }

    /// The audit chain appends in order under the key, verifies, and refuses edits and deletes
    /// at the database (the triggers), so only an attacker who removes them gets further, and
    /// then `verify` names the row.
    async fn the_audit_log_is_append_only_and_verifies() {
        let (_db, store, key) = keyed_store().await;
        let mut tx = store.begin_write().await.unwrap();
        let first = audit::append(&mut tx, t(5), None, "jit", "a", &json!({"n": 1})).await.unwrap();
        let many = audit::append_many(
            &mut tx,
            t(4), // earlier than the last row: raised to it, never backwards
            &[
                (None, "U0A".into(), "b".into(), json!({})),
                (None, "U0B".into(), "c".into(), json!({"x": "y"})),
            ],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!((first, many), (1, vec![2, 3]));
        let mut conn = store.read().await.unwrap();
        let rows = audit::page(&mut conn, 0, 10).await.unwrap();
        assert!(rows.windows(2).all(|w| w[0].at <= w[1].at), "{rows:?}");
        assert!(matches!(
            audit::verify(&mut conn, &key).await.unwrap(),
            Verification::Intact { rows: 3, .. }
        ));
        for statement in [
            "UPDATE audit_log SET actor = 'U0MALLORY' WHERE seq = 2",
            "DELETE FROM audit_log WHERE seq = 3",
        ] {
            let refused = store.execute_script(statement).await.expect_err(statement);
            assert!(refused.to_string().contains("append-only"), "{refused}");
        }
        if store.driver() == jit::store::Driver::Postgres {
            let refused = store.execute_script("TRUNCATE audit_log").await.expect_err("truncate");
            assert!(refused.to_string().contains("append-only"), "{refused}");
            store
                .execute_script("ALTER TABLE audit_log DISABLE TRIGGER USER")
                .await
                .unwrap();
        } else {
            store
                .execute_script("DROP TRIGGER audit_log_no_update")
                .await
                .unwrap();
        }
        store
            .execute_script("UPDATE audit_log SET actor = 'U0MALLORY' WHERE seq = 2")
            .await
            .unwrap();
        let mut conn = store.read().await.unwrap();
        match audit::verify(&mut conn, &key).await.unwrap() {
            Verification::Broken { seq, .. } => assert_eq!(seq, 2),
            intact => panic!("an edit went unnoticed: {intact:?}"),
        }
    }

    /// Replicas append at once: one chain, no fork, no gap (the write lock serialises them).
    async fn concurrent_appends_make_one_chain() {
        let (db, store, key) = keyed_store().await;
        let mut writers = Vec::new();
        for w in 0..4 {
            // A store of its own per writer, as each replica has.
            let other = db.connect().await;
            other.open_audit_chain(key.clone(), t(0)).await.unwrap();
            writers.push(tokio::spawn(async move {
                for i in 0..25 {
                    let mut tx = other.begin_write().await.unwrap();
                    audit::append(&mut tx, t(i), None, "jit", &format!("w{w}"), &json!({"i": i}))
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let mut conn = store.read().await.unwrap();
        match audit::verify(&mut conn, &key).await.unwrap() {
            Verification::Intact { rows, .. } => assert_eq!(rows, 100),
            broken => panic!("{broken:?}"),
        }
    }

    /// A delivery is claimed once, its answer kept, and it goes when it can no longer verify.
    async fn deliveries_are_claimed_once() {
        let db = db::TestDb::current().await;
        let store = db.store().await;
        let mut tx = store.begin_write().await.unwrap();
        assert!(deliveries::claim(&mut tx, "sig:a", t(300)).await.unwrap());
        assert!(!deliveries::claim(&mut tx, "sig:a", t(300)).await.unwrap());
        deliveries::set_answer(&mut tx, "sig:a", "{\"text\":\"ok\"}").await.unwrap();
        deliveries::claim_many(&mut tx, &[("sig:b", t(600), RequestId(7))]).await.unwrap();
        tx.commit().await.unwrap();
        let mut conn = store.read().await.unwrap();
        assert_eq!(
            deliveries::answer(&mut conn, "sig:a").await.unwrap().as_deref(),
            Some("{\"text\":\"ok\"}")
        );
        let seen = batch::read(&mut conn, &["sig:b", "sig:c"], &[]).await.unwrap().seen;
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [("sig:b".to_owned(), Some(7))]);
        drop(conn);
        let mut tx = store.begin_write().await.unwrap();
        assert_eq!(deliveries::prune(&mut tx, t(400)).await.unwrap(), 1);
        tx.commit().await.unwrap();
    }

    /// Tokens are found by hash until revoked; credentials are sealed bytes, replaced and erased.
    async fn tokens_and_sealed_credentials() {
        let db = db::TestDb::current().await;
        let store = db.store().await;
        let id = new_request(&store, "U0DEV").await;
        let mut tx = store.begin_write().await.unwrap();
        let token = tokens::insert(&mut tx, "ci", "hash-1", "U0CAROL", t(0)).await.unwrap();
        assert_eq!(tokens::find_live(&mut tx, "hash-1").await.unwrap().unwrap().identity, "ci");
        assert!(tokens::revoke(&mut tx, token, t(1)).await.unwrap());
        assert!(!tokens::revoke(&mut tx, token, t(2)).await.unwrap(), "once");
        assert!(tokens::find_live(&mut tx, "hash-1").await.unwrap().is_none());
        assert_eq!(tokens::list(&mut tx, Some("ci")).await.unwrap().len(), 1);
        credentials::put(&mut tx, id, &[1, 2, 3], t(0)).await.unwrap();
        credentials::put(&mut tx, id, &[0, 255, 9], t(1)).await.unwrap();
        assert_eq!(credentials::get(&mut tx, id).await.unwrap(), Some(vec![0, 255, 9]));
        assert_eq!(credentials::newest(&mut tx).await.unwrap().map(|(r, _)| r), Some(id));
        assert!(credentials::erase(&mut tx, id).await.unwrap());
        assert!(credentials::get(&mut tx, id).await.unwrap().is_none());
        tx.commit().await.unwrap();
    }

    /// A lease that runs out puts the job back; the stale worker's outcome is fenced out, and a
    /// live worker's heartbeat keeps its lease.
    async fn leases_fence_stale_workers() {
        let (_db, store, now) = fresh().await;
        let mut tx = store.begin_write().await.unwrap();
        enqueue(&mut tx, &job("revoke", PRIORITY_ACCESS, now), now).await.unwrap();
        enqueue(&mut tx, &job("beating", PRIORITY_ACCESS, now), now).await.unwrap();
        let claimed = claim(&mut tx, now, now + Duration::seconds(10), 10, None).await.unwrap();
        assert_eq!(claimed.len(), 2);
        let stale = claimed.iter().find(|j| j.kind == "revoke").unwrap().clone();
        let beating = claimed.iter().find(|j| j.kind == "beating").unwrap().clone();
        assert_eq!(
            renew(&mut tx, beating.id, beating.attempts, now + Duration::seconds(30)).await.unwrap(),
            Fenced::Applied
        );
        let later = now + Duration::seconds(11);
        assert_eq!(reclaim_expired(&mut tx, later).await.unwrap(), 1, "only the silent one");
        let again = claim(&mut tx, later, later + Duration::seconds(10), 10, None).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, stale.id);
        assert_eq!(again[0].attempts, stale.attempts + 1);
        assert_eq!(
            complete(&mut tx, stale.id, stale.attempts, later).await.unwrap(),
            Fenced::Lost,
            "the stale worker's completion changes nothing"
        );
        assert_eq!(
            renew(&mut tx, stale.id, stale.attempts, later + Duration::seconds(30)).await.unwrap(),
            Fenced::Lost,
            "nor can it renew a lease it lost"
        );
        assert_eq!(
            complete(&mut tx, again[0].id, again[0].attempts, later).await.unwrap(),
            Fenced::Applied
        );
        assert_eq!(count(&mut tx, "revoke", "done").await.unwrap(), 1);
        tx.commit().await.unwrap();
    }

    /// One live job per unique key: a second enqueue is refused until the first is done.
    async fn unique_keys_hold_one_live_job() {
        let (_db, store, now) = fresh().await;
        let unique = |kind| NewJob { unique_key: Some("revoke:1".into()), ..job(kind, PRIORITY_ACCESS, now) };
        let mut tx = store.begin_write().await.unwrap();
        assert!(enqueue(&mut tx, &unique("first"), now).await.unwrap().is_some());
        assert!(enqueue(&mut tx, &unique("second"), now).await.unwrap().is_none());
        enqueue_many(&mut tx, &[unique("third")], now).await.unwrap();
        assert!(is_live(&mut tx, "revoke:1").await.unwrap());
        assert!(reschedule(&mut tx, "revoke:1", now + Duration::seconds(5), now).await.unwrap());
        assert!(claim(&mut tx, now, now + Duration::seconds(10), 10, None).await.unwrap().is_empty());
        let head = claim(&mut tx, now + Duration::seconds(5), now + Duration::seconds(15), 10, None)
            .await
            .unwrap();
        assert_eq!(head.len(), 1);
        assert_eq!(head[0].kind, "first");
        assert_eq!(complete(&mut tx, head[0].id, head[0].attempts, now).await.unwrap(), Fenced::Applied);
        assert!(!is_live(&mut tx, "revoke:1").await.unwrap());
        assert!(enqueue(&mut tx, &unique("fourth"), now).await.unwrap().is_some());
        tx.commit().await.unwrap();
    }

    /// Jobs of one unordered lane never run at once, and the earliest due goes first.
    async fn an_unordered_lane_runs_one_job_at_a_time() {
        let (_db, store, now) = fresh().await;
        let in_lane = |kind, at| NewJob { lane: Some("access:db:U0DEV".into()), ..job(kind, PRIORITY_ACCESS, at) };
        let mut tx = store.begin_write().await.unwrap();
        enqueue(&mut tx, &in_lane("revoke", now), now).await.unwrap();
        enqueue(&mut tx, &in_lane("grant", now - Duration::seconds(1)), now).await.unwrap();
        let first = claim(&mut tx, now, now + Duration::seconds(10), 10, None).await.unwrap();
        assert_eq!(first.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["grant"]);
        assert!(claim(&mut tx, now, now + Duration::seconds(10), 10, None).await.unwrap().is_empty());
        assert_eq!(complete(&mut tx, first[0].id, first[0].attempts, now).await.unwrap(), Fenced::Applied);
        let second = claim(&mut tx, now, now + Duration::seconds(10), 10, None).await.unwrap();
        assert_eq!(second.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>(), ["revoke"]);
        tx.commit().await.unwrap();
    }

    /// The latest time on record floors the clock at a restart, on both drivers.
    async fn the_latest_recorded_time_is_found() {
        let (_db, store, _key) = keyed_store().await;
        let mut conn = store.read().await.unwrap();
        assert_eq!(jit::store::latest_recorded_time(&mut conn).await.unwrap(), None);
        drop(conn);
        // The audit row's time is read under the write lock, from the store's clock.
        store.use_clock(std::sync::Arc::new(jit::clock::ManualClock::new(t(50))));
        let mut tx = store.begin_write().await.unwrap();
        audit::append(&mut tx, t(50), None, "jit", "a", &json!({})).await.unwrap();
        enqueue(&mut tx, &job("x", PRIORITY_ACCESS, t(0)), t(70)).await.unwrap();
        tx.commit().await.unwrap();
        let mut conn = store.read().await.unwrap();
        assert_eq!(jit::store::latest_recorded_time(&mut conn).await.unwrap(), Some(t(70)));
        assert!(millis(t(70)) > 0);
    }
}

/// A migrated store on the running test's driver (kept alive by the first value), and a time.
async fn fresh() -> (db::TestDb, Store, DateTime<Utc>) {
    let db = db::TestDb::current().await;
    let store = db.store().await;
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    (db, store, now)
}

fn job(kind: &'static str, priority: u8, run_at: DateTime<Utc>) -> NewJob {
    NewJob {
        kind,
        payload: "{}".into(),
        run_at,
        unique_key: None,
        lane: None,
        ordered: false,
        max_attempts: None,
        priority,
        chain_class: CHAIN_NORMAL,
        chain_key: None,
    }
}

/// A job in the chain `lane`.
fn chained(kind: &'static str, lane: &str, urgent: bool, key: Option<&str>) -> NewJob {
    NewJob {
        lane: Some(lane.into()),
        ordered: true,
        chain_class: if urgent { CHAIN_URGENT } else { CHAIN_NORMAL },
        chain_key: key.map(str::to_owned),
        ..job(
            kind,
            PRIORITY_MESSAGES,
            Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap(),
        )
    }
}

/// Runs the chains to the end, one head at a time (claim, then complete), and returns the
/// kinds in the order they ran. A crash after every third claim puts the running head back
/// (`reclaim_all`, as at startup) before it completes: the order survives restarts.
async fn drain(store: &Store, now: DateTime<Utc>) -> Vec<String> {
    let lease = now + Duration::minutes(1);
    let mut ran = Vec::new();
    let mut claims = 0;
    loop {
        let mut tx = store.begin_write().await.unwrap();
        let Some(head) = claim(&mut tx, now, lease, 1, None).await.unwrap().pop() else {
            tx.commit().await.unwrap();
            return ran;
        };
        claims += 1;
        if claims % 3 == 0 {
            assert_eq!(reclaim_all(&mut tx, now).await.unwrap(), 1);
            tx.commit().await.unwrap();
            continue;
        }
        assert_eq!(
            complete(&mut tx, head.id, head.attempts, now)
                .await
                .unwrap(),
            Fenced::Applied
        );
        tx.commit().await.unwrap();
        ran.push(head.kind);
    }
}

driver_tests! {
    /// Access jobs due later must not hide due messages (nor the other way round), and the
    /// earliest due time is found across both priorities.
    async fn claims_take_due_jobs_by_priority_past_a_backlog_due_later() {
        let (_dir, store, now) = fresh().await;
        let later = now + Duration::hours(1);

        let mut tx = store.begin_write().await.unwrap();
        let mut backlog = Vec::new();
        for _ in 0..200 {
            backlog.push(job("revoke_later", PRIORITY_ACCESS, later));
            backlog.push(job("nudge_later", PRIORITY_MESSAGES, later));
        }
        enqueue_many(&mut tx, &backlog, now).await.unwrap();
        assert_eq!(
            next_due(&mut tx).await.unwrap(),
            Some(millis(later)),
            "the earliest run_at among queued jobs"
        );
        enqueue(
            &mut tx,
            &job("message_now", PRIORITY_MESSAGES, now - Duration::seconds(5)),
            now,
        )
        .await
        .unwrap();
        enqueue(&mut tx, &job("revoke_now", PRIORITY_ACCESS, now), now)
            .await
            .unwrap();
        assert_eq!(
            next_due(&mut tx).await.unwrap(),
            Some(millis(now - Duration::seconds(5)))
        );

        // One claim returns its rows in id order; which rows it takes follows the priority.
        let lease = now + Duration::minutes(1);
        let kinds = |rows: Vec<JobRow>| rows.into_iter().map(|j| j.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds(claim(&mut tx, now, lease, 1, None).await.unwrap()),
            ["revoke_now"],
            "access first"
        );
        assert_eq!(
            kinds(claim(&mut tx, now, lease, 10, None).await.unwrap()),
            ["message_now"],
            "then messages; nothing that is due later"
        );
        assert!(
            claim(&mut tx, now, lease, 10, None).await.unwrap().is_empty(),
            "nothing else is due"
        );
        let lease = later + Duration::minutes(1);
        let first = kinds(claim(&mut tx, later, lease, 200, None).await.unwrap());
        assert!(
            first.len() == 200 && first.iter().all(|k| k == "revoke_later"),
            "the backlog once it is due, access first: {first:?}"
        );
        let rest = kinds(claim(&mut tx, later, lease, 500, None).await.unwrap());
        assert!(rest.len() == 200 && rest.iter().all(|k| k == "nudge_later"));
        tx.commit().await.unwrap();
    }

    /// A job whose priority no claim looks for is refused, not left to wait for ever.
    async fn an_unknown_priority_is_refused() {
        let (_dir, store, now) = fresh().await;
        // Each attempt in a transaction of its own: after an error PostgreSQL refuses the rest of
        // the transaction, as a caller must expect on either driver.
        let mut tx = store.begin_write().await.unwrap();
        let err = enqueue(&mut tx, &job("odd", 2, now), now)
            .await
            .expect_err("priority 2 is refused");
        assert!(err.to_string().contains("jobs.priority must be 0"), "{err}");
        tx.rollback().await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        let err = enqueue_many(&mut tx, &[job("odd", 7, now)], now)
            .await
            .expect_err("in bulk too");
        assert!(err.to_string().contains("jobs.priority must be 0"), "{err}");
        tx.rollback().await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        enqueue(&mut tx, &job("fine", PRIORITY_ACCESS, now), now)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        let err = on!(&mut tx, |c| sqlx::query("UPDATE jobs SET priority = 5")
            .execute(&mut *c)
            .await
            .map(|_| ()))
            .expect_err("and on update");
        assert!(err.to_string().contains("jobs.priority must be 0"), "{err}");
        tx.rollback().await.unwrap();
        assert_eq!(count(&mut store.read().await.unwrap(), "fine", "queued").await.unwrap(), 1);
    }

    /// In an ordered lane only the head is queued, across separate batches too; another lane
    /// starts its own chain.
    async fn batches_chain_jobs_of_a_busy_lane() {
        let (_dir, store, now) = fresh().await;
        let in_lane = |kind: &'static str, lane: &str| NewJob {
            lane: Some(lane.into()),
            ordered: true,
            ..job(kind, PRIORITY_MESSAGES, now)
        };
        let mut tx = store.begin_write().await.unwrap();
        let batches = [
            [in_lane("a1", "channel:A"), in_lane("a2", "channel:A")],
            [in_lane("a3", "channel:A"), in_lane("b1", "channel:B")],
        ];
        for batch in &batches {
            enqueue_many(&mut tx, batch, now).await.unwrap();
        }
        let states: Vec<(String, String)> =
            on!(&mut tx, |c| sqlx::query_as("SELECT kind, state FROM jobs ORDER BY id")
                .fetch_all(&mut *c)
                .await)
                .unwrap();
        let expected = [
            ("a1", "queued"),
            ("a2", "blocked"),
            ("a3", "blocked"),
            ("b1", "queued"),
        ]
        .map(|(k, s)| (k.to_owned(), s.to_owned()));
        assert_eq!(states, expected);
        tx.commit().await.unwrap();
    }

    /// Within one channel's chain, waiting approval messages go before waiting audit posts,
    /// whatever their order of arrival, even the head if it has not started. Each key keeps
    /// its order (an approval message before its update, a thread's replies in
    /// order), and keys take turns: a request's second audit post goes after the other
    /// requests' first ones.
    async fn approval_messages_go_before_audit_posts_in_one_channel() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:audit";
        let mut tx = store.begin_write().await.unwrap();
        let batch = [
            chained("audit-1a", lane, false, Some("audit:1")),
            chained("audit-2a", lane, false, Some("audit:2")),
            chained("approval-U1-1", lane, true, Some("approvals:U1")),
            chained("audit-1b", lane, false, Some("audit:1")),
            chained("top-level", lane, false, None),
        ];
        enqueue_many(&mut tx, &batch, now).await.unwrap();
        for job in [
            chained("approval-U2-1", lane, true, Some("approvals:U2")),
            chained("audit-3a", lane, false, Some("audit:3")),
            // The first approval message's update: after its post, never before.
            chained("approval-U1-1-update", lane, true, Some("approvals:U1")),
        ] {
            enqueue(&mut tx, &job, now).await.unwrap();
        }
        // Another channel is its own chain, unaffected.
        enqueue(&mut tx, &chained("dm", "dm:U9", false, None), now)
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let ran = drain(&store, now).await;
        let in_lane: Vec<&str> = ran
            .iter()
            .map(String::as_str)
            .filter(|k| *k != "dm")
            .collect();
        assert_eq!(
            in_lane,
            [
                "approval-U1-1",
                "approval-U2-1",
                "approval-U1-1-update",
                "audit-1a",
                "audit-2a",
                "top-level",
                "audit-3a",
                "audit-1b",
            ]
        );
        assert!(ran.contains(&"dm".to_owned()));
    }

    /// Each requester's first waiting approval message goes before anyone's second, and among
    /// first ones, the requester with the fewest waiting goes first: a few people with many
    /// requests do not push a newcomer back, even when their first messages came earlier.
    /// Turns count only live jobs, and are the same whether jobs arrive in one batch or one at
    /// a time.
    async fn requesters_take_turns_in_a_chain() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:C0APPROVALS";
        let approval = |kind: &'static str, who: &str| {
            chained(kind, lane, true, Some(&format!("approvals:{who}")))
        };
        let mut tx = store.begin_write().await.unwrap();
        let flood = [
            approval("U1-a", "U1"),
            approval("U1-b", "U1"),
            approval("U2-a", "U2"),
            approval("U1-c", "U1"),
            approval("U2-b", "U2"),
        ];
        enqueue_many(&mut tx, &flood, now).await.unwrap();
        enqueue(&mut tx, &approval("U2-c", "U2"), now)
            .await
            .unwrap();
        enqueue(&mut tx, &approval("U3-a", "U3"), now)
            .await
            .unwrap();
        let turns: Vec<(String, i64)> =
            on!(&mut tx, |c| sqlx::query_as("SELECT kind, chain_turn FROM jobs ORDER BY id")
                .fetch_all(&mut *c)
                .await)
                .unwrap();
        let expected = [
            ("U1-a", 0),
            ("U1-b", 1),
            ("U2-a", 0),
            ("U1-c", 2),
            ("U2-b", 1),
            ("U2-c", 2),
            ("U3-a", 0),
        ]
        .map(|(k, t)| (k.to_owned(), t));
        assert_eq!(turns, expected);
        tx.commit().await.unwrap();

        assert_eq!(
            drain(&store, now).await,
            ["U1-a", "U3-a", "U2-a", "U1-b", "U2-b", "U1-c", "U2-c"]
        );

        // Nothing of U1 is live any more: its next message is a first turn again.
        let mut tx = store.begin_write().await.unwrap();
        enqueue(&mut tx, &approval("U1-d", "U1"), now)
            .await
            .unwrap();
        let turn: i64 = on!(&mut tx, |c| sqlx::query_scalar("SELECT chain_turn FROM jobs WHERE kind = 'U1-d'")
            .fetch_one(&mut *c)
            .await)
            .unwrap();
        assert_eq!(turn, 0);
        tx.commit().await.unwrap();
    }

    /// An urgent job (an alert) never passes an older waiting job of its own key (its
    /// request's earlier audit posts): it goes right after them, ahead of the other keys, and
    /// ahead of a head that has not started.
    async fn urgent_jobs_wait_for_their_own_keys_older_jobs() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:audit";
        let mut tx = store.begin_write().await.unwrap();
        for job in [
            chained("head", lane, false, None),
            chained("r1-requested", lane, false, Some("audit:1")),
            chained("r2-requested", lane, false, Some("audit:2")),
            chained("r1-alert", lane, true, Some("audit:1")),
            chained("r3-alert", lane, true, Some("audit:3")),
        ] {
            enqueue(&mut tx, &job, now).await.unwrap();
        }
        tx.commit().await.unwrap();
        assert_eq!(
            drain(&store, now).await,
            [
                "r3-alert",
                "head",
                "r1-requested",
                "r1-alert",
                "r2-requested"
            ]
        );
    }

    /// A running job may take over the waiting jobs of its key (one post carrying several audit
    /// events): they are done, the chain goes on past them, and only waiting jobs are taken.
    async fn a_head_can_complete_its_keys_waiting_jobs() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:audit";
        let mut tx = store.begin_write().await.unwrap();
        for job in [
            chained("r1-a", lane, false, Some("audit:1")),
            chained("r2-a", lane, false, Some("audit:2")),
            chained("r1-b", lane, false, Some("audit:1")),
            chained("r1-c", lane, false, Some("audit:1")),
            chained("other-lane", "slack:C0OTHER", false, Some("audit:1")),
        ] {
            enqueue(&mut tx, &job, now).await.unwrap();
        }
        assert_eq!(chain_backlog(&mut tx, lane, 100).await.unwrap(), 3);
        assert_eq!(
            chain_backlog(&mut tx, lane, 2).await.unwrap(),
            2,
            "counts up to the cap"
        );
        let heads = claim(&mut tx, now, now + Duration::minutes(1), 10, None)
            .await
            .unwrap();
        assert_eq!(heads.len(), 2, "one head per chain: {heads:?}");
        let head = heads.iter().find(|j| j.kind == "r1-a").unwrap().clone();
        let other = heads.iter().find(|j| j.kind == "other-lane").unwrap();
        assert_eq!(
            complete(&mut tx, other.id, other.attempts, now)
                .await
                .unwrap(),
            Fenced::Applied
        );
        let waiting = waiting_in_chain(&mut tx, lane, "audit:1", 10)
            .await
            .unwrap();
        let ids: Vec<i64> = waiting.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids.len(),
            2,
            "r1-b and r1-c, not the running head: {waiting:?}"
        );
        assert_eq!(
            waiting_in_chain(&mut tx, lane, "audit:1", 1)
                .await
                .unwrap()
                .len(),
            1
        );
        // The head itself is running, not waiting: never taken over.
        assert_eq!(complete_waiting(&mut tx, &[head.id], now).await.unwrap(), 0);
        assert_eq!(complete_waiting(&mut tx, &ids, now).await.unwrap(), 2);
        assert_eq!(
            complete_waiting(&mut tx, &ids, now).await.unwrap(),
            0,
            "once"
        );
        assert_eq!(
            complete(&mut tx, head.id, head.attempts, now)
                .await
                .unwrap(),
            Fenced::Applied
        );
        tx.commit().await.unwrap();
        assert_eq!(drain(&store, now).await, ["r2-a"]);
        let states: Vec<(String, String)> =
            on!(&mut store.read().await.unwrap(), |c| sqlx::query_as("SELECT kind, state FROM jobs ORDER BY id")
                .fetch_all(&mut *c)
                .await)
                .unwrap();
        assert!(
            states.iter().all(|(_, s)| s == "done"),
            "every job done, none lost: {states:?}"
        );
    }

    /// A head that is running is never interrupted by an urgent job: it finishes, and the
    /// urgent job goes next. One that has not started steps back, also when it was deferred.
    async fn urgent_jobs_pass_a_waiting_head_never_a_running_one() {
        let (_dir, store, now) = fresh().await;
        let lane = "slack:audit";
        let lease = now + Duration::minutes(1);
        let mut tx = store.begin_write().await.unwrap();
        enqueue(&mut tx, &chained("audit-a", lane, false, None), now)
            .await
            .unwrap();
        enqueue(&mut tx, &chained("audit-b", lane, false, None), now)
            .await
            .unwrap();
        let head = claim(&mut tx, now, lease, 1, None).await.unwrap().pop().unwrap();
        assert_eq!(head.kind, "audit-a");
        enqueue(
            &mut tx,
            &chained("approval", lane, true, Some("approvals:U1")),
            now,
        )
        .await
        .unwrap();
        let states: Vec<(String, String)> =
            on!(&mut tx, |c| sqlx::query_as("SELECT kind, state FROM jobs ORDER BY id")
                .fetch_all(&mut *c)
                .await)
                .unwrap();
        let expected = [
            ("audit-a", "running"),
            ("audit-b", "blocked"),
            ("approval", "blocked"),
        ]
        .map(|(k, s)| (k.to_owned(), s.to_owned()));
        assert_eq!(states, expected, "the running head keeps running");
        // The head is put back, deferred (Slack said slow down): it has not started now.
        assert_eq!(
            defer(
                &mut tx,
                head.id,
                head.attempts,
                now + Duration::seconds(30),
                now
            )
            .await
            .unwrap(),
            Fenced::Applied
        );
        enqueue(
            &mut tx,
            &chained("approval-2", lane, true, Some("approvals:U2")),
            now,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let later = now + Duration::minutes(1);
        assert_eq!(
            drain(&store, later).await,
            ["approval", "approval-2", "audit-a", "audit-b"]
        );
    }
}

/// SQLite must not re-prepare a cached statement because a parameter was bound again (a claim's
/// `LIMIT`, a unique key compared with a partial index's condition): each re-prepare parses and
/// plans the statement anew, and before the planner's stability guarantee was turned on it cost
/// the queue about half its CPU. Claims with different limits, enqueues with and without unique
/// keys and completions, all on one connection, then no statement of it was re-prepared.
#[tokio::test]
async fn sqlite_never_re_prepares_a_statement_for_its_parameters() {
    let db = db::TestDb::new(jit::store::Driver::Sqlite).await;
    let store = db.store().await;
    let now = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
    let lease = now + Duration::minutes(1);
    let mut tx = store.begin_write().await.unwrap();
    for round in 0..3 {
        for n in 0..4 {
            let mut new = job("noop", PRIORITY_ACCESS, now);
            if n % 2 == 0 {
                new.unique_key = Some(format!("key-{round}-{n}"));
            }
            enqueue(&mut tx, &new, now).await.unwrap();
        }
        for limit in [1, 2, 1] {
            for row in claim(&mut tx, now, lease, limit, None).await.unwrap() {
                let done = complete(&mut tx, row.id, row.attempts, now).await.unwrap();
                assert_eq!(done, Fenced::Applied);
            }
        }
        assert_eq!(
            count(&mut tx, "noop", "done").await.unwrap(),
            4 * (round + 1)
        );
        assert_eq!(count(&mut tx, "noop", "queued").await.unwrap(), 0);
    }
    let reprepared = jit::store::reprepared(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(reprepared, Some(0), "statements were re-prepared");
}

/// Statement journals and other temporary data stay in memory (`temp_store = MEMORY`): no
/// temporary file per write batch, and no page of the database copied to a file outside it.
#[tokio::test]
async fn sqlite_keeps_temporary_data_in_memory() {
    let db = db::TestDb::new(jit::store::Driver::Sqlite).await;
    let store = db.store().await;
    let mut conn = store.read().await.unwrap();
    let temp_store: i64 = on!(&mut conn, |c| sqlx::query_scalar("PRAGMA temp_store")
        .fetch_one(&mut *c)
        .await)
    .unwrap();
    assert_eq!(temp_store, 2, "PRAGMA temp_store: 2 is MEMORY");
}

/// On SQLite every write transaction runs on one connection of its own, apart from the
/// connections that read: SQLite drops a connection's page cache whenever another connection
/// wrote, so writes spread over the pool would each start cold. A temporary table is private to
/// the connection that made it: the second write sees the first one's, a read does not.
#[tokio::test]
async fn sqlite_writes_share_one_connection_apart_from_reads() {
    let db = db::TestDb::new(jit::store::Driver::Sqlite).await;
    let store = db.store().await;
    let mut tx = store.begin_write().await.unwrap();
    on!(&mut tx, |c| sqlx::query(
        "CREATE TEMP TABLE written_here (x INTEGER)"
    )
    .execute(&mut *c)
    .await
    .map(|_| ()))
    .unwrap();
    tx.commit().await.unwrap();
    // Held through the second write: the pool's idle connections are taken first.
    let mut read = store.read().await.unwrap();
    let mut tx = store.begin_write().await.unwrap();
    let on_writer: i64 = on!(&mut tx, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM temp.sqlite_master WHERE name = 'written_here'"
    )
    .fetch_one(&mut *c)
    .await)
    .unwrap();
    tx.commit().await.unwrap();
    let on_reader: i64 = on!(&mut read, |c| sqlx::query_scalar(
        "SELECT COUNT(*) FROM temp.sqlite_master WHERE name = 'written_here'"
    )
    .fetch_one(&mut *c)
    .await)
    .unwrap();
    assert_eq!(on_writer, 1, "the second write ran on another connection");
    assert_eq!(on_reader, 0, "a read ran on the writers' connection");
}
