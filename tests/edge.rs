//! The HTTP edge under attack, against the real `jit serve` binary (a child process):
//!
//! - a flood of idle connections (2,000 by default; the review's 20,000 with `JIT_TEST_LONG=1`,
//!   which `.ci/run` sets), with slowloris heads and bodies going on at the same time, is held
//!   while signed requests are still acked within 1 s (the issue's bar) and a teardown due in the
//!   meantime runs within 2 s of its expiry, with no "Too many open files";
//! - slowloris heads and bodies, and idle keep-alive connections, are closed by the server after
//!   the configured timeouts (set small here);
//! - at the connection cap the server stops accepting, the rest wait in the listen backlog, and
//!   they are served as slots free up, while the separate metrics listener keeps answering.
//!
//! Apart from those two generous bounds, which the issue asks for, nothing here fails on a
//! timing: the tests assert outcomes (acked, closed by the server, revoked and recorded) and print
//! the latencies they measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jit::clock::SystemClock;
use jit::slack::driver::SlackDriver;
use jit::slack::simulator::FakeSlack;
use secrecy::SecretString;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "edge-test-signing-secret";
const TOKEN: &str = "xoxb-edge-test";

fn policy(script: &Path, log: &Path) -> String {
    format!(
        r#"
[slack]
audit_channel = "C0AUDIT"
admins = {{ users = ["U0ADMIN"] }}

[[identity]]
name = "ci"
owner = {{ users = ["U0ADMIN"] }}
resources = ["svc"]

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    addr: String,
    metrics_addr: String,
    dir: tempfile::TempDir,
    provider_log: PathBuf,
    /// JIT_ENCRYPTION_KEY, which the audited admin commands need too (the audit key is derived
    /// from it).
    key: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(slack: &FakeSlack, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let provider_log = dir.path().join("provider.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/provider.py");
        std::fs::write(dir.path().join("jit.toml"), policy(&script, &provider_log)).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let key = jit::crypto::generate_key();
        let child = Command::new(env!("CARGO_BIN_EXE_jit"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SLACK_SIGNING_SECRET", SECRET)
            .env("SLACK_BOT_TOKEN", TOKEN)
            .env("JIT_ENCRYPTION_KEY", &key)
            .env("JIT_SLACK_API_URL", slack.api_url())
            .env(
                "JIT_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("jit.db").display()),
            )
            .env("JIT_POLICY", dir.path().join("jit.toml"))
            .env("JIT_LISTEN", &addr)
            .env("JIT_METRICS_LISTEN", &metrics_addr)
            .env("JIT_SLACK_CHANNEL_RATE", "1000")
            .env("JIT_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        Server {
            child,
            addr,
            metrics_addr,
            dir,
            provider_log,
            key,
        }
    }

    /// Runs the admin CLI on the server's database; its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_jit"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "JIT_DATABASE_URL",
                format!("sqlite://{}", self.dir.path().join("jit.db").display()),
            )
            .env("JIT_POLICY", self.dir.path().join("jit.toml"))
            .env("JIT_ENCRYPTION_KEY", &self.key)
            .env("USER", "edge-test")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    fn driver(&self) -> SlackDriver {
        SlackDriver::new(
            &self.url(),
            SecretString::from(SECRET),
            Arc::new(SystemClock::default()),
        )
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http
                .get(format!("{}/readyz", self.url()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("jit serve did not become ready:\n{}", self.logs());
    }

    /// A sample of the separate metrics listener.
    async fn metric(&self, name: &str, listener: &str) -> f64 {
        let body = reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("/metrics parses");
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("listener") == Some(listener))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or(0.0)
    }

    /// A sample of a counter labelled by `reason`.
    async fn metric_reason(&self, name: &str, reason: &str) -> f64 {
        let body = reqwest::get(format!("http://{}/metrics", self.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("/metrics parses");
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("reason") == Some(reason))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or(0.0)
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM; the exit status once the server stopped.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "jit serve did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Helper processes holding idle connections: the flood can be larger than this process's own
/// descriptor limit allows (each helper has its own).
struct Flooders(Vec<Child>);

const FLOODER: &str = r#"
import resource, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Each helper raises its own soft descriptor limit to the hard one: it holds `n` sockets.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(n):
    for attempt in range(100):
        try:
            held.append(socket.create_connection((host, port), timeout=10))
            break
        except OSError:
            if attempt == 99:
                raise
print("ready", len(held), flush=True)
sys.stdin.read()
"#;

impl Flooders {
    /// Opens `n` connections that never send a byte; returns once all are open.
    async fn open(addr: &str, n: usize) -> Flooders {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let per_process = 5_000;
        let mut children = Vec::new();
        let mut left = n;
        while left > 0 {
            let count = left.min(per_process);
            left -= count;
            children.push(
                Command::new("python3")
                    .args(["-c", FLOODER, host, port, &count.to_string()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("python3 runs the flood helpers"),
            );
        }
        let mut flooders = Flooders(children);
        for child in &mut flooders.0 {
            let stdout = child.stdout.take().unwrap();
            let line = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                    .unwrap();
                line
            })
            .await
            .unwrap();
            assert!(
                line.starts_with("ready "),
                "a flood helper failed: {line:?}"
            );
        }
        flooders
    }
}

impl Drop for Flooders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Opens `n` connections that never send a byte.
async fn open_idle(addr: &str, n: usize) -> Vec<TcpStream> {
    futures::stream::iter(0..n)
        .map(|_| async move {
            // The listen backlog may be full for a moment; try again.
            for _ in 0..50 {
                if let Ok(s) = TcpStream::connect(addr).await {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("cannot connect to {addr}");
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// Whether the server closed a connection no earlier than `timeout` (less the timer's
/// millisecond granularity and the two processes' clocks: a lower bound, never a race).
fn not_before(after: Duration, timeout: Duration) -> bool {
    after + Duration::from_millis(50) >= timeout
}

/// Reads until the server closes the connection (EOF or reset); what it sent, and how long after
/// `since` it closed. Panics if it stays open for `guard` (a hang guard, not a timing check).
async fn until_closed(
    stream: &mut TcpStream,
    since: Instant,
    guard: Duration,
) -> (String, Duration) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let end = since + guard;
    loop {
        match tokio::time::timeout_at(end.into(), stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open for {guard:?} (sent {:?})",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&seen).into(), since.elapsed());
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn provider_calls(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Slowloris connections of each kind kept going during the idle flood.
const SLOWLORIS: usize = 10;

/// A request head that is never finished.
const SLOW_HEAD: &[u8] = b"POST /slack/commands HTTP/1.1\r\nHost: jit\r\nX-Slow: a";

/// A complete head announcing 1000 bytes of body, then the start of it.
const SLOW_BODY: &[u8] = b"POST /slack/commands HTTP/1.1\r\nHost: jit\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ntext=";

/// What one slowloris worker saw.
struct Slowloris {
    /// What the server sent before closing, and when it closed (from the connect), for each
    /// connection the server closed.
    closed: Vec<(String, Duration)>,
    /// 1 if a connection was still open when the worker was told to stop.
    open_at_stop: usize,
}

/// Writes `head`, then one more byte every 300 ms; when the server closes the connection, opens
/// another and starts again; until `stop`.
async fn slowloris(
    addr: String,
    head: &'static [u8],
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Slowloris {
    let mut closed = Vec::new();
    loop {
        if *stop.borrow() {
            return Slowloris {
                closed,
                open_at_stop: 0,
            };
        }
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let since = Instant::now();
        if stream.write_all(head).await.is_err() {
            continue;
        }
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        tick.tick().await;
        let still_open = loop {
            tokio::select! {
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => break true,
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick(), if seen.is_empty() => {
                    if stream.write_all(b"a").await.is_err() {
                        // Closed by the server; read what it said.
                        while let Ok(Ok(n)) = tokio::time::timeout(
                            Duration::from_secs(1),
                            stream.read(&mut buf),
                        )
                        .await
                        {
                            if n == 0 {
                                break;
                            }
                            seen.extend_from_slice(&buf[..n]);
                        }
                        break false;
                    }
                }
            }
        };
        if still_open {
            return Slowloris {
                closed,
                open_at_stop: 1,
            };
        }
        closed.push((String::from_utf8_lossy(&seen).into_owned(), since.elapsed()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_is_held_while_signed_requests_and_teardowns_go_on() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // This process opens the slowloris connections and the helpers the flood; neither depends
    // on another test having raised the descriptor limit.
    let limit = jit::edge::raise_fd_limit();
    println!("this test's descriptor limit: {}", limit.soft);
    let long = std::env::var("JIT_TEST_LONG").as_deref() == Ok("1");
    let flood = if long { 20_000 } else { 2_000 };
    // The default run gives the server fewer slots than the flood, as the review's descriptor
    // limit was; the long run leaves the cap at what the descriptor limit allows. A long header
    // timeout, so only the cap, not the clock, closes flood connections; a short body timeout,
    // so the slowloris bodies are answered `408` while the flood is held.
    let body_timeout = Duration::from_secs(2);
    let mut env = vec![
        ("JIT_HTTP_HEADER_TIMEOUT", "5m"),
        ("JIT_HTTP_BODY_TIMEOUT", "2s"),
    ];
    if !long {
        env.push(("JIT_HTTP_MAX_CONNECTIONS", "1500"));
    }
    println!(
        "idle flood: {flood} connections ({})",
        if long {
            "JIT_TEST_LONG=1: the review's 20,000"
        } else {
            "the default run, against a cap of 1,500; JIT_TEST_LONG=1 opens the review's 20,000"
        }
    );
    let slack = FakeSlack::start(TOKEN).await.unwrap();
    slack.set_user("U0DEV", "dev", Some("dev@example.com"));
    let mut server = Server::start(&slack, &env);
    server.wait_ready().await;
    let driver = server.driver();
    let rss_before = server.rss_kib().unwrap_or_default();
    let cap = server.metric("jit_http_connection_limit", "http").await as usize;

    let opened = Instant::now();
    let flooders = Flooders::open(&server.addr, flood).await;
    println!(
        "{flood} idle connections opened in {:?} by {} helper processes; the server's cap is {cap}",
        opened.elapsed(),
        flooders.0.len()
    );
    // The server holds as many as its cap allows; past the cap, the oldest silent ones made room.
    let expected = flood.min(cap);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = server.metric("jit_http_connections", "http").await;
        if held >= expected as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server holds {held} of {expected} connections:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "server holds {expected} connections; RSS {rss_before} KiB before, {} KiB now",
        server.rss_kib().unwrap_or_default()
    );
    if flood > cap {
        let evicted = server
            .metric_reason("jit_http_rejected_total", "evicted_silent")
            .await;
        println!("{evicted} silent connections were closed to make room");
        assert!(evicted >= 1.0, "past the cap, silent connections make room");
    }

    // Slowloris heads and bodies on top of the flood, for as long as the rest of the test runs.
    let (stop_slowloris, stopped) = tokio::sync::watch::channel(false);
    let slow_heads: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(slowloris(server.addr.clone(), SLOW_HEAD, stopped.clone())))
        .collect();
    let slow_bodies: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(slowloris(server.addr.clone(), SLOW_BODY, stopped.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A grant whose teardown falls due while the flood and the slowloris connections are held.
    // Slack gives up on an ack after 3 s; the issue's bar is 1 s.
    let started = Instant::now();
    let reply = driver
        .slash("U0DEV", "C0GENERAL", "request svc 3s edge flood drill")
        .await
        .unwrap();
    let acked = started.elapsed();
    println!("signed /jit request acked in {acked:?}");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("Request #1"), "{}", reply.text());
    assert!(
        acked <= Duration::from_secs(1),
        "a signed request is acked within 1 s under the flood, not {acked:?}"
    );

    let started = Instant::now();
    let list = driver.slash("U0DEV", "C0GENERAL", "list").await.unwrap();
    let acked = started.elapsed();
    println!("signed /jit list acked in {acked:?}");
    assert_eq!(list.status, 200);
    assert!(list.text().contains("svc"), "{}", list.text());
    assert!(
        acked <= Duration::from_secs(1),
        "a signed request is acked within 1 s under the flood, not {acked:?}"
    );

    // The teardown: the exec provider's revoke ran (a child process with pipes, so descriptors),
    // and the database records it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let revoke = loop {
        if let Some(call) = provider_calls(&server.provider_log)
            .into_iter()
            .find(|c| c["action"] == "revoke" && c["request_id"] == 1)
        {
            break call;
        }
        assert!(
            Instant::now() < deadline,
            "the teardown never ran:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let db = format!(
        "sqlite://{}?mode=ro",
        server.dir.path().join("jit.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let expires_at = loop {
        let (expires_at, revoked_at): (String, Option<String>) =
            sqlx::query_as("SELECT expires_at, revoked_at FROM requests WHERE id = 1")
                .fetch_one(&pool)
                .await
                .unwrap();
        if revoked_at.is_some() {
            break expires_at;
        }
        assert!(
            Instant::now() < deadline,
            "the revoke ran but is not recorded:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    pool.close().await;
    let expires = chrono::DateTime::parse_from_rfc3339(&expires_at)
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    let revoked = revoke["at"].as_f64().unwrap();
    assert!(revoked + 0.001 >= expires, "never revoked before expiry");
    println!(
        "teardown ran {:.3} s after the grant's expiry",
        revoked - expires
    );
    assert!(
        revoked - expires <= 2.0,
        "the teardown runs on time under the flood (within 2 s of expiry), not {:.3} s late",
        revoked - expires
    );

    let held = server.metric("jit_http_connections", "http").await;
    assert!(
        held >= expected as f64,
        "the flood was still held when the teardown ran ({held} connections)"
    );
    assert!(
        !server.logs().contains("Too many open files"),
        "no descriptor exhaustion:\n{}",
        server.logs()
    );
    // With its own listener, /metrics is not served on the main one.
    let main_metrics = reqwest::get(format!("{}/metrics", server.url()))
        .await
        .unwrap();
    assert_eq!(main_metrics.status(), 404);

    // The slowloris connections went on all along: bodies were cut off with `408` after the
    // body timeout, and no head ever got an answer other than a `408`.
    stop_slowloris.send(true).unwrap();
    for (what, tasks) in [("head", slow_heads), ("body", slow_bodies)] {
        let plural = if what == "head" { "heads" } else { "bodies" };
        let (mut closed, mut open) = (0, 0);
        for task in tasks {
            let outcome = task.await.unwrap();
            open += outcome.open_at_stop;
            for (sent, after) in outcome.closed {
                closed += 1;
                assert!(
                    sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
                    "a slowloris {what} got {sent:?}"
                );
                if what == "body" {
                    assert!(sent.starts_with("HTTP/1.1 408"), "{sent:?}");
                    assert!(not_before(after, body_timeout), "{after:?}");
                }
            }
        }
        println!(
            "slowloris {plural}: {closed} closed by the server meanwhile, {open} still held at the end"
        );
        if what == "body" {
            assert!(
                closed >= SLOWLORIS,
                "each slowloris body was cut off at least once ({closed})"
            );
        }
    }
    // SIGTERM with the flood still open: a clean, prompt exit.
    let stopping = Instant::now();
    let status = server.terminate().await;
    println!(
        "stopped on SIGTERM with {expected} open connections in {:?}",
        stopping.elapsed()
    );
    assert!(status.success(), "{status:?}\n{}", server.logs());
    drop(flooders);
}

/// Writes `head` and then one more byte every 300 ms (never completing), until the server closes.
async fn trickle(addr: &str, head: &'static [u8], byte: u8) -> (String, Duration) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let since = Instant::now();
    stream.write_all(head).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let guard = since + Duration::from_secs(60);
    let closed = loop {
        match tokio::time::timeout_at(guard.into(), reader.read(&mut buf)).await {
            Err(_) => panic!("a slowloris connection was held for 60 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break since.elapsed(),
            Ok(Ok(n)) => {
                seen.extend_from_slice(&buf[..n]);
                writing.abort();
            }
        }
    };
    writing.abort();
    (String::from_utf8_lossy(&seen).into(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_connections_are_closed_and_the_cap_queues_the_rest() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    jit::edge::raise_fd_limit();
    let slack = FakeSlack::start(TOKEN).await.unwrap();
    slack.set_user("U0DEV", "dev", Some("dev@example.com"));
    let header = Duration::from_secs(2);
    let body = Duration::from_secs(2);
    let idle = Duration::from_secs(3);
    let cap = 100usize;
    let server = Server::start(
        &slack,
        &[
            ("JIT_HTTP_HEADER_TIMEOUT", "2s"),
            ("JIT_HTTP_BODY_TIMEOUT", "2s"),
            ("JIT_HTTP_IDLE_TIMEOUT", "3s"),
            ("JIT_HTTP_MAX_CONNECTIONS", "100"),
        ],
    );
    server.wait_ready().await;
    let addr = server.addr.clone();

    // Slowloris heads: a request line and headers, one byte at a time, never finished.
    let heads = (0..10).map(|_| {
        let addr = addr.clone();
        tokio::spawn(async move {
            trickle(
                &addr,
                b"POST /slack/commands HTTP/1.1\r\nHost: jit\r\nX-Slow: a",
                b'a',
            )
            .await
        })
    });
    // Slowloris bodies: a complete head announcing 1000 bytes, then a trickle.
    let bodies = (0..10).map(|_| {
        let addr = addr.clone();
        tokio::spawn(async move {
            trickle(
                &addr,
                b"POST /slack/commands HTTP/1.1\r\nHost: jit\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ntext=",
                b'a',
            )
            .await
        })
    });
    // The API authenticates before it reads a body, so this one carries a real token.
    let token = server
        .cli(&["identity", "token", "create", "ci"])
        .split_whitespace()
        .find(|w| w.starts_with("jit_"))
        .expect("a token")
        .to_owned();
    let api_head: &'static [u8] = format!(
        "POST /api/v1/requests HTTP/1.1\r\nHost: jit\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .into_bytes()
    .leak();
    let api_body = {
        let addr = addr.clone();
        tokio::spawn(async move { trickle(&addr, api_head, b' ').await })
    };
    // A connection that never sends a byte.
    let silent = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            until_closed(&mut stream, Instant::now(), Duration::from_secs(60)).await
        })
    };
    // A kept-alive connection that goes quiet after one request.
    let kept_alive = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: jit\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            let first = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (rest, after) =
                until_closed(&mut stream, Instant::now(), Duration::from_secs(60)).await;
            (first, rest, after)
        })
    };

    for (i, h) in heads.enumerate() {
        let (sent, after) = h.await.unwrap();
        if i == 0 {
            println!("slowloris head closed by the server after {after:?}");
        }
        assert!(
            sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
            "{sent}"
        );
        assert!(
            not_before(after, header),
            "closed before the header timeout: {after:?}"
        );
    }
    for (i, b) in bodies.enumerate() {
        let (sent, after) = b.await.unwrap();
        if i == 0 {
            println!("slowloris body answered and closed after {after:?}");
        }
        assert!(sent.starts_with("HTTP/1.1 408"), "{sent:?}");
        assert!(
            sent.to_ascii_lowercase().contains("connection: close"),
            "{sent}"
        );
        assert!(
            not_before(after, body),
            "closed before the body timeout: {after:?}"
        );
    }
    let (sent, after) = api_body.await.unwrap();
    println!("slowloris API body answered and closed after {after:?}");
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains(r#""code":"body_timeout""#), "{sent}");
    let (sent, after) = silent.await.unwrap();
    println!("silent connection closed by the server after {after:?}");
    assert!(sent.is_empty(), "{sent}");
    assert!(not_before(after, header), "{after:?}");
    let (first, rest, after) = kept_alive.await.unwrap();
    println!("idle keep-alive connection closed by the server {after:?} after its response");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(rest.is_empty(), "{rest}");
    assert!(not_before(after, idle), "{after:?}");
    assert!(server.metric("jit_http_connections", "http").await < cap as f64);

    // Three times the cap in idle connections: the server holds `cap` of them, each newcomer past
    // the cap closing the oldest silent one, and a signed request behind them is served.
    let flood = open_idle(&addr, 3 * cap).await;
    let started = Instant::now();
    let reply = server
        .driver()
        .slash("U0DEV", "C0GENERAL", "list")
        .await
        .unwrap();
    println!(
        "at the cap ({cap}), after {} idle connections, a signed /jit list was acked in {:?}",
        3 * cap,
        started.elapsed()
    );
    assert_eq!(reply.status, 200);
    let held = server.metric("jit_http_connections", "http").await;
    assert!(held <= cap as f64, "never more than the cap: {held}");
    assert!(
        server
            .metric("jit_http_connection_cap_reached_total", "http")
            .await
            >= 1.0
    );
    assert_eq!(
        server.metric("jit_http_connection_limit", "http").await,
        cap as f64
    );
    let logs = server.logs();
    assert!(
        logs.contains("connection cap reached"),
        "the cap is logged:\n{logs}"
    );
    assert!(!logs.contains("Too many open files"), "{logs}");
    assert!(
        server
            .metric_reason("jit_http_rejected_total", "evicted_silent")
            .await
            >= 1.0
    );
    drop(flood);

    // Now every slot busy with a request (slow bodies, which are not silent): nothing is closed
    // to make room, new connections wait in the backlog, and are served as the slots free up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("jit_http_connections", "http").await > 0.0 {
        assert!(Instant::now() < deadline, "the idle flood was never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy: Vec<_> = (0..cap)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                trickle(
                    &addr,
                    b"POST /slack/commands HTTP/1.1\r\nHost: jit\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ntext=",
                    b'a',
                )
                .await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("jit_http_connections", "http").await < cap as f64 {
        assert!(
            Instant::now() < deadline,
            "the slow bodies never filled the cap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let evicted_before = server
        .metric_reason("jit_http_rejected_total", "evicted_silent")
        .await;
    let started = Instant::now();
    let reply = server
        .driver()
        .slash("U0DEV", "C0GENERAL", "list")
        .await
        .unwrap();
    println!(
        "with all {cap} slots busy, a signed /jit list waited in the backlog and was acked after {:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 200);
    for task in busy {
        let (sent, _) = task.await.unwrap();
        assert!(sent.starts_with("HTTP/1.1 408"), "{sent:?}");
    }
    assert_eq!(
        server
            .metric_reason("jit_http_rejected_total", "evicted_silent")
            .await,
        evicted_before,
        "a connection with a request is never closed to make room"
    );
    assert!(!server.logs().contains("Too many open files"));
}

#[tokio::test]
async fn unauthenticated_api_calls_are_limited_per_source_address() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = FakeSlack::start(TOKEN).await.unwrap();
    slack.set_user("U0DEV", "dev", Some("dev@example.com"));
    // Behind one trusted proxy: the caller is the last X-Forwarded-For entry.
    let server = Server::start(
        &slack,
        &[
            ("JIT_API_UNAUTHENTICATED_RATE", "3"),
            ("JIT_TRUSTED_PROXY_HOPS", "1"),
        ],
    );
    server.wait_ready().await;
    let token = server
        .cli(&["identity", "token", "create", "ci"])
        .split_whitespace()
        .find(|w| w.starts_with("jit_"))
        .expect("a token")
        .to_owned();
    let http = reqwest::Client::new();
    let call = |forwarded: &'static str, bearer: String| {
        let request = http
            .get(format!("{}/api/v1/requests", server.url()))
            .header("x-forwarded-for", forwarded)
            .bearer_auth(bearer);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            let body: Value = r.json().await.unwrap();
            (
                status,
                body["code"].as_str().unwrap_or_default().to_owned(),
                retry,
            )
        }
    };
    for _ in 0..3 {
        let (status, code, _) = call("6.6.6.6, 203.0.113.7", "jit_wrong".into()).await;
        assert_eq!((status, code.as_str()), (401, "unauthorized"));
    }
    // The fourth bad call from that address is refused before anything else.
    let (status, code, retry) = call("1.1.1.1, 203.0.113.7", "jit_wrong".into()).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert!(retry.is_some(), "429 says when to retry");
    // The unknown endpoint counts too.
    let r = http
        .get(format!("{}/api/v1/nothing", server.url()))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Another address has its own budget; what the client wrote left of the proxy's entry is not
    // believed.
    let (status, code, _) = call("203.0.113.7, 198.51.100.1", "jit_wrong".into()).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    // A valid token from the limited address still works: it is limited per token instead.
    let (status, _, _) = call("203.0.113.7", token).await;
    assert_eq!(status, 200);
}

#[test]
fn the_client_refuses_plain_http_to_another_machine() {
    let run = |url: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_jit"))
            .args(["release", "1"])
            .args(extra)
            .env_clear()
            .env("JIT_URL", url)
            .env("JIT_TOKEN", "jit_not-a-real-token")
            .output()
            .unwrap()
    };
    let refused = run("http://jit.example.com", &[]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("is plain HTTP") && stderr.contains("--insecure"),
        "{stderr}"
    );
    assert!(!stderr.contains("jit_not-a-real-token"), "{stderr}");
    // With --insecure the client goes on to call the server (nothing listens there: a
    // connection error, not the refusal).
    let port = free_port();
    let insecure = run(
        &format!("http://127.0.0.2.example.invalid:{port}"),
        &["--insecure"],
    );
    let stderr = String::from_utf8_lossy(&insecure.stderr);
    assert!(!insecure.status.success());
    assert!(!stderr.contains("is plain HTTP"), "{stderr}");
    assert!(stderr.contains("cannot reach the jit server"), "{stderr}");
}
