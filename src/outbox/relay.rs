//! The relay: publishes committed outbox rows to the broker with confirms.
//!
//! Owns the loop LISTEN → claim (`outbox_pending`, `FOR UPDATE SKIP LOCKED`, id
//! order) → publish the batch pipelined with `mandatory` → await confirms → mark
//! confirmed rows published (their `outbox_pending` rows move to
//! `outbox_published`) and failed rows backed off → COMMIT (batches overlapped,
//! see below), and the relay's own broker connection (role `relay`), reconnected
//! with exponential backoff and jitter when it closes. It never publishes anything
//! that is not an outbox row, never deletes an outbox row (see [`super::prune`])
//! and never drops a transaction mid-commit: shutdown is only observed between
//! batches.
//!
//! Pipelining: three stages joined by bounded channels, each batch in its own
//! transaction. A claimer claims batches (SKIP LOCKED skips rows still locked by
//! earlier batches), up to [`CLAIM_AHEAD`] ahead of the sender; the sender
//! publishes each batch; a settler awaits each sent batch's confirms, marks it and
//! commits, in order, at most [`PIPELINE_DEPTH`] batches behind. So the broker
//! always has work: the next batch's claim (a database round trip carrying its
//! payloads) happens while this one is being published, not between the two,
//! and the database settles in parallel. Sends stay in id order on one channel.
//!
//! Wake-ups: `LISTEN hookfleet_outbox` is registered before the first claim, so no
//! notification for a row committed after that can be missed; notifications sent
//! while the listener was disconnected are lost, which the `outbox.poll_interval`
//! poll covers.
//!
//! Failure handling: a nacked or returned (unroutable) row, or one aimed at an
//! exchange that does not exist (checked passively before publishing, because a
//! publish to a missing exchange would close the channel for every row), gets
//! `publish_attempts + 1`, `last_error` and `next_attempt_at = now + backoff`
//! (doubling from [`ROW_BACKOFF_BASE`], capped by `outbox.max_backoff`): one bad row
//! never blocks the others. A closed channel or connection, or a database error,
//! is not the row's fault: confirmed rows are still marked, unconfirmed rows stay
//! untouched (and unpublished), and the relay reconnects after a backoff.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind, PublisherConfirm};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::storage::{self, Failure, OutboxRow};
use crate::amqp::{self, AmqpError, publish};
use crate::backoff::Reconnect;
use crate::config::{AmqpConfig, OutboxConfig};
use crate::metrics::metrics;

/// The connection role the relay reports in logs and metrics.
pub const ROLE: &str = "relay";
/// First delay before a failed row is retried; doubles per attempt.
pub const ROW_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Sent batches queued for the settler (confirms, marks, COMMIT) besides the one
/// it is settling: how far the sender may run ahead. Each holds a pooled
/// connection until it commits.
pub const PIPELINE_DEPTH: usize = 2;
/// Claimed batches queued for the sender besides the one it is publishing. One is
/// enough to hide a claim behind a publish (measured: a claim of 256 1 KiB rows
/// takes a fifth to a quarter of the time their publishing does); it holds one
/// more pooled connection.
pub const CLAIM_AHEAD: usize = 1;
/// How often pending statistics (`outbox_pending`, oldest age) are sampled.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Delay before a row that failed `attempts` times (after this failure) is due again.
pub fn row_backoff(attempts: i32, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    ROW_BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(exp))
        .min(max)
}

/// The broker side of the relay: connection, confirm channel, and exchanges known
/// to exist on this connection.
struct Broker {
    conn: Connection,
    channel: Channel,
    known_exchanges: HashSet<String>,
}

impl Broker {
    fn is_open(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

/// What one batch's publish achieved.
#[derive(Default)]
struct Outcome {
    published: Vec<i64>,
    failed: Vec<Failure>,
    /// The channel or connection broke: unconfirmed rows were left alone.
    broken: Option<AmqpError>,
}

/// A claimed batch on its way to the sender: its rows stay locked by `tx`.
struct Claimed {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    rows: Vec<OutboxRow>,
    started: Instant,
}

/// A published batch whose rows still have to be marked and committed.
struct Settle {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    sent: Sent,
    started: Instant,
}

/// Marks the batch's confirmed rows published and its failed rows backed off,
/// commits, records metrics; returns the broken-channel error, if any.
async fn settle_batch_inner(batch: Settle) -> anyhow::Result<Option<AmqpError>> {
    let Settle {
        mut tx,
        sent,
        started,
        ..
    } = batch;
    let outcome = await_confirms(sent).await;
    storage::mark_published(&mut tx, &outcome.published)
        .await
        .context("relay: marking rows published")?;
    storage::mark_failed(&mut tx, &outcome.failed)
        .await
        .context("relay: recording failed rows")?;
    tx.commit().await.context("relay: commit")?;
    let m = metrics();
    m.relay_published_total
        .inc_by(outcome.published.len() as u64);
    m.relay_failed_total.inc_by(outcome.failed.len() as u64);
    m.relay_batch_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    for f in &outcome.failed {
        tracing::warn!(outbox.id = f.id, error = %f.error, retry_in = ?f.retry_in, "relay: row not published");
    }
    Ok(outcome.broken)
}

/// Relay state across batches.
struct Relay {
    amqp: AmqpConfig,
    outbox: OutboxConfig,
    pool: PgPool,
    broker: Option<Broker>,
    listener: Option<PgListener>,
    connected_once: bool,
    stats: PendingStats,
}

/// Samples pending statistics (`outbox_pending`, oldest age) at most every
/// [`STATS_INTERVAL`].
#[derive(Default)]
struct PendingStats {
    last: Option<Instant>,
}

impl PendingStats {
    async fn sample(&mut self, pool: &PgPool) {
        if self.last.is_some_and(|t| t.elapsed() < STATS_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        match storage::pending_stats(pool).await {
            Ok((count, age)) => {
                metrics().outbox_pending.set(count);
                metrics().outbox_oldest_pending_age_seconds.set(age);
            }
            Err(e) => tracing::debug!(error = %e, "relay: sampling pending stats failed"),
        }
    }
}

/// Runs the relay until `shutdown` is cancelled (finishing the batch in hand),
/// then closes its broker connection and returns `Ok(())`. Broker or database
/// outages are retried forever with backoff; they never end this function.
pub async fn run_relay(
    amqp: AmqpConfig,
    outbox: OutboxConfig,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut relay = Relay {
        amqp,
        outbox,
        pool,
        broker: None,
        listener: None,
        connected_once: false,
        stats: PendingStats::default(),
    };
    let mut backoff = Reconnect::new(relay.amqp.reconnect_min, relay.amqp.reconnect_max);
    // Consecutive failed batches: an outage is logged once at warn, its retries at
    // debug, so a long broker outage does not flood the log.
    let mut failures: u64 = 0;
    while !shutdown.is_cancelled() {
        match relay.drain(&shutdown).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, "relay: working again");
                }
                failures = 0;
                backoff.reset();
                relay.wait_for_work(&shutdown).await;
            }
            Err(e) => {
                failures += 1;
                let delay = backoff.next_delay();
                let error = crate::cli::error_chain(e.as_ref());
                if failures == 1 {
                    tracing::warn!(%error, retry_in = ?delay, "relay: batch failed, backing off");
                } else {
                    tracing::debug!(%error, failures, retry_in = ?delay, "relay: still failing");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    relay.close().await;
    tracing::info!("relay stopped");
    Ok(())
}

impl Relay {
    /// Makes sure the listener and broker are up, then runs batches until one comes
    /// back short (nothing more due) or shutdown is requested.
    async fn drain(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        if self.listener.is_none() {
            let mut l = PgListener::connect_with(&self.pool)
                .await
                .context("relay: connecting the outbox listener")?;
            l.listen(super::NOTIFY_CHANNEL)
                .await
                .context("relay: LISTEN")?;
            self.listener = Some(l);
        }
        self.ensure_broker().await?;
        // The claimer claims batches, the sender publishes them, the settler awaits
        // their confirms, marks and commits them, all in the same order. A failure
        // anywhere stops the claimer; batches claimed but not sent are rolled
        // back; the settler always settles every batch already sent (never a
        // dropped commit).
        let (to_send, claimed) = mpsc::channel::<Claimed>(CLAIM_AHEAD);
        let (to_settle, mut sent_batches) = mpsc::channel::<Settle>(PIPELINE_DEPTH);
        let failed = CancellationToken::new();
        let settler = async {
            let mut first: Option<(anyhow::Error, bool)> = None;
            while let Some(batch) = sent_batches.recv().await {
                let error = match settle_batch_inner(batch).await {
                    Ok(None) => continue,
                    Ok(Some(broken)) => (
                        anyhow::Error::new(broken).context("relay: broker channel failed"),
                        true,
                    ),
                    Err(e) => (e, false),
                };
                failed.cancel();
                first.get_or_insert(error);
            }
            first
        };
        let claimer = claim_batches(
            &self.pool,
            self.outbox.batch_size,
            &mut self.stats,
            shutdown,
            &failed,
            to_send,
        );
        let sender = send_batches(
            &mut self.broker,
            &self.amqp,
            &self.outbox,
            &failed,
            claimed,
            to_settle,
        );
        let (claims, (), settled) = tokio::join!(claimer, sender, settler);
        if let Some((error, broken)) = settled {
            if broken {
                drop_broker(&mut self.broker);
            }
            return Err(error);
        }
        claims
    }

    async fn ensure_broker(&mut self) -> Result<(), AmqpError> {
        if self.broker.as_ref().is_some_and(Broker::is_open) {
            return Ok(());
        }
        drop_broker(&mut self.broker);
        if self.connected_once {
            metrics()
                .amqp_reconnects_total
                .with_label_values(&[ROLE])
                .inc();
        }
        let conn = amqp::connect(&self.amqp, ROLE).await?;
        let channel =
            match tokio::time::timeout(self.amqp.connect_timeout, publish::confirm_channel(&conn))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    return Err(AmqpError::Timeout {
                        what: "opening the relay channel",
                        timeout: self.amqp.connect_timeout,
                    });
                }
            };
        self.connected_once = true;
        metrics()
            .amqp_connection_up
            .with_label_values(&[ROLE])
            .set(1);
        tracing::info!(amqp = %self.amqp.url.address(), "relay connected");
        self.broker = Some(Broker {
            conn,
            channel,
            known_exchanges: HashSet::from([String::new()]),
        });
        Ok(())
    }

    /// Sleeps until a notification, the poll interval, or shutdown.
    async fn wait_for_work(&mut self, shutdown: &CancellationToken) {
        let poll = tokio::time::sleep(self.outbox.poll_interval);
        let Some(listener) = self.listener.as_mut() else {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = poll => {}
            }
            return;
        };
        let lost = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = poll => false,
            r = listener.try_recv() => match r {
                Ok(Some(_)) => false,
                // Disconnected: notifications may have been lost; the next drain
                // polls anyway and the listener reconnects on its next use.
                Ok(None) => false,
                Err(e) => {
                    tracing::debug!(error = %e, "relay: outbox listener failed");
                    true
                }
            },
        };
        if lost {
            self.listener = None;
        } else if let Some(l) = self.listener.as_mut() {
            // Several commits may have notified; one drain covers them all.
            while l.next_buffered().is_some() {}
        }
    }

    async fn close(&mut self) {
        if let Some(b) = self.broker.take() {
            let _ = tokio::time::timeout(
                self.amqp.connect_timeout,
                b.conn.close(200, "relay shutdown".into()),
            )
            .await;
            metrics()
                .amqp_connection_up
                .with_label_values(&[ROLE])
                .set(0);
        }
    }
}

/// Forgets a broken broker connection (the next drain reconnects).
fn drop_broker(broker: &mut Option<Broker>) {
    if broker.take().is_some() {
        metrics()
            .amqp_connection_up
            .with_label_values(&[ROLE])
            .set(0);
    }
}

/// Claims batches for the sender, until one comes back short (nothing more due),
/// the sender or settler stopped, or shutdown is requested. Claiming while
/// earlier batches still hold their row locks is safe: SKIP LOCKED hands out the
/// next ids, so batches are claimed, and handed on, in id order.
async fn claim_batches(
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
        let rows = storage::claim(&mut tx, batch_size)
            .await
            .context("relay: claiming rows")?;
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
async fn send_batches(
    broker: &mut Option<Broker>,
    amqp: &AmqpConfig,
    outbox: &OutboxConfig,
    failed: &CancellationToken,
    mut claimed: mpsc::Receiver<Claimed>,
    to_settle: mpsc::Sender<Settle>,
) {
    while let Some(Claimed { tx, rows, started }) = claimed.recv().await {
        if failed.is_cancelled() {
            // The settler failed: nothing more is sent in this drain.
            rollback_unsent(tx).await;
            break;
        }
        let sent = match broker.as_mut() {
            Some(b) => send_rows(b, &rows, amqp.publish_timeout, outbox.max_backoff).await,
            None => Sent {
                pending: Vec::new(),
                outcome: Outcome {
                    broken: Some(AmqpError::Rejected("relay has no broker connection".into())),
                    ..Outcome::default()
                },
                deadline: tokio::time::Instant::now(),
                max_backoff: outbox.max_backoff,
                timeout: amqp.publish_timeout,
            },
        };
        let broken = sent.outcome.broken.is_some();
        if broken {
            drop_broker(broker);
        }
        // The settler outlives this loop (it drains its channel to the end).
        if to_settle.send(Settle { tx, sent, started }).await.is_err() || broken {
            break;
        }
    }
    claimed.close();
    while let Some(unsent) = claimed.recv().await {
        rollback_unsent(unsent.tx).await;
    }
}

/// Releases the rows of a batch that was claimed but will not be sent.
async fn rollback_unsent(tx: sqlx::Transaction<'static, sqlx::Postgres>) {
    if let Err(e) = tx.rollback().await {
        tracing::debug!(error = %e, "relay: rolling back an unsent batch failed");
    }
}

/// Checks that `exchange` exists with a passive declare on a throwaway channel
/// (a failed passive declare closes its channel, not ours).
async fn exchange_exists(
    conn: &Connection,
    exchange: &str,
    timeout: Duration,
) -> Result<bool, AmqpError> {
    let work = async {
        let ch = conn.create_channel().await?;
        let r = ch
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match r {
            Ok(()) => {
                let _ = ch.close(200, "ok".into()).await;
                Ok(true)
            }
            Err(e) => match e.kind() {
                lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404 => Ok(false),
                _ => Err(AmqpError::Protocol(e)),
            },
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AmqpError::Timeout {
            what: "checking an exchange",
            timeout,
        })?
}

/// A batch sent to the broker whose confirms may still be outstanding.
struct Sent {
    /// Outbox id, attempts so far, and the confirm to await.
    pending: Vec<(i64, i32, PublisherConfirm)>,
    /// Rows already known to have failed, and a broken channel met while sending.
    outcome: Outcome,
    deadline: tokio::time::Instant,
    max_backoff: Duration,
    timeout: Duration,
}

/// Sends `rows` in id order on the broker's channel without waiting for their
/// confirms (see [`await_confirms`]). Rows aimed at an exchange that does not
/// exist are failed here, before they could close the channel.
async fn send_rows(
    broker: &mut Broker,
    rows: &[OutboxRow],
    timeout: Duration,
    max_backoff: Duration,
) -> Sent {
    let mut sent = Sent {
        pending: Vec::with_capacity(rows.len()),
        outcome: Outcome::default(),
        deadline: tokio::time::Instant::now() + timeout,
        max_backoff,
        timeout,
    };
    let mut missing: HashSet<String> = HashSet::new();
    for row in rows {
        if broker.known_exchanges.contains(&row.exchange) || missing.contains(&row.exchange) {
            continue;
        }
        match exchange_exists(&broker.conn, &row.exchange, timeout).await {
            Ok(true) => {
                broker.known_exchanges.insert(row.exchange.clone());
            }
            Ok(false) => {
                missing.insert(row.exchange.clone());
            }
            Err(e) => {
                sent.outcome.broken = Some(e);
                return sent;
            }
        }
    }
    for row in rows {
        if missing.contains(&row.exchange) {
            sent.outcome.failed.push(Failure {
                id: row.id,
                error: format!("exchange {:?} does not exist", row.exchange),
                retry_in: row_backoff(row.publish_attempts.saturating_add(1), max_backoff),
            });
            continue;
        }
        let result = tokio::time::timeout_at(
            sent.deadline,
            publish::send(
                &broker.channel,
                &row.exchange,
                &row.routing_key,
                super::row_body(row),
                super::row_properties(row),
                true,
            ),
        )
        .await;
        match result {
            Ok(Ok(confirm)) => sent.pending.push((row.id, row.publish_attempts, confirm)),
            Ok(Err(e)) => {
                sent.outcome.broken = Some(e);
                break;
            }
            Err(_) => {
                sent.outcome.broken = Some(AmqpError::Timeout {
                    what: "publish",
                    timeout,
                });
                break;
            }
        }
    }
    sent
}

/// Awaits every confirm of a sent batch (against the batch's deadline).
async fn await_confirms(sent: Sent) -> Outcome {
    let Sent {
        pending,
        mut outcome,
        deadline,
        max_backoff,
        timeout,
    } = sent;
    for (id, attempts, confirm) in pending {
        // A batch sent just before a slow settle still gets its full window.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(timeout / 2);
        match publish::confirmed(confirm, left).await {
            Ok(()) => outcome.published.push(id),
            Err(AmqpError::Rejected(why)) => outcome.failed.push(Failure {
                id,
                error: why,
                retry_in: row_backoff(attempts.saturating_add(1), max_backoff),
            }),
            Err(e) => {
                if outcome.broken.is_none() {
                    outcome.broken = Some(e);
                }
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_backoff_doubles_and_is_capped() {
        let max = Duration::from_secs(60);
        assert_eq!(row_backoff(1, max), Duration::from_secs(1));
        assert_eq!(row_backoff(2, max), Duration::from_secs(2));
        assert_eq!(row_backoff(4, max), Duration::from_secs(8));
        assert_eq!(row_backoff(30, max), max);
        assert_eq!(row_backoff(i32::MAX, max), max);
    }
}
