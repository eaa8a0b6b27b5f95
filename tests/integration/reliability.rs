//! The reliability suite's fast part: duplicate deliveries, forged input, dependency faults,
//! contention, and a failed audit write. (The kill -9 test is `tests/crash.rs`.)

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use chrono::Duration;
use jit::domain::request::State;
use jit::slack::simulator::Fault;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use serde_json::json;
use tower::ServiceExt;

use crate::harness::*;

driver_tests! {
    async fn duplicate_and_concurrent_deliveries_make_one_decision_and_one_grant() {
        let h = Harness::start().await;
        let mut ids = Vec::new();
        for i in 0..100 {
            ids.push(h.request_access(DEV, &format!("db 1h task {i}")).await);
        }
        h.run_jobs().await;
        for chunk in ids.chunks(10) {
            let mut clicks = Vec::new();
            for id in chunk {
                for k in 0..10 {
                    let who = if k % 2 == 0 { ALICE } else { BOB };
                    let payload =
                        Harness::click_payload(who, "jit.approve", &id.0.to_string(), APPROVALS);
                    let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
                    let (ts, sig) = h.sign(&body);
                    let mut request = h
                        .http
                        .post(format!("{}/slack/interactions", h.url))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("x-slack-request-timestamp", ts)
                        .header("x-slack-signature", sig)
                        .body(body);
                    // Slack's redeliveries of the same click.
                    if k >= 8 {
                        request = request
                            .header("x-slack-retry-num", (k - 7).to_string())
                            .header("x-slack-retry-reason", "http_timeout");
                    }
                    clicks.push(request.send());
                }
            }
            for response in futures::future::join_all(clicks).await {
                assert_eq!(response.unwrap().status(), 200);
            }
        }
        h.run_jobs().await;
        let calls = h.provider_calls();
        for id in &ids {
            assert_eq!(h.state(*id).await, State::Active, "{id}");
            let events = h.audit_events(*id).await;
            assert_eq!(
                events.iter().filter(|e| *e == "approved").count(),
                1,
                "{id}: {events:?}"
            );
            let grants = calls
                .iter()
                .filter(|c| c["request_id"] == id.0 && c["action"] == "grant")
                .count();
            assert_eq!(grants, 1, "{id}");
        }
        let mut conn = h.app.store.read().await.unwrap();
        let grant_jobs: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'grant'"
        )
        .fetch_one(&mut *c)
        .await)
        .unwrap();
        assert_eq!(grant_jobs, 100);
    }
}

/// One way to damage a valid signed request.
fn mutate(
    rng: &mut StdRng,
    body: &str,
    ts: &str,
    sig: &str,
    now: i64,
) -> (String, Option<String>, Option<String>, &'static str) {
    let flip = |rng: &mut StdRng, text: &str| -> String {
        let mut bytes = text.as_bytes().to_vec();
        let i = rng.random_range(0..bytes.len());
        let mut b = bytes[i];
        while b == bytes[i] {
            b = rng.random_range(0x20..0x7f);
        }
        bytes[i] = b;
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let body = body.to_owned();
    let (ts, sig) = (Some(ts.to_owned()), Some(sig.to_owned()));
    match rng.random_range(0..14) {
        0 => (
            body,
            ts,
            Some(flip(rng, &sig.unwrap()[3..]).to_string()).map(|s| format!("v0={s}")),
            "signature byte",
        ),
        1 => (
            body,
            ts,
            sig.map(|s| s[..rng.random_range(0..s.len())].to_owned()),
            "truncated signature",
        ),
        2 => (
            body,
            ts,
            sig.map(|s| s.replacen("v0=", "v1=", 1)),
            "signature version",
        ),
        3 => (
            body,
            ts,
            sig.map(|s| s.to_uppercase()),
            "upper-case signature",
        ),
        4 => (body, ts, None, "no signature"),
        5 => (body, None, sig, "no timestamp"),
        6 => {
            let skew = rng.random_range(301..1_000_000) * if rng.random_bool(0.5) { 1 } else { -1 };
            (
                body,
                Some((now + skew).to_string()),
                sig,
                "stale or future timestamp",
            )
        }
        7 => (body, ts.map(|t| format!("{t}.0")), sig, "timestamp format"),
        8 => (
            body,
            Some((now + rng.random_range(1..300)).to_string()),
            sig,
            "other timestamp in window",
        ),
        9 => (flip(rng, &body), ts, sig, "body byte"),
        10 => {
            let cut = rng.random_range(0..body.len());
            (body[..cut].to_owned(), ts, sig, "truncated body")
        }
        11 => (
            format!("{body}&x={}", rng.random::<u32>()),
            ts,
            sig,
            "appended field",
        ),
        12 => (
            body.replace("%2F", "/").replace('+', "%20"),
            ts,
            sig,
            "re-encoded body",
        ),
        _ => {
            let other = jit::slack::verify::sign(
                &SecretString::from("not-our-secret"),
                now,
                body.as_bytes(),
            );
            (body, ts, Some(other), "signed with another secret")
        }
    }
}

driver_tests! {
    async fn ten_thousand_forged_requests_are_all_refused_and_valid_ones_accepted() {
        let h = Harness::start().await;
        let router = jit::server::router(h.app.clone());
        let now = h.clock_now().timestamp();
        let interaction = serde_urlencoded::to_string([(
            "payload",
            Harness::click_payload(ALICE, "jit.approve", "1", APPROVALS).to_string(),
        )])
        .unwrap();
        let valid: Vec<(&str, &str, String)> = vec![
            (
                "/slack/commands",
                "application/x-www-form-urlencoded",
                "token=x&team_id=T0JITSIM&channel_id=C0GENERAL&user_id=U0DEV&command=%2Fjit&text=request+db+1h+forged%2Fnot&trigger_id=1.2.3".into(),
            ),
            ("/slack/interactions", "application/x-www-form-urlencoded", interaction),
            ("/slack/events", "application/json", json!({"type": "url_verification", "challenge": "c"}).to_string()),
        ];
        let send =
            |path: &str, content_type: &str, body: String, ts: Option<String>, sig: Option<String>| {
                let mut request = axum::http::Request::post(path).header("content-type", content_type);
                if let Some(ts) = ts {
                    request = request.header("x-slack-request-timestamp", ts);
                }
                if let Some(sig) = sig {
                    request = request.header("x-slack-signature", sig);
                }
                router
                    .clone()
                    .oneshot(request.body(Body::from(body)).unwrap())
            };
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        let mut tried = 0;
        while tried < 10_000 {
            let (path, content_type, body) = &valid[tried % valid.len()];
            let ts = now.to_string();
            let sig =
                jit::slack::verify::sign(&SecretString::from(SIGNING_SECRET), now, body.as_bytes());
            let (m_body, m_ts, m_sig, kind) = mutate(&mut rng, body, &ts, &sig, now);
            if m_body == *body
                && m_ts.as_deref() == Some(ts.as_str())
                && m_sig.as_deref() == Some(sig.as_str())
            {
                continue; // not a mutation
            }
            let response = send(path, content_type, m_body, m_ts, m_sig).await.unwrap();
            assert!(
                response.status() == 401 || response.status() == 413,
                "{kind} on {path} was answered {}",
                response.status()
            );
            *kinds.entry(kind).or_default() += 1;
            tried += 1;
        }
        assert_eq!(
            kinds.len(),
            14,
            "every kind of mutation was tried: {kinds:?}"
        );
        let mut conn = h.app.store.read().await.unwrap();
        assert!(
            jit::store::requests::list(&mut conn, false, 10)
                .await
                .unwrap()
                .is_empty(),
            "nothing forged was stored"
        );
        drop(conn);
        // The same requests, correctly signed, are accepted.
        for (path, content_type, body) in &valid {
            let sig =
                jit::slack::verify::sign(&SecretString::from(SIGNING_SECRET), now, body.as_bytes());
            let response = send(
                path,
                content_type,
                body.clone(),
                Some(now.to_string()),
                Some(sig),
            )
            .await
            .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
        let mut conn = h.app.store.read().await.unwrap();
        assert_eq!(
            jit::store::requests::list(&mut conn, false, 10)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}

driver_tests! {
    async fn slack_and_provider_faults_lose_nothing_and_duplicate_nothing() {
        let h = Harness::with_options(Options {
            slack_timeout: std::time::Duration::from_millis(300),
            ..Options::default()
        })
        .await;
        // Slack answers 500, 429 and hangs longer than jit waits; the provider fails now and then.
        h.slack
            .inject("chat.postMessage", Fault::ServerError(500), 3);
        h.slack.inject(
            "chat.postMessage",
            Fault::RateLimited {
                retry_after_secs: 5,
            },
            2,
        );
        h.slack.inject(
            "chat.postMessage",
            Fault::Hang(std::time::Duration::from_secs(2)),
            2,
        );
        h.slack
            .inject("conversations.open", Fault::ServerError(503), 2);
        h.slack.inject(
            "chat.update",
            Fault::Hang(std::time::Duration::from_secs(2)),
            1,
        );
        h.fail_provider(2, 75);
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(h.request_access(DEV, &format!("db 1h faulty {i}")).await);
        }
        for _ in 0..40 {
            h.advance_and_run(Duration::seconds(15)).await;
            for id in &ids {
                if h.state(*id).await == State::Pending {
                    h.click(ALICE, "jit.approve", *id).await;
                }
            }
        }
        // Slack recovers; time passes beyond every grant.
        h.slack.clear_faults();
        for _ in 0..30 {
            h.advance_and_run(Duration::minutes(5)).await;
        }
        let mut conn = h.app.store.read().await.unwrap();
        let stuck: Vec<(String, String, Option<String>)> =
            jit::store::on!(&mut conn, |c| sqlx::query_as(
                "SELECT kind, state, last_error FROM jobs WHERE state <> 'done'"
            )
            .fetch_all(&mut *c)
            .await)
            .unwrap();
        assert!(stuck.is_empty(), "every job finished: {stuck:?}");
        drop(conn);
        for id in &ids {
            let request = h.request(*id).await;
            assert_eq!(request.state, State::Expired, "{id}");
            assert!(request.revoked_at.is_some(), "{id}: torn down");
        }
        // Every audit event reached its thread exactly once (a reply may carry several events
        // while the audit channel is backed up: each shows its own `audit #N` line).
        let mut conn = h.app.store.read().await.unwrap();
        let events = jit::store::audit::page(&mut conn, 0, 10_000).await.unwrap();
        let mut posted: HashMap<String, usize> = HashMap::new();
        for root in h.slack.messages(AUDIT) {
            for reply in h.slack.thread(AUDIT, &root.ts) {
                let rendered = reply.rendered();
                let markers: Vec<&str> = rendered
                    .lines()
                    .filter_map(|line| line.split(" · ").nth(1))
                    .filter(|part| part.starts_with("audit #"))
                    .collect();
                assert!(!markers.is_empty(), "a reply without an event: {rendered}");
                for marker in markers {
                    *posted.entry(marker.to_owned()).or_default() += 1;
                }
            }
        }
        for event in &events {
            assert_eq!(
                posted.get(&format!("audit #{}", event.seq)),
                Some(&1),
                "event {} ({}) posted once",
                event.seq,
                event.event
            );
        }
        // One approval message per request, one DM of each kind per request.
        assert_eq!(h.slack.messages(APPROVALS).len(), ids.len());
        let dms = h.dm_texts(DEV);
        for id in &ids {
            let about: Vec<&String> = dms
                .iter()
                .filter(|d| {
                    d.contains(&format!("request {id}")) || d.contains(&format!("request {id} "))
                })
                .collect();
            let unique: HashSet<&&String> = about.iter().collect();
            assert_eq!(
                about.len(),
                unique.len(),
                "no DM twice for {id}: {about:#?}"
            );
        }
        let revokes: usize = h
            .provider_calls()
            .iter()
            .filter(|c| c["action"] == "revoke" && c.get("failed").is_none())
            .count();
        assert_eq!(revokes, ids.len(), "every teardown completed, once");
    }
}

driver_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handlers_worker_and_cli_writing_at_once() {
        let logs = logs();
        // The CLI runs on the wall clock: start the harness clock there too. The harness clock
        // jumps a minute below while jobs run; with the 5 s default lease that jump alone would
        // make the running jobs look dead (what a jump past the lease does is the lease tests'
        // subject), so this test leases for two minutes.
        let h = Harness::with_options(Options {
            start: chrono::Utc::now(),
            lease: std::time::Duration::from_secs(120),
            ..Options::default()
        })
        .await;
        let policy_file = h._dir.path().join("jit.toml");
        std::fs::write(
            &policy_file,
            POLICY
                .replace("{log}", h.provider_log.to_str().unwrap())
                .replace(
                    "{script}",
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/scripts/provider.py")
                        .to_str()
                        .unwrap(),
                ),
        )
        .unwrap();
        // Twenty active grants for the CLI to revoke while everything else runs.
        let mut victims = Vec::new();
        for i in 0..20 {
            victims.push(
                h.request_access(ONCALL, &format!("db 30m victim {i}"))
                    .await,
            );
        }
        h.run_jobs().await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(jit::handlers::jobs::run(h.app.clone(), stopped));
        let cli = {
            let (db, policy) = (h.db.url(), policy_file.clone());
            let victims = victims.clone();
            tokio::task::spawn_blocking(move || {
                victims
                    .iter()
                    .map(|id| {
                        std::process::Command::new(env!("CARGO_BIN_EXE_jit"))
                            .args([
                                "grants",
                                "revoke",
                                &id.0.to_string(),
                                "--reason",
                                "contention drill",
                            ])
                            .env_clear()
                            .env("JIT_DATABASE_URL", &db)
                            .env("JIT_SQLITE_SYNCHRONOUS", "normal")
                            .env("JIT_POLICY", &policy)
                            .env("JIT_AUDIT_KEY", AUDIT_KEY_HEX)
                            .output()
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        };
        let texts: Vec<String> = (0..150)
            .map(|i| format!("request db 30m load {i}"))
            .collect();
        let mut slashes = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            slashes.push(h.slash(if i % 3 == 0 { ONCALL } else { DEV }, text));
        }
        let replies = futures::future::join_all(slashes).await;
        let outputs = cli.await.unwrap();
        // The CLI moved the teardowns to its "now"; let the harness clock catch up with it.
        h.advance(Duration::minutes(1));
        h.app.waker.wake();
        for reply in &replies {
            assert_eq!(reply.status, 200);
            assert!(
                reply.text().starts_with(":inbox_tray:") || reply.text().starts_with(":zap:"),
                "{}",
                reply.text()
            );
        }
        for out in &outputs {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Let the worker finish what is due (one person's access to one resource is one lane, so
        // their grants and revokes run one at a time).
        let mut settled = false;
        for _ in 0..1200 {
            let mut conn = h.app.store.read().await.unwrap();
            let due: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('queued','running') AND run_at <= $1",
            )
            .bind(h.clock_now().timestamp_millis())
            .fetch_one(&mut *c)
            .await)
            .unwrap();
            if due == 0 {
                settled = true;
                break;
            }
            drop(conn);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(
            settled,
            "the worker did not finish the due jobs within a minute"
        );
        let _ = stop.send(true);
        h.app.waker.wake();
        worker.await.unwrap();
        for id in &victims {
            let request = h.request(*id).await;
            assert_eq!(request.state, State::Revoked, "{id}");
            assert!(request.revoked_at.is_some(), "{id}");
        }
        // No double claim: each request's access was granted once and revoked once.
        let calls = h.provider_calls();
        for id in &victims {
            let actions = h.provider_actions(*id);
            assert_eq!(actions, ["grant", "revoke"], "{id}: {calls:?}");
        }
        let text = logs.text();
        assert!(
            !text.contains("database is locked") && !text.contains("SQLITE_BUSY"),
            "no surfaced SQLITE_BUSY"
        );
        let mut conn = h.app.store.read().await.unwrap();
        let stale: i64 = jit::store::on!(&mut conn, |c| sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'done' AND attempts > 1 AND kind IN ('grant', 'revoke')")
            .fetch_one(&mut *c)
            .await)
            .unwrap();
        assert_eq!(stale, 0, "no grant or revoke ran twice");
    }
}

driver_tests! {
    async fn a_failed_audit_write_blocks_the_action() {
        let h = Harness::start().await;
        let id = h.request_access(DEV, "db 1h audited").await;
        h.run_jobs().await;
        h.break_audit_writes().await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(
            h.state(id).await,
            State::Pending,
            "no approval without its audit record"
        );
        assert!(h.provider_actions(id).is_empty(), "no grant");
        let told = h.ephemeral_texts(ALICE);
        assert!(
            told.last()
                .unwrap()
                .starts_with("Something went wrong inside jit, and nothing was changed."),
            "{told:?}"
        );
        h.sql(match h.driver() {
            jit::store::Driver::Sqlite => "DROP TRIGGER audit_full",
            jit::store::Driver::Postgres => "DROP TRIGGER audit_full ON audit_log",
        })
        .await;
        h.click(ALICE, "jit.approve", id).await;
        h.run_jobs().await;
        assert_eq!(h.state(id).await, State::Active);
    }
}
