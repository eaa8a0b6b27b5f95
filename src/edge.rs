//! The HTTP edge of `jit serve`: accepting connections, capping them, timing them out, and
//! draining them on shutdown.
//!
//! Invariants:
//! - **A cap, never an accept error.** Each connection holds a permit of the listener's
//!   [`Semaphore`]. The cap is computed from `RLIMIT_NOFILE` (raised to its hard limit at start,
//!   [`raise_fd_limit`]) minus a reserve, so the database, the Slack and provider clients and exec
//!   pipes always find file descriptors, whatever a flood of sockets does.
//! - **At the cap, silence makes room.** The loop accepts one connection ahead. When no permit is
//!   free, the oldest connection that has not yet sent a complete request head is closed and the
//!   new one takes its place, so a flood of idle sockets cannot lock real clients out (a real
//!   client sends its head at once). When every connection is busy with a request, the loop waits
//!   for a permit without accepting, and further connections wait in the kernel's listen backlog
//!   instead of being accepted and failing.
//! - **Every phase of a connection has a deadline.**
//!   - A new connection must deliver its first complete request head within the header timeout,
//!     counted from `accept`. Until its first byte arrives it is only a socket: no hyper
//!     connection and no buffers, so idle sockets cost little.
//!   - The request body must arrive within the body timeout, counted from the end of the head, as a
//!     total (not per chunk: a body trickled one byte at a time still ends). Past it the server
//!     answers `408` and closes the connection.
//!   - Between requests, a kept-alive connection waits at most the idle timeout for its next
//!     request head (hyper's `header_read_timeout`, which starts when a response is done).
//! - **Shutdown drains.** When the shutdown signal fires, the listener is dropped (new connections
//!   are refused), connections that have not sent a request are closed, and the others get
//!   hyper's graceful shutdown: the request in flight finishes, then the connection closes. After
//!   [`DRAIN`], the server stops waiting for them.
//!
//! Only HTTP/1.1 is served (Slack and the API clients speak it); this also avoids the protocol
//! detection of hyper-util's `auto` builder, which has no timer while it waits for a first byte
//! (hyperium/hyper#3962).
//!
//! **What comes from hyper, hyper-util and tower, and what is ours (and why).**
//! - From hyper's HTTP/1 builder: the keep-alive idle timeout (`header_read_timeout`, with
//!   hyper-util's `TokioTimer`), `keep_alive(false)` when it is zero, and the 16 KiB head limit
//!   (`max_buf_size`, answered `431`). From hyper-util: `TokioIo` and the graceful drain
//!   (`GracefulShutdown`). From tower: `oneshot` into the axum router.
//! - The accept loop with its cap is ours: neither hyper-util (which serves one connection) nor
//!   `axum::serve` caps connections, and tower's `ConcurrencyLimit` counts requests in flight on
//!   connections already accepted, so it neither bounds sockets (descriptors) nor makes room by
//!   closing a silent one.
//! - The first-head deadline is ours: hyper has one `header_read_timeout` for both the first head
//!   and the wait between requests, so it cannot give the two different values, and before the
//!   first byte no hyper connection exists yet (idle sockets stay cheap, and evictable).
//! - The body deadline is ours ([`DeadlineBody`], a fixed deadline for the whole body):
//!   tower-http's `RequestBodyTimeoutLayer` restarts its timer with every frame, so a body
//!   trickled a byte at a time never ends; its `TimeoutLayer` bounds the whole request, handler
//!   included, which would cut off the API's long polls and slow commits as well.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::metrics::Metrics;

/// How long shutdown waits for connections with a request in flight.
pub const DRAIN: Duration = Duration::from_secs(10);

/// The largest request head accepted (hyper's read buffer; larger heads get 431).
pub const MAX_HEAD: usize = 16 * 1024;

/// Connections the separate metrics listener (`JIT_METRICS_LISTEN`) may hold at once.
pub const METRICS_CONNECTIONS: usize = 16;

/// The fewest connections a file-descriptor limit must leave after the reserve.
pub const MIN_CONNECTIONS: usize = 64;

/// The edge's settings (`JIT_HTTP_*`, `JIT_FD_RESERVE`; see the README's Configuration table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// From `accept` to the first request's complete head.
    pub header_timeout: Duration,
    /// From the end of a request's head to the end of its body.
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request; zero turns keep-alive off.
    pub idle_timeout: Duration,
    /// Connections held at once by the main listener; `None`: what the descriptor limit allows.
    pub max_connections: Option<usize>,
    /// File descriptors never used for connections.
    pub fd_reserve: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: None,
            fd_reserve: 512,
        }
    }
}

/// The per-process file-descriptor limit, after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit in force now.
    pub soft: u64,
    /// The soft limit before it was raised, when it was.
    pub raised_from: Option<u64>,
}

/// Raises `RLIMIT_NOFILE`'s soft limit to the hard limit, and returns the limit in force.
#[cfg(unix)]
pub fn raise_fd_limit() -> FdLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Linux refuses an unlimited RLIMIT_NOFILE; 2^20 is its default `fs.nr_open`.
    const UNLIMITED: u64 = 1 << 20;
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(UNLIMITED);
    let hard = now.maximum.unwrap_or(UNLIMITED);
    if soft >= hard {
        return FdLimit {
            soft,
            raised_from: None,
        };
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: now.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => FdLimit {
            soft: hard,
            raised_from: Some(soft),
        },
        Err(err) => {
            tracing::warn!(error = %err, soft, hard, "cannot raise the file-descriptor limit");
            FdLimit {
                soft,
                raised_from: None,
            }
        }
    }
}

#[cfg(not(unix))]
pub fn raise_fd_limit() -> FdLimit {
    FdLimit {
        soft: 1024,
        raised_from: None,
    }
}

/// The main listener's connection cap: `JIT_HTTP_MAX_CONNECTIONS`, or all the descriptors the
/// limit leaves after the reserve and the metrics listener. A cap that does not fit is an error
/// that says what to change.
pub fn connection_cap(
    config: &EdgeConfig,
    limit: FdLimit,
    metrics_listener: bool,
) -> Result<usize, String> {
    let others = config.fd_reserve
        + if metrics_listener {
            METRICS_CONNECTIONS
        } else {
            0
        };
    let budget = usize::try_from(limit.soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(others);
    if budget < MIN_CONNECTIONS {
        return Err(format!(
            "the file-descriptor limit ({}) leaves {budget} connections after JIT_FD_RESERVE ({}){}; \
             raise the limit (ulimit -n) or lower JIT_FD_RESERVE",
            limit.soft,
            config.fd_reserve,
            if metrics_listener {
                format!(" and the metrics listener ({METRICS_CONNECTIONS})")
            } else {
                String::new()
            }
        ));
    }
    match config.max_connections {
        None => Ok(budget),
        Some(cap) if cap <= budget => Ok(cap),
        Some(cap) => Err(format!(
            "JIT_HTTP_MAX_CONNECTIONS is {cap}, but the file-descriptor limit ({}) leaves room for \
             {budget} after JIT_FD_RESERVE ({}); raise the limit (ulimit -n) or lower \
             JIT_HTTP_MAX_CONNECTIONS",
            limit.soft, config.fd_reserve
        )),
    }
}

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`): where connections
/// wait while a listener is at its cap.
pub const BACKLOG: u32 = 4096;

/// Binds a listener with [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// One listener with its routes and its cap.
pub struct Listener {
    pub tcp: TcpListener,
    pub router: Router,
    pub max_connections: usize,
    /// Names the listener in logs ("http", "metrics").
    pub name: &'static str,
}

/// Serves `listener` until `stop` turns true, then drains (see the module docs).
pub async fn serve(
    listener: Listener,
    config: EdgeConfig,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let Listener {
        tcp,
        router,
        max_connections,
        name,
    } = listener;
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let shared = Arc::new(Shared {
        builder: http1_builder(&config),
        silent: Arc::new(Silent::default()),
        router,
        config,
        metrics: metrics.clone(),
    });
    metrics.set_connection_limit(name, max_connections);
    let mut last_full_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            accepted = tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) if is_per_connection(&err) => continue,
            Err(err) => {
                // Out of descriptors despite the reserve, or worse: pause instead of spinning.
                tracing::error!(listener = name, error = %err, "cannot accept a connection");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Full: make room by closing the oldest connection that has not sent a request,
                // or, when every one has, wait (the backlog holds the connections after this one).
                metrics.connection_cap_reached(name);
                let evicted = shared.silent.evict_oldest();
                if evicted {
                    metrics.http_rejected("evicted_silent");
                }
                if last_full_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    last_full_warning = Some(Instant::now());
                    tracing::warn!(
                        listener = name,
                        max_connections,
                        evicted,
                        "connection cap reached: closing the oldest connections without a request, \
                         or holding new ones in the listen backlog"
                    );
                }
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let silent = shared.silent.register();
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            let _open = shared.metrics.connection_opened(name);
            connection(shared, stream, peer, watcher, stop, silent).await;
        });
    }
    drop(tcp);
    tracing::info!(
        listener = name,
        open = graceful.count(),
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            drain_secs = DRAIN.as_secs(),
            "connections still open after the drain; closing them"
        );
    }
}

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_per_connection(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

struct Shared {
    builder: hyper::server::conn::http1::Builder,
    silent: Arc<Silent>,
    router: Router,
    config: EdgeConfig,
    metrics: Metrics,
}

/// Connections that have not yet delivered a complete request head, oldest first: the ones
/// closed to make room at the cap. A real client sends its head right after connecting, so it is
/// only ever at risk for the moment it takes to send it.
#[derive(Default)]
struct Silent {
    next: std::sync::atomic::AtomicU64,
    waiting: std::sync::Mutex<std::collections::BTreeMap<u64, oneshot::Sender<()>>>,
}

impl Silent {
    fn register(self: &Arc<Self>) -> SilentGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("never poisoned").insert(id, tx);
        SilentGuard {
            silent: self.clone(),
            id,
            evicted: rx,
        }
    }

    /// Tells the oldest silent connection to close; false when there is none.
    fn evict_oldest(&self) -> bool {
        let oldest = self.waiting.lock().expect("never poisoned").pop_first();
        match oldest {
            Some((_, tx)) => tx.send(()).is_ok(),
            None => false,
        }
    }
}

/// A connection's place in [`Silent`], until its first request head (or its end).
struct SilentGuard {
    silent: Arc<Silent>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Drop for SilentGuard {
    fn drop(&mut self) {
        self.silent
            .waiting
            .lock()
            .expect("never poisoned")
            .remove(&self.id);
    }
}

fn http1_builder(config: &EdgeConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).max_buf_size(MAX_HEAD);
    if config.idle_timeout.is_zero() {
        builder
            .keep_alive(false)
            .header_read_timeout(config.header_timeout);
    } else {
        // hyper starts this timer whenever it waits for a request head: for the first request
        // the (shorter) deadline in `connection` ends it first; after a response it is the idle
        // timeout.
        builder.header_read_timeout(config.idle_timeout.max(config.header_timeout));
    }
    builder
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
    mut stop: watch::Receiver<bool>,
    mut silent: SilentGuard,
) {
    let head_deadline = Instant::now() + shared.config.header_timeout;
    // Wait for the first byte as a bare socket.
    let mut first = [0u8; 1];
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => return,
        _ = &mut silent.evicted => return,
        // `peek`, not `readable`: readiness can be reported before any byte has arrived.
        peeked = stream.peek(&mut first) => match peeked {
            Ok(0) | Err(_) => return, // closed before saying anything
            Ok(_) => {}
        },
        _ = tokio::time::sleep_until(head_deadline) => {
            shared.metrics.http_rejected("header_timeout");
            return;
        }
    }
    // The hyper phase lives on the heap, so an idle socket's task stays small.
    Box::pin(serve_http(
        shared,
        stream,
        peer,
        watcher,
        head_deadline,
        silent,
    ))
    .await;
}

async fn serve_http(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
    head_deadline: Instant,
    mut silent: SilentGuard,
) {
    let first_head = Arc::new(Notify::new());
    let service = {
        let shared = shared.clone();
        let first_head = first_head.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            first_head.notify_one();
            handle(shared.clone(), peer, request)
        })
    };
    let conn = watcher.watch(
        shared
            .builder
            .serve_connection(TokioIo::new(stream), service),
    );
    tokio::pin!(conn);
    tokio::select! {
        biased;
        _ = &mut conn => return,
        _ = &mut silent.evicted => return,
        _ = first_head.notified() => {}
        _ = tokio::time::sleep_until(head_deadline) => {
            shared.metrics.http_rejected("header_timeout");
            return;
        }
    }
    drop(silent);
    let _ = conn.await;
}

/// One request: the peer address for the handlers, the body under its deadline, and a `408` when
/// the deadline passed.
async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    mut request: hyper::Request<Incoming>,
) -> Result<Response, Infallible> {
    request.extensions_mut().insert(ConnectInfo(peer));
    let expired = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + shared.config.body_timeout;
    let api = request.uri().path().starts_with("/api/");
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline,
            sleep: None,
            expired: expired.clone(),
        })
    });
    let response = shared
        .router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    if !expired.load(Ordering::SeqCst) {
        return Ok(response);
    }
    shared.metrics.http_rejected("body_timeout");
    tracing::warn!(%peer, "closed a connection whose request body did not arrive in time");
    let message = format!(
        "The request body did not arrive within {}s.",
        shared.config.body_timeout.as_secs()
    );
    let mut response = if api {
        (
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({"code": "body_timeout", "message": message})),
        )
            .into_response()
    } else {
        StatusCode::REQUEST_TIMEOUT.into_response()
    };
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    Ok(response)
}

/// The body timed out; see [`DeadlineBody`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// A request body that fails once its deadline has passed. Unlike tower-http's `TimeoutBody`,
/// whose timer restarts with every chunk, the deadline is fixed: a trickle cannot extend it.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Armed the first time the body has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.expired.load(Ordering::SeqCst) {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.expired.store(true, Ordering::SeqCst);
                        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: u64) -> FdLimit {
        FdLimit {
            soft,
            raised_from: None,
        }
    }

    #[test]
    fn the_cap_leaves_the_reserve() {
        let config = EdgeConfig::default();
        assert_eq!(connection_cap(&config, limit(20_000), false), Ok(19_488));
        assert_eq!(
            connection_cap(&config, limit(20_000), true),
            Ok(19_488 - METRICS_CONNECTIONS)
        );
        let capped = EdgeConfig {
            max_connections: Some(1_000),
            ..EdgeConfig::default()
        };
        assert_eq!(connection_cap(&capped, limit(20_000), false), Ok(1_000));
    }

    #[test]
    fn a_cap_that_does_not_fit_says_what_to_change() {
        let too_many = EdgeConfig {
            max_connections: Some(30_000),
            ..EdgeConfig::default()
        };
        let err = connection_cap(&too_many, limit(20_000), false).unwrap_err();
        assert!(
            err.starts_with("JIT_HTTP_MAX_CONNECTIONS is 30000, but the file-descriptor limit (20000) leaves room for 19488"),
            "{err}"
        );
        assert_eq!(
            connection_cap(&EdgeConfig::default(), limit(1024), false),
            Ok(512)
        );
        let err = connection_cap(&EdgeConfig::default(), limit(540), false).unwrap_err();
        assert_eq!(
            err,
            "the file-descriptor limit (540) leaves 28 connections after JIT_FD_RESERVE (512); \
             raise the limit (ulimit -n) or lower JIT_FD_RESERVE"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let limit = raise_fd_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(limit.soft));
        if let Some(hard) = now.maximum {
            assert_eq!(limit.soft, hard);
        }
    }
}
