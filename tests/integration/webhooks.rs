//! Signed event webhooks: a real HTTP receiver in the test takes jit's POSTs, checks each
//! signature the way the README tells receivers to, and can refuse on demand.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Duration;
use secrecy::SecretString;
use serde_json::Value;

use crate::harness::*;

#[derive(Default)]
struct Received {
    /// (event id, type, seq, signature verified)
    events: Vec<(String, String, i64, bool)>,
    /// Answer this many POSTs with 500 before taking any.
    refuse: usize,
    refused: usize,
}

type Shared = Arc<Mutex<(Received, jit::clock::ManualClock)>>;

async fn hook(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut guard = shared.lock().unwrap();
    let (received, clock) = &mut *guard;
    if received.refuse > 0 {
        received.refuse -= 1;
        received.refused += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let verified = jit::webhooks::verify(
        &SecretString::from(WEBHOOK_SECRET),
        &header("x-jit-request-timestamp"),
        &body,
        &header("x-jit-signature"),
        jit::clock::Clock::wall(clock),
    );
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(header("x-jit-event-id"), event["id"].as_str().unwrap());
    received.events.push((
        event["id"].as_str().unwrap().to_owned(),
        event["type"].as_str().unwrap().to_owned(),
        event["seq"].as_i64().unwrap(),
        verified,
    ));
    StatusCode::NO_CONTENT
}

async fn receiver(clock: jit::clock::ManualClock) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new((Received::default(), clock)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, shared)
}

fn policy_with_hook(url: &str) -> String {
    format!(
        "{POLICY}\n[[webhook]]\nurl = \"{url}\"\nevents = [\"request.*\", \"grant.*\"]\nsecret_env = \"TEST_HOOK_SECRET\"\n"
    )
}

/// Runs due jobs, stepping the clock past the webhook's poll and any backoff, `rounds` times.
async fn settle(h: &Harness, rounds: usize) {
    for _ in 0..rounds {
        h.advance_and_run(Duration::seconds(10)).await;
    }
}

driver_tests! {
    /// Every request and grant event goes out once, in order, signed; other families do not;
    /// a receiver's refusals delay events and drop none; a restart goes on from where the
    /// webhook left off, sending nothing twice.
    async fn events_are_posted_signed_in_order_once_and_survive_refusals_and_restarts() {
        let start = jit::clock::ManualClock::new(t0());
        let (url, received) = receiver(start.clone()).await;
        let h = Harness::with_options(Options {
            policy: policy_with_hook(&url),
            ..Options::default()
        })
        .await;
        // The receiver checks timestamps against the harness's clock.
        received.lock().unwrap().1 = h.clock.clone();
        jit::webhooks::schedule(&h.app).await.unwrap();
        h.run_jobs().await;

        let id = h.request_access(DEV, "db 1h webhook lifecycle").await;
        h.click(ALICE, "jit.approve", id).await;
        // A token event: not a family this webhook asked for.
        jit::handlers::identity::create_token(&h.app.store, &h.app.policy, "ci", "cli:test", h.clock_now())
            .await
            .unwrap();
        settle(&h, 3).await;
        let first: Vec<(String, String, i64, bool)> = received.lock().unwrap().0.events.clone();
        let types: Vec<&str> = first.iter().map(|e| e.1.as_str()).collect();
        assert!(
            types.starts_with(&["request.requested", "request.approved", "grant.granted"]),
            "{types:?}"
        );
        assert!(first.iter().all(|e| e.3), "every signature verifies: {first:?}");
        assert!(types.iter().all(|t| !t.starts_with("token.")), "{types:?}");
        assert!(first.windows(2).all(|w| w[0].2 < w[1].2), "in order: {first:?}");
        assert!(first.iter().all(|e| e.0 == format!("jit-{}", e.2)), "stable ids");

        // The receiver refuses the next three POSTs: the events wait, then all arrive, once.
        received.lock().unwrap().0.refuse = 3;
        h.click(DEV, "jit.release", id).await;
        settle(&h, 12).await;
        let all: Vec<(String, String, i64, bool)> = received.lock().unwrap().0.events.clone();
        assert_eq!(received.lock().unwrap().0.refused, 3);
        let ids: Vec<&String> = all.iter().map(|e| &e.0).collect();
        let unique: std::collections::BTreeSet<&String> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "nothing sent twice: {ids:?}");
        let types: Vec<&str> = all.iter().map(|e| e.1.as_str()).collect();
        assert!(types.contains(&"grant.released") && types.contains(&"grant.torn_down"), "{types:?}");

        // A restart (another app on the same database) goes on from the cursor.
        let restarted = h.replica().await;
        jit::webhooks::schedule(&restarted.app).await.unwrap();
        let before = all.len();
        let second = restarted.request_access(DEV, "db 1h after the restart").await;
        for _ in 0..3 {
            restarted.advance_and_run(Duration::seconds(10)).await;
        }
        let after: Vec<(String, String, i64, bool)> = received.lock().unwrap().0.events.clone();
        assert!(after.len() > before, "the new request's event arrived");
        let ids: Vec<&String> = after.iter().map(|e| &e.0).collect();
        let unique: std::collections::BTreeSet<&String> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "nothing sent twice across the restart");
        let mut conn = restarted.app.store.read().await.unwrap();
        let requested = jit::store::audit::for_request(&mut conn, second).await.unwrap();
        assert!(after.iter().any(|e| e.2 == requested[0].seq));
    }

    /// A webhook that keeps failing is reported once, loudly, in the audit channel; its events
    /// still wait.
    async fn a_failing_webhook_is_reported_and_loses_nothing() {
        let (url, received) = receiver(jit::clock::ManualClock::new(t0())).await;
        let h = Harness::with_options(Options {
            policy: policy_with_hook(&url),
            ..Options::default()
        })
        .await;
        received.lock().unwrap().1 = h.clock.clone();
        jit::webhooks::schedule(&h.app).await.unwrap();
        h.run_jobs().await;
        received.lock().unwrap().0.refuse = 1_000;
        let id = h.request_access(DEV, "db 1h unreachable receiver").await;
        for _ in 0..12 {
            h.advance_and_run(Duration::minutes(5)).await;
        }
        let mut conn = h.app.store.read().await.unwrap();
        let rows = jit::store::audit::page(&mut conn, 0, 1000).await.unwrap();
        let alerts: Vec<_> = rows.iter().filter(|r| r.event == "webhook_failing").collect();
        assert_eq!(alerts.len(), 1, "reported once: {alerts:?}");
        assert!(
            h.slack
                .messages(AUDIT)
                .iter()
                .any(|m| m.rendered().contains("has failed 5 times in a row")),
            "the audit channel is told"
        );
        // The receiver comes back: the waiting events all arrive.
        received.lock().unwrap().0.refuse = 0;
        for _ in 0..8 {
            h.advance_and_run(Duration::minutes(5)).await;
        }
        let events = received.lock().unwrap().0.events.clone();
        let requested = jit::store::audit::for_request(&mut conn, id).await.unwrap();
        assert!(events.iter().any(|e| e.2 == requested[0].seq), "{events:?}");
    }
}
