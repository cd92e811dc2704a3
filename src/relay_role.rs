//! `hookfleet relay`: the outbox relay, retention pruning, the memory janitor and
//! the admin server, without consumers, until the shutdown token is cancelled.
//!
//! Shutdown is bounded like the worker's (see [`crate::role`]): once the token
//! is cancelled, the relay's batch in hand, the background tasks, the admin
//! server and the pool share [`role::AFTER_DRAIN_GRACE`]. A step still waiting then (a
//! broker that never confirms, a database that never answers) is logged by name
//! and abandoned, so the process exits inside the chart's termination grace
//! period instead of being killed: unconfirmed rows stay pending and are
//! published again by the next relay (consumers dedupe by message id).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;
use crate::config::Config;
use crate::health::Health;
use crate::role::{self, AdminServer, Background, shutdown_step};
use crate::{db, outbox};

/// Runs the relay role until `shutdown` is cancelled (then within
/// [`role::AFTER_DRAIN_GRACE`]) or the relay fails.
pub async fn run(
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = db::connect(&config.database).await?;
    // Probes need the admin server; a relay has no consumers, so its readiness
    // is the database alone.
    health.set_consuming(true);
    health.set_database_ok(true);
    // This process relays whatever `outbox.relay` says (that key is the
    // worker's); the console reads it to tell whether the relay runs here.
    let mut relaying = config.clone();
    relaying.outbox.relay = true;
    let admin = AdminServer::start(
        config.admin.listen,
        AdminState {
            health,
            inflight: Arc::default(),
            pool: Some(pool.clone()),
            console: crate::admin::console::Console::new(Arc::new(relaying), pool.clone()),
        },
    )
    .await?;
    let background = Background::new(shutdown.clone());
    background.spawn_upkeep(&pool, &config.outbox);
    let mut relay = tokio::spawn(outbox::run_relay(
        config.amqp,
        config.outbox,
        pool.clone(),
        shutdown.clone(),
    ));

    // The relay only returns on its own when it fails.
    let failed = tokio::select! {
        r = &mut relay => Some(r),
        _ = shutdown.cancelled() => None,
    };
    let deadline = role::shutdown_deadline();
    let mut result = Ok(());
    match failed {
        Some(r) => {
            shutdown.cancel();
            result = r.map_err(anyhow::Error::from).and_then(|r| r);
        }
        None => shutdown_step("outbox relay", deadline, &mut relay).await,
    }
    relay.abort();
    background.stop(deadline).await;
    role::close("relay", admin, &pool, deadline).await;
    result
}
