//! Socket Mode end to end: a local stand-in for Slack serves `apps.connections.open` over HTTP and
//! speaks the Socket Mode protocol (hello, envelopes, acknowledgements, disconnect) over a real
//! WebSocket; jit's client connects to it and answers through the same handlers as HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::{TimeZone, Utc};
use futures::{SinkExt, StreamExt};
use jit::app::{App, Settings};
use jit::bootstrap::{self, Parts};
use jit::clock::ManualClock;
use jit::crypto::Cipher;
use jit::domain::ids::RequestId;
use jit::domain::policy::Policy;
use jit::domain::request::State as RequestState;
use jit::providers::Providers;
use jit::slack::simulator::FakeSlack;
use jit::slack::socket;
use jit::store::{Durability, Store};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/db.rs"]
mod db;

const BOT_TOKEN: &str = "xoxb-test-token";
const APP_TOKEN: &str = "xapp-1-test-app-token";
const DEV: &str = "U0DEV";
const WAIT: Duration = Duration::from_secs(10);

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0ADMIN"] }

[[resource]]
id = "sandbox"
description = "A sandbox with nothing to grant"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

type Ws = WebSocketStream<TcpStream>;

/// What the stand-in for Slack shares with its HTTP route.
struct Opener {
    ws_url: String,
    opens: AtomicUsize,
    /// Calls answered `{"ok":false}` before the first success.
    failures: usize,
    bad_tokens: AtomicUsize,
}

async fn connections_open(State(opener): State<Arc<Opener>>, headers: HeaderMap) -> Json<Value> {
    let n = opener.opens.fetch_add(1, Ordering::SeqCst) + 1;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {APP_TOKEN}") {
        opener.bad_tokens.fetch_add(1, Ordering::SeqCst);
        return Json(json!({"ok": false, "error": "invalid_auth"}));
    }
    if n <= opener.failures {
        return Json(json!({"ok": false, "error": "internal_error"}));
    }
    Json(json!({"ok": true, "url": format!("{}/link/?ticket=T{n}", opener.ws_url)}))
}

/// A jit app on a temporary database, its Socket Mode client, and the stand-in Slack it talks to.
struct Rig {
    app: Arc<App>,
    opener: Arc<Opener>,
    sockets: mpsc::UnboundedReceiver<Ws>,
    stop: watch::Sender<bool>,
    client: tokio::task::JoinHandle<()>,
    _slack: FakeSlack,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(failures: usize) -> Rig {
        Self::with(failures, |_| {}).await
    }

    async fn with(failures: usize, tweak: impl FnOnce(&mut socket::Options)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("jit.db").display());
        Self::on(&url, dir, failures, tweak).await
    }

    /// A rig whose jit uses the database at `url` (several rigs on one PostgreSQL database are
    /// replicas).
    async fn on(
        url: &str,
        dir: tempfile::TempDir,
        failures: usize,
        tweak: impl FnOnce(&mut socket::Options),
    ) -> Rig {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let policy = Policy::parse(POLICY, &|p: &str| std::fs::read_to_string(p)).unwrap();
        let slack = FakeSlack::start(BOT_TOKEN).await.unwrap();
        slack.set_user("U0DEV", "dev", Some("dev@example.com"));
        let store = Store::connect(url, Durability::Normal).await.unwrap();
        store.migrate().await.unwrap();
        store
            .open_audit_chain(
                jit::crypto::AuditKey::from_bytes([3; 32]),
                Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap(),
            )
            .await
            .unwrap();
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap());
        let (providers, external) = Providers::with_local(policy.resources(), None);
        assert!(external.is_empty());
        let app = bootstrap::build(Parts {
            policy,
            store,
            clock: Arc::new(clock),
            slack_api_url: slack.api_url(),
            bot_token: SecretString::from(BOT_TOKEN),
            signing_secrets: vec![SecretString::from("unused-in-socket-mode")],
            cipher: Cipher::from_bytes(&[7u8; 32]),
            providers,
            settings: Settings::default(),
            posts_per_channel_per_second: std::num::NonZeroU32::new(1000).unwrap(),
            webhooks: None,
            pagerduty: None,
        })
        .unwrap();
        app.directory
            .refresh_all(&jit::slack::directory::groups_in(&app.policy))
            .await;

        // The WebSocket side: every accepted connection is handed to the test.
        let ws_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_url = format!("ws://{}", ws_listener.local_addr().unwrap());
        let (accepted, sockets) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = ws_listener.accept().await {
                if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await
                    && accepted.send(ws).is_err()
                {
                    break;
                }
            }
        });

        // The Web API side: apps.connections.open only.
        let opener = Arc::new(Opener {
            ws_url,
            opens: AtomicUsize::new(0),
            failures,
            bad_tokens: AtomicUsize::new(0),
        });
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}/api", api.local_addr().unwrap());
        let router = axum::Router::new()
            .route("/api/apps.connections.open", post(connections_open))
            .with_state(opener.clone());
        tokio::spawn(async move {
            axum::serve(api, router).await.unwrap();
        });

        let mut options = socket::Options::new(api_url, SecretString::from(APP_TOKEN));
        options.min_backoff = Duration::from_millis(20);
        options.max_backoff = Duration::from_millis(200);
        tweak(&mut options);
        let (stop, stopped) = watch::channel(false);
        let client = tokio::spawn(socket::run(app.clone(), options, stopped));
        Rig {
            app,
            opener,
            sockets,
            stop,
            client,
            _slack: slack,
            _dir: dir,
        }
    }

    /// The next WebSocket connection jit opens.
    async fn next_socket(&mut self) -> Ws {
        tokio::time::timeout(WAIT, self.sockets.recv())
            .await
            .expect("jit connects within the wait")
            .expect("the listener is running")
    }

    fn opens(&self) -> usize {
        self.opener.opens.load(Ordering::SeqCst)
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

async fn hello(ws: &mut Ws) {
    send(
        ws,
        json!({
            "type": "hello",
            "num_connections": 1,
            "connection_info": {"app_id": "A0JIT"},
            "debug_info": {"host": "applink-test", "approximate_connection_time": 18060}
        }),
    )
    .await;
}

fn envelope(kind: &str, id: &str, payload: Value) -> Value {
    json!({
        "envelope_id": id,
        "type": kind,
        "payload": payload,
        "accepts_response_payload": kind != "events_api",
        "retry_attempt": 0,
        "retry_reason": ""
    })
}

/// A slash command as Socket Mode delivers it: the HTTP form's fields as a JSON object.
fn slash(text: &str) -> Value {
    json!({
        "token": "deprecated-verification-token",
        "team_id": "T0JITSIM",
        "team_domain": "example",
        "channel_id": "C0GENERAL",
        "channel_name": "general",
        "user_id": DEV,
        "user_name": "dev",
        "command": "/jit",
        "text": text,
        "api_app_id": "A0JIT",
        "is_enterprise_install": "false",
        "response_url": "https://hooks.slack.com/commands/T0001/1/abc",
        "trigger_id": "1.2.abc"
    })
}

/// The next text frame (pings and pongs skipped), as JSON; `None` once the connection closes.
async fn next_frame(ws: &mut Ws) -> Option<Value> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).unwrap());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("a frame or a close within the wait")
}

/// The next acknowledgement. Its `payload` is what Slack shows the person (a slash command's
/// reply, a submission's `response_action`): it must be within Slack's limits, checked with the
/// validator the simulator and the HTTP driver use.
async fn ack(ws: &mut Ws) -> Value {
    let frame = next_frame(ws).await.expect("an acknowledgement");
    if let Some(payload) = frame.get("payload") {
        let found = jit::slack::limits::check_reply(payload);
        assert!(
            found.is_empty(),
            "Slack would refuse this acknowledgement's payload: {:?}",
            found.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
    }
    frame
}

fn id_in(text: &str) -> RequestId {
    let start = text.find('#').expect("a request id in the reply");
    let digits: String = text[start + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    RequestId(digits.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_answered_through_the_handlers_across_reconnects() {
    let mut rig = Rig::start(0).await;

    // 1. A request typed as /jit over the first connection: stored, answered in the ack.
    let mut first = rig.next_socket().await;
    hello(&mut first).await;
    send(
        &mut first,
        envelope(
            "slash_commands",
            "env-1",
            slash("request sandbox 1h checking socket mode"),
        ),
    )
    .await;
    let answer = ack(&mut first).await;
    assert_eq!(answer["envelope_id"], "env-1");
    assert_eq!(answer["payload"]["response_type"], "ephemeral");
    let text = answer["payload"]["text"].as_str().unwrap().to_owned();
    assert!(text.contains("sandbox"), "{text}");
    assert!(answer["payload"]["blocks"].is_array());
    let id = id_in(&text);
    let stored = {
        let mut conn = rig.app.store.read().await.unwrap();
        jit::store::requests::get(&mut conn, id)
            .await
            .unwrap()
            .expect("the request was stored")
    };
    assert_eq!(stored.request.resource.as_str(), "sandbox");
    assert_eq!(stored.request.state, RequestState::Pending);
    assert_eq!(stored.request.justification, "checking socket mode");
    assert_eq!(rig.opens(), 1);

    // 2. The server drops the connection: jit opens a new one by itself.
    first.close(None).await.unwrap();
    drop(first);
    let mut second = rig.next_socket().await;
    assert_eq!(rig.opens(), 2);
    hello(&mut second).await;
    send(
        &mut second,
        envelope("slash_commands", "env-2", slash("help")),
    )
    .await;
    let answer = ack(&mut second).await;
    assert_eq!(answer["envelope_id"], "env-2");
    assert_eq!(answer["payload"]["response_type"], "ephemeral");
    assert!(
        answer["payload"]["text"]
            .as_str()
            .unwrap()
            .contains("just-in-time"),
        "{answer}"
    );

    // A view submission's ack carries the handler's response_action body.
    let mut submission: Value =
        serde_json::from_str(include_str!("fixtures/slack/view-submission.json")).unwrap();
    submission["user"]["id"] = json!(DEV);
    submission["team"]["id"] = json!(jit::slack::simulator::TEAM_ID);
    submission["view"]["callback_id"] = json!("jit.request_modal");
    submission["view"]["state"]["values"] = json!({});
    send(&mut second, envelope("interactive", "env-3", submission)).await;
    let answer = ack(&mut second).await;
    assert_eq!(answer["envelope_id"], "env-3");
    assert_eq!(answer["payload"]["response_action"], "errors");
    assert!(answer["payload"]["errors"]["resource"].is_string());

    // An event is acknowledged without a payload.
    let event = json!({
        "type": "event_callback",
        "team_id": "T0JITSIM",
        "event_id": "Ev1",
        "event": {"type": "app_home_opened", "user": DEV, "tab": "home", "channel": "D0DEV"}
    });
    send(&mut second, envelope("events_api", "env-4", event)).await;
    assert_eq!(ack(&mut second).await, json!({"envelope_id": "env-4"}));

    // A payload jit cannot read is still acknowledged, so Slack does not redeliver it.
    send(
        &mut second,
        envelope("slash_commands", "env-5", json!({"nothing": "useful"})),
    )
    .await;
    assert_eq!(ack(&mut second).await, json!({"envelope_id": "env-5"}));

    // 3. Slack asks for a refresh: jit connects again before letting the old connection go.
    send(
        &mut second,
        json!({"type": "disconnect", "reason": "refresh_requested", "debug_info": {"host": "applink-test"}}),
    )
    .await;
    let mut third = rig.next_socket().await;
    assert_eq!(rig.opens(), 3);
    // Until the new connection is greeted, the old one still answers.
    send(
        &mut second,
        envelope("slash_commands", "env-6", slash("help")),
    )
    .await;
    assert_eq!(ack(&mut second).await["envelope_id"], "env-6");
    hello(&mut third).await;
    assert_eq!(
        next_frame(&mut second).await,
        None,
        "the replaced connection is closed once its successor is up"
    );
    send(
        &mut third,
        envelope(
            "slash_commands",
            "env-7",
            slash("request sandbox 2h second request"),
        ),
    )
    .await;
    let answer = ack(&mut third).await;
    assert_eq!(answer["envelope_id"], "env-7");
    let second_id = id_in(answer["payload"]["text"].as_str().unwrap());
    assert_ne!(second_id, id);

    // 4. Shutdown closes the connection and ends the client.
    rig.stop.send(true).unwrap();
    assert_eq!(next_frame(&mut third).await, None);
    tokio::time::timeout(WAIT, &mut rig.client)
        .await
        .expect("the client stops on shutdown")
        .unwrap();
    assert_eq!(rig.opener.bad_tokens.load(Ordering::SeqCst), 0);
}

async fn request_count(app: &Arc<App>) -> usize {
    let mut conn = app.store.read().await.unwrap();
    jit::store::requests::list(&mut conn, false, 1000)
        .await
        .unwrap()
        .len()
}

/// Slack redelivers an envelope it saw no acknowledgement for, with the same `envelope_id`
/// (on the same connection or a new one). A redelivery has no second effect and gets the first
/// acknowledgement's payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_envelope_has_one_effect() {
    let mut rig = Rig::start(0).await;
    let mut ws = rig.next_socket().await;
    hello(&mut ws).await;
    let delivery = envelope(
        "slash_commands",
        "env-redelivered",
        slash("request sandbox 1h delivered twice"),
    );
    send(&mut ws, delivery.clone()).await;
    let first = ack(&mut ws).await;
    assert_eq!(first["envelope_id"], "env-redelivered");
    let text = first["payload"]["text"].as_str().unwrap().to_owned();
    assert!(text.contains("sandbox"), "{text}");
    assert_eq!(request_count(&rig.app).await, 1);

    // The same envelope again, as Slack's retry: on the same connection, ...
    let mut retry = delivery.clone();
    retry["retry_attempt"] = json!(1);
    retry["retry_reason"] = json!("timeout");
    send(&mut ws, retry.clone()).await;
    assert_eq!(ack(&mut ws).await, first, "the first acknowledgement");
    // ... and on a new connection after the old one dropped.
    ws.close(None).await.unwrap();
    drop(ws);
    let mut next = rig.next_socket().await;
    hello(&mut next).await;
    retry["retry_attempt"] = json!(2);
    send(&mut next, retry).await;
    assert_eq!(ack(&mut next).await, first);
    assert_eq!(request_count(&rig.app).await, 1, "one request, not three");

    // Another envelope with the same command text is a new delivery, and a new request.
    send(
        &mut next,
        envelope(
            "slash_commands",
            "env-other",
            slash("request sandbox 1h delivered twice"),
        ),
    )
    .await;
    let other = ack(&mut next).await;
    assert_ne!(
        id_in(other["payload"]["text"].as_str().unwrap()),
        id_in(&text)
    );
    assert_eq!(request_count(&rig.app).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connection_opens_are_retried_with_backoff() {
    let mut rig = Rig::start(2).await;
    let mut ws = rig.next_socket().await;
    assert_eq!(rig.opens(), 3, "two failures, then a connection");
    hello(&mut ws).await;
    send(&mut ws, envelope("slash_commands", "env-1", slash("help"))).await;
    assert_eq!(ack(&mut ws).await["envelope_id"], "env-1");
    rig.stop.send(true).unwrap();
    tokio::time::timeout(WAIT, &mut rig.client)
        .await
        .expect("the client stops on shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_envelopes_are_each_answered_and_shutdown_does_not_reconnect() {
    let mut rig = Rig::start(0).await;
    let mut ws = rig.next_socket().await;
    hello(&mut ws).await;
    for n in 0..5 {
        send(
            &mut ws,
            envelope("slash_commands", &format!("env-{n}"), slash("help")),
        )
        .await;
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(
            ack(&mut ws).await["envelope_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    seen.sort();
    assert_eq!(seen, ["env-0", "env-1", "env-2", "env-3", "env-4"]);
    rig.stop.send(true).unwrap();
    assert_eq!(next_frame(&mut ws).await, None);
    tokio::time::timeout(WAIT, &mut rig.client)
        .await
        .expect("the client stops on shutdown")
        .unwrap();
    assert_eq!(rig.opens(), 1, "no reconnect after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced() {
    let mut rig = Rig::with(0, |options| {
        options.ping_interval = Duration::from_millis(50);
        options.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // This side never reads, so jit's pings go unanswered.
    let mut quiet = rig.next_socket().await;
    hello(&mut quiet).await;
    let mut next = rig.next_socket().await;
    assert_eq!(rig.opens(), 2);
    hello(&mut next).await;
    send(
        &mut next,
        envelope("slash_commands", "env-1", slash("help")),
    )
    .await;
    assert_eq!(ack(&mut next).await["envelope_id"], "env-1");
    rig.stop.send(true).unwrap();
    tokio::time::timeout(WAIT, &mut rig.client)
        .await
        .expect("the client stops on shutdown")
        .unwrap();
    drop(quiet);
}

/// `/readyz` over the real router: its status and body.
async fn readiness(app: &Arc<App>) -> (u16, String) {
    use tower::ServiceExt;
    let response = jit::server::router(app.clone())
        .oneshot(
            axum::http::Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `/readyz` until it answers `status`, or fails after the wait.
async fn until_readiness(app: &Arc<App>, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (now, body) = readiness(app).await;
        if now == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {now} ({body}), expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn readyz_needs_a_connection_slack_greeted() {
    let mut rig = Rig::start(0).await;
    // This rig runs no worker: stand in for its heartbeat, so only the socket decides.
    rig.app
        .health
        .worker_beat
        .store(Utc::now().timestamp_millis(), Ordering::SeqCst);

    let mut first = rig.next_socket().await;
    assert_eq!(
        readiness(&rig.app).await,
        (503, "Socket Mode not connected".to_owned()),
        "connected, but Slack has not said hello yet"
    );
    hello(&mut first).await;
    assert_eq!(until_readiness(&rig.app, 200).await, "ready");

    // The connection drops: not ready until the replacement is greeted.
    first.close(None).await.unwrap();
    drop(first);
    let mut second = rig.next_socket().await;
    assert_eq!(
        until_readiness(&rig.app, 503).await,
        "Socket Mode not connected"
    );
    hello(&mut second).await;
    assert_eq!(until_readiness(&rig.app, 200).await, "ready");

    rig.stop.send(true).unwrap();
    rig.client.await.unwrap();
}

/// Several replicas each hold a Socket Mode connection (PostgreSQL). Slack hands each envelope
/// to one of them: whichever gets it handles it, and an envelope redelivered to another
/// replica has no second effect and gets the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn every_replica_holds_a_connection_and_any_handles_any_envelope() {
    let database = db::TestDb::new(jit::store::Driver::Postgres).await;
    let mut a = Rig::on(&database.url(), tempfile::tempdir().unwrap(), 0, |_| {}).await;
    let mut b = Rig::on(&database.url(), tempfile::tempdir().unwrap(), 0, |_| {}).await;
    let (mut on_a, mut on_b) = (a.next_socket().await, b.next_socket().await);
    hello(&mut on_a).await;
    hello(&mut on_b).await;
    // These rigs run no worker: stand in for its heartbeat, so only the sockets decide.
    for rig in [&a, &b] {
        rig.app
            .health
            .worker_beat
            .store(Utc::now().timestamp_millis(), Ordering::SeqCst);
        until_readiness(&rig.app, 200).await;
    }

    let first = envelope(
        "slash_commands",
        "env-a",
        slash("request sandbox 1h via replica a"),
    );
    send(&mut on_a, first.clone()).await;
    let answer_a = ack(&mut on_a).await;
    let id_a = id_in(answer_a["payload"]["text"].as_str().unwrap());
    send(
        &mut on_b,
        envelope(
            "slash_commands",
            "env-b",
            slash("request sandbox 1h via replica b"),
        ),
    )
    .await;
    let id_b = id_in(ack(&mut on_b).await["payload"]["text"].as_str().unwrap());
    assert_ne!(id_a, id_b);
    // Both replicas see both requests: one database.
    assert_eq!(request_count(&a.app).await, 2);
    assert_eq!(request_count(&b.app).await, 2);
    // Slack saw no acknowledgement for env-a in time and hands it to the other replica.
    let mut retry = first;
    retry["retry_attempt"] = json!(1);
    retry["retry_reason"] = json!("timeout");
    send(&mut on_b, retry).await;
    assert_eq!(
        ack(&mut on_b).await,
        answer_a,
        "the first acknowledgement, again"
    );
    assert_eq!(request_count(&b.app).await, 2, "no second effect");
    let _ = (a.stop.send(true), b.stop.send(true));
}
