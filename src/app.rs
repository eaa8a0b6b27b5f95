//! The running application: everything a handler or a job needs, built once at startup.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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

pub struct App {
    pub policy: Arc<Policy>,
    pub store: Store,
    pub clock: SharedClock,
    pub slack: SlackApi,
    pub directory: Directory,
    pub providers: Providers,
    pub cipher: Cipher,
    pub verifier: Verifier,
    pub waker: Waker,
    pub metrics: Metrics,
    /// Per-requester request rate (Slack users and identities alike).
    pub request_limiter: DefaultKeyedRateLimiter<String>,
    /// Per-token API call rate.
    pub api_limiter: DefaultKeyedRateLimiter<i64>,
    /// Per-source-address rate of API calls that do not authenticate.
    pub unauthenticated_limiter: DefaultKeyedRateLimiter<std::net::IpAddr>,
    pub settings: Settings,
    pub health: Health,
    /// Services the layers above plug in when the app is built (the request path's group
    /// commit, `handlers::committer`), found by their type: the app depends on none of them.
    pub services: axum::http::Extensions,
}

impl App {
    /// What the job worker needs of the app (`queue::worker::Env`).
    pub fn worker_env(&self) -> crate::queue::worker::Env {
        crate::queue::worker::Env {
            store: self.store.clone(),
            clock: self.clock.clone(),
            waker: self.waker.clone(),
            metrics: self.metrics.clone(),
            beat: self.health.worker_beat.clone(),
            workers: self.settings.workers,
            lease: self.settings.lease,
        }
    }
}

/// Liveness signals read by `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix milliseconds of the worker loop's last turn (0: never ran).
    pub worker_beat: Arc<std::sync::atomic::AtomicI64>,
    /// Set when Slack's traffic comes over Socket Mode rather than HTTP.
    pub socket_mode: std::sync::atomic::AtomicBool,
    /// Socket Mode connections open now that Slack greeted with `hello`.
    pub socket_connections: std::sync::atomic::AtomicUsize,
}

impl Health {
    /// Counts a greeted Socket Mode connection until the returned guard is dropped.
    pub fn socket_connected(&self) -> SocketConnected<'_> {
        self.socket_connections
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        SocketConnected(self)
    }

    /// Whether Slack can reach us: always over HTTP; over Socket Mode, with a greeted connection.
    pub fn slack_reachable(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        !self.socket_mode.load(SeqCst) || self.socket_connections.load(SeqCst) > 0
    }
}

/// See [`Health::socket_connected`].
pub struct SocketConnected<'a>(&'a Health);

impl Drop for SocketConnected<'_> {
    fn drop(&mut self) {
        self.0
            .socket_connections
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Tunables with production defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs run at once by the worker.
    pub workers: usize,
    /// How long a claimed job is leased before another worker may take it. A running job's
    /// lease is renewed by a heartbeat every third of it, so only a dead worker's jobs are
    /// taken over, within one lease.
    pub lease: std::time::Duration,
    /// API calls per token per minute.
    pub api_calls_per_minute: u32,
    /// How long a Slack Web API call may take.
    pub slack_timeout: std::time::Duration,
    /// API calls per minute per source address that do not authenticate.
    pub unauthenticated_calls_per_minute: u32,
    /// Proxies in front of jit whose `X-Forwarded-For` entries name the caller (0: none; the
    /// peer address is the caller).
    pub trusted_proxy_hops: usize,
    /// How often the audit chain's head is posted to the audit channel, if it moved.
    pub audit_anchor_interval: std::time::Duration,
    /// Once this many posts wait in the audit channel's chain, a request's waiting events are
    /// posted together in one reply (see `handlers::notify::audit_post`).
    pub audit_coalesce_backlog: u32,
    /// Slack's posting pace is kept in the database, shared by every replica (on PostgreSQL;
    /// one process paces in memory).
    pub shared_pacing: bool,
}

/// A dead replica's (or crashed process's) jobs come back within this long.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(5);

/// About ten seconds of posts at Slack's pace of one message per second per channel.
pub const DEFAULT_AUDIT_COALESCE_BACKLOG: u32 = 10;

impl Default for Settings {
    fn default() -> Self {
        Self {
            workers: 16,
            lease: DEFAULT_LEASE,
            api_calls_per_minute: 120,
            slack_timeout: std::time::Duration::from_secs(10),
            unauthenticated_calls_per_minute: 30,
            trusted_proxy_hops: 0,
            audit_anchor_interval: crate::audit::anchor::DEFAULT_INTERVAL,
            audit_coalesce_backlog: DEFAULT_AUDIT_COALESCE_BACKLOG,
            shared_pacing: false,
        }
    }
}

pub fn request_limiter(per_minute: u32) -> DefaultKeyedRateLimiter<String> {
    let per_minute = NonZeroU32::new(per_minute.max(1)).expect("at least one");
    RateLimiter::keyed(Quota::per_minute(per_minute))
}

pub type SharedApp = Arc<App>;
