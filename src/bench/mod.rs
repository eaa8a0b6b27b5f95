//! `jit bench`: the figures of the design's quality bars, measured on this machine with real
//! HTTP, a real SQLite file on disk, the Slack simulator and a provider with a set latency.
//!
//! - `ack`: signed `/jit request` commands from N connections for T seconds against `jit serve`
//!   (a child process), next to a bare hyper + HMAC server and, when Node is available, Slack's
//!   Bolt for JavaScript acking the same requests.
//! - `queue`: claim-and-complete throughput of no-op jobs through the real worker, next to raw
//!   single-row INSERT+COMMIT on the same file with the same pragmas.
//! - `teardown`: many grants expiring across a minute, a provider revoke latency, and the
//!   distribution of (revoked_at - expires_at).
//! - `footprint`: idle RSS after start, and start-to-ready on an existing database.
//! - `flood`: a few people's many requests, then someone else's: the time until its approval
//!   message is posted, with Slack's pace in the simulator.
//!
//! With `--database postgres://…`, `ack`, `queue` and `teardown` run on SQLite and then on that
//! PostgreSQL (in a schema of their own, dropped afterwards; `ack` with three replicas), and their
//! figures are printed side by side.
//!
//! No test ever fails on these numbers; they are printed for people to compare with the bars.

pub mod ack;
pub mod flood;
pub mod footprint;
pub mod place;
pub mod queue;
pub mod teardown;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::store::Durability;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub which: Option<Which>,
    /// SQLite durability for every benchmark: full (fsync per commit) or normal (WAL, no fsync).
    #[arg(long, default_value = "full", global = true)]
    pub durability: String,
    /// Also run `ack`, `queue` and `teardown` on this PostgreSQL database (postgres://…), each in
    /// a fresh schema that is dropped afterwards, and print the figures beside SQLite's.
    #[arg(long, global = true, value_name = "URL")]
    pub database: Option<String>,
}

/// The figures one benchmark measured on one database, for the side-by-side table.
pub type Figures = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Subcommand)]
pub enum Which {
    /// Slash-command acks per second and latency against `jit serve`.
    Ack(ack::AckArgs),
    /// Job queue claim+complete throughput vs raw SQLite transactions.
    Queue(queue::QueueArgs),
    /// Teardown lag for many grants expiring within a minute.
    Teardown(teardown::TeardownArgs),
    /// Idle memory and start-to-ready time.
    Footprint(footprint::FootprintArgs),
    /// A new request's approval message under a flood of requests, at Slack's pace.
    Flood(flood::FloodArgs),
    /// Everything, with default settings.
    All,
    /// (internal) A bare hyper + HMAC server, the floor the ack benchmark compares against.
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        secret: String,
    },
}

/// Latency percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    Percentiles {
        count: samples.len(),
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: samples[samples.len() - 1].as_secs_f64() * 1000.0,
    }
}

/// One line describing the machine and the run.
pub fn conditions(durability: Durability) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{} · {cores} core(s), {cpu} · SQLite synchronous={} · jit {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        durability.as_str().to_uppercase(),
        env!("CARGO_PKG_VERSION")
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets the bar"
    } else {
        "MISSES the bar"
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let durability = Durability::parse(&args.durability)
        .ok_or_else(|| anyhow::anyhow!("--durability must be full or normal"))?;
    let which = args.which.unwrap_or(Which::All);
    if let Which::BareServer { listen, secret } = &which {
        ack::bare_server(listen, secret).await?;
        return Ok(0);
    }
    let database = args.database.as_deref();
    let mut line = conditions(durability);
    if let Some(url) = database {
        let version = place::postgres_version(url).await.with_context(|| {
            format!(
                "cannot reach the --database {}",
                crate::store::redact_url(url)
            )
        })?;
        line.push_str(&format!(" · PostgreSQL {version}"));
    }
    println!("jit bench — {line}");
    let sqlite_only = |what: &str| {
        if database.is_some() {
            println!(
                "\n({what} runs on SQLite only; --database applies to ack, queue and teardown)"
            );
        }
    };
    match which {
        Which::Ack(a) => {
            on_each(database, "ack", |p| {
                Box::pin(ack::run(a.clone(), durability, p))
            })
            .await?
        }
        Which::Queue(a) => {
            on_each(database, "queue", |p| {
                Box::pin(queue::run(a.clone(), durability, p))
            })
            .await?
        }
        Which::Teardown(a) => {
            on_each(database, "teardown", |p| {
                Box::pin(teardown::run(a.clone(), durability, p))
            })
            .await?
        }
        Which::Footprint(a) => {
            sqlite_only("footprint");
            footprint::run(a, durability).await?
        }
        Which::Flood(a) => {
            sqlite_only("flood");
            flood::run(a, durability).await?
        }
        Which::All => {
            on_each(database, "ack", |p| {
                Box::pin(ack::run(ack::AckArgs::default(), durability, p))
            })
            .await?;
            on_each(database, "queue", |p| {
                Box::pin(queue::run(queue::QueueArgs::default(), durability, p))
            })
            .await?;
            on_each(database, "teardown", |p| {
                Box::pin(teardown::run(
                    teardown::TeardownArgs::default(),
                    durability,
                    p,
                ))
            })
            .await?;
            sqlite_only("footprint and flood");
            footprint::run(footprint::FootprintArgs::default(), durability).await?;
            flood::run(flood::FloodArgs::default(), durability).await?;
        }
        Which::BareServer { .. } => unreachable!("handled above"),
    }
    Ok(0)
}

/// A benchmark run on one database.
type Bench<'p> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Figures>> + 'p>>;

/// Runs one benchmark on a fresh SQLite database and, with `--database`, on a fresh schema of
/// that PostgreSQL; then prints the figures side by side. Each database is removed afterwards,
/// also when the benchmark fails.
async fn on_each<F>(database: Option<&str>, what: &str, bench: F) -> anyhow::Result<()>
where
    F: for<'p> Fn(&'p place::Place) -> Bench<'p>,
{
    let mut columns = Vec::new();
    for target in std::iter::once(None).chain(database.map(Some)) {
        let place = place::Place::fresh(target, what).await?;
        let name = place.name();
        let measured = bench(&place).await;
        place.remove().await?;
        columns.push((name, measured?));
    }
    if columns.len() > 1 {
        print_side_by_side(what, &columns);
    }
    Ok(())
}

/// The figures of each database in a column of their own.
fn print_side_by_side(what: &str, columns: &[(&str, Figures)]) {
    println!("\n  {what}: side by side");
    print!("  {:<28}", "");
    for (name, _) in columns {
        print!(" {name:>18}");
    }
    println!();
    let Some((_, first)) = columns.first() else {
        return;
    };
    for (row, (figure, _)) in first.iter().enumerate() {
        print!("  {figure:<28}");
        for (_, figures) in columns {
            let value = figures.get(row).map_or("", |(_, v)| v.as_str());
            print!(" {value:>18}");
        }
        println!();
    }
}

pub(crate) fn print_bar(figure: &str, value: String, bar: &str, ok: bool) {
    println!("  {figure:<34} {value:<28} bar: {bar:<34} {}", verdict(ok));
}
