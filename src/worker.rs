//! `hookfleet worker`: assembles the database pool, the publisher, the consuming
//! supervisor and the background tasks, and runs them until the shutdown token
//! is cancelled.
//!
//! Owns start-up order and shutdown order; it holds no business logic. Start-up
//! never gives up on a missing broker or database: it retries forever with
//! backoff ([`crate::backoff::retry_forever`]; the database with
//! `database.reconnect_*`, the broker in the supervisor) and reports not ready
//! meanwhile. Shutdown: the supervisor drains (stop consuming, finish in-flight
//! work up to `worker.drain_timeout`), then transactions already started are
//! allowed to finish, then the background tasks stop and connections close.
//! Those steps after the drain are bounded by [`role::AFTER_DRAIN_GRACE`]; the
//! admin server, the upkeep tasks and that bounded shutdown are shared with the
//! `relay` role ([`crate::role`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::amqp::publisher_pool::Publisher;
use crate::amqp::topology::Names;
use crate::backoff::{Attempt, Event, retry_forever};
use crate::config::{AmqpConfig, Config, DatabaseConfig, GuardConfig, OutboxConfig};
use crate::consumer::{DeliveryCtx, Supervisor};
use crate::guard::{Gates, KillSwitch, pause};
use crate::health::Health;
use crate::hook::spool::FlushSettings;
use crate::inflight::InFlight;
use crate::job::Handler;
use crate::push::handler::PushHandler;
use crate::role::{self, AdminServer, Background, shutdown_step};
use crate::{db, inbox};

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
    report_addresses(&config.amqp, &pool, &state.health);

    // The admin server comes up first, so liveness answers while we wait for
    // the broker or the database, and readiness says why we are not ready.
    let admin = AdminServer::start(
        config.admin.listen,
        AdminState {
            health: state.health.clone(),
            inflight: state.inflight.clone(),
            pool: Some(pool.clone()),
            console: crate::admin::console::Console::new(config.clone(), pool.clone()),
        },
    )
    .await?;
    if let Some(addr) = admin.addr {
        let _ = state.admin_addr.set(addr);
    }

    if !wait_for_database(&config.database, &pool, &state.health, &shutdown).await {
        admin.stop(role::shutdown_deadline()).await;
        return Ok(());
    }
    // From here on, not consuming means the broker (the supervisor is trying it).
    state.health.set_waiting_for_database(false);
    let handlers = handlers(&config, &pool);
    let publisher = Publisher::new(&config.amqp, "publisher")?;
    let background = Background::new(CancellationToken::new());
    let gates = start_guards(&config.guard, &pool, &state.health, &background).await;
    let ctx = Arc::new(DeliveryCtx {
        config: config.clone(),
        names: Names::new(&config.amqp.prefix),
        publisher: publisher.clone(),
        inflight: state.inflight.clone(),
        gates,
    });
    spawn_background(&background, &config, &pool, &state.health, &handlers);
    let supervisor = Supervisor::new(ctx, handlers, state.health.clone());
    background.spawn(sample_pool(supervisor.pool(), background.stop_token()));
    background.spawn(crate::guard::pacer::run_lag_sampler(
        pool.clone(),
        supervisor.pacers(),
        background.stop_token(),
    ));
    supervisor.run(shutdown.clone()).await;

    // Consumers are drained; let started transactions finish, then stop the rest.
    // The relay stops only now, after the drained consumers' commits.
    let deadline = role::shutdown_deadline();
    shutdown_step("commits already begun", deadline, inbox::wait_for_commits()).await;
    background.stop(deadline).await;
    shutdown_step("publisher connection", deadline, publisher.close()).await;
    role::close("worker", admin, &pool, deadline).await;
    Ok(())
}

/// Readiness names what is down by address (never a URL: no password), and
/// until the database answers, the consumers not running is its doing: the
/// broker is not tried before then.
fn report_addresses(amqp: &AmqpConfig, pool: &PgPool, health: &Health) {
    let db_opts = pool.connect_options();
    let db_host = db_opts.get_host();
    health.set_database_address(
        if db_host.contains(':') && !db_host.starts_with(['/', '[']) {
            format!("[{db_host}]:{}", db_opts.get_port())
        } else {
            format!("{db_host}:{}", db_opts.get_port())
        },
    );
    health.set_broker_address(amqp.addresses());
    health.set_waiting_for_database(true);
}

/// The worker's background tasks besides the guards: database watch, upkeep,
/// spool flusher, webhook pruning, the outbox relay (`outbox.relay`), queue depths.
fn spawn_background(
    background: &Background,
    config: &Config,
    pool: &PgPool,
    health: &Arc<Health>,
    handlers: &[Arc<dyn Handler>],
) {
    let stop = background.stop_token();
    background.spawn(watch_database(pool.clone(), health.clone(), stop.clone()));
    background.spawn_upkeep(pool, &config.outbox);
    background.spawn(crate::hook::spool::run_spool_flusher(
        FlushSettings {
            spool: config.spool.clone(),
            amqp: config.amqp.clone(),
            fairness: config.fairness.clone(),
        },
        stop.clone(),
    ));
    background.spawn(crate::webhook::run_webhook_pruner(
        pool.clone(),
        config.webhook.clone(),
        stop.clone(),
    ));
    // The relay publishes what handlers commit to the outbox.
    if config.outbox.relay {
        background.spawn(relay_task(
            config.amqp.clone(),
            config.outbox.clone(),
            pool.clone(),
            stop.clone(),
        ));
    }
    background.spawn(crate::amqp::depths::run_depth_sampler(
        config.amqp.clone(),
        handlers.iter().map(|h| h.kind().to_string()).collect(),
        config.retry.tiers.clone(),
        config.admin.queue_depth_interval,
        stop,
    ));
}

/// The kill switch (probing the pool) and the paused kinds (read once before
/// consuming starts, so a paused kind is never consumed after a restart), with
/// their background tasks.
async fn start_guards(
    config: &GuardConfig,
    pool: &PgPool,
    health: &Arc<Health>,
    background: &Background,
) -> Gates {
    let killswitch = Arc::new(KillSwitch::new(
        config.clone(),
        Some(pool.clone()),
        health.clone(),
    ));
    let ks = killswitch.clone();
    let ks_stop = background.stop_token();
    background.spawn(async move { ks.run(ks_stop).await });
    let (tx, paused) = tokio::sync::watch::channel(BTreeSet::new());
    pause::load(pool, &tx, health).await;
    background.spawn(pause::run_watcher(
        pool.clone(),
        config.pause_poll_interval,
        tx,
        health.clone(),
        background.stop_token(),
    ));
    Gates { killswitch, paused }
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
        let ok = crate::db::ping(&pool, std::time::Duration::from_secs(2))
            .await
            .is_ok();
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
