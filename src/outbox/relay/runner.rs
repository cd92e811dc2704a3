//! The relay as a whole: its state across batches, the retry loop around each
//! drain (reconnecting the broker and the listener), the wait for work between
//! drains, and the three stages of a drain joined by bounded channels.

use std::collections::HashSet;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::LOG_TARGET;
use super::broker::{Broker, ROLE, drop_broker};
use super::pipeline::{CLAIM_AHEAD, Claimed, PIPELINE_DEPTH, claim_batches, send_batches};
use super::policy::{MAX_SUSPECTS, Refused, RowPolicy, refused_by_broker};
use super::returns::ReturnLedger;
use super::settle::{PublishedBatch, settle_batch_inner};
use super::stats::PendingStats;
use crate::amqp::{self, AmqpError, publish};
use crate::backoff::{Attempt, Event, retry_forever};
use crate::config::{AmqpConfig, OutboxConfig};
use crate::metrics::metrics;

/// Relay state across batches.
struct Relay {
    amqp: AmqpConfig,
    outbox: OutboxConfig,
    pool: PgPool,
    broker: Option<Broker>,
    listener: Option<PgListener>,
    connected_once: bool,
    stats: PendingStats,
    /// Rows to publish one at a time (see the [relay's module doc](super)).
    suspects: HashSet<i64>,
    /// Returned messages not yet matched to their row.
    returns: ReturnLedger,
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
    let relay = Relay {
        amqp,
        outbox,
        pool,
        broker: None,
        listener: None,
        connected_once: false,
        stats: PendingStats::default(),
        suspects: HashSet::new(),
        returns: ReturnLedger::default(),
    };
    let delays = relay.amqp.reconnect_delays();
    // Each attempt holds the relay to the end of its batch (never cut
    // midway); the lock is never contended: attempts run one after the other.
    let relay = tokio::sync::Mutex::new(relay);
    let (cell, stop) = (&relay, &shutdown);
    // Each outage is logged once at warn, its retries at debug, so a long broker
    // outage does not flood the log; the series starts over after a good drain.
    loop {
        let drained = retry_forever(
            delays,
            stop,
            ROLE,
            move |_| async move { cell.lock().await.attempt(stop).await },
            report_batch,
        )
        .await;
        if drained.is_none() {
            break;
        }
        relay.lock().await.wait_for_work(stop).await;
    }
    relay.into_inner().close().await;
    tracing::info!(target: LOG_TARGET, "relay stopped");
    Ok(())
}

/// Reports what the relay's retry loop hears: an outage once, its end.
fn report_batch(event: Event<'_, anyhow::Error>) {
    match event {
        Event::Done { failures } if failures > 0 => {
            tracing::info!(target: LOG_TARGET, failures, "relay: working again");
        }
        Event::Done { .. } => {}
        Event::Failed {
            error,
            failures,
            retry_in,
        } => {
            let error = crate::error::error_chain(error.as_ref());
            if failures == 1 {
                tracing::warn!(
                    target: LOG_TARGET,
                    %error,
                    ?retry_in,
                    "relay: batch failed, backing off"
                );
            } else {
                tracing::debug!(
                    target: LOG_TARGET,
                    %error,
                    failures,
                    ?retry_in,
                    "relay: still failing"
                );
            }
        }
    }
}

impl Relay {
    /// One attempt of [`run_relay`]'s loop: [`Relay::drain`], where a row the
    /// broker refused is not an outage (the suspects are tried one by one on a
    /// new channel at once).
    async fn attempt(&mut self, shutdown: &CancellationToken) -> Attempt<(), anyhow::Error> {
        match self.drain(shutdown).await {
            Ok(()) => Attempt::Done(()),
            Err(e) if e.downcast_ref::<Refused>().is_some() && !self.suspects.is_empty() => {
                tracing::info!(
                    target: LOG_TARGET,
                    suspects = self.suspects.len(),
                    error = %crate::error::error_chain(e.as_ref()),
                    "relay: the broker refused a message; finding the row"
                );
                Attempt::Again
            }
            Err(e) => Attempt::Failed(e),
        }
    }

    /// Makes sure the listener and broker are up, then runs batches until one comes
    /// back short (nothing more due) or shutdown is requested.
    async fn drain(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        self.ensure_listener().await?;
        self.ensure_broker().await?;
        // The claimer claims batches, the sender publishes them, the settler awaits
        // their confirms, marks and commits them, all in the same order. A failure
        // anywhere stops the claimer; batches claimed but not sent are rolled
        // back; the settler always settles every batch already sent (never a
        // dropped commit).
        let (to_send, claimed) = mpsc::channel::<Claimed>(CLAIM_AHEAD);
        let (to_settle, sent_batches) = mpsc::channel::<PublishedBatch>(PIPELINE_DEPTH);
        let failed = CancellationToken::new();
        let settler = settle_in_order(sent_batches, &mut self.returns, &failed);
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
            RowPolicy::new(&self.amqp, &self.outbox),
            &mut self.suspects,
            &failed,
            claimed,
            to_settle,
        );
        let (claims, (), (settled, suspects)) = tokio::join!(claimer, sender, settler);
        if self.suspects.len() + suspects.len() > MAX_SUSPECTS {
            self.suspects.clear();
        }
        self.suspects.extend(suspects);
        if let Some((error, broken)) = settled {
            if broken {
                drop_broker(&mut self.broker);
            }
            return Err(error);
        }
        claims
    }

    /// Connects the outbox listener and LISTENs, unless it is up.
    async fn ensure_listener(&mut self) -> anyhow::Result<()> {
        if self.listener.is_none() {
            let mut l = PgListener::connect_with(&self.pool)
                .await
                .context("relay: connecting the outbox listener")?;
            l.listen(crate::outbox::NOTIFY_CHANNEL)
                .await
                .context("relay: LISTEN")?;
            self.listener = Some(l);
        }
        Ok(())
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
        tracing::info!(
            target: LOG_TARGET,
            amqp = %amqp::node_in_use(ROLE).unwrap_or_default(),
            "relay connected"
        );
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
                    tracing::debug!(
                        target: LOG_TARGET,
                        error = %e,
                        "relay: outbox listener failed"
                    );
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

/// The settler stage of a drain: settles every sent batch, in order, to the end
/// of its channel (never a dropped commit). The first failure cancels `failed`
/// (stopping the claimer and the sender) and is returned, with whether the
/// broker channel broke; so are the rows the broken channels make suspect.
async fn settle_in_order(
    mut sent_batches: mpsc::Receiver<PublishedBatch>,
    returns: &mut ReturnLedger,
    failed: &CancellationToken,
) -> (Option<(anyhow::Error, bool)>, Vec<i64>) {
    let mut first: Option<(anyhow::Error, bool)> = None;
    let mut suspects: Vec<i64> = Vec::new();
    while let Some(batch) = sent_batches.recv().await {
        let error = match settle_batch_inner(batch, &mut *returns).await {
            Ok(None) => continue,
            Ok(Some((broken, more))) => {
                suspects.extend(more);
                let refused = refused_by_broker(&broken).is_some();
                let e = anyhow::Error::new(broken).context("relay: broker channel failed");
                (if refused { e.context(Refused) } else { e }, true)
            }
            Err(e) => (e, false),
        };
        failed.cancel();
        first.get_or_insert(error);
    }
    (first, suspects)
}
