//! The teardown-lag benchmark: many active grants expiring across one minute, a provider whose
//! revoke takes a set time, the real worker and the Slack simulator; then the distribution of
//! (revoked_at - expires_at) and how many were missed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use secrecy::SecretString;

use super::place::Place;
use super::{Figures, percentiles, print_bar};
use crate::app::Settings;
use crate::bootstrap::{self, Parts};
use crate::clock::SystemClock;
use crate::crypto::Cipher;
use crate::domain::duration::GrantDuration;
use crate::domain::ids::{ResourceId, SlackUserId};
use crate::domain::policy::{Policy, Requester};
use crate::domain::request::{Kind, State};
use crate::jobs::{Job, keys};
use crate::providers::{
    GrantSpec, Issued, Provider, ProviderError, Providers, RevokeSpec, Revoked,
};
use crate::queue::{self, Placement};
use crate::slack::simulator::FakeSlack;
use crate::store::requests::{self, NewRequest};
use crate::store::{Durability, parse_time};

#[derive(Debug, Clone, Args)]
pub struct TeardownArgs {
    /// Grants expiring.
    #[arg(long, default_value_t = 10_000)]
    pub grants: usize,
    /// Over how many seconds they expire.
    #[arg(long, default_value_t = 60)]
    pub spread: u64,
    /// How long each provider revoke takes, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub revoke_latency_ms: u64,
    /// Worker concurrency.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,
    /// How long the fake Slack takes to answer each Web API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub slack_latency_ms: u64,
}

impl Default for TeardownArgs {
    fn default() -> Self {
        Self {
            grants: 10_000,
            spread: 60,
            revoke_latency_ms: 50,
            workers: 16,
            slack_latency_ms: 0,
        }
    }
}

const POLICY: &str = r#"
[slack]
audit_channel = "C0AUDIT"
admins = { users = ["U0ADMIN"] }

[[resource]]
id = "bench"
provider = "none"
max_duration = "1d"
approvers = { channel = "C0APPROVALS", users = ["U0APPROVER"] }
"#;

/// A provider whose revoke takes `latency`.
struct SlowProvider {
    latency: Duration,
}

#[async_trait::async_trait]
impl Provider for SlowProvider {
    async fn grant(&self, spec: &GrantSpec) -> Result<Issued, ProviderError> {
        Ok(Issued {
            handle: self.presumed_handle(spec),
            credentials: None,
            instructions: None,
            credentials_expire_at: None,
        })
    }

    async fn revoke(&self, _: &RevokeSpec) -> Result<Revoked, ProviderError> {
        tokio::time::sleep(self.latency).await;
        Ok(Revoked::default())
    }

    fn presumed_handle(&self, spec: &GrantSpec) -> String {
        format!("bench:{}", spec.request_id.0)
    }
}

pub async fn run(
    args: TeardownArgs,
    durability: Durability,
    place: &Place,
) -> anyhow::Result<Figures> {
    println!(
        "\nteardown on {}: {} grants expiring across {} s, provider revoke latency {} ms, {} workers, fake Slack latency {} ms",
        place.name(),
        args.grants,
        args.spread,
        args.revoke_latency_ms,
        args.workers,
        args.slack_latency_ms
    );
    let store = place.store(durability).await?;
    store
        .open_audit_chain(crate::crypto::AuditKey::random(), chrono::Utc::now())
        .await?;
    let policy = Policy::parse(POLICY, &|_: &str| Err(std::io::Error::other("no files")))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let resource = ResourceId::parse("bench").map_err(anyhow::Error::msg)?;
    let mut providers = Providers::default();
    providers.insert(
        &resource,
        Arc::new(SlowProvider {
            latency: Duration::from_millis(args.revoke_latency_ms),
        }),
    );
    let slack = FakeSlack::start("xoxb-bench").await?;
    slack.set_latency(Duration::from_millis(args.slack_latency_ms));

    // The grants, active, with their teardowns scheduled as the grant job would.
    let setup = Instant::now();
    let now = Utc::now();
    // Setting up is slower over PostgreSQL's wire than into a local file: more head start.
    let head_start = match place.driver() {
        crate::store::Driver::Sqlite => 10,
        crate::store::Driver::Postgres => 10 + args.grants as i64 / 200,
    };
    let first = now + chrono::Duration::seconds(head_start);
    let step =
        chrono::Duration::milliseconds((args.spread as i64 * 1000) / args.grants.max(1) as i64);
    let mut tx = store.begin_write().await?;
    for i in 0..args.grants {
        let requester =
            Requester::User(SlackUserId::parse(&format!("U0B{i:06}")).map_err(anyhow::Error::msg)?);
        let id = requests::insert(
            &mut tx,
            &NewRequest {
                kind: Kind::Access,
                parent: None,
                requester: &requester,
                resource: &resource,
                duration: GrantDuration::from_hours(1),
                justification: "benchmark",
                ticket: None,
                approvals_required: 1,
                created_at: now,
                pending_until: None,
                origin_channel: None,
            },
        )
        .await?;
        let _ = requests::decide(&mut tx, id, State::Approved, "policy", None, now).await?;
        let expires = first + step * i as i32;
        let handle = format!("bench:{}", id.0);
        let _ = requests::activate(
            &mut tx,
            id,
            now,
            expires,
            &handle,
            &format!("bench\n{handle}"),
        )
        .await?;
        let request = requests::get(&mut tx, id)
            .await?
            .expect("just inserted")
            .request;
        queue::enqueue(
            &mut tx,
            &Job::Revoke { request: id },
            Placement::access_of(&request, keys::revoke(id)),
            expires,
            now,
        )
        .await?;
        if i % 1000 == 999 {
            tx.commit().await?;
            tx = store.begin_write().await?;
        }
    }
    tx.commit().await?;
    anyhow::ensure!(
        Utc::now() < first,
        "setting up {} grants took {:.1} s, longer than the {head_start} s head start; use fewer grants",
        args.grants,
        setup.elapsed().as_secs_f64()
    );

    let app = bootstrap::build(Parts {
        policy,
        store: store.clone(),
        clock: Arc::new(SystemClock::default()),
        slack_api_url: slack.api_url(),
        bot_token: SecretString::from("xoxb-bench"),
        signing_secrets: vec![SecretString::from("bench")],
        cipher: Cipher::from_bytes(&[1; 32]),
        providers,
        settings: Settings {
            workers: args.workers,
            ..Settings::default()
        },
        posts_per_channel_per_second: std::num::NonZeroU32::new(1).expect("positive"),
        webhooks: None,
        pagerduty: None,
    })?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(crate::handlers::jobs::run(app.clone(), stopped));
    let last = first + step * args.grants as i32;
    let deadline = last + chrono::Duration::seconds(30);
    loop {
        let left = {
            let mut conn = store.read().await?;
            crate::store::requests::count_not_revoked(&mut conn).await?
        };
        if left == 0 || Utc::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(true);
    app.waker.wake();
    let _ = worker.await;

    let rows = {
        let mut conn = store.read().await?;
        crate::store::requests::expiries(&mut conn).await?
    };
    store.close().await;
    let mut lags = Vec::with_capacity(rows.len());
    let mut missed = 0usize;
    for (expires, revoked) in rows {
        let expires = expires.unwrap_or_default();
        match revoked {
            Some(revoked) => {
                let lag = parse_time(&revoked)? - parse_time(&expires)?;
                lags.push(lag.to_std().unwrap_or_default());
            }
            None => missed += 1,
        }
    }
    let over_2s = lags.iter().filter(|l| **l > Duration::from_secs(2)).count();
    let p = percentiles(&mut lags);
    println!(
        "  revoked_at - expires_at  p50 {:.0} ms   p99 {:.0} ms   p99.9 {:.0} ms   max {:.0} ms   ({} revoked, {} over 2 s, {} missed)",
        p.p50, p.p99, p.p999, p.max, p.count, over_2s, missed
    );
    print_bar(
        "teardown lag p99",
        format!("{:.0} ms", p.p99),
        "≤ 1 s",
        p.p99 <= 1000.0,
    );
    print_bar(
        "teardown lag max",
        format!("{:.0} ms", p.max),
        "≤ 2 s",
        p.max <= 2000.0 && missed == 0,
    );
    print_bar("teardowns missed", format!("{missed}"), "none", missed == 0);
    Ok(vec![
        ("teardown lag p50", format!("{:.0} ms", p.p50)),
        ("teardown lag p99", format!("{:.0} ms", p.p99)),
        ("teardown lag max", format!("{:.0} ms", p.max)),
        ("teardowns missed", format!("{missed}")),
    ])
}
