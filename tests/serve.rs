//! `jit serve` as operators run it: the real binary, configured by environment variables, with
//! JSON logs, readiness, metrics, graceful shutdown, and the admin CLI next to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jit::clock::SystemClock;
use jit::slack::driver::SlackDriver;
use jit::slack::simulator::FakeSlack;
use secrecy::SecretString;

const SECRET: &str = "serve-test-signing-secret";
const TOKEN: &str = "xoxb-serve-test";

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "staging"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "4h" }
"#;

struct Server {
    child: Child,
    url: String,
    log: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn start(slack: &FakeSlack) -> Server {
        Self::start_with(slack, POLICY, |_| Vec::new())
    }

    /// With another policy, and more variables (given the server's own directory).
    fn start_with(
        slack: &FakeSlack,
        policy_text: &str,
        extra: impl FnOnce(&Path) -> Vec<(String, String)>,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("jit.toml");
        std::fs::write(&policy, policy_text).unwrap();
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            (
                "SLACK_SIGNING_SECRET".into(),
                format!("rotated-out,{SECRET}"),
            ),
            ("SLACK_BOT_TOKEN".into(), TOKEN.into()),
            ("JIT_ENCRYPTION_KEY".into(), jit::crypto::generate_key()),
            ("JIT_SLACK_API_URL".into(), slack.api_url()),
            (
                "JIT_DATABASE_URL".into(),
                format!("sqlite://{}", dir.path().join("jit.db").display()),
            ),
            ("JIT_POLICY".into(), policy.display().to_string()),
            ("JIT_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("JIT_LOG_FORMAT".into(), "json".into()),
            ("JIT_SLACK_CHANNEL_RATE".into(), "100".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        env.extend(extra(dir.path()));
        let log = dir.path().join("serve.log");
        let child = Command::new(env!("CARGO_BIN_EXE_jit"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            env,
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_jit"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("USER", "opsperson")
            .envs(self.env.iter().cloned())
            .output()
            .unwrap()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn wait_for<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn db_path(server: &Server) -> &Path {
    let url = &server
        .env
        .iter()
        .find(|(k, _)| k == "JIT_DATABASE_URL")
        .unwrap()
        .1;
    Path::new(url.strip_prefix("sqlite://").unwrap())
}

#[tokio::test]
async fn serve_logs_metrics_cli_and_graceful_shutdown() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = FakeSlack::start(TOKEN).await.unwrap();
    slack.set_user("U0DEV", "dev", Some("dev@example.com"));
    let mut server = Server::start(&slack);
    let http = reqwest::Client::new();

    let ready_url = format!("{}/readyz", server.url);
    wait_for("/readyz", async || {
        http.get(&ready_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let metrics = |body: String| {
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text")
    };
    let sample = |scrape: &prometheus_parse::Scrape, name: &str, label: (&str, &str)| -> f64 {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or(0.0)
    };
    let before = metrics(
        http.get(format!("{}/metrics", server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(
        sample(&before, "jit_requests_total", ("outcome", "auto_approved")),
        0.0
    );

    // A signed request through the real binary, as Slack would send it.
    let driver = SlackDriver::new(
        &server.url,
        SecretString::from(SECRET),
        Arc::new(SystemClock::default()),
    );
    let reply = driver
        .slash("U0DEV", "C0GENERAL", "request staging 1h check the canary")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        reply.text().contains("Request #1 for `staging`"),
        "{}",
        reply.text()
    );
    wait_for("the grant DM", async || {
        slack
            .dms("U0DEV")
            .iter()
            .any(|m| m.rendered().contains("You now have `staging`"))
    })
    .await;

    let after = metrics(
        http.get(format!("{}/metrics", server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(
        sample(&after, "jit_requests_total", ("outcome", "auto_approved")),
        1.0
    );
    assert!(
        after.samples.iter().any(|s| s.metric == "jit_active_grants"
            && matches!(s.value, prometheus_parse::Value::Gauge(v) if v == 1.0)),
        "one active grant"
    );
    assert!(
        sample(
            &after,
            "jit_slack_api_calls_total",
            ("method", "chat.postMessage")
        ) >= 1.0
    );

    // The admin CLI works beside the running server.
    let list = server.cli(&["grants", "list", "--active"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("staging"),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );
    let revoke = server.cli(&["grants", "revoke", "1", "--reason", "rotation drill"]);
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    // The server's worker carries out the CLI's revoke through the same job path.
    wait_for("the revoke DM", async || {
        slack.dms("U0DEV").iter().any(|m| {
            m.rendered()
                .contains("was revoked by `cli:opsperson`: rotation drill")
        })
    })
    .await;
    wait_for("the teardown", async || {
        slack
            .dms("U0DEV")
            .iter()
            .any(|m| m.rendered().contains("It has been removed"))
    })
    .await;

    let export = server.cli(&["audit", "export", "--format", "jsonl"]);
    assert!(export.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "requested",
            "auto_approved",
            "granted",
            "revoked",
            "torn_down"
        ]
    );
    assert_eq!(events[3]["actor"], "cli:opsperson");
    assert_eq!(events[3]["detail"]["reason"], "rotation drill");
    let since = server.cli(&["audit", "export", "--since", "2999-01-01"]);
    assert!(since.stdout.is_empty());
    let verify = server.cli(&["audit", "verify"]);
    assert!(verify.status.success());
    let out = String::from_utf8_lossy(&verify.stdout).into_owned();
    let (first, head) = out.split_once('\n').unwrap();
    assert_eq!(first, "audit log intact: 5 events, hash chain verified");
    let head = head
        .strip_prefix("head: 5:")
        .and_then(|h| h.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("a head line: {out}"));
    assert!(
        head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit()),
        "{head}"
    );
    // Against a recorded head: the full hash, or at least 32 digits of it.
    for anchor in [format!("5:{head}"), format!("5:{}", &head[..32])] {
        let checked = server.cli(&["audit", "verify", "--head", &anchor]);
        assert!(checked.status.success(), "{checked:?}");
    }
    // The 12 digits an audit thread shows people are too short to check against.
    let short = server.cli(&["audit", "verify", "--head", &format!("5:{}", &head[..12])]);
    assert_eq!(short.status.code(), Some(2), "{short:?}");
    assert!(
        String::from_utf8_lossy(&short.stderr).contains("at least 32 hex digits"),
        "{short:?}"
    );
    let wrong = server.cli(&[
        "audit",
        "verify",
        "--head",
        &format!("5:{}", "0".repeat(32)),
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wrong.stdout)
            .starts_with("audit log TAMPERED: row 5 no longer has the hash recorded for it"),
        "{wrong:?}"
    );
    let malformed = server.cli(&["audit", "verify", "--head", "5:abc"]);
    assert_eq!(malformed.status.code(), Some(2), "{malformed:?}");
    assert!(
        String::from_utf8_lossy(&malformed.stderr).contains("must be SEQ:HASH"),
        "{malformed:?}"
    );
    let recorded_head = format!("5:{head}");

    // A second server on the same database is refused.
    let second = server.cli(&["serve"]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another jit process is serving"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // SIGTERM: a clean exit.
    let pid = server.child.id() as i32;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "jit serve did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // At shutdown the head was anchored in the audit channel, in full.
    let anchors: Vec<String> = slack
        .messages("C0AUDIT")
        .into_iter()
        .map(|m| m.text)
        .filter(|t| t.starts_with("audit head "))
        .collect();
    assert_eq!(anchors, [format!("audit head 5:{head}")]);

    // JSON logs: every line is an object; lines about a request carry its id.
    let logs = server.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ready = lines
        .iter()
        .find(|l| l["message"] == "jit is ready")
        .expect("a ready line");
    assert!(ready["startup_ms"].as_u64().is_some());
    for message in ["request submitted", "access issued", "access removed"] {
        let line = lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no `{message}` line in\n{logs}"));
        assert_eq!(line["request_id"], 1, "{line}");
    }
    assert!(
        !logs.contains(SECRET) && !logs.contains(TOKEN),
        "no secrets in the logs"
    );

    // Tamper with the database: verify names the deleted row and fails.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path(&server).display()))
        .await
        .unwrap();
    sqlx::query("DROP TRIGGER audit_log_no_delete")
        .execute(&pool)
        .await
        .unwrap();
    // Removing the last row leaves a chain that verifies on its own; the recorded head does not.
    sqlx::query("DELETE FROM audit_log WHERE seq = 5")
        .execute(&pool)
        .await
        .unwrap();
    let truncated = server.cli(&["audit", "verify"]);
    assert!(truncated.status.success(), "{truncated:?}");
    // The anchor in Slack shows it, with no head kept by hand.
    // (Off the runtime's thread: the fake Slack answers on it.)
    let mut cli = Command::new(env!("CARGO_BIN_EXE_jit"));
    cli.args(["audit", "verify", "--slack"])
        .env_clear()
        .envs(server.env.iter().cloned());
    let against_slack = tokio::task::spawn_blocking(move || cli.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(against_slack.status.code(), Some(1), "{against_slack:?}");
    assert!(
        String::from_utf8_lossy(&against_slack.stdout).contains(
            "audit log TAMPERED: row 5: the log ends at row 4, but row 5 was anchored in C0AUDIT"
        ),
        "{against_slack:?}"
    );
    let anchored = server.cli(&["audit", "verify", "--head", &recorded_head]);
    assert_eq!(anchored.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&anchored.stdout).starts_with(
            "audit log TAMPERED: row 5 was recorded earlier but is gone (rows were removed from the end)"
        ),
        "{anchored:?}"
    );
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&pool)
        .await
        .unwrap();
    let verify = server.cli(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1));
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        out.starts_with("audit log TAMPERED: row 4: row 3 is missing"),
        "{out}"
    );
    // The review's attack: the rows renumbered and the chain recomputed with plain SHA-256.
    let rows: Vec<jit::store::audit::AuditRow> =
        sqlx::query_as("SELECT * FROM audit_log ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM audit_log")
        .execute(&pool)
        .await
        .unwrap();
    let mut prev = jit::store::audit::GENESIS.to_owned();
    for (seq, row) in (1..).zip(rows) {
        let canonical = jit::store::audit::canonical(
            seq,
            &row.at,
            row.request_id,
            &row.actor,
            &row.event,
            &row.detail,
        );
        let hash = jit::store::audit::legacy_hash(&prev, &canonical);
        sqlx::query("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(seq)
            .bind(&row.at)
            .bind(row.request_id)
            .bind(&row.actor)
            .bind(&row.event)
            .bind(&row.detail)
            .bind(&prev)
            .bind(&hash)
            .execute(&pool)
            .await
            .unwrap();
        prev = hash;
    }
    pool.close().await;
    let verify = server.cli(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1));
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        out.starts_with("audit log TAMPERED: row 1: its content does not match its keyed hash"),
        "{out}"
    );
    // Verifying needs the key, and says so in one line.
    let keyless = Command::new(env!("CARGO_BIN_EXE_jit"))
        .args(["audit", "verify"])
        .env_clear()
        .envs(
            server
                .env
                .iter()
                .filter(|(k, _)| k != "JIT_ENCRYPTION_KEY")
                .cloned(),
        )
        .output()
        .unwrap();
    assert_eq!(keyless.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&keyless.stderr),
        "jit: `jit audit verify`: the audit key is not set: set JIT_AUDIT_KEY (or JIT_AUDIT_KEY_FILE), or JIT_ENCRYPTION_KEY (or JIT_ENCRYPTION_KEY_FILE) to derive it from\n"
    );
}

#[test]
fn startup_errors_are_one_clear_line() {
    let run = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_jit"))
            .arg("serve")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
        stderr
    };
    assert_eq!(
        run(&[]),
        "jit: SLACK_SIGNING_SECRET is not set (set SLACK_SIGNING_SECRET or SLACK_SIGNING_SECRET_FILE)\n"
    );
    let base = [("SLACK_SIGNING_SECRET", "s"), ("SLACK_BOT_TOKEN", "xoxb-1")];
    assert_eq!(
        run(&base),
        "jit: JIT_ENCRYPTION_KEY is not set (set JIT_ENCRYPTION_KEY or JIT_ENCRYPTION_KEY_FILE)\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("jit.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let db = format!("sqlite://{}", dir.path().join("jit.db").display());
    let bad_key = run(&[
        base[0],
        base[1],
        ("JIT_ENCRYPTION_KEY", "too-short"),
        ("JIT_POLICY", policy.to_str().unwrap()),
        ("JIT_DATABASE_URL", &db),
    ]);
    assert!(
        bad_key.starts_with("jit: JIT_ENCRYPTION_KEY: "),
        "{bad_key}"
    );
    assert!(
        !bad_key.contains("too-short"),
        "the key is never echoed: {bad_key}"
    );
    let key = jit::crypto::generate_key();
    let no_policy = run(&[
        base[0],
        base[1],
        ("JIT_ENCRYPTION_KEY", &key),
        ("JIT_POLICY", "/nonexistent/jit.toml"),
        ("JIT_DATABASE_URL", &db),
    ]);
    assert!(
        no_policy.starts_with("jit: cannot read the policy file /nonexistent/jit.toml"),
        "{no_policy}"
    );
    let bad_audit_key = run(&[
        base[0],
        base[1],
        ("JIT_ENCRYPTION_KEY", &key),
        ("JIT_AUDIT_KEY", "audit-too-short"),
        ("JIT_POLICY", policy.to_str().unwrap()),
        ("JIT_DATABASE_URL", &db),
    ]);
    assert!(
        bad_audit_key.starts_with("jit: JIT_AUDIT_KEY: the key "),
        "{bad_audit_key}"
    );
    assert!(
        !bad_audit_key.contains("audit-too-short"),
        "{bad_audit_key}"
    );
    // A database keyed with one audit key refuses another.
    let keyed = Command::new(env!("CARGO_BIN_EXE_jit"))
        .arg("migrate")
        .env_clear()
        .env("JIT_DATABASE_URL", &db)
        .env("JIT_ENCRYPTION_KEY", &key)
        .output()
        .unwrap();
    assert!(keyed.status.success(), "{keyed:?}");
    let other_key = run(&[
        base[0],
        base[1],
        ("JIT_ENCRYPTION_KEY", &key),
        ("JIT_AUDIT_KEY", &jit::crypto::generate_key()),
        ("JIT_POLICY", policy.to_str().unwrap()),
        ("JIT_DATABASE_URL", &db),
    ]);
    assert!(
        other_key.starts_with(
            "jit: the audit key does not match the key this database's audit chain was keyed with"
        ),
        "{other_key}"
    );
    let bad_log = Command::new(env!("CARGO_BIN_EXE_jit"))
        .arg("serve")
        .env_clear()
        .env("JIT_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(bad_log.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&bad_log.stderr),
        "jit: JIT_LOG_FORMAT must be `json` or `pretty`, not `xml`\n"
    );
}

/// An old database (rows written by the unkeyed code, before the keyed chain) upgrades with
/// `jit migrate`, and a tampered one is refused.
#[tokio::test]
async fn jit_migrate_keys_an_old_unkeyed_audit_log() {
    let key = jit::crypto::generate_key();
    let migrate = |db: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_jit"))
            .args(["migrate"])
            .env_clear()
            .env("JIT_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("JIT_ENCRYPTION_KEY", &key)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let verify = |db: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_jit"))
            .args(["audit", "verify"])
            .env_clear()
            .env("JIT_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("JIT_ENCRYPTION_KEY", &key)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for tampered in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jit.db");
        let store = jit::store::Store::connect(
            &format!("sqlite://{}", db.display()),
            jit::store::Durability::Normal,
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let mut prev = jit::store::audit::GENESIS.to_owned();
        for seq in 1..=3 {
            let at = format!("2026-11-0{seq}T10:00:00.000Z");
            let canonical = jit::store::audit::canonical(seq, &at, None, "jit", "expired", "{}");
            let hash = jit::store::audit::legacy_hash(&prev, &canonical);
            let actor = if tampered && seq == 2 {
                "U0MALLORY"
            } else {
                "jit"
            };
            let mut conn = store.read().await.unwrap();
            jit::store::on!(&mut conn, |c| sqlx::query(
                "INSERT INTO audit_log VALUES ($1, $2, NULL, $3, 'expired', '{}', $4, $5)"
            )
            .bind(seq)
            .bind(&at)
            .bind(actor)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *c)
            .await
            .map(|_| ()))
            .unwrap();
            prev = hash;
        }
        store.close().await;
        let (code, out, err) = migrate(&db);
        if tampered {
            assert_eq!(code, Some(1), "{out}{err}");
            assert!(
                err.starts_with(
                    "jit: the audit log written before the keyed chain does not verify (row 2: "
                ),
                "{err}"
            );
            let (code, out) = verify(&db);
            assert_eq!(code, Some(1));
            assert!(
                out.starts_with(
                    "audit log TAMPERED: row 1: the chain has no keyed boundary record"
                ),
                "{out}"
            );
            continue;
        }
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains("audit chain upgraded: rows 1-3 (unkeyed) verified and their head bound to the audit key; rows from 4 on are keyed"),
            "{out}"
        );
        let (code, out) = verify(&db);
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.starts_with(
                "audit log intact: 3 events, hash chain verified\nrows 1-3 predate the keyed chain"
            ),
            "{out}"
        );
        let (code, out, _) = migrate(&db);
        assert_eq!(code, Some(0));
        assert!(
            out.contains("audit chain already keyed; the key matches"),
            "{out}"
        );
    }
}

/// Issue 11, point 6 (clock across restarts): before a restart jit recorded a time two hours
/// ahead of what the host's wall clock says now (the clock was set back). `jit serve` keeps time
/// from that record, so no teardown is delayed, and says so loudly at start: one ERROR line
/// naming both times and how far behind the wall clock is.
#[tokio::test]
async fn a_wall_clock_behind_the_database_is_logged_loudly_at_start() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = FakeSlack::start(TOKEN).await.unwrap();
    let mut server = Server::start(&slack);
    let http = reqwest::Client::new();
    let ready_url = format!("{}/readyz", server.url);
    let ready = async || {
        http.get(&ready_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    };
    wait_for("/readyz", ready).await;
    assert!(
        !server.logs().contains("wall clock is behind"),
        "{}",
        server.logs()
    );
    let _ = server.child.kill();
    let _ = server.child.wait();

    // What the last run recorded: a job written two hours from now.
    let ahead = chrono::Utc::now() + chrono::Duration::hours(2);
    let store = jit::store::Store::connect(
        &format!("sqlite://{}", db_path(&server).display()),
        jit::store::Durability::Normal,
    )
    .await
    .unwrap();
    let mut tx = store.begin_write().await.unwrap();
    jit::queue::enqueue(
        &mut tx,
        &jit::jobs::Job::Remind {
            request: jit::domain::ids::RequestId(1),
        },
        jit::queue::Placement::none(),
        ahead,
        ahead,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store.close().await;

    // The restart.
    let log = server.log.with_file_name("restart.log");
    server.child = Command::new(env!("CARGO_BIN_EXE_jit"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(server.env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    server.log = log;
    wait_for("/readyz after the restart", ready).await;
    let logs = server.logs();
    let line: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|l: &serde_json::Value| {
            l["message"].as_str().is_some_and(|m| {
                m.contains("the wall clock is behind the latest time jit recorded")
            })
        })
        .unwrap_or_else(|| panic!("no clock error at start in: {logs}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    let behind = line["behind_secs"].as_i64().unwrap();
    assert!((7000..=7200).contains(&behind), "{line}");
    assert_eq!(
        line["latest_recorded"],
        jit::store::format_time(jit::store::from_millis(jit::store::millis(ahead)))
    );
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("no teardown is delayed"),
        "{line}"
    );
}

/// `jit serve` with an on-call rule and `PAGERDUTY_TOKEN_FILE`: it reads who is on call from
/// PagerDuty in the background (with the token from the file, never logged), and a request by
/// the person on call is approved by policy.
#[tokio::test]
async fn serve_reads_who_is_on_call_from_pagerduty_in_the_background() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    const PD_TOKEN: &str = "pd-serve-token-Yk3";
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let router = axum::Router::new().route(
        "/oncalls",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some(&format!("Token token={PD_TOKEN}"))
                {
                    return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                }
                let body = serde_json::json!({
                    "oncalls": [{
                        "escalation_policy": {"id": "PEP1"},
                        "escalation_level": 1,
                        "schedule": {"id": "PABC123"},
                        "user": {"id": "PU1", "email": "dev@example.com"}
                    }],
                    "limit": 100, "offset": 0, "more": false
                });
                (axum::http::StatusCode::OK, body.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pd_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let slack = FakeSlack::start(TOKEN).await.unwrap();
    slack.set_user("U0DEV", "dev", Some("dev@example.com"));
    let policy = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0SECLEAD"] }

[[resource]]
id = "prod"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0ALICE"] }
auto_approve = { max_duration = "2h", oncall = { pagerduty_schedules = ["PABC123"] } }
"#;
    let server = Server::start_with(&slack, policy, |dir| {
        let file = dir.join("pagerduty-token");
        std::fs::write(&file, format!("{PD_TOKEN}\n")).unwrap();
        vec![
            ("PAGERDUTY_TOKEN_FILE".into(), file.display().to_string()),
            ("JIT_PAGERDUTY_API_URL".into(), pd_url.clone()),
        ]
    });
    let http = reqwest::Client::new();
    let ready_url = format!("{}/readyz", server.url);
    wait_for("/readyz", async || {
        http.get(&ready_url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    wait_for("a PagerDuty refresh", async || {
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    // The directory (with dev's email) and PagerDuty are both read at startup; wait for the
    // on-call answer to be what `/jit why` sees.
    let driver = SlackDriver::new(
        &server.url,
        SecretString::from(SECRET),
        Arc::new(SystemClock::default()),
    );
    let mut why = String::new();
    wait_for("/jit why to see dev on call", async || {
        why = driver
            .slash("U0DEV", "C0GENERAL", "why prod 1h")
            .await
            .unwrap()
            .text();
        why.contains("you are on call now in `PABC123`")
    })
    .await;
    let before = calls.load(std::sync::atomic::Ordering::SeqCst);
    let reply = driver
        .slash("U0DEV", "C0GENERAL", "request prod 1h paged for INC-9")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    wait_for("the grant DM", async || {
        slack
            .dms("U0DEV")
            .iter()
            .any(|m| m.rendered().contains("You now have `prod`"))
    })
    .await;
    assert!(
        slack.messages("C0APPROVALS").is_empty(),
        "approved by policy"
    );
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) - before <= 1,
        "at most the minute's background refresh, nothing per request"
    );
    let logs = server.logs();
    assert!(!logs.contains(PD_TOKEN), "{logs}");
}
