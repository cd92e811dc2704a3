//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/info` and `/jobs`,
//! and the operator console under `/console` ([`console`], its own access control).
//!
//! Owns the listener, the per-connection HTTP/1 handling and the answers of those five
//! endpoints. It reads shared state ([`Health`], [`InFlight`], the database pool) and may
//! run `SELECT 1` for readiness; it must never change what the worker does, take a
//! request body, or expose a secret (no config, no URLs, no environment).
//!
//! Served by `axum::serve` with graceful shutdown. Slow or idle clients cannot pin
//! tasks: a request is answered (or 408) within [`REQUEST_TIMEOUT`], at most
//! [`MAX_REQUESTS`] are handled at once (more wait), a request body over
//! [`MAX_BODY_BYTES`] is refused (413; no endpoint takes one), and the connection
//! bounds of [`conn`] (a request must arrive in time; keep-alive
//! connections end between requests when idle or old; a cap on open connections)
//! apply to every connection.
//!
//! Everything served on the admin port lives in this folder: this file (the
//! routes, the five endpoints, [`serve`]), [`conn`] (the connection bounds) and
//! [`console`] (the operator console, which [`AdminState`] holds and whose
//! routes [`router`] merges; it depends on the shared state it reads, never on
//! this file, so imports run one way).

pub(crate) mod conn;
pub(crate) mod console;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::health::Health;
use crate::inflight::{InFlight, InFlightJob};
use crate::{build_info, metrics};
use conn::BoundedListener;

/// Upper bound on answering one request; beyond it the client gets 408.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests handled at once; more wait for a slot (within their connection's bounds).
pub(crate) const MAX_REQUESTS: usize = 32;
/// Largest request body accepted (no endpoint takes one).
pub const MAX_BODY_BYTES: usize = 1024;
/// Upper bound on the `SELECT 1` that `/readyz` runs when a pool is present.
pub(crate) const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// On shutdown, open connections get this long to finish their request.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Content type of the Prometheus text exposition format.
pub(crate) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What the endpoints read. Cheap to clone (all shared).
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Readiness flags and start time.
    pub health: Arc<Health>,
    /// Deliveries being handled now, for `/jobs`.
    pub inflight: Arc<InFlight>,
    /// The database pool, if this process has one: `/readyz` checks it with
    /// `SELECT 1` and `/metrics` samples its size.
    pub pool: Option<PgPool>,
    /// The operator console under `/console`, when `admin.console_token` is set.
    pub console: Option<Arc<console::Console>>,
}

/// Errors of [`bind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminServerError {
    /// The listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr} for the admin server: {source}")]
    Bind {
        /// The address from `admin.listen`.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds the admin listener, so a taken port fails start-up with the address named.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminServerError::Bind { addr, source })
}

/// The routes, with the request timeout, body limit and concurrency limit applied.
/// A plain `Router`, so other routers can be merged into it.
pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/info", get(info))
        .route("/jobs", get(jobs))
        .merge(console::router(
            state.console.clone(),
            &state.health,
            &state.inflight,
        ))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(ConcurrencyLimitLayer::new(MAX_REQUESTS))
        .with_state(state)
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled, then lets
/// open connections finish their current request for up to [`SHUTDOWN_GRACE`].
///
/// The caller owns the token: the worker should cancel it only after draining, so
/// `/readyz` keeps answering 503 (`draining`) while in-flight work finishes.
/// Failed `accept`s are logged and retried (by axum), so this returns `Ok` on
/// shutdown.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(admin.addr = %addr, "admin server listening");
    }
    let console = state.console.clone();
    let server = axum::serve(BoundedListener::new(listener), router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        r = server.as_mut() => r?,
        _ = shutdown.cancelled() => {
            // A console replay stops with its server and stores where it
            // stopped (bounded: a database that does not answer cannot hold
            // the shutdown; the replay then shows as interrupted once stale).
            if let Some(c) = &console
                && tokio::time::timeout(SHUTDOWN_GRACE, c.stop()).await.is_err()
            {
                tracing::warn!("console replay: its end not stored within the grace period");
            }
            // axum waits for every connection; ours get SHUTDOWN_GRACE.
            if tokio::time::timeout(SHUTDOWN_GRACE, server).await.is_err() {
                tracing::warn!("admin server: connections still open after the grace period");
            }
        }
    }
    tracing::info!("admin server stopped");
    Ok(())
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    if let Some(pool) = &state.pool {
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        let gauges = &metrics::metrics().db_pool_connections;
        gauges.with_label_values(&["idle"]).set(idle);
        gauges
            .with_label_values(&["used"])
            .set(size.saturating_sub(idle).max(0));
    }
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics::render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    /// What is down (the database with its `host:port`, the broker, both) or
    /// `draining`; absent when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if let Some(pool) = &state.pool {
        let ok = crate::db::ping(pool, DB_CHECK_TIMEOUT).await.is_ok();
        state.health.set_database_ok(ok);
    }
    match state.health.readiness() {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(Readiness {
                ready: true,
                reason: None,
            }),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Readiness {
                ready: false,
                reason: Some(reason),
            }),
        )
            .into_response(),
    }
}

/// `/info`: what is running and since when. Build facts and clocks only, never config.
#[derive(Serialize)]
struct Info {
    version: &'static str,
    git_sha: &'static str,
    build_time: String,
    build_epoch: u64,
    start_time: u64,
    now: u64,
    uptime_seconds: f64,
    uptime: String,
    /// The RabbitMQ node (`host:port`) each connection role is connected to.
    amqp_nodes: std::collections::BTreeMap<String, String>,
    /// Job kinds paused fleet-wide (`hookfleet pause`), as this worker last read them.
    paused_kinds: Vec<String>,
    /// Why the kill switch holds consuming (absent while it does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_switch: Option<String>,
}

fn epoch_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn info(State(state): State<AdminState>) -> axum::Json<Info> {
    let uptime = state.health.uptime();
    axum::Json(Info {
        version: build_info::VERSION,
        git_sha: build_info::GIT_SHA,
        build_time: build_info::build_time(),
        build_epoch: build_info::build_epoch(),
        start_time: epoch_seconds(state.health.started_at),
        now: epoch_seconds(SystemTime::now()),
        uptime_seconds: uptime.as_secs_f64(),
        uptime: humantime::format_duration(Duration::from_secs(uptime.as_secs())).to_string(),
        amqp_nodes: crate::amqp::nodes_in_use(),
        paused_kinds: state.health.paused_kinds(),
        kill_switch: state.health.stopped_by_guard(),
    })
}

async fn jobs(State(state): State<AdminState>) -> axum::Json<Vec<InFlightJob>> {
    axum::Json(state.inflight.list())
}

async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}
