//! The ack benchmark: how many signed `/jit request` commands per second `jit serve` verifies,
//! checks against the policy, stores and acks, with what latency — next to a bare hyper + HMAC
//! server (the floor) and Slack's Bolt for JavaScript (the anchor), loaded the same way in the
//! same run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use clap::Args;
use secrecy::SecretString;

use super::place::Place;
use super::{Figures, Percentiles, percentiles, print_bar};
use crate::clock::SystemClock;
use crate::slack::simulator::{FakeSlack, TEAM_ID};
use crate::slack::verify::{Verifier, sign};
use crate::store::Durability;

#[derive(Debug, Clone, Args)]
pub struct AckArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Seconds of load per target.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Skip Bolt for JavaScript even if Node is available.
    #[arg(long)]
    pub no_bolt: bool,
    /// How long the fake Slack takes to answer each Web API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub slack_latency_ms: u64,
    /// The Bolt for JavaScript app to compare with (default: bench/bolt in the source tree
    /// this binary was built from).
    #[arg(long)]
    pub bolt_dir: Option<PathBuf>,
    /// `jit serve` replicas on PostgreSQL, the connections spread over them (SQLite: always one).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
}

impl Default for AckArgs {
    fn default() -> Self {
        Self {
            connections: 16,
            seconds: 10,
            no_bolt: false,
            slack_latency_ms: 0,
            bolt_dir: None,
            replicas: 3,
        }
    }
}

const SECRET: &str = "bench-signing-secret";
const TOKEN: &str = "xoxb-bench";

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0ADMIN"] }

[limits]
requests_per_user_per_minute = 1000000
max_pending_per_user = 1000000

[[resource]]
id = "bench"
description = "The benchmark's resource"
provider = "none"
max_duration = "4h"
approvers = { channel = "C0APPROVALS", users = ["U0APPROVER"] }
"#;

/// A bare server: verifies the signature (same verifier as jit) and acks. Nothing else.
pub async fn bare_server(listen: &str, secret: &str) -> anyhow::Result<()> {
    let verifier = Arc::new(Verifier::new(
        vec![SecretString::from(secret.to_owned())],
        Arc::new(SystemClock::default()),
    ));
    let app = axum::Router::new().route(
        "/slack/commands",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let verifier = verifier.clone();
            async move {
                let ts = headers
                    .get("x-slack-request-timestamp")
                    .map(|v| v.as_bytes());
                let sig = headers.get("x-slack-signature").map(|v| v.as_bytes());
                match verifier.verify(ts, sig, &body) {
                    Ok(()) => (
                        StatusCode::OK,
                        r#"{"response_type":"ephemeral","text":"ok"}"#,
                    ),
                    Err(_) => (StatusCode::UNAUTHORIZED, ""),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

struct Target {
    name: &'static str,
    child: Child,
    url: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{what} exited before listening ({status})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{what} did not start listening on {addr}")
}

/// Starts `jit serve` (this very binary) on a fresh database.
pub async fn spawn_jit(
    dir: &Path,
    slack: &FakeSlack,
    durability: Durability,
) -> anyhow::Result<(Child, String, PathBuf)> {
    spawn_jit_with(dir, slack, durability, POLICY, &[]).await
}

/// [`spawn_jit`] with another policy and extra environment.
pub async fn spawn_jit_with(
    dir: &Path,
    slack: &FakeSlack,
    durability: Durability,
    policy_text: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(Child, String, PathBuf)> {
    let db = dir.join("jit.db");
    let url = format!("sqlite://{}", db.display());
    let (child, listening) = spawn_jit_on(dir, slack, durability, policy_text, env, &url).await?;
    Ok((child, listening, db))
}

/// [`spawn_jit_with`] on the database `database_url` names; the policy and the encryption key
/// are files in `dir`, shared by every process started on the same `dir`.
pub async fn spawn_jit_on(
    dir: &Path,
    slack: &FakeSlack,
    durability: Durability,
    policy_text: &str,
    env: &[(&str, &str)],
    database_url: &str,
) -> anyhow::Result<(Child, String)> {
    let policy = dir.join("jit.toml");
    std::fs::write(&policy, policy_text)?;
    // One encryption key per database, as in a deployment: the audit chain is keyed with a key
    // derived from it, and jit refuses to start on that database with another one (`footprint`
    // starts jit several times on the same database).
    let key_file = dir.join("encryption.key");
    let key = match std::fs::read_to_string(&key_file) {
        Ok(key) => key,
        Err(_) => {
            let key = crate::crypto::generate_key();
            std::fs::write(&key_file, &key)?;
            key
        }
    };
    let addr = free_addr()?;
    // `JIT_BENCH_SERVE_WRAPPER`: a command (split on spaces) that runs `jit serve`, such as
    // the profiler that records the start-up code `link/startup-symbols.sh` lays out together.
    let wrapper = std::env::var("JIT_BENCH_SERVE_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(std::env::current_exe()?);
            command
        }
        None => Command::new(std::env::current_exe()?),
    };
    command
        .arg("serve")
        .env("SLACK_SIGNING_SECRET", SECRET)
        .env("SLACK_BOT_TOKEN", TOKEN)
        .env("JIT_ENCRYPTION_KEY", key)
        .env("JIT_SLACK_API_URL", slack.api_url())
        .env("JIT_DATABASE_URL", database_url)
        .env("JIT_SQLITE_SYNCHRONOUS", durability.as_str())
        .env("JIT_POLICY", &policy)
        .env("JIT_LISTEN", addr.to_string())
        .env("RUST_LOG", "warn")
        .env_remove("SLACK_APP_TOKEN");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start jit serve")?;
    wait_listening(addr, &mut child, "jit serve").await?;
    Ok((child, format!("http://{addr}")))
}

/// A signed slash command (`/jit {text}`) from `user` of the simulator's workspace (the one jit
/// serves: deliveries from any other are refused), as Slack sends it. `user` must be known to
/// the simulator ([`FakeSlack::set_user`]) before jit starts, or jit treats them as a stranger.
pub async fn slash(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    text: &str,
) -> anyhow::Result<String> {
    let body = format!(
        "token=unused&team_id={TEAM_ID}&channel_id=C0GENERAL&user_id={user}&command=%2Fjit&text={}&response_url=https%3A%2F%2Fhooks.slack.invalid%2F1&trigger_id={user}.{}",
        url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>(),
        rand::random::<u32>()
    );
    let ts = chrono::Utc::now().timestamp();
    let signature = sign(&SecretString::from(SECRET), ts, body.as_bytes());
    let answer = client
        .post(format!("{url}/slack/commands"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    Ok(answer.text().await?)
}

fn body(connection: usize, n: u64) -> String {
    let user = format!("U0BENCH{:04}", (connection * 7919 + n as usize) % 1000);
    format!(
        "token=unused&team_id={TEAM_ID}&channel_id=C0GENERAL&user_id={user}&command=%2Fjit&text=request+bench+1h+load+test+INC-{n}&response_url=https%3A%2F%2Fhooks.slack.invalid%2F1&trigger_id={connection}.{n}.{}",
        rand::random::<u32>()
    )
}

/// The outcome of loading one target.
pub struct Load {
    pub ok: u64,
    pub failed: u64,
    pub seconds: f64,
    pub latency: Percentiles,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

/// Sends freshly signed slash commands from `connections` connections for `seconds`, the
/// connections spread over `urls` in turn. `accept` decides whether an answer counts as a
/// successful ack.
pub async fn load(
    urls: &[String],
    connections: usize,
    seconds: u64,
    accept: fn(u16, &[u8]) -> bool,
) -> anyhow::Result<Load> {
    let secret = SecretString::from(SECRET);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let (url, secret, ok, failed) = (
            format!("{}/slack/commands", urls[connection % urls.len()]),
            secret.clone(),
            ok.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .http1_only()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client");
            let mut latencies = Vec::with_capacity(50_000);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = body(connection, n);
                let ts = chrono::Utc::now().timestamp();
                let signature = sign(&secret, ts, body.as_bytes());
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-slack-request-timestamp", ts.to_string())
                    .header("x-slack-signature", signature)
                    .body(body)
                    .send()
                    .await;
                let good = match answer {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let bytes = response.bytes().await.unwrap_or_default();
                        accept(status, &bytes)
                    }
                    Err(_) => false,
                };
                latencies.push(sent.elapsed());
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Load {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds,
        latency: percentiles(&mut all),
    })
}

fn jit_acked(status: u16, body: &[u8]) -> bool {
    status == 200 && String::from_utf8_lossy(body).contains("was sent to")
}

fn plain_ok(status: u16, _: &[u8]) -> bool {
    status == 200
}

fn report(name: &str, load: &Load, cpu: Option<f64>) {
    println!(
        "  {name:<22} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   p99.9 {:>7.2} ms   max {:>7.2} ms   ({} ok, {} failed){}",
        load.rate(),
        load.latency.p50,
        load.latency.p99,
        load.latency.p999,
        load.latency.max,
        load.ok,
        load.failed,
        cpu.map(|us| format!("   CPU {us:.0} µs/req"))
            .unwrap_or_default()
    );
}

/// User plus system CPU seconds a process has used so far, from `/proc/<pid>/stat` (Linux;
/// `None` elsewhere). The kernel counts them in USER_HZ ticks, which is 100 on every
/// architecture Linux reports them for.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers, and
    // utime and stime are the 14th and 15th of the line.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU seconds used so far by every target process together.
fn cpu_of(targets: &[&Target]) -> Option<f64> {
    targets.iter().map(|t| cpu_seconds(t.child.id())).sum()
}

/// Runs `load` and returns it with the targets' CPU time (user + system) per successful
/// request, in microseconds: a figure that holds when the machine is noisy, where the
/// throughput does not.
async fn with_cpu(
    targets: &[&Target],
    load: impl std::future::Future<Output = anyhow::Result<Load>>,
) -> anyhow::Result<(Load, Option<f64>)> {
    let before = cpu_of(targets);
    let load = load.await?;
    let after = cpu_of(targets);
    let per_request = match (before, after) {
        (Some(before), Some(after)) if load.ok > 0 => Some(1e6 * (after - before) / load.ok as f64),
        _ => None,
    };
    Ok((load, per_request))
}

async fn bare_target() -> anyhow::Result<Target> {
    let addr = free_addr()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "bare-server",
            "--listen",
            &addr.to_string(),
            "--secret",
            SECRET,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    wait_listening(addr, &mut child, "the bare server").await?;
    Ok(Target {
        name: "bare hyper + HMAC",
        child,
        url: format!("http://{addr}"),
    })
}

/// Bolt for JavaScript, if Node is here; installs @slack/bolt into `dir` on first use.
async fn bolt_target(dir: Option<&Path>) -> anyhow::Result<Option<Target>> {
    let dir = dir.map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/bolt"),
        Path::to_path_buf,
    );
    if Command::new("node").arg("--version").output().is_err() || !dir.join("app.js").exists() {
        println!(
            "  (Node.js or {}/app.js is not available: skipping Bolt for JavaScript)",
            dir.display()
        );
        return Ok(None);
    }
    if !dir.join("node_modules/@slack/bolt").exists() {
        println!("  (installing @slack/bolt into {} …)", dir.display());
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()?;
        if !status.success() {
            println!("  (npm install failed: skipping Bolt for JavaScript)");
            return Ok(None);
        }
    }
    let addr = free_addr()?;
    let mut child = Command::new("node")
        .arg("app.js")
        .current_dir(&dir)
        .env("PORT", addr.port().to_string())
        .env("SLACK_SIGNING_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    wait_listening(addr, &mut child, "Bolt").await?;
    Ok(Some(Target {
        name: "Bolt for JavaScript",
        child,
        url: format!("http://{addr}"),
    }))
}

pub async fn run(args: AckArgs, durability: Durability, place: &Place) -> anyhow::Result<Figures> {
    let replicas = match place.driver() {
        crate::store::Driver::Sqlite => 1,
        crate::store::Driver::Postgres => args.replicas.max(1),
    };
    println!(
        "\nack on {}: signed /jit request commands, {} connections over {replicas} `jit serve` {}, {} s per target, fresh signature and trigger_id per request, fake Slack latency {} ms",
        place.name(),
        args.connections,
        if replicas == 1 { "process" } else { "replicas" },
        args.seconds,
        args.slack_latency_ms
    );
    let files = tempfile::Builder::new()
        .prefix("jit-bench-ack-")
        .tempdir()?;
    let dir = place.dir().unwrap_or(files.path());
    let slack = FakeSlack::start(TOKEN).await?;
    for n in 0..1000 {
        slack.set_user(&format!("U0BENCH{n:04}"), &format!("bench{n}"), None);
    }
    slack.set_latency(Duration::from_millis(args.slack_latency_ms));
    let database_url = place.url();
    let mut jit = Vec::new();
    for _ in 0..replicas {
        // One at a time: the first applies the migrations.
        let (child, url) =
            spawn_jit_on(dir, &slack, durability, POLICY, &[], &database_url).await?;
        jit.push(Target {
            name: "jit serve",
            child,
            url,
        });
    }
    let urls: Vec<String> = jit.iter().map(|t| t.url.clone()).collect();
    // Warm up connections and caches.
    load(&urls, args.connections, 1, jit_acked).await?;
    let (jit_load, jit_cpu) = with_cpu(
        &jit.iter().collect::<Vec<_>>(),
        load(&urls, args.connections, args.seconds, jit_acked),
    )
    .await?;
    drop(jit);
    let stored = {
        let store = crate::store::Store::connect(&database_url, durability).await?;
        let mut conn = store.read().await?;
        let n: i64 = crate::store::on!(&mut conn, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM requests"
        )
        .fetch_one(&mut *c)
        .await)?;
        drop(conn);
        store.close().await;
        n
    };
    report("jit serve", &jit_load, jit_cpu);
    println!(
        "  {:<22} {stored} requests stored (warm-up included), every ack after its commit",
        ""
    );
    let rate = jit_load.rate();
    let figures = vec![
        ("ack throughput", format!("{rate:.0} req/s")),
        ("ack p50 latency", format!("{:.2} ms", jit_load.latency.p50)),
        ("ack p99 latency", format!("{:.2} ms", jit_load.latency.p99)),
        ("jit serve processes", replicas.to_string()),
        (
            "ack CPU per request",
            jit_cpu.map_or_else(|| "not measured".to_owned(), |us| format!("{us:.0} µs")),
        ),
    ];
    if place.driver() == crate::store::Driver::Postgres {
        // The floor and the anchor do not depend on the database: measured once, beside SQLite.
        print_bar(
            "ack p99 latency",
            format!("{:.2} ms", jit_load.latency.p99),
            "≤ 5 ms",
            jit_load.latency.p99 <= 5.0,
        );
        return Ok(figures);
    }

    let bare = bare_target().await?;
    let bare_urls = [bare.url.clone()];
    load(&bare_urls, args.connections, 1, plain_ok).await?;
    let (bare_load, bare_cpu) = with_cpu(
        &[&bare],
        load(&bare_urls, args.connections, args.seconds, plain_ok),
    )
    .await?;
    report(bare.name, &bare_load, bare_cpu);
    drop(bare);

    let bolt_load = if args.no_bolt {
        None
    } else if let Some(bolt) = bolt_target(args.bolt_dir.as_deref()).await? {
        let bolt_urls = [bolt.url.clone()];
        load(&bolt_urls, args.connections, 1, plain_ok).await?;
        let (l, cpu) = with_cpu(
            &[&bolt],
            load(&bolt_urls, args.connections, args.seconds, plain_ok),
        )
        .await?;
        report(bolt.name, &l, cpu);
        Some(l)
    } else {
        None
    };

    match &bolt_load {
        Some(bolt) => print_bar(
            "ack throughput vs Bolt",
            format!("{:.1}× Bolt ({rate:.0} req/s)", rate / bolt.rate()),
            "≥ 5× Bolt in the same run",
            rate >= 5.0 * bolt.rate(),
        ),
        None => println!(
            "  ack throughput vs Bolt: not measured ({}); the design's Bolt figure was 2.2k–3.5k req/s",
            if args.no_bolt {
                "--no-bolt"
            } else {
                "Node.js or the Bolt app is not available"
            }
        ),
    }
    print_bar(
        "ack throughput vs bare server",
        format!(
            "{:.0}% of bare ({:.0} req/s)",
            100.0 * rate / bare_load.rate(),
            bare_load.rate()
        ),
        "≥ 50% of bare hyper + HMAC",
        rate >= 0.5 * bare_load.rate(),
    );
    print_bar(
        "ack p99 latency",
        format!("{:.2} ms", jit_load.latency.p99),
        "≤ 5 ms",
        jit_load.latency.p99 <= 5.0,
    );
    Ok(figures)
}
