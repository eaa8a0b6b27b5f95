//! The footprint benchmark: resident memory of an idle `jit serve`, and the time from process
//! start to a ready `/readyz` on a database whose migrations are already applied.

use std::process::Child;
use std::time::{Duration, Instant};

use clap::Args;

use super::ack::spawn_jit;
use super::print_bar;
use crate::slack::simulator::FakeSlack;
use crate::store::Durability;

#[derive(Debug, Clone, Args)]
pub struct FootprintArgs {
    /// Starts to time.
    #[arg(long, default_value_t = 5)]
    pub starts: usize,
    /// Seconds to let the server idle before reading its memory.
    #[arg(long, default_value_t = 3)]
    pub idle: u64,
}

impl Default for FootprintArgs {
    fn default() -> Self {
        Self { starts: 5, idle: 3 }
    }
}

/// Resident memory in KiB: (total, anonymous, file-backed), from `/proc/<pid>/status`.
/// File-backed pages are mostly the binary's own code, shared with every other jit process
/// and with the page cache.
fn rss_kib(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("RssAnon:")?, field("RssFile:")?))
}

fn stop(mut child: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn ready(url: &str, started: Instant) -> anyhow::Result<Duration> {
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status() == 200
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("jit serve was not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn run(args: FootprintArgs, durability: Durability) -> anyhow::Result<()> {
    println!(
        "\nfootprint: idle RSS after start, and start-to-ready on an existing database ({} starts)",
        args.starts
    );
    let dir = tempfile::Builder::new()
        .prefix("jit-bench-footprint-")
        .tempdir()?;
    let slack = FakeSlack::start("xoxb-bench").await?;
    // The first start creates the database and applies the migrations.
    let (child, url, _) = spawn_jit(dir.path(), &slack, durability).await?;
    ready(&url, Instant::now()).await?;
    stop(child);

    let mut times = Vec::new();
    let mut rss = None;
    for i in 0..args.starts {
        let started = Instant::now();
        let (child, url, _) = spawn_jit(dir.path(), &slack, durability).await?;
        times.push(ready(&url, started).await?);
        if i == 0 {
            tokio::time::sleep(Duration::from_secs(args.idle)).await;
            rss = rss_kib(child.id());
        }
        stop(child);
    }
    times.sort();
    let median = times[times.len() / 2];
    let mib = |k: u64| k as f64 / 1024.0;
    let rss_mb = rss.map(|(total, _, _)| mib(total));
    match rss {
        Some((total, anon, file)) => println!(
            "  idle RSS                {:.1} MiB ({:.1} MiB anonymous: heap and stacks; {:.1} MiB file-backed: mostly the binary's code)",
            mib(total),
            mib(anon),
            mib(file)
        ),
        None => println!("  idle RSS                unknown (no /proc)"),
    }
    println!(
        "  start to ready          median {:.0} ms (min {:.0} ms, max {:.0} ms), process start to /readyz 200",
        median.as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0
    );
    if let Some(mb) = rss_mb {
        print_bar(
            "idle RSS",
            format!("{mb:.1} MiB"),
            "≤ 15 MB",
            mb * 1.048_576 <= 15.0,
        );
    }
    print_bar(
        "start to ready",
        format!("{:.0} ms", median.as_secs_f64() * 1000.0),
        "≤ 100 ms",
        median <= Duration::from_millis(100),
    );
    Ok(())
}
