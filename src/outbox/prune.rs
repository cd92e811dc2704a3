//! Retention pruning of the outbox and inbox tables.
//!
//! Owns deleting published outbox rows older than `outbox.retention` (the replay
//! window) and inbox rows older than `outbox.inbox_retention` (the dedupe window),
//! in batches of `outbox.prune_batch_size` so no statement holds many locks or runs
//! long. It never deletes an unpublished outbox row.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::storage;
use crate::config::OutboxConfig;

/// Rows removed by one pruning pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Published outbox rows deleted.
    pub outbox: u64,
    /// Inbox rows deleted.
    pub inbox: u64,
}

/// One pass: deletes batches until none is full (or shutdown is requested between
/// batches).
pub async fn prune_once(
    pool: &PgPool,
    cfg: &OutboxConfig,
    shutdown: &CancellationToken,
) -> Result<Pruned, sqlx::Error> {
    let batch = cfg.prune_batch_size;
    let mut pruned = Pruned::default();
    loop {
        let n = storage::prune_outbox_batch(pool, cfg.retention, batch).await?;
        pruned.outbox += n;
        if n < u64::from(batch) || shutdown.is_cancelled() {
            break;
        }
    }
    loop {
        let n = storage::prune_inbox_batch(pool, cfg.inbox_retention, batch).await?;
        pruned.inbox += n;
        if n < u64::from(batch) || shutdown.is_cancelled() {
            break;
        }
    }
    Ok(pruned)
}

/// Prunes every `outbox.prune_interval` until `shutdown`; errors (database down)
/// are logged and the next pass tries again.
pub async fn run_outbox_pruner(
    pool: PgPool,
    cfg: OutboxConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match prune_once(&pool, &cfg, &shutdown).await {
            Ok(p) if p.outbox > 0 || p.inbox > 0 => {
                tracing::info!(outbox = p.outbox, inbox = p.inbox, "pruned old rows");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning failed; retrying next interval"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(cfg.prune_interval.max(Duration::from_millis(10))) => {}
        }
    }
}
