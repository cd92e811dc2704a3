//! `hookfleet worker`: assembles the database pool, the publisher, the consuming
//! supervisor and the background tasks, and runs them until the shutdown token
//! is cancelled.
//!
//! Owns start-up order and shutdown order; it holds no business logic. Start-up
//! never gives up on a missing broker or database: it retries forever with
//! backoff ([`crate::backoff::retry_forever`]; the database here with
//! `database.reconnect_*`, the broker in the supervisor) and reports not ready
//! meanwhile. Each task gets its own config section, not the whole `Config`. Shutdown: the supervisor drains (stop consuming,
//! finish in-flight work up to `worker.drain_timeout`), then transactions already
//! started are allowed to finish, then the background tasks stop and connections
//! close. Those steps after the drain share [`AFTER_DRAIN_GRACE`]: each normally
//! takes milliseconds, but one that waits on a wedged peer (a broker that never
//! answers a close, a connection never returned to the pool) must not keep the
//! process alive until the kubelet's SIGKILL; it is logged by name and abandoned.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::amqp::publisher::Publisher;
use crate::amqp::topology::Names;
use crate::backoff::{Attempt, Event, retry_forever};
use crate::config::{AmqpConfig, Config, DatabaseConfig, GuardConfig, OutboxConfig};
use crate::consumer::{Ctx, Supervisor};
use crate::guard::{Gates, KillSwitch, pause};
use crate::health::Health;
use crate::inflight::InFlight;
use crate::job::Handler;
use crate::push::handler::PushHandler;
use crate::{db, inbox};

/// What the shutdown steps after the drain get in all (commits already begun, the
/// relay's batch in hand, closing connections). Below the Helm chart's
/// `terminationGraceMarginSeconds` (15 s), which is what is left after the drain.
pub const AFTER_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Shared state of a running worker that tests and the admin server look at.
#[derive(Clone, Default)]
pub struct WorkerState {
    /// Readiness flags.
    pub health: Arc<Health>,
    /// In-flight deliveries.
    pub inflight: Arc<InFlight>,
    /// Where the admin server listens, once bound (`admin.listen` may say port 0).
    pub admin_addr: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

/// Builds the handlers once the database pool exists.
pub type HandlerFactory = Box<dyn FnOnce(&Config, &PgPool) -> Vec<Arc<dyn Handler>> + Send>;

/// The job kinds this build ships.
pub fn default_handlers() -> HandlerFactory {
    Box::new(|config: &Config, pool: &PgPool| {
        let config = Arc::new(config.clone());
        let push: Arc<dyn Handler> = Arc::new(PushHandler::new(config.clone(), pool.clone()));
        let webhook: Arc<dyn Handler> = Arc::new(crate::webhook::WebhookHandler::new(
            config.clone(),
            pool.clone(),
        ));
        vec![push, webhook]
    })
}

/// Runs the worker with the built-in handlers until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = WorkerState {
        health,
        ..WorkerState::default()
    };
    run_with(config, state, default_handlers(), shutdown).await
}

/// Runs the worker with the given handlers (tests and benchmarks use this).
pub async fn run_with(
    config: Config,
    state: WorkerState,
    handlers: HandlerFactory,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let pool = db::lazy_pool(&config.database)?;
    // Readiness names what is down by address (never a URL: no password), and
    // until the database answers, the consumers not running is its doing: the
    // broker is not tried before then.
    let db_opts = pool.connect_options();
    let db_host = db_opts.get_host();
    state.health.set_database_address(
        if db_host.contains(':') && !db_host.starts_with(['/', '[']) {
            format!("[{db_host}]:{}", db_opts.get_port())
        } else {
            format!("{db_host}:{}", db_opts.get_port())
        },
    );
    state.health.set_broker_address(config.amqp.addresses());
    state.health.set_waiting_for_database(true);

    // The admin server comes up first, so liveness answers while we wait for
    // the broker or the database, and readiness says why we are not ready.
    let listener = admin::bind(config.admin.listen).await?;
    if let Ok(addr) = listener.local_addr() {
        // `admin::serve` logs the address.
        let _ = state.admin_addr.set(addr);
    }
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        AdminState {
            health: state.health.clone(),
            inflight: state.inflight.clone(),
            pool: Some(pool.clone()),
            console: crate::console::Console::new(config.clone(), pool.clone()),
        },
        admin_stop.clone(),
    ));

    if !wait_for_database(&config.database, &pool, &state.health, &shutdown).await {
        admin_stop.cancel();
        let _ = admin_task.await;
        return Ok(());
    }
    // From here on, not consuming means the broker (the supervisor is trying it).
    state.health.set_waiting_for_database(false);
    let handlers = handlers(&config, &pool);
    let publisher = Publisher::new(&config.amqp, "publisher")?;
    let background = TaskTracker::new();
    let bg_stop = CancellationToken::new();
    let gates = start_guards(&config.guard, &pool, &state.health, &background, &bg_stop).await;
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        names: Names::new(&config.amqp.prefix),
        publisher: publisher.clone(),
        inflight: state.inflight.clone(),
        gates,
    });

    background.spawn(watch_database(
        pool.clone(),
        state.health.clone(),
        bg_stop.clone(),
    ));
    background.spawn(crate::alloc::run_janitor(pool.clone(), bg_stop.clone()));
    background.spawn(crate::hook::spool::run_spool_flusher(
        (*config).clone(),
        bg_stop.clone(),
    ));

    background.spawn(crate::webhook::run_pruner(
        pool.clone(),
        config.webhook.clone(),
        bg_stop.clone(),
    ));

    // The relay publishes what handlers commit to the outbox; it stops only after
    // the drained consumers' transactions have committed (bg_stop below).
    if config.outbox.relay {
        background.spawn(relay_task(
            config.amqp.clone(),
            config.outbox.clone(),
            pool.clone(),
            bg_stop.clone(),
        ));
    }
    background.spawn(pruner_task(
        config.outbox.clone(),
        pool.clone(),
        bg_stop.clone(),
    ));

    background.spawn(crate::amqp::depths::run_depth_sampler(
        config.amqp.clone(),
        handlers.iter().map(|h| h.kind().to_string()).collect(),
        config.retry.tiers.clone(),
        config.admin.queue_depth_interval,
        bg_stop.clone(),
    ));
    let supervisor = Supervisor::new(ctx, handlers, state.health.clone());
    background.spawn(sample_pool(supervisor.pool(), bg_stop.clone()));
    supervisor.run(shutdown.clone()).await;

    // Consumers are drained; let started transactions finish, then stop the rest.
    let deadline = tokio::time::Instant::now() + AFTER_DRAIN_GRACE;
    shutdown_step("commits already begun", deadline, inbox::wait_for_commits()).await;
    bg_stop.cancel();
    background.close();
    shutdown_step("background tasks", deadline, background.wait()).await;
    shutdown_step("publisher connection", deadline, publisher.close()).await;
    admin_stop.cancel();
    shutdown_step("admin server", deadline, admin_task).await;
    shutdown_step("database pool", deadline, pool.close()).await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The kill switch (probing the pool) and the paused kinds (read once before
/// consuming starts, so a paused kind is never consumed after a restart), with
/// their background tasks.
async fn start_guards(
    config: &GuardConfig,
    pool: &PgPool,
    health: &Arc<Health>,
    background: &TaskTracker,
    stop: &CancellationToken,
) -> Gates {
    let killswitch = Arc::new(KillSwitch::new(
        config.clone(),
        Some(pool.clone()),
        health.clone(),
    ));
    let ks = killswitch.clone();
    let ks_stop = stop.clone();
    background.spawn(async move { ks.run(ks_stop).await });
    let (tx, paused) = tokio::sync::watch::channel(BTreeSet::new());
    pause::load(pool, &tx, health).await;
    background.spawn(pause::run_watcher(
        pool.clone(),
        config.pause_poll_interval,
        tx,
        health.clone(),
        stop.clone(),
    ));
    Gates { killswitch, paused }
}

/// Runs one shutdown step until it ends or `deadline` passes (then it is logged
/// and abandoned: see the module doc).
pub(crate) async fn shutdown_step<F: Future>(
    step: &'static str,
    deadline: tokio::time::Instant,
    work: F,
) {
    tracing::debug!(step, "shutdown step");
    if tokio::time::timeout_at(deadline, work).await.is_err() {
        tracing::warn!(
            step,
            "shutdown step did not finish within the grace period; going on without it"
        );
    }
}

/// Waits until the database answers (in dev: creating and migrating it first),
/// retrying forever with `database.reconnect_min`..`reconnect_max`. `false` on
/// shutdown.
async fn wait_for_database(
    config: &DatabaseConfig,
    pool: &PgPool,
    health: &Health,
    shutdown: &CancellationToken,
) -> bool {
    let report = |event: Event<'_, db::DbError>| match event {
        Event::Done { failures } => {
            health.set_database_ok(true);
            if failures > 0 {
                tracing::info!(failures, "database reachable");
            }
        }
        Event::Failed {
            error, failures, ..
        } => {
            health.set_database_ok(false);
            if failures == 1 {
                tracing::error!(error = %crate::error::error_chain(error), "database unavailable; retrying with backoff");
            }
        }
    };
    retry_forever(
        config.reconnect_delays(),
        shutdown,
        "database",
        move |_| Attempt::unless_stopped(shutdown, database_ready(config, pool)),
        report,
    )
    .await
    .is_some()
}

/// One attempt of [`wait_for_database`]: in dev, the database created and
/// migrated; then it answers.
async fn database_ready(config: &DatabaseConfig, pool: &PgPool) -> Result<(), db::DbError> {
    if config.auto_migrate {
        db::ensure_database(config).await?;
    }
    db::check(config, pool).await?;
    if config.auto_migrate {
        db::migrate(pool).await?;
    }
    Ok(())
}

/// Keeps `Health::database_ok` current (readiness) with a cheap periodic query.
async fn watch_database(pool: PgPool, health: Arc<Health>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(&pool)
            )
            .await,
            Ok(Ok(_))
        );
        if ok != health.database_ok() {
            if ok {
                tracing::info!("database answering again");
            } else {
                tracing::warn!("database not answering");
            }
        }
        health.set_database_ok(ok);
        let m = crate::metrics::metrics();
        let idle = pool.num_idle() as i64;
        m.db_pool_connections.with_label_values(&["idle"]).set(idle);
        m.db_pool_connections
            .with_label_values(&["used"])
            .set(i64::from(pool.size()) - idle);
    }
}

/// Samples the pool's free permits into the metrics once a second.
async fn sample_pool(pool: crate::consumer::pool::TaskPool, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => pool.sample_metrics(),
        }
    }
}

/// The outbox relay inside the worker (`outbox.relay`); it only returns on `stop`.
async fn relay_task(amqp: AmqpConfig, outbox: OutboxConfig, pool: PgPool, stop: CancellationToken) {
    if let Err(e) = crate::outbox::run_relay(amqp, outbox, pool, stop).await {
        tracing::error!(error = %crate::error::error_chain(e.as_ref()), "outbox relay stopped");
    }
}

/// Retention pruning of the outbox and inbox inside the worker.
async fn pruner_task(outbox: OutboxConfig, pool: PgPool, stop: CancellationToken) {
    if let Err(e) = crate::outbox::run_pruner(pool, outbox, stop).await {
        tracing::error!(error = %crate::error::error_chain(e.as_ref()), "outbox pruner stopped");
    }
}
