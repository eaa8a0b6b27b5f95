//! kill -9, repeatedly: `jit serve` runs as a child process through 200 short grant lifecycles
//! with an `exec` provider that logs every call, and is SIGKILLed at random points at least 20
//! times, restarting each time. Afterwards every request is final, every issued grant was revoked
//! after its expiry, no grant was issued twice, and the audit chain verifies.
//!
//! This test takes about a minute and a half, so it is built as ignored (cargo shows the reason)
//! unless `JIT_TEST_LONG=1` was set; `.ci/run` sets it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jit::clock::SystemClock;
use jit::slack::driver::SlackDriver;
use jit::slack::simulator::FakeSlack;
use rand::Rng;
use secrecy::SecretString;
use serde_json::Value;

/// id, state, granted_at, expires_at, revoked_at
type Row = (i64, String, Option<String>, Option<String>, Option<String>);

const SECRET: &str = "crash-test-secret";
const TOKEN: &str = "xoxb-crash";
const LIFECYCLES: usize = 200;
const MIN_KILLS: usize = 20;

fn policy(script: &Path, log: &Path) -> String {
    format!(
        r#"
[slack]
audit_channel = "C0AUDIT"
admins = {{ users = ["U0ADMIN"] }}

[defaults]
reminder_before = "2s"

[limits]
requests_per_user_per_minute = 100000
max_pending_per_user = 100000

[[resource]]
id = "svc"
provider = "exec"
grant_command = ["{script}"]
revoke_command = ["{script}"]
timeout = "10s"
parameters = {{ log = "{log}" }}
max_duration = "1m"
approvers = {{ channel = "C0APPROVALS", users = ["U0APPROVER"] }}
auto_approve = {{ max_duration = "1m" }}
"#,
        script = script.display(),
        log = log.display()
    )
}

struct Serve {
    dir: PathBuf,
    slack_url: String,
    addr: String,
    key: String,
}

impl Serve {
    fn spawn(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_jit"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SLACK_SIGNING_SECRET", SECRET)
            .env("SLACK_BOT_TOKEN", TOKEN)
            .env("JIT_ENCRYPTION_KEY", &self.key)
            .env("JIT_SLACK_API_URL", &self.slack_url)
            .env(
                "JIT_DATABASE_URL",
                format!("sqlite://{}", self.dir.join("jit.db").display()),
            )
            .env("JIT_POLICY", self.dir.join("jit.toml"))
            .env("JIT_LISTEN", &self.addr)
            .env("JIT_SLACK_CHANNEL_RATE", "1000")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

async fn wait_ready(url: &str) -> bool {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if client
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(jit_long_tests),
    ignore = "long (about 90 s): needs JIT_TEST_LONG=1 at build time (.ci/run sets it)"
)]
async fn kill_nine_repeatedly_loses_no_teardown() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("provider.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/provider.py");
    std::fs::write(dir.path().join("jit.toml"), policy(&script, &log)).unwrap();
    let slack = FakeSlack::start(TOKEN).await.unwrap();
    for n in 0..50 {
        slack.set_user(&format!("U0C{n:04}"), &format!("crash{n}"), None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve = Serve {
        dir: dir.path().to_owned(),
        slack_url: slack.api_url(),
        addr: format!("127.0.0.1:{port}"),
        key: jit::crypto::generate_key(),
    };
    let url = format!("http://127.0.0.1:{port}");
    let driver = SlackDriver::new(
        &url,
        SecretString::from(SECRET),
        Arc::new(SystemClock::default()),
    );

    let mut acked = 0usize;
    let mut kills = 0usize;
    let mut sent = 0usize;
    let mut rng = rand::rng();
    while sent < LIFECYCLES || kills < MIN_KILLS {
        let mut child = serve.spawn();
        assert!(
            wait_ready(&url).await,
            "jit serve did not come up after kill {kills}"
        );
        // Send a few requests (2–8 s grants), then let it run for a random while and kill it.
        let batch = rng.random_range(5..15).min(LIFECYCLES.saturating_sub(sent));
        for _ in 0..batch {
            sent += 1;
            let seconds = rng.random_range(2..8);
            let text = format!("request svc {seconds}s crash lifecycle {sent}");
            if let Ok(answer) = driver
                .slash(&format!("U0C{:04}", sent % 50), "C0GENERAL", &text)
                .await
                && answer.status == 200
                && answer.text().contains("Request #")
            {
                acked += 1;
            }
        }
        let run_for = Duration::from_millis(rng.random_range(200..2500));
        tokio::time::sleep(run_for).await;
        kill9(&mut child);
        kills += 1;
    }
    // A last, undisturbed run to let every grant expire and be torn down.
    let mut child = serve.spawn();
    assert!(wait_ready(&url).await);
    let db = format!("sqlite://{}", dir.path().join("jit.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM requests WHERE state IN ('pending', 'approved', 'active') OR (granted_at IS NOT NULL AND revoked_at IS NULL)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} request(s) still open 90 s after the last restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    // Every request is final, every issued grant revoked.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, state, granted_at, expires_at, revoked_at FROM requests ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        rows.len() >= acked,
        "every acked request was stored ({} of {acked})",
        rows.len()
    );
    assert!(
        rows.len() >= LIFECYCLES / 2,
        "enough lifecycles ran: {}",
        rows.len()
    );
    let calls: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut handles: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let mut first_revoke: BTreeMap<i64, f64> = BTreeMap::new();
    let mut last_grant: BTreeMap<i64, f64> = BTreeMap::new();
    for call in &calls {
        let id = call["request_id"].as_i64().unwrap();
        let at = call["at"].as_f64().unwrap();
        match call["action"].as_str().unwrap() {
            "grant" => {
                handles
                    .entry(id)
                    .or_default()
                    .insert(call["handle"].as_str().unwrap().to_owned());
                let e = last_grant.entry(id).or_insert(at);
                *e = e.max(at);
            }
            "revoke" => {
                let e = first_revoke.entry(id).or_insert(at);
                *e = e.min(at);
            }
            _ => {}
        }
    }
    for (id, state, granted, expires, revoked) in &rows {
        let final_state = [
            "expired",
            "released",
            "revoked",
            "denied",
            "cancelled",
            "timed_out",
            "failed",
        ];
        assert!(
            final_state.contains(&state.as_str()),
            "request {id} is {state}"
        );
        if granted.is_some() {
            assert!(
                revoked.is_some(),
                "request {id} was granted but never revoked"
            );
            assert_eq!(
                handles.get(id).map(|h| h.len()),
                Some(1),
                "request {id} was issued once (one handle)"
            );
            let revoke_at = first_revoke
                .get(id)
                .copied()
                .unwrap_or_else(|| panic!("no revoke call for request {id}"));
            let expires = chrono::DateTime::parse_from_rfc3339(expires.as_deref().unwrap())
                .unwrap()
                .timestamp_millis() as f64
                / 1000.0;
            assert!(
                revoke_at + 0.001 >= expires,
                "request {id} was revoked {:.3} s before its expiry",
                expires - revoke_at
            );
            assert!(
                last_grant[id] <= revoke_at,
                "request {id} was granted again after its teardown"
            );
        }
    }
    let distinct_revokes = first_revoke.len();
    let granted = rows.iter().filter(|r| r.2.is_some()).count();
    assert_eq!(
        distinct_revokes, granted,
        "each issued grant revoked (distinct revokes)"
    );
    pool.close().await;

    let verify = Command::new(env!("CARGO_BIN_EXE_jit"))
        .args(["audit", "verify"])
        .env("JIT_DATABASE_URL", &db)
        // The audit key is derived from the server's encryption key.
        .env("JIT_ENCRYPTION_KEY", &serve.key)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    eprintln!(
        "crash test: {} requests, {granted} grants, {kills} kills, {} provider calls; {}",
        rows.len(),
        calls.len(),
        String::from_utf8_lossy(&verify.stdout).trim()
    );
}
