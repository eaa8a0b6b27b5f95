//! Readiness follows the database: `jit serve` on PostgreSQL reached through a TCP relay that the
//! test can cut. With the database gone, `/readyz` answers 503 (so Kubernetes takes the replica
//! out of the Service, manifests/kubernetes-ha) while `/healthz` stays 200 (so it is not
//! restarted for something a restart cannot fix); with the database back, it is ready again.

#[path = "support/db.rs"]
mod db;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jit::slack::simulator::FakeSlack;
use jit::store::Driver;
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "xoxb-readiness";

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "staging"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
"#;

/// Relays TCP connections to `upstream` while it is up; `cut` drops every relayed connection
/// and refuses new ones, as a database host that went away does.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (flag, held) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                held.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Relay {
            port,
            up,
            connections,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn status(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let response = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    Some((response.status().as_u16(), response.text().await.ok()?))
}

async fn wait_for(what: &str, log: &std::path::Path, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "timed out waiting for {what}; jit serve logged:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(jit_postgres_tests),
    ignore = "needs JIT_TEST_POSTGRES_URL at build time"
)]
async fn readiness_follows_the_database() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = FakeSlack::start(TOKEN).await.unwrap();
    slack.set_user("U0ALICE", "alice", None);
    slack.set_user("U0SECLEAD", "seclead", None);
    let database = db::TestDb::new(Driver::Postgres).await;
    let mut url = url::Url::parse(&database.url()).unwrap();
    let upstream = format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    );
    let relay = Relay::start(upstream).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(relay.port)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jit.toml"), POLICY).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("serve.log");
    let child = Command::new(env!("CARGO_BIN_EXE_jit"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SLACK_SIGNING_SECRET", "readiness-signing-secret")
        .env("SLACK_BOT_TOKEN", TOKEN)
        .env("JIT_ENCRYPTION_KEY", jit::crypto::generate_key())
        .env("JIT_SLACK_API_URL", slack.api_url())
        .env("JIT_DATABASE_URL", url.as_str())
        .env("JIT_POLICY", dir.path().join("jit.toml"))
        .env("JIT_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _serve = Killed(child);
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let health = format!("http://127.0.0.1:{port}/healthz");

    wait_for("/readyz 200", &log, async || {
        status(&http, &ready)
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await;

    relay.cut();
    let mut answer = None;
    wait_for("/readyz 503 with the database gone", &log, async || {
        answer = status(&http, &ready).await;
        answer.as_ref().is_some_and(|(code, _)| *code == 503)
    })
    .await;
    assert_eq!(answer.unwrap().1, "database unavailable");
    assert_eq!(
        status(&http, &health).await.map(|(code, _)| code),
        Some(200),
        "the process is alive: liveness must not restart it"
    );

    relay.restore();
    wait_for("/readyz 200 with the database back", &log, async || {
        status(&http, &ready)
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await;
}
