//! The claim and send stages of a drain: batches claimed in id order ahead of the
//! sender, published in that order and handed to the settler; batches claimed
//! but not sent are rolled back.

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::LOG_TARGET;
use super::broker::{Broker, drop_broker};
use super::confirm::{Outcome, Sent};
use super::policy::RowPolicy;
use super::send::send_rows;
use super::settle::PublishedBatch;
use super::stats::PendingStats;
use crate::amqp::AmqpError;
use crate::config::AmqpConfig;
use crate::otel;
use crate::outbox::storage::{self, OutboxRow};

/// Sent batches queued for the settler (confirms, marks, COMMIT) besides the one
/// it is settling: how far the sender may run ahead. Each holds a pooled
/// connection until it commits.
pub(crate) const PIPELINE_DEPTH: usize = 2;
/// Claimed batches queued for the sender besides the one it is publishing. One is
/// enough to hide a claim behind a publish (measured: a claim of 256 1 KiB rows
/// takes a fifth to a quarter of the time their publishing does); it holds one
/// more pooled connection.
pub(crate) const CLAIM_AHEAD: usize = 1;
/// Payload bytes from which a batch counts as big (see [`crate::alloc`]).
pub(crate) const BIG_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A claimed batch on its way to the sender: its rows stay locked by `tx`.
pub(super) struct Claimed {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    rows: Vec<OutboxRow>,
    started: Instant,
}

/// Claims batches for the sender, until one comes back short (nothing more due),
/// the sender or settler stopped, or shutdown is requested. Claiming while
/// earlier batches still hold their row locks is safe: SKIP LOCKED hands out the
/// next ids, so batches are claimed, and handed on, in id order.
pub(super) async fn claim_batches(
    pool: &PgPool,
    batch_size: u32,
    stats: &mut PendingStats,
    shutdown: &CancellationToken,
    failed: &CancellationToken,
    to_send: mpsc::Sender<Claimed>,
) -> anyhow::Result<()> {
    while !failed.is_cancelled() {
        let started = Instant::now();
        let mut tx = storage::begin_claim(pool).await.context("relay: begin")?;
        let claim_started = SystemTime::now();
        let rows = storage::claim(&mut tx, batch_size)
            .await
            .context("relay: claiming rows")?;
        otel::span::db_batch(
            "SELECT",
            "SELECT outbox",
            claim_started,
            rows.iter().filter_map(|r| r.trace_context.as_deref()),
        );
        stats.sample(pool).await;
        if rows.is_empty() {
            tx.commit().await.context("relay: commit")?;
            return Ok(());
        }
        let last = rows.len() < batch_size as usize;
        if let Err(mpsc::error::SendError(unsent)) =
            to_send.send(Claimed { tx, rows, started }).await
        {
            // The sender stopped (its channel broke): these rows were not sent.
            rollback_unsent(unsent.tx).await;
            return Ok(());
        }
        if last || shutdown.is_cancelled() {
            return Ok(());
        }
    }
    Ok(())
}

/// Publishes claimed batches in the order claimed, handing each to the settler,
/// until the claimer is done, a send breaks the channel or the settler stopped.
/// Batches claimed but not sent are rolled back.
pub(super) async fn send_batches(
    broker: &mut Option<Broker>,
    amqp: &AmqpConfig,
    policy: RowPolicy,
    suspects: &mut HashSet<i64>,
    failed: &CancellationToken,
    mut claimed: mpsc::Receiver<Claimed>,
    to_settle: mpsc::Sender<PublishedBatch>,
) {
    while let Some(Claimed { tx, rows, started }) = claimed.recv().await {
        // A batch of big rows grows the claim connection's read buffer and the
        // heap: give that back once it is settled (see crate::alloc).
        if rows.iter().map(|r| r.payload.len()).sum::<usize>() > BIG_BATCH_BYTES {
            crate::alloc::request_release();
        }
        if failed.is_cancelled() {
            // The settler failed: nothing more is sent in this drain.
            rollback_unsent(tx).await;
            break;
        }
        let sent = match broker.as_mut() {
            Some(b) => send_rows(b, &rows, amqp.publish_timeout, policy, suspects).await,
            None => Sent {
                pending: Vec::new(),
                outcome: Outcome {
                    broken: Some(AmqpError::Rejected("relay has no broker connection".into())),
                    ..Outcome::default()
                },
                deadline: tokio::time::Instant::now(),
                policy,
                timeout: amqp.publish_timeout,
            },
        };
        let broken = sent.outcome.broken.is_some();
        if broken {
            drop_broker(broker);
        }
        let traces = rows
            .iter()
            .filter_map(|r| r.trace_context.clone())
            .collect();
        // The settler outlives this loop (it drains its channel to the end).
        let settle = PublishedBatch {
            tx,
            sent,
            started,
            traces,
        };
        if to_settle.send(settle).await.is_err() || broken {
            break;
        }
    }
    claimed.close();
    while let Some(unsent) = claimed.recv().await {
        rollback_unsent(unsent.tx).await;
    }
}

/// Releases the rows of a batch that was claimed but will not be sent.
pub(super) async fn rollback_unsent(tx: sqlx::Transaction<'static, sqlx::Postgres>) {
    if let Err(e) = tx.rollback().await {
        tracing::debug!(
            target: LOG_TARGET,
            error = %e,
            "relay: rolling back an unsent batch failed"
        );
    }
}
