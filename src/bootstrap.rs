//! Building the application from configuration: shared by `jit serve`, the demo, the
//! benchmarks and the test harness, so they all run the same wiring.

use std::fs::File;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use secrecy::SecretString;

use crate::app::{App, Health, Settings, request_limiter};
use crate::clock::SharedClock;
use crate::crypto::Cipher;
use crate::domain::policy::Policy;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::queue::Waker;
use crate::slack::api::SlackApi;
use crate::slack::directory::Directory;
use crate::slack::verify::Verifier;
use crate::store::Store;

/// Reads and validates the policy file. Errors name the file, line and column.
pub fn load_policy(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the policy file {}: {e}", path.display()))?;
    let dir = policy_dir(path);
    let read = |relative: &str| std::fs::read_to_string(dir.join(relative));
    Policy::parse(&text, &read).map_err(|e| format!("{}: {e}", path.display()))
}

/// The directory relative paths in the policy are resolved against.
pub fn policy_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The production clock, floored at the latest time recorded in `store`: if the wall clock was
/// set back while jit was down, teardowns due before it are still due now. Says so loudly.
pub async fn floored_clock(store: &Store) -> anyhow::Result<crate::clock::SystemClock> {
    let floor = {
        let mut conn = store.read().await?;
        crate::store::latest_recorded_time(&mut conn).await?
    };
    let wall = chrono::Utc::now();
    match floor {
        Some(floor) if floor > wall + chrono::Duration::seconds(1) => {
            tracing::error!(
                wall_clock = %crate::store::format_time(wall),
                latest_recorded = %crate::store::format_time(floor),
                behind_secs = (floor - wall).num_seconds(),
                "the wall clock is behind the latest time jit recorded; jit keeps time from that record, so no teardown is delayed, until the wall clock catches up. Check NTP on this host"
            );
            Ok(crate::clock::SystemClock::floored(floor))
        }
        _ => Ok(crate::clock::SystemClock::default()),
    }
}

/// Everything needed to assemble an [`App`].
pub struct Parts {
    pub policy: Policy,
    pub store: Store,
    pub clock: SharedClock,
    pub slack_api_url: String,
    pub bot_token: SecretString,
    pub signing_secrets: Vec<SecretString>,
    pub cipher: Cipher,
    pub providers: Providers,
    pub settings: Settings,
    pub posts_per_channel_per_second: NonZeroU32,
    /// The policy's webhooks with their secrets (`None`: the policy has none).
    pub webhooks: Option<crate::webhooks::Targets>,
    /// PagerDuty, for `auto_approve.oncall` (`None`: no token configured; on-call rules then
    /// approve nobody).
    pub pagerduty: Option<crate::oncall::PagerDutyConfig>,
}

pub fn build(parts: Parts) -> anyhow::Result<Arc<App>> {
    let metrics = Metrics::new();
    let slack = SlackApi::new(
        &parts.slack_api_url,
        parts.bot_token,
        parts.posts_per_channel_per_second,
        metrics.clone(),
    )
    .context("cannot set up the Slack client")?
    .with_timeout(parts.settings.slack_timeout);
    // Audit rows take their time from the app's clock, read under the write lock.
    parts.store.use_clock(parts.clock.clone());
    let per_minute = parts.policy.limits.requests_per_user_per_minute;
    let mut settings = parts.settings;
    // Replicas share one database, and must share Slack's pace per channel through it.
    settings.shared_pacing |= parts.store.driver() == crate::store::Driver::Postgres;
    let (submissions, inbox) = crate::handlers::committer::channel();
    let mut services = axum::http::Extensions::new();
    services.insert(submissions);
    if !parts.policy.webhooks().is_empty() && parts.webhooks.is_none() {
        anyhow::bail!("the policy has webhooks but their secrets were not read");
    }
    if let Some(targets) = parts.webhooks {
        services.insert(targets);
    }
    let pagerduty = parts
        .pagerduty
        .map(crate::oncall::PagerDuty::new)
        .transpose()?;
    let oncall = crate::oncall::OnCallCache::new(
        pagerduty,
        parts.policy.oncall_schedules(),
        parts.clock.clone(),
        metrics.clone(),
    );
    let app = Arc::new(App {
        policy: Arc::new(parts.policy),
        store: parts.store,
        directory: Directory::new(slack.clone(), parts.clock.clone()).with_oncall(oncall),
        slack,
        verifier: Verifier::new(parts.signing_secrets, parts.clock.clone()),
        clock: parts.clock,
        providers: parts.providers,
        cipher: parts.cipher,
        waker: Waker::default(),
        metrics,
        request_limiter: request_limiter(per_minute),
        api_limiter: crate::api::call_limiter(settings.api_calls_per_minute),
        unauthenticated_limiter: crate::api::address_limiter(
            settings.unauthenticated_calls_per_minute,
        ),
        settings,
        health: Health::default(),
        services,
    });
    crate::handlers::committer::start(&app, inbox);
    Ok(app)
}

/// Holds `<database>.lock` while one `jit serve` uses a SQLite file, so two servers never run
/// the queue on the same database (which the crash recovery at startup relies on).
#[derive(Debug)]
pub struct InstanceLock {
    _file: Option<File>,
}

impl InstanceLock {
    pub fn acquire(database_url: &str) -> anyhow::Result<Self> {
        let Some(path) = sqlite_path(database_url) else {
            return Ok(Self { _file: None });
        };
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another jit process is serving {} (its lock {} is held)",
                path.display(),
                lock_path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
    }
}

/// The file behind a `sqlite:` URL, if it is a file.
pub fn sqlite_path(database_url: &str) -> Option<PathBuf> {
    let rest = database_url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(PathBuf::from(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://jit.db"),
            Some(PathBuf::from("jit.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/jit/jit.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/jit/jit.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }

    #[test]
    fn a_second_instance_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/jit.db", dir.path().display());
        let first = InstanceLock::acquire(&url).unwrap();
        let err = InstanceLock::acquire(&url).unwrap_err().to_string();
        assert!(err.contains("another jit process"), "{err}");
        drop(first);
        InstanceLock::acquire(&url).unwrap();
    }
}
