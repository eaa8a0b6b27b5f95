//! Prometheus metrics, served at `GET /metrics` in the text format.
//!
//! Counters and histograms are updated where things happen; gauges that mirror the database
//! (active grants, queue depth) are refreshed from it just before each scrape.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

struct Inner {
    registry: Registry,
    requests: Family<Labels, Counter>,
    approval_latency: Histogram,
    active_grants: Gauge,
    queue_depth: Family<Labels, Gauge>,
    job_retries: Family<Labels, Counter>,
    jobs_dead: Family<Labels, Counter>,
    slack_calls: Family<Labels, Counter>,
    teardown_lag: Histogram,
    http_rejected: Family<Labels, Counter>,
    http_connections: Family<Labels, Gauge>,
    http_connection_limit: Family<Labels, Gauge>,
    http_cap_reached: Family<Labels, Counter>,
    audit_coalesced: Counter,
    slack_posts_found: Counter,
    webhooks_sent: Counter,
    pagerduty_refreshes: Family<Labels, Counter>,
}

/// Cheap to clone; all clones share the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("jit");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Access requests by outcome (submitted, auto_approved, approved, denied, cancelled, timed_out, refused, rate_limited, too_many_pending)",
            requests.clone(),
        );
        let approval_latency =
            Histogram::new([5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0]);
        registry.register(
            "approval_latency_seconds",
            "Time from request to final decision",
            approval_latency.clone(),
        );
        let active_grants = Gauge::default();
        registry.register("active_grants", "Grants active now", active_grants.clone());
        let queue_depth = Family::<Labels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Jobs by kind and state (queued, running, dead)",
            queue_depth.clone(),
        );
        let job_retries = Family::<Labels, Counter>::default();
        registry.register(
            "job_retries",
            "Job attempts that failed and will be retried",
            job_retries.clone(),
        );
        let jobs_dead = Family::<Labels, Counter>::default();
        registry.register(
            "jobs_dead",
            "Jobs given up after their last attempt",
            jobs_dead.clone(),
        );
        let slack_calls = Family::<Labels, Counter>::default();
        registry.register(
            "slack_api_calls",
            "Slack Web API calls by method and outcome (ok or Slack's error code)",
            slack_calls.clone(),
        );
        let teardown_lag = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0]);
        registry.register(
            "teardown_lag_seconds",
            "Time from a grant's expiry to its confirmed revocation",
            teardown_lag.clone(),
        );
        let http_rejected = Family::<Labels, Counter>::default();
        registry.register(
            "http_rejected",
            "Requests rejected at the edge (Slack signatures, API auth, HTTP timeouts), by reason",
            http_rejected.clone(),
        );
        let http_connections = Family::<Labels, Gauge>::default();
        registry.register(
            "http_connections",
            "HTTP connections open now, by listener",
            http_connections.clone(),
        );
        let http_connection_limit = Family::<Labels, Gauge>::default();
        registry.register(
            "http_connection_limit",
            "The most HTTP connections a listener holds at once",
            http_connection_limit.clone(),
        );
        let http_cap_reached = Family::<Labels, Counter>::default();
        registry.register(
            "http_connection_cap_reached",
            "Times a listener stopped accepting because it held its most connections",
            http_cap_reached.clone(),
        );
        let audit_coalesced = Counter::default();
        registry.register(
            "audit_events_coalesced",
            "Audit events posted inside another event's reply because the audit channel was backed up",
            audit_coalesced.clone(),
        );
        let slack_posts_found = Counter::default();
        registry.register(
            "slack_posts_found_again",
            "Retried posts that found their earlier post in Slack (posted before a crash or an unanswered call) and did not post again",
            slack_posts_found.clone(),
        );
        let webhooks_sent = Counter::default();
        registry.register(
            "webhook_events_sent",
            "Audit events a webhook acknowledged",
            webhooks_sent.clone(),
        );
        let pagerduty_refreshes = Family::<Labels, Counter>::default();
        registry.register(
            "pagerduty_refreshes",
            "Reads of who is on call from PagerDuty (auto_approve.oncall), by outcome (ok, failed); after 3 minutes of failures on-call rules approve nobody",
            pagerduty_refreshes.clone(),
        );
        Metrics(Arc::new(Inner {
            registry,
            requests,
            approval_latency,
            active_grants,
            queue_depth,
            job_retries,
            jobs_dead,
            slack_calls,
            teardown_lag,
            http_rejected,
            http_connections,
            http_connection_limit,
            http_cap_reached,
            audit_coalesced,
            slack_posts_found,
            webhooks_sent,
            pagerduty_refreshes,
        }))
    }

    pub fn request(&self, outcome: &str) {
        self.0
            .requests
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
    }

    pub fn pagerduty_refresh(&self, ok: bool) {
        self.0
            .pagerduty_refreshes
            .get_or_create(&vec![(
                "outcome",
                if ok { "ok" } else { "failed" }.to_owned(),
            )])
            .inc();
    }

    pub fn webhook_sent(&self) {
        self.0.webhooks_sent.inc();
    }

    pub fn slack_post_found(&self) {
        self.0.slack_posts_found.inc();
    }

    pub fn audit_coalesced(&self, events: u64) {
        self.0.audit_coalesced.inc_by(events);
    }

    pub fn approval_latency(&self, seconds: f64) {
        self.0.approval_latency.observe(seconds.max(0.0));
    }

    pub fn set_active_grants(&self, n: i64) {
        self.0.active_grants.set(n);
    }

    /// Replaces the queue-depth gauges with a fresh reading.
    pub fn set_queue_depth(&self, rows: &[(String, String, i64)]) {
        self.0.queue_depth.clear();
        for (kind, state, n) in rows {
            self.0
                .queue_depth
                .get_or_create(&vec![("kind", kind.clone()), ("state", state.clone())])
                .set(*n);
        }
    }

    pub fn job_retry(&self, kind: &str) {
        self.0
            .job_retries
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    pub fn job_dead(&self, kind: &str) {
        self.0
            .jobs_dead
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    pub fn slack_call(&self, method: &str, status: &str) {
        self.0
            .slack_calls
            .get_or_create(&vec![
                ("method", method.to_owned()),
                ("status", status.to_owned()),
            ])
            .inc();
    }

    pub fn teardown_lag(&self, seconds: f64) {
        self.0.teardown_lag.observe(seconds.max(0.0));
    }

    pub fn http_rejected(&self, reason: &str) {
        self.0
            .http_rejected
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Counts an open connection of `listener` until the guard is dropped.
    pub fn connection_opened(&self, listener: &'static str) -> OpenConnection {
        let gauge = self
            .0
            .http_connections
            .get_or_create(&vec![("listener", listener.to_owned())])
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    pub fn set_connection_limit(&self, listener: &'static str, limit: usize) {
        self.0
            .http_connection_limit
            .get_or_create(&vec![("listener", listener.to_owned())])
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    pub fn connection_cap_reached(&self, listener: &'static str) {
        self.0
            .http_cap_reached
            .get_or_create(&vec![("listener", listener.to_owned())])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.0.registry);
        out
    }
}

/// See [`Metrics::connection_opened`].
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
