//! `hookfleet worker`: assembles the database pool, the broker connection and the
//! long-running tasks, and runs them until the shutdown token is cancelled.
//!
//! Owns start-up order and shutdown order; it holds no business logic.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::health::Health;
use crate::{amqp, db};

/// Runs the worker until `shutdown` is cancelled, then returns `Ok(())`.
pub async fn run(
    config: Config,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.database.auto_migrate {
        db::ensure_database(&config.database).await?;
    }
    let pool = db::connect(&config.database).await?;
    if config.database.auto_migrate {
        db::migrate(&pool).await.context("applying migrations")?;
    }
    health.set_database_ok(true);

    let conn = amqp::connect(&config.amqp, "consumer").await?;
    health.set_consuming(true);
    tracing::info!(amqp = %config.amqp.url.address(), "worker ready");

    shutdown.cancelled().await;
    health.set_draining();
    let _ = conn.close(200, "shutdown".into()).await;
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}
