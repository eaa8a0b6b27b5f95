//! `jit serve`: wire everything up and run until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::app::{App, Settings};
use crate::bootstrap::{self, InstanceLock, Parts};
use crate::config::ServeConfig;
use crate::crypto::Cipher;
use crate::edge;
use crate::handlers::jobs;
use crate::providers::Providers;
use crate::server;
use crate::slack::{directory, socket};
use crate::store::Store;

/// How often user-group membership is refreshed in the background.
const DIRECTORY_REFRESH: Duration = Duration::from_secs(300);

pub async fn build_app(config: &ServeConfig) -> anyhow::Result<Arc<App>> {
    let policy = bootstrap::load_policy(&config.base.policy_path).map_err(anyhow::Error::msg)?;
    // Read before anything else, like every secret: a webhook without its secret stops startup.
    let webhooks = crate::webhooks::Targets::from_policy(&policy, &|name| std::env::var(name).ok())
        .map_err(anyhow::Error::msg)?;
    let cipher = Cipher::from_base64_or_hex(&config.encryption_key)
        .map_err(|e| anyhow::anyhow!("JIT_ENCRYPTION_KEY: {e}"))?;
    let audit_key = crate::crypto::AuditKey::from_settings(
        config.audit_key.as_ref(),
        Some(&config.encryption_key),
    )
    .map_err(anyhow::Error::msg)?;
    let store = Store::connect(&config.base.database_url, config.base.durability).await?;
    store.migrate().await?;
    open_audit_chain(&store, audit_key).await?;
    let dir = bootstrap::policy_dir(&config.base.policy_path);
    let providers = Providers::build(policy.resources(), Some(&dir), None).await?;
    let clock = Arc::new(bootstrap::floored_clock(&store).await?);
    let app = bootstrap::build(Parts {
        policy,
        store,
        clock,
        slack_api_url: config.slack_api_url.clone(),
        bot_token: config.bot_token.clone(),
        signing_secrets: config.signing_secrets.clone(),
        cipher,
        providers,
        settings: Settings {
            workers: config.workers,
            unauthenticated_calls_per_minute: config.unauthenticated_per_minute,
            trusted_proxy_hops: config.trusted_proxy_hops,
            audit_anchor_interval: config.audit_anchor_interval,
            ..Settings::default()
        },
        posts_per_channel_per_second: config.posts_per_channel_per_second,
        webhooks: Some(webhooks),
        pagerduty: config.pagerduty.clone(),
    })?;
    if !app.policy.oncall_schedules().is_empty() && config.pagerduty.is_none() {
        tracing::warn!(
            "the policy has auto_approve.oncall rules but PAGERDUTY_TOKEN (or PAGERDUTY_TOKEN_FILE) is not set: they approve nobody"
        );
    }
    // A configured workspace needs no auth.test before Slack requests are served.
    if let Some(id) = &config.slack_team_id {
        let enterprise = id.starts_with('E');
        app.directory
            .set_workspace(crate::slack::api::WorkspaceInfo {
                team_id: id.clone(),
                enterprise_id: enterprise.then(|| id.clone()),
                enterprise_install: enterprise,
            });
    }
    Ok(app)
}

/// Every minute, forgets the Slack deliveries that can no longer come again (replay refusal).
async fn prune_deliveries(app: Arc<App>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match crate::slack::deliveries::prune(&app).await {
            Ok(n) if n > 0 => tracing::debug!(deliveries = n, "forgot expired Slack deliveries"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = format!("{err:#}"), "cannot prune Slack deliveries"),
        }
    }
}

/// Opens the keyed audit chain, saying loudly what an upgrade did (see `store::audit`).
pub async fn open_audit_chain(store: &Store, key: crate::crypto::AuditKey) -> anyhow::Result<()> {
    match store.open_audit_chain(key, chrono::Utc::now()).await? {
        crate::store::audit::ChainOpened::Recorded { unkeyed } if unkeyed > 0 => {
            tracing::warn!(
                unkeyed_rows = unkeyed,
                "the audit log's rows written before the keyed chain verified; the chain is keyed from row {} on, and the boundary (the last unkeyed row's hash) is recorded under the audit key",
                unkeyed + 1
            );
        }
        _ => {}
    }
    Ok(())
}

/// How long `jit serve` waits at shutdown for the audit head's anchor to be posted.
const SHUTDOWN_ANCHOR_WAIT: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Before anything opens a file: the connection cap is computed from this limit.
    let fd_limit = edge::raise_fd_limit();
    let max_connections =
        edge::connection_cap(&config.edge, fd_limit, config.metrics_listen.is_some())
            .map_err(anyhow::Error::msg)?;
    let _lock = InstanceLock::acquire(&config.base.database_url)?;
    let app = build_app(&config).await?;
    jobs::recover(&app).await?;
    crate::audit::anchor::schedule(&app).await?;
    crate::webhooks::schedule(&app).await?;

    let groups = directory::groups_in(&app.policy);
    let refresher = tokio::spawn(app.directory.clone().keep_fresh(groups, DIRECTORY_REFRESH));
    // Who is on call, read from PagerDuty in the background (never in the ack path).
    let oncall_refresher = app
        .directory
        .oncall()
        .cloned()
        .map(|cache| tokio::spawn(cache.keep_fresh()));
    let pruner = tokio::spawn(prune_deliveries(app.clone()));
    let (stop, stopped) = watch::channel(false);
    let worker_task = tokio::spawn(jobs::run(app.clone(), stopped.clone()));
    // Other replicas' commits wake this one (PostgreSQL); nothing to do on SQLite.
    let listener_task = tokio::spawn(jobs::listen_for_wakes(app.clone()));

    let listener = edge::bind(config.listen)
        .with_context(|| format!("JIT_LISTEN: cannot listen on {}", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            edge::bind(addr)
                .with_context(|| format!("JIT_METRICS_LISTEN: cannot listen on {addr}"))?,
        ),
        None => None,
    };
    // With an app-level token, Slack's deliveries arrive over Socket Mode; the HTTP server still
    // serves health, readiness and metrics (and keeps the signed /slack/* routes).
    let socket_task = config.app_token.clone().map(|token| {
        let options = socket::Options::new(config.slack_api_url.clone(), token);
        tokio::spawn(socket::run(app.clone(), options, stopped.clone()))
    });

    // The listeners stop on SIGTERM; the worker and Socket Mode only once they have drained.
    let (stop_http, http_stopped) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_http.send(true);
    });
    let main = edge::serve(
        edge::Listener {
            tcp: listener,
            router: server::main_router(app.clone(), metrics_listener.is_none()),
            max_connections,
            name: "http",
        },
        config.edge.clone(),
        app.metrics.clone(),
        http_stopped.clone(),
    );
    let metrics = metrics_listener.map(|tcp| {
        tokio::spawn(edge::serve(
            edge::Listener {
                tcp,
                router: server::metrics_router(app.clone()),
                max_connections: edge::METRICS_CONNECTIONS,
                name: "metrics",
            },
            config.edge.clone(),
            app.metrics.clone(),
            http_stopped.clone(),
        ))
    });
    tracing::info!(
        listen = %config.listen,
        metrics_listen = config.metrics_listen.map(|a| a.to_string()),
        resources = app.policy.resources().len(),
        socket_mode = socket_task.is_some(),
        max_connections,
        fd_limit = fd_limit.soft,
        fd_limit_raised_from = fd_limit.raised_from,
        header_timeout_secs = config.edge.header_timeout.as_secs(),
        body_timeout_secs = config.edge.body_timeout.as_secs(),
        idle_timeout_secs = config.edge.idle_timeout.as_secs(),
        startup_ms = started.elapsed().as_millis() as u64,
        "jit is ready"
    );
    main.await;
    if let Some(task) = metrics {
        let _ = task.await;
    }
    signal.abort();
    // Anchor the head before the worker drains: posted now if Slack is up, durable otherwise.
    match crate::audit::anchor::request_now(&app).await {
        Ok(Some((seq, _))) => {
            if !crate::audit::anchor::wait_posted(&app.store, seq, SHUTDOWN_ANCHOR_WAIT).await {
                tracing::warn!(
                    seq,
                    "the audit head's anchor was not posted before shutdown; it is queued and posts at the next start"
                );
            }
        }
        Ok(None) => {}
        Err(err) => tracing::error!(
            error = format!("{err:#}"),
            "cannot queue the audit head's anchor at shutdown"
        ),
    }
    tracing::info!("shutting down: letting running jobs finish");
    let _ = stop.send(true);
    app.waker.wake();
    let _ = worker_task.await;
    if let Some(task) = socket_task {
        let _ = task.await;
    }
    refresher.abort();
    if let Some(task) = oncall_refresher {
        task.abort();
    }
    pruner.abort();
    listener_task.abort();
    app.store.close().await;
    Ok(())
}
