//! What the two long-running roles, `worker` ([`crate::worker`]) and `relay`
//! ([`crate::relay_role`]), share: the admin server beside the work, the upkeep
//! every role runs in the background (memory janitor, outbox and inbox pruning)
//! and the bounded shutdown once the main work has stopped.
//!
//! Shutdown is bounded: the steps after the drain (commits already begun, the
//! relay's batch in hand, background tasks, closing connections) share
//! [`AFTER_DRAIN_GRACE`]. Each normally takes milliseconds, but one that waits on
//! a wedged peer (a broker that never answers a close, a connection never
//! returned to the pool) must not keep the process alive until the kubelet's
//! SIGKILL: [`shutdown_step`] logs it by name and abandons it.
//!
//! This module holds no business logic and decides no order: which tasks a role
//! runs, and in which order it stops them, is the role's.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::OutboxConfig;
use crate::error::error_chain;

/// What the shutdown steps after the drain get in all (commits already begun, the
/// relay's batch in hand, closing connections). Below the Helm chart's
/// `terminationGraceMarginSeconds` (15 s), which is what is left after the drain.
pub const AFTER_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// The deadline of a shutdown that starts now.
pub(crate) fn shutdown_deadline() -> Instant {
    Instant::now() + AFTER_DRAIN_GRACE
}

/// Runs one shutdown step until it ends or `deadline` passes (then it is logged
/// and abandoned: see the module doc).
pub(crate) async fn shutdown_step<F: Future>(step: &'static str, deadline: Instant, work: F) {
    tracing::debug!(step, "shutdown step");
    if tokio::time::timeout_at(deadline, work).await.is_err() {
        tracing::warn!(
            step,
            "shutdown step did not finish within the grace period; going on without it"
        );
    }
}

/// A role's admin server (`/metrics`, `/healthz`, `/readyz`, ...), serving in a
/// task of its own until [`AdminServer::stop`]. It comes up before the role's
/// work, so liveness answers and readiness says why while the work starts.
pub struct AdminServer {
    /// Where it listens, once bound (`admin.listen` may say port 0).
    pub(crate) addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    /// Binds `listen` and serves `state`.
    pub(crate) async fn start(listen: SocketAddr, state: AdminState) -> anyhow::Result<Self> {
        let listener = admin::bind(listen).await?;
        // `admin::serve` logs the address.
        let addr = listener.local_addr().ok();
        let stop = CancellationToken::new();
        let task = tokio::spawn(admin::serve(listener, state, stop.clone()));
        Ok(Self { addr, stop, task })
    }

    /// Stops serving: a shutdown step.
    pub(crate) async fn stop(self, deadline: Instant) {
        self.stop.cancel();
        shutdown_step("admin server", deadline, self.task).await;
    }
}

/// Tasks that run beside a role's main work until they are stopped together.
pub(crate) struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    /// Tasks that stop when `stop` is cancelled (or at [`Background::stop`]).
    pub(crate) fn new(stop: CancellationToken) -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop,
        }
    }

    /// The token the tasks stop on (for tasks that take one).
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` in the background.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// The upkeep every role runs: the memory janitor, and retention pruning of
    /// the outbox and the inbox.
    pub(crate) fn spawn_upkeep(&self, pool: &PgPool, outbox: &OutboxConfig) {
        self.spawn(crate::alloc::run_janitor(pool.clone(), self.stop_token()));
        let (pool, outbox, stop) = (pool.clone(), outbox.clone(), self.stop_token());
        self.spawn(async move {
            if let Err(e) = crate::outbox::run_outbox_pruner(pool, outbox, stop).await {
                tracing::error!(error = %error_chain(e.as_ref()), "outbox pruner stopped");
            }
        });
    }

    /// Stops the tasks and waits for them: a shutdown step.
    pub(crate) async fn stop(self, deadline: Instant) {
        self.stop.cancel();
        self.tracker.close();
        shutdown_step("background tasks", deadline, self.tracker.wait()).await;
    }
}

/// The last steps of every role, once its work and background tasks have
/// stopped: the admin server, then the database pool.
pub async fn close(role: &'static str, admin: AdminServer, pool: &PgPool, deadline: Instant) {
    admin.stop(deadline).await;
    shutdown_step("database pool", deadline, pool.close()).await;
    tracing::info!("{role} stopped");
}
