//! The queue benchmark: no-op jobs through the real worker (claim, run, complete, each fenced),
//! against raw single-row INSERT+COMMIT transactions on the same file with the same pragmas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use secrecy::SecretString;

use super::place::Place;
use super::{Figures, print_bar};
use crate::app::Settings;
use crate::bootstrap::{self, Parts};
use crate::clock::SystemClock;
use crate::crypto::Cipher;
use crate::domain::policy::Policy;
use crate::jobs::Job;
use crate::queue::{self, Placement};
use crate::slack::simulator::FakeSlack;
use crate::store::Durability;

#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// No-op jobs to run through the worker.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Seconds of raw INSERT+COMMIT.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Worker concurrency.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
}

impl Default for QueueArgs {
    fn default() -> Self {
        Self {
            jobs: 20_000,
            seconds: 5,
            workers: 16,
        }
    }
}

pub const MINIMAL_POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0ADMIN"] }
"#;

/// Raw single-row INSERT+COMMIT per second on `store`'s database.
async fn raw_rate(store: &crate::store::Store, seconds: u64) -> anyhow::Result<f64> {
    Ok(crate::store::raw_commit_rate(store, Duration::from_secs(seconds)).await?)
}

pub async fn run(
    args: QueueArgs,
    durability: Durability,
    place: &Place,
) -> anyhow::Result<Figures> {
    println!(
        "\nqueue on {}: {} no-op jobs through the worker ({} at once) vs raw single-row INSERT+COMMIT for {} s on the same database",
        place.name(),
        args.jobs,
        args.workers,
        args.seconds
    );
    let store = place.store(durability).await?;
    store
        .open_audit_chain(crate::crypto::AuditKey::random(), chrono::Utc::now())
        .await?;

    let raw = raw_rate(&store, args.seconds).await?;

    let now = chrono::Utc::now();
    let mut tx = store.begin_write().await?;
    for _ in 0..args.jobs {
        queue::enqueue(&mut tx, &Job::Noop, Placement::none(), now, now).await?;
    }
    tx.commit().await?;

    let slack = FakeSlack::start("xoxb-bench").await?;
    let app = bootstrap::build(Parts {
        policy: Policy::parse(MINIMAL_POLICY, &|_: &str| {
            Err(std::io::Error::other("no files"))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?,
        store: store.clone(),
        clock: Arc::new(SystemClock::default()),
        slack_api_url: slack.api_url(),
        bot_token: SecretString::from("xoxb-bench"),
        signing_secrets: vec![SecretString::from("bench")],
        cipher: Cipher::from_bytes(&[1; 32]),
        providers: Default::default(),
        settings: Settings {
            workers: args.workers,
            ..Settings::default()
        },
        posts_per_channel_per_second: std::num::NonZeroU32::new(1000).expect("positive"),
        webhooks: None,
        pagerduty: None,
    })?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let worker = tokio::spawn(crate::handlers::jobs::run(app.clone(), stopped));
    loop {
        // Every 20 ms, not every 5: each look is a COUNT over the jobs index on another
        // connection, and it shares the cores with the worker it is timing.
        let left = {
            let mut conn = store.read().await?;
            let mut left = 0;
            for state in ["queued", "running"] {
                left += crate::store::jobs::count(&mut conn, "noop", state).await?;
            }
            left
        };
        if left == 0 {
            break;
        }
        let done = args.jobs as i64 - left;
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "the queue did not drain within 10 minutes ({done} of {} done)",
                args.jobs
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    app.waker.wake();
    let _ = worker.await;
    store.close().await;
    let rate = args.jobs as f64 / elapsed;
    println!("  raw INSERT+COMMIT       {raw:>9.0} tx/s");
    println!(
        "  queue claim+complete    {rate:>9.0} jobs/s   ({} jobs in {elapsed:.2} s)",
        args.jobs
    );
    print_bar(
        "queue throughput",
        format!("{rate:.0} jobs/s"),
        "≥ 10k jobs/s",
        rate >= 10_000.0,
    );
    print_bar(
        "queue vs raw transactions",
        format!("{:.0}% of raw", 100.0 * rate / raw),
        "≥ 80% of raw single-row tx",
        rate >= 0.8 * raw,
    );
    Ok(vec![
        ("raw INSERT+COMMIT", format!("{raw:.0} tx/s")),
        ("queue claim+complete", format!("{rate:.0} jobs/s")),
        ("queue vs raw", format!("{:.0}%", 100.0 * rate / raw)),
    ])
}
