//! The keyed audit chain, its upgrade from the unkeyed one, and its anchors in Slack: each test
//! does what someone holding the database file would do (drop the triggers, edit, delete,
//! reorder, cut off the end, recompute the chain) and checks that verification names the first
//! bad row.

use chrono::Duration;
use jit::audit::anchor::{self, SlackCheck};
use jit::crypto::AuditKey;
use jit::store::audit::{self as audit_store, ChainOpened, Verification};
use jit::store::{Durability, Store};
use serde_json::json;
use sqlx::SqlitePool;

use crate::harness::*;

/// A request that goes the whole way, and a break-glass: a log of a dozen rows or so.
async fn busy_log(h: &Harness) {
    let id = h.request_access(DEV, "db 1h chain").await;
    h.run_jobs().await;
    h.click(ALICE, "jit.approve", id).await;
    h.run_jobs().await;
    h.slash(DEV, "breakglass db prod is down INC-9").await;
    h.run_jobs().await;
}

/// A consistent copy of the harness database (WAL and all), for one tamper each.
async fn copy_of(h: &Harness, name: &str) -> SqlitePool {
    let path = h.db_path.with_file_name(format!("{name}.db"));
    h.app
        .store
        .execute_script(&format!("VACUUM INTO '{}'", path.display()))
        .await
        .unwrap();
    let pool = SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    // What the attacker does first.
    for trigger in [
        "audit_log_no_update",
        "audit_log_no_delete",
        "audit_chain_boundary_no_update",
        "audit_chain_boundary_no_delete",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {trigger}")))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool
}

async fn verify(pool: &SqlitePool, key: &AuditKey) -> Verification {
    let mut conn = jit::store::Conn::from(pool.acquire().await.unwrap());
    audit_store::verify(&mut conn, key).await.unwrap()
}

/// The first bad row and the reason, or a panic if the tamper went unnoticed.
fn broken(verdict: Verification) -> (i64, String) {
    match verdict {
        Verification::Broken { seq, reason, .. } => (seq, reason),
        other => panic!("tampering not detected: {other:?}"),
    }
}

async fn rows(pool: &SqlitePool) -> Vec<audit_store::AuditRow> {
    sqlx::query_as("SELECT * FROM audit_log ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Rewrites every row from the first on, as an attacker would after deleting some: renumbered
/// from 1 and hashed with `hash(prev, canonical)`.
async fn recompute(pool: &SqlitePool, hash: impl Fn(&str, &str) -> String) {
    let mut prev = audit_store::GENESIS.to_owned();
    let old = rows(pool).await;
    sqlx::query("DELETE FROM audit_log")
        .execute(pool)
        .await
        .unwrap();
    for (seq, row) in (1..).zip(old) {
        let canonical = audit_store::canonical(
            seq,
            &row.at,
            row.request_id,
            &row.actor,
            &row.event,
            &row.detail,
        );
        let h = hash(&prev, &canonical);
        sqlx::query(
            "INSERT INTO audit_log (seq, at, request_id, actor, event, detail, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(seq)
        .bind(&row.at)
        .bind(row.request_id)
        .bind(&row.actor)
        .bind(&row.event)
        .bind(&row.detail)
        .bind(&prev)
        .bind(&h)
        .execute(pool)
        .await
        .unwrap();
        prev = h;
    }
}

/// The boundary record as an attacker would forge it with `key`.
async fn forge_boundary(pool: &SqlitePool, key: &AuditKey, seq: i64, head: &str) {
    let keyed_at = "2026-11-23T14:00:00.000Z";
    let mac = key.mac_hex(&[
        b"jit-audit-boundary",
        seq.to_string().as_bytes(),
        head.as_bytes(),
        keyed_at.as_bytes(),
    ]);
    sqlx::query("DELETE FROM audit_chain_boundary")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO audit_chain_boundary (id, seq, head, keyed_at, mac) VALUES (1, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(head)
    .bind(keyed_at)
    .bind(mac)
    .execute(pool)
    .await
    .unwrap();
}

// SQLite only: tampers with copies of the database file (`copy_of`). The same checks run on
// PostgreSQL in tests/store_suite.rs (`the_audit_log_is_append_only_and_verifies`) and
// `edge::the_hash_chain_detects_an_edited_row`.
#[tokio::test]
async fn every_tamper_is_detected_and_the_first_bad_row_named() {
    let h = Harness::start().await;
    busy_log(&h).await;
    let key = audit_key();
    let clean = copy_of(&h, "clean").await;
    let all = rows(&clean).await;
    let n = all.len() as i64;
    assert!(
        n >= 5,
        "{:?}",
        all.iter().map(|r| &r.event).collect::<Vec<_>>()
    );
    assert_eq!(
        verify(&clean, &key).await,
        Verification::Intact {
            rows: n as u64,
            head: Some(all.last().unwrap().hash.clone())
        }
    );
    // Recomputing needs the key: every row's hash is a keyed MAC, not SHA-256.
    let first = &all[0];
    assert_ne!(
        first.hash,
        audit_store::legacy_hash(
            &first.prev_hash,
            &audit_store::canonical(
                first.seq,
                &first.at,
                first.request_id,
                &first.actor,
                &first.event,
                &first.detail
            )
        )
    );

    // Edit: a row's content.
    let pool = copy_of(&h, "edit").await;
    sqlx::query("UPDATE audit_log SET actor = 'U0MALLORY' WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let (seq, reason) = broken(verify(&pool, &key).await);
    assert_eq!(seq, 3);
    assert!(reason.contains("edited"), "{reason}");

    // Delete: a row in the middle.
    let pool = copy_of(&h, "delete").await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 4")
        .execute(&pool)
        .await
        .unwrap();
    let (seq, reason) = broken(verify(&pool, &key).await);
    assert_eq!(seq, 5);
    assert!(reason.contains("row 4 is missing"), "{reason}");

    // Reorder: rows 2 and 3 trade places.
    let pool = copy_of(&h, "reorder").await;
    for statement in [
        "UPDATE audit_log SET seq = -2 WHERE seq = 2",
        "UPDATE audit_log SET seq = 2 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = -2",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let (seq, reason) = broken(verify(&pool, &key).await);
    assert_eq!(seq, 2);
    assert!(reason.contains("reordered"), "{reason}");

    // Truncate: the chain alone cannot tell, a recorded head (at least 32 digits) can.
    let pool = copy_of(&h, "truncate").await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM audit_log WHERE seq > {}",
        n - 2
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert!(matches!(
        verify(&pool, &key).await,
        Verification::Intact { rows, .. } if rows == (n - 2) as u64
    ));
    let mut conn = jit::store::Conn::from(pool.acquire().await.unwrap());
    let head = &all.last().unwrap().hash;
    let gone = audit_store::check_anchor(&mut conn, n, &head[..32])
        .await
        .unwrap()
        .unwrap_err();
    assert!(gone.contains(&format!("row {n} was recorded earlier but is gone")));
    // A 12-digit prefix is too short to check anything.
    let mut intact = jit::store::Conn::from(clean.acquire().await.unwrap());
    assert!(
        audit_store::check_anchor(&mut intact, n, &head[..12])
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        audit_store::check_anchor(&mut intact, n, &head[..32])
            .await
            .unwrap()
            .is_ok()
    );

    // The review's attack: the break-glass trail deleted and the chain recomputed with plain
    // SHA-256, as the unkeyed chain was.
    let pool = copy_of(&h, "recompute-sha256").await;
    let deleted = sqlx::query("DELETE FROM audit_log WHERE request_id = 2")
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert!(deleted >= 2, "the break-glass trail");
    recompute(&pool, audit_store::legacy_hash).await;
    let (seq, reason) = broken(verify(&pool, &key).await);
    assert_eq!(seq, 1);
    assert!(reason.contains("without the audit key"), "{reason}");

    // The same with a key of the attacker's own.
    let theirs = AuditKey::from_bytes([0x66; 32]);
    let pool = copy_of(&h, "recompute-wrong-key").await;
    sqlx::query("DELETE FROM audit_log WHERE request_id = 2")
        .execute(&pool)
        .await
        .unwrap();
    recompute(&pool, |prev, canonical| {
        audit_store::keyed_hash(&theirs, prev, canonical)
    })
    .await;
    let (seq, _) = broken(verify(&pool, &key).await);
    assert_eq!(seq, 1);
    // ... and the boundary forged with it too.
    forge_boundary(&pool, &theirs, 0, audit_store::GENESIS).await;
    let (seq, reason) = broken(verify(&pool, &key).await);
    assert_eq!(seq, 1);
    assert!(reason.contains("boundary record"), "{reason}");
    // With their key, their chain verifies: the check is really the key.
    assert!(matches!(
        verify(&pool, &theirs).await,
        Verification::Intact { .. }
    ));

    // Or make the whole log look unkeyed: recompute with SHA-256, boundary moved to the end.
    let pool = copy_of(&h, "all-unkeyed").await;
    recompute(&pool, audit_store::legacy_hash).await;
    let last = rows(&pool).await.last().unwrap().clone();
    forge_boundary(&pool, &theirs, last.seq, &last.hash).await;
    let (seq, reason) = broken(verify(&pool, &key).await);
    assert_eq!(seq, last.seq + 1);
    assert!(reason.contains("boundary record"), "{reason}");
    // ... or with the boundary record deleted.
    sqlx::query("DELETE FROM audit_chain_boundary")
        .execute(&pool)
        .await
        .unwrap();
    let (seq, reason) = broken(verify(&pool, &key).await);
    assert_eq!(seq, 1);
    assert!(reason.contains("no keyed boundary record"), "{reason}");
}

// SQLite only: tampers with copies of the database file (`copy_of`). The same checks run on
// PostgreSQL in tests/store_suite.rs (`the_audit_log_is_append_only_and_verifies`) and
// `edge::the_hash_chain_detects_an_edited_row`.
#[tokio::test]
async fn time_never_goes_backwards_along_the_chain() {
    let h = Harness::start().await;
    let key = audit_key();
    let t = t0();
    let mut tx = h.app.store.begin_write().await.unwrap();
    audit_store::append(&mut tx, t, None, "jit", "first", &json!({}))
        .await
        .unwrap();
    // A caller that read its clock before the lock, or a clock stepped back.
    audit_store::append(
        &mut tx,
        t - Duration::milliseconds(1),
        None,
        "jit",
        "second",
        &json!({}),
    )
    .await
    .unwrap();
    audit_store::append_many(
        &mut tx,
        t - Duration::hours(1),
        &[
            (None, "jit".into(), "third".into(), json!({})),
            (None, "jit".into(), "fourth".into(), json!({})),
        ],
    )
    .await
    .unwrap();
    audit_store::append(
        &mut tx,
        t + Duration::seconds(5),
        None,
        "jit",
        "fifth",
        &json!({}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let pool = copy_of(&h, "times").await;
    let rows = rows(&pool).await;
    let times: Vec<&str> = rows.iter().map(|r| r.at.as_str()).collect();
    let t = jit::store::format_time(t);
    let later = jit::store::format_time(t0() + Duration::seconds(5));
    assert_eq!(times, [&t, &t, &t, &t, &later]);
    assert!(matches!(
        verify(&pool, &key).await,
        Verification::Intact { rows: 5, .. }
    ));

    // A row written out of time order (here with the key, so only the order is wrong) is
    // named by verify.
    let second = &rows[1];
    let earlier = jit::store::format_time(t0() - Duration::seconds(1));
    let canonical = audit_store::canonical(
        second.seq,
        &earlier,
        second.request_id,
        &second.actor,
        &second.event,
        &second.detail,
    );
    sqlx::query("DELETE FROM audit_log WHERE seq >= 2")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO audit_log (seq, at, request_id, actor, event, detail, prev_hash, hash) \
         VALUES (2, ?, NULL, 'jit', 'second', '{}', ?, ?)",
    )
    .bind(&earlier)
    .bind(&second.prev_hash)
    .bind(audit_store::keyed_hash(&key, &second.prev_hash, &canonical))
    .execute(&pool)
    .await
    .unwrap();
    let (seq, reason) = broken(verify(&pool, &key).await);
    assert_eq!(seq, 2);
    assert!(reason.contains("time is before"), "{reason}");
}

driver_tests! {
    /// The review saw seq 172 stamped 1 ms before seq 171: `now` was read before the write lock.
    /// A row's time is read under the lock: a caller that read its clock, then waited for the lock
    /// while time went on, gets the time it got the lock, not its earlier reading.
    async fn a_rows_time_is_read_under_the_write_lock() {
        let h = Harness::start().await;
        let read_before_the_lock = h.clock_now();
        let mut first = h.app.store.begin_write().await.unwrap();
        // Another writer holds the lock; the caller waits for it, and time goes on meanwhile.
        let waiting = {
            let store = h.app.store.clone();
            tokio::spawn(async move {
                let mut tx = store.begin_write().await.unwrap();
                let seq = audit_store::append(
                    &mut tx,
                    read_before_the_lock,
                    None,
                    "jit",
                    "waited",
                    &json!({}),
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                seq
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        h.advance(Duration::seconds(7));
        audit_store::append(
            &mut first,
            h.clock_now(),
            None,
            "jit",
            "held the lock",
            &json!({}),
        )
        .await
        .unwrap();
        h.advance(Duration::seconds(3));
        first.commit().await.unwrap();
        let seq = waiting.await.unwrap();
        let mut conn = h.app.store.read().await.unwrap();
        let row = audit_store::get(&mut conn, seq).await.unwrap().unwrap();
        let before = audit_store::get(&mut conn, seq - 1).await.unwrap().unwrap();
        assert_eq!(before.event, "held the lock");
        assert_eq!(
            before.at,
            jit::store::format_time(read_before_the_lock + Duration::seconds(7))
        );
        assert_eq!(
            row.at,
            jit::store::format_time(read_before_the_lock + Duration::seconds(10)),
            "the time the lock was taken, not the caller's earlier reading"
        );
    }
}

/// An old database: rows written by the unkeyed code (SHA-256 chain), no boundary yet.
async fn old_database(dir: &std::path::Path, rows: i64, edit: Option<i64>) -> Store {
    let url = format!("sqlite://{}/jit.db", dir.display());
    let store = Store::connect(&url, Durability::Normal).await.unwrap();
    store.migrate().await.unwrap();
    let mut prev = audit_store::GENESIS.to_owned();
    for seq in 1..=rows {
        let at = jit::store::format_time(t0() + Duration::minutes(seq));
        let detail = json!({"reason": format!("old event {seq}")}).to_string();
        let canonical = audit_store::canonical(seq, &at, Some(seq), "U0DEV", "revoked", &detail);
        let hash = audit_store::legacy_hash(&prev, &canonical);
        // An edit after the hash was taken: the old chain no longer verifies there.
        let actor = if edit == Some(seq) {
            "U0MALLORY"
        } else {
            "U0DEV"
        };
        let mut conn = store.read().await.unwrap();
        jit::store::on!(&mut conn, |c| sqlx::query(
            "INSERT INTO audit_log (seq, at, request_id, actor, event, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, 'revoked', $5, $6, $7)",
        )
        .bind(seq)
        .bind(&at)
        .bind(seq)
        .bind(actor)
        .bind(&detail)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *c)
        .await
        .map(|_| ()))
        .unwrap();
        prev = hash;
    }
    store
}

driver_tests! {
    async fn an_old_unkeyed_log_upgrades_and_tampering_is_caught_on_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        let store = old_database(dir.path(), 5, None).await;
        let key = AuditKey::from_bytes([0x21; 32]);
        // Without the chain opened, nothing can be appended: actions fail closed.
        let mut tx = store.begin_write().await.unwrap();
        let refused = audit_store::append(&mut tx, t0(), None, "jit", "x", &json!({}))
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("audit chain is not open"),
            "{refused}"
        );
        drop(tx);
        let old_head = audit_store::get(&mut store.read().await.unwrap(), 5)
            .await
            .unwrap()
            .unwrap()
            .hash;

        assert_eq!(
            store.open_audit_chain(key.clone(), t0()).await.unwrap(),
            ChainOpened::Recorded { unkeyed: 5 }
        );
        let mut conn = store.read().await.unwrap();
        let b = audit_store::boundary(&mut conn).await.unwrap().unwrap();
        assert_eq!((b.seq, b.head.as_str()), (5, old_head.as_str()));
        drop(conn);
        // Opening again checks the key; a wrong key is refused with a clear line.
        assert_eq!(
            store.open_audit_chain(key.clone(), t0()).await.unwrap(),
            ChainOpened::Keyed { boundary: 5 }
        );
        let wrong = store
            .open_audit_chain(AuditKey::from_bytes([0x22; 32]), t0())
            .await
            .unwrap_err()
            .to_string();
        assert!(wrong.starts_with("the audit key does not match"), "{wrong}");

        let mut tx = store.begin_write().await.unwrap();
        for i in 0..3 {
            audit_store::append(
                &mut tx,
                t0() + Duration::hours(1),
                None,
                "jit",
                "new",
                &json!({ "i": i }),
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        let mut conn = store.read().await.unwrap();
        let first_keyed = audit_store::get(&mut conn, 6).await.unwrap().unwrap();
        assert_eq!(
            first_keyed.prev_hash, old_head,
            "the keyed chain links to the old head"
        );
        assert!(matches!(
            audit_store::verify(&mut conn, &key).await.unwrap(),
            Verification::Intact { rows: 8, .. }
        ));
        drop(conn);

        let copy = |name: &'static str| {
            let store = store.clone();
            let dir = dir.path().to_owned();
            async move {
                let path = dir.join(format!("{name}.db"));
                store
                    .execute_script(&format!("VACUUM INTO '{}'", path.display()))
                    .await
                    .unwrap();
                let pool = SqlitePool::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                for t in ["audit_log_no_update", "audit_log_no_delete"] {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {t}")))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                pool
            }
        };
        // Before the boundary: an edited unkeyed row.
        let pool = copy("old-edit").await;
        sqlx::query("UPDATE audit_log SET actor = 'U0MALLORY' WHERE seq = 2")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(broken(verify(&pool, &key).await).0, 2);
        // ... and with the unkeyed hashes recomputed: they no longer end in the recorded head.
        let pool = copy("old-recompute").await;
        sqlx::query("UPDATE audit_log SET actor = 'U0MALLORY' WHERE seq = 2")
            .execute(&pool)
            .await
            .unwrap();
        let all = rows(&pool).await;
        let mut prev = audit_store::GENESIS.to_owned();
        for row in all.iter().take(5) {
            let hash = audit_store::legacy_hash(
                &prev,
                &audit_store::canonical(
                    row.seq,
                    &row.at,
                    row.request_id,
                    &row.actor,
                    &row.event,
                    &row.detail,
                ),
            );
            sqlx::query("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?")
                .bind(&prev)
                .bind(&hash)
                .bind(row.seq)
                .execute(&pool)
                .await
                .unwrap();
            prev = hash;
        }
        let (seq, reason) = broken(verify(&pool, &key).await);
        assert_eq!(seq, 5);
        assert!(
            reason.contains("head recorded when the chain was keyed"),
            "{reason}"
        );
        // ... or cut off before the boundary.
        let pool = copy("old-truncate").await;
        sqlx::query("DELETE FROM audit_log WHERE seq >= 4")
            .execute(&pool)
            .await
            .unwrap();
        let (seq, reason) = broken(verify(&pool, &key).await);
        assert_eq!(seq, 4);
        assert!(reason.contains("recorded as ending at row 5"), "{reason}");
        // After the boundary: an edited keyed row, and a deleted one.
        let pool = copy("new-edit").await;
        sqlx::query("UPDATE audit_log SET detail = '{\"i\":9}' WHERE seq = 7")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(broken(verify(&pool, &key).await).0, 7);
        let pool = copy("new-delete").await;
        sqlx::query("DELETE FROM audit_log WHERE seq = 6")
            .execute(&pool)
            .await
            .unwrap();
        let (seq, reason) = broken(verify(&pool, &key).await);
        assert_eq!(seq, 7);
        assert!(reason.contains("row 6 is missing"), "{reason}");
    }
}

driver_tests! {
    async fn a_tampered_old_log_is_not_keyed() {
        let dir = tempfile::tempdir().unwrap();
        let store = old_database(dir.path(), 6, Some(3)).await;
        let err = store
            .open_audit_chain(AuditKey::from_bytes([0x21; 32]), t0())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("the audit log written before the keyed chain does not verify (row 3: "),
            "{err}"
        );
        assert!(err.contains("refuses to key a tampered chain"), "{err}");
        let mut conn = store.read().await.unwrap();
        assert_eq!(audit_store::boundary(&mut conn).await.unwrap(), None);
        // Nothing can be recorded until someone looks: the action fails closed.
        drop(conn);
        let mut tx = store.begin_write().await.unwrap();
        assert!(
            audit_store::append(&mut tx, t0(), None, "jit", "x", &json!({}))
                .await
                .is_err()
        );
    }
}

/// Anchor messages in the audit channel, as (seq, hash).
fn anchors_posted(h: &Harness) -> Vec<(i64, String)> {
    h.slack
        .messages(AUDIT)
        .iter()
        .filter_map(|m| anchor::parse(&m.text))
        .collect()
}

async fn head(h: &Harness) -> (i64, String) {
    let mut conn = h.app.store.read().await.unwrap();
    audit_store::head(&mut conn).await.unwrap().unwrap()
}

/// Appends a row the way a handler does, at the harness clock's time.
async fn append_row(h: &Harness, event: &str) {
    let mut tx = h.app.store.begin_write().await.unwrap();
    audit_store::append(&mut tx, h.clock_now(), None, "jit", event, &json!({}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

driver_tests! {
    async fn anchors_are_posted_on_the_interval_and_at_shutdown() {
        let h = Harness::start().await;
        anchor::schedule(&h.app).await.unwrap();
        h.run_jobs().await;
        assert!(anchors_posted(&h).is_empty(), "an empty log has no head");

        append_row(&h, "one").await;
        append_row(&h, "two").await;
        h.run_jobs().await;
        assert!(anchors_posted(&h).is_empty(), "not before the interval");
        h.advance_and_run(Duration::minutes(59)).await;
        assert!(anchors_posted(&h).is_empty(), "not before the interval");
        h.advance_and_run(Duration::minutes(1)).await;
        let first = head(&h).await;
        assert_eq!(first.0, 2);
        assert_eq!(anchors_posted(&h), std::slice::from_ref(&first));
        assert_eq!(first.1.len(), 64, "the full hash");
        let message = h
            .slack
            .messages(AUDIT)
            .into_iter()
            .find(|m| m.text.starts_with("audit head"))
            .unwrap();
        assert!(
            message
                .rendered()
                .contains("`jit audit verify --slack` checks the log"),
            "{}",
            message.rendered()
        );
        let mut conn = h.app.store.read().await.unwrap();
        let recorded = audit_store::anchors(&mut conn).await.unwrap();
        drop(conn);
        assert_eq!(recorded.len(), 1);
        assert_eq!((recorded[0].seq, &recorded[0].hash), (first.0, &first.1));
        assert_eq!(recorded[0].ts.as_deref(), Some(message.ts.as_str()));
        assert_eq!(recorded[0].channel, AUDIT);

        // Nothing new: nothing posted at the next interval.
        h.advance_and_run(Duration::hours(1)).await;
        assert_eq!(anchors_posted(&h).len(), 1);

        // New rows, and Slack fails for a while: the schedule survives (the job is never buried).
        append_row(&h, "three").await;
        h.slack.inject(
            &format!("chat.postMessage@{AUDIT}"),
            jit::slack::simulator::Fault::ServerError(503),
            3,
        );
        h.advance_and_run(Duration::hours(1)).await;
        assert_eq!(anchors_posted(&h).len(), 1, "Slack is down");
        for _ in 0..5 {
            h.advance_and_run(Duration::minutes(1)).await;
        }
        assert_eq!(h.slack.faults_left(), 0);
        let second = head(&h).await;
        assert_eq!(second.0, 3);
        assert_eq!(anchors_posted(&h), [first.clone(), second.clone()]);

        // Shutdown: the head is anchored at once, without waiting for the interval.
        append_row(&h, "four").await;
        let at_stop = anchor::request_now(&h.app).await.unwrap().unwrap();
        assert_eq!(at_stop, head(&h).await);
        assert!(!anchor::wait_posted(&h.app.store, at_stop.0, std::time::Duration::ZERO).await);
        h.run_jobs().await;
        assert_eq!(anchors_posted(&h), [first, second, at_stop.clone()]);
        assert!(anchor::wait_posted(&h.app.store, at_stop.0, std::time::Duration::ZERO).await);
        // Nothing to anchor at a second stop.
        assert_eq!(anchor::request_now(&h.app).await.unwrap(), None);
        // The schedule goes on after the shutdown anchor.
        let mut conn = h.app.store.read().await.unwrap();
        assert!(
            jit::store::jobs::is_live(&mut conn, anchor::JOB_KEY)
                .await
                .unwrap()
        );
        drop(conn);
        // A crash skipped the shutdown anchor: at the next start the moved head is posted at once,
        // and the interval goes on from there.
        append_row(&h, "five").await;
        anchor::schedule(&h.app).await.unwrap();
        h.run_jobs().await;
        assert_eq!(anchors_posted(&h).len(), 4);
        append_row(&h, "six").await;
        h.advance_and_run(Duration::minutes(59)).await;
        assert_eq!(anchors_posted(&h).len(), 4);
        h.advance_and_run(Duration::minutes(1)).await;
        assert_eq!(anchors_posted(&h).last(), Some(&head(&h).await));
        assert_eq!(anchors_posted(&h).len(), 5);
    }
}

async fn slack_check(h: &Harness, pool: Option<&SqlitePool>) -> SlackCheck {
    match pool {
        Some(pool) => {
            let mut conn = jit::store::Conn::from(pool.acquire().await.unwrap());
            anchor::verify_slack(&mut conn, &h.app.slack, AUDIT)
                .await
                .unwrap()
        }
        None => {
            let mut conn = h.app.store.read().await.unwrap();
            anchor::verify_slack(&mut conn, &h.app.slack, AUDIT)
                .await
                .unwrap()
        }
    }
}

// SQLite only: tampers with copies of the database file (`copy_of`). The same checks run on
// PostgreSQL in tests/store_suite.rs (`the_audit_log_is_append_only_and_verifies`) and
// `edge::the_hash_chain_detects_an_edited_row`.
#[tokio::test]
async fn verify_slack_catches_what_the_chain_alone_cannot() {
    let h = Harness::start().await;
    busy_log(&h).await;
    anchor::request_now(&h.app).await.unwrap();
    h.run_jobs().await;
    let (anchored, anchored_hash) = head(&h).await;
    // Someone in the channel types an anchor-like line: not the bot's, so not an anchor.
    h.slack
        .post_as_user(AUDIT, MALLORY, &anchor::text(999, &"ab".repeat(32)));
    match slack_check(&h, None).await {
        SlackCheck::Intact { anchors, newest } => {
            assert_eq!(anchors, 1);
            let newest = newest.unwrap();
            assert_eq!((newest.seq, newest.hash), (anchored, anchored_hash.clone()));
        }
        other => panic!("{other:?}"),
    }

    // Truncation: the last rows cut off. The chain verifies; Slack's anchor does not.
    let pool = copy_of(&h, "truncated").await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM audit_log WHERE seq > {}",
        anchored - 3
    )))
    .execute(&pool)
    .await
    .unwrap();
    assert!(matches!(
        verify(&pool, &audit_key()).await,
        Verification::Intact { .. }
    ));
    let expect_truncated = |check: SlackCheck| match check {
        SlackCheck::Broken { seq, reason } => {
            assert_eq!(seq, anchored - 2, "{reason}");
            assert!(
                reason.contains(&format!(
                    "the log ends at row {}, but row {anchored} was anchored in {AUDIT}",
                    anchored - 3
                )),
                "{reason}"
            );
            assert!(
                reason.contains("rows were removed from the end"),
                "{reason}"
            );
        }
        other => panic!("truncation not detected: {other:?}"),
    };
    expect_truncated(slack_check(&h, Some(&pool)).await);
    // ... also when the attacker wiped the record of the anchors: Slack is read all the same.
    sqlx::query("DELETE FROM audit_anchors")
        .execute(&pool)
        .await
        .unwrap();
    expect_truncated(slack_check(&h, Some(&pool)).await);

    // A forged anchor record (to point verification elsewhere) is not in Slack.
    let pool = copy_of(&h, "forged-anchor").await;
    sqlx::query(
        "INSERT INTO audit_anchors (seq, hash, channel, ts, posted_at) \
         VALUES (1, 'x', 'C0AUDIT', '1800000000.000100', '2026-11-23T14:00:00.000Z')",
    )
    .execute(&pool)
    .await
    .unwrap();
    match slack_check(&h, Some(&pool)).await {
        SlackCheck::Broken { seq, reason } => {
            assert_eq!(seq, 1);
            assert!(reason.contains("is not in the channel"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // Someone who has the key rewrites a row and recomputes the chain: it verifies, but the
    // anchored head no longer matches.
    let pool = copy_of(&h, "rewritten-with-key").await;
    sqlx::query("UPDATE audit_log SET actor = 'U0MALLORY' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    let key = audit_key();
    recompute(&pool, |prev, canonical| {
        audit_store::keyed_hash(&key, prev, canonical)
    })
    .await;
    assert!(matches!(
        verify(&pool, &key).await,
        Verification::Intact { .. }
    ));
    match slack_check(&h, Some(&pool)).await {
        SlackCheck::Broken { seq, reason } => {
            assert_eq!(seq, anchored);
            assert!(reason.contains("differs from the anchor"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Unrelated to the copies: the live log still matches its anchor.
    assert!(matches!(
        slack_check(&h, None).await,
        SlackCheck::Intact { anchors: 1, .. }
    ));
}
