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
//! Failure handling: one bad row never blocks the others. A nacked or returned
//! (unroutable) row, one aimed at an exchange that does not exist (checked
//! passively before publishing, because a publish to a missing exchange would
//! close the channel for every row) and one bigger than `amqp.max_message_bytes`
//! (never sent) get `publish_attempts + 1`, `last_error` and
//! `next_attempt_at = now + backoff` (doubling from [`ROW_BACKOFF_BASE`], capped
//! by `outbox.max_backoff`); after `outbox.park_after_attempts` failures (an
//! oversized row at once: it cannot succeed until the limit changes) the row is
//! parked, set aside until `outbox unpark`.
//!
//! A row the broker refuses by closing the channel (RabbitMQ's own size limit,
//! any per-message channel error: a *soft* AMQP error) cannot be told from the
//! rows pipelined around it: every unconfirmed confirm fails alike. So the
//! unconfirmed rows of such a batch become *suspects*, and the next pass (at
//! once, on a new channel) publishes each suspect alone and awaits its confirm:
//! the one that closes the channel again is the culprit and is failed as above,
//! with the broker's reason; the others are published in the same pass. A
//! closed connection, a timeout or a database error is not a row's fault:
//! confirmed rows are still marked, unconfirmed rows stay untouched (and
//! unpublished), and the relay reconnects after a backoff
//! ([`crate::backoff::retry_forever`], one drain an attempt, never interrupted
//! mid-batch).

use std::collections::{HashMap, HashSet};

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};
use uuid::Uuid;

use anyhow::Context;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind, PublisherConfirm};
use opentelemetry::trace::TraceContextExt;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::storage::{self, Failure, OutboxRow};
use crate::amqp::{self, AmqpError, publish};
use crate::backoff::{Attempt, Event, retry_forever};
use crate::config::{AmqpConfig, OutboxConfig};
use crate::metrics::metrics;
use crate::otel;

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
/// Payload bytes from which a batch counts as big (see [`crate::alloc`]).
pub const BIG_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How often pending statistics (`outbox_pending`, oldest age) are sampled.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Delay before a row that failed `attempts` times (after this failure) is due again.
pub fn row_backoff(attempts: i32, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    ROW_BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(exp))
        .min(max)
}

/// Suspects remembered at most; past that the set is cleared (a refusal then
/// costs one more closed channel to find its row again, never a stall).
pub const MAX_SUSPECTS: usize = 100_000;

/// What decides a failed row's next attempt.
#[derive(Debug, Clone, Copy)]
struct RowPolicy {
    max_backoff: Duration,
    park_after: u32,
    max_message_bytes: usize,
}

impl RowPolicy {
    fn new(amqp: &AmqpConfig, outbox: &OutboxConfig) -> Self {
        RowPolicy {
            max_backoff: outbox.max_backoff,
            park_after: outbox.park_after_attempts,
            max_message_bytes: usize::try_from(amqp.max_message_bytes).unwrap_or(usize::MAX),
        }
    }

    /// The failure of a row that had `attempts` failed attempts before this one:
    /// backed off, or parked once it reaches `park_after`.
    fn failure(&self, id: i64, attempts: i32, error: String) -> Failure {
        let attempts = attempts.saturating_add(1);
        let park = u32::try_from(attempts).unwrap_or(0) >= self.park_after;
        Failure {
            id,
            error,
            retry_in: (!park).then(|| row_backoff(attempts, self.max_backoff)),
        }
    }
}

/// Whether a publish error means the broker closed the channel because of a
/// message (a soft AMQP error such as 406 PRECONDITION_FAILED for a message over
/// its `max_message_size`), as opposed to the connection going away. Only then
/// can a row be to blame.
fn refused_by_broker(e: &AmqpError) -> Option<String> {
    let AmqpError::Protocol(err) = e else {
        return None;
    };
    match err.kind() {
        lapin::ErrorKind::ProtocolError(p)
            if matches!(p.kind(), lapin::protocol::AMQPErrorKind::Soft(_)) =>
        {
            Some(format!(
                "channel closed by the broker: {} {}",
                p.get_id(),
                p.get_message()
            ))
        }
        _ => None,
    }
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
    /// Rows sent whose confirm failed because the channel broke.
    unconfirmed: Vec<i64>,
    /// Of `published`, those acked through a pipelined confirm: message id,
    /// outbox id, attempts (a return for them may still turn up, see
    /// [`ReturnLedger`]).
    acked: Vec<(Uuid, i64, i32)>,
    /// Returned messages handed to this batch's confirms (maybe others').
    returns: Vec<publish::Returned>,
}

/// How long a return nobody has claimed is kept (a row of a later batch
/// claims it within seconds; this only bounds the ledger).
pub const RETURN_KEPT: Duration = Duration::from_secs(300);

/// Returned messages not yet matched to their row.
///
/// lapin gives a returned message to whichever confirm completes next (see
/// [`publish::Confirmed`]), so under a `multiple` ack the return of one row
/// can arrive with the confirm of another row of the same batch, of a later
/// batch, or of an earlier one. Returns are matched by message id instead:
/// the settler, which settles batches in order, keeps every return here;
/// an acked row of the batch being settled whose message was returned is
/// failed instead of published; a return whose row an earlier batch already
/// marked published puts that row back in the work queue; one whose row is in
/// a later batch waits here for it. Every return reaches some confirm before
/// the batch holding its row is settled, since the broker returns a message
/// before it acks it and each completed confirm takes the oldest waiting one.
#[derive(Default)]
struct ReturnLedger {
    open: HashMap<Uuid, (String, Instant)>,
}

impl ReturnLedger {
    fn absorb(&mut self, returns: Vec<publish::Returned>) {
        for r in returns {
            match r.message_id.as_deref().map(Uuid::parse_str) {
                Some(Ok(id)) => {
                    self.open.insert(id, (r.reason, Instant::now()));
                }
                _ => tracing::warn!(
                    reason = %r.reason,
                    "relay: a returned message without an outbox message id"
                ),
            }
        }
    }

    /// Fails the acked rows of `outcome` whose message was returned.
    fn claim(&mut self, outcome: &mut Outcome, policy: &RowPolicy) {
        if self.open.is_empty() {
            return;
        }
        let mut returned: HashSet<i64> = HashSet::new();
        for (m, id, attempts) in &outcome.acked {
            if let Some((reason, _)) = self.open.remove(m) {
                returned.insert(*id);
                outcome.failed.push(policy.failure(*id, *attempts, reason));
            }
        }
        if !returned.is_empty() {
            outcome.published.retain(|id| !returned.contains(id));
        }
    }

    /// Returns still unclaimed (rows settled earlier, or in later batches).
    fn unclaimed(&self) -> (Vec<Uuid>, Vec<String>) {
        self.open
            .iter()
            .map(|(m, (reason, _))| (*m, reason.clone()))
            .unzip()
    }

    fn forget(&mut self, ids: &[Uuid]) {
        for id in ids {
            self.open.remove(id);
        }
        self.open.retain(|_, (_, at)| at.elapsed() < RETURN_KEPT);
    }
}

impl Outcome {
    /// The rows to publish one by one next time: the unconfirmed ones, when the
    /// broker closed the channel over a message (see the module doc).
    fn suspects(&self) -> &[i64] {
        match &self.broken {
            Some(e) if refused_by_broker(e).is_some() => &self.unconfirmed,
            _ => &[],
        }
    }
}

/// A claimed batch on its way to the sender: its rows stay locked by `tx`.
struct Claimed {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    rows: Vec<OutboxRow>,
    started: Instant,
}

/// A published batch whose rows still have to be marked and committed.
struct PublishedBatch {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    sent: Sent,
    started: Instant,
    /// The rows' creation contexts, linked from the settle span.
    traces: Vec<String>,
}

/// Marks the batch's confirmed rows published and its failed rows backed off
/// (or parked), commits, records metrics; returns the broken-channel error, if
/// any, with the rows it makes suspect.
async fn settle_batch_inner(
    batch: PublishedBatch,
    ledger: &mut ReturnLedger,
) -> anyhow::Result<Option<(AmqpError, Vec<i64>)>> {
    let PublishedBatch {
        mut tx,
        sent,
        started,
        traces,
    } = batch;
    let policy = sent.policy;
    let mut outcome = await_confirms(sent).await;
    ledger.absorb(std::mem::take(&mut outcome.returns));
    ledger.claim(&mut outcome, &policy);
    let (late, reasons) = ledger.unclaimed();
    if !late.is_empty() {
        let reopened =
            storage::reopen_returned(&mut tx, &late, &reasons, row_backoff(1, policy.max_backoff))
                .await
                .context("relay: queueing returned rows again")?;
        if !reopened.is_empty() {
            metrics().relay_failed_total.inc_by(reopened.len() as u64);
            tracing::warn!(
                rows = reopened.len(),
                "relay: rows marked published were returned as unroutable; queued again"
            );
        }
        ledger.forget(&reopened);
    }
    let routes = unroutable_routes(&mut tx, &outcome.failed)
        .await
        .context("relay: looking up the routes of returned rows")?;
    let settle_started = SystemTime::now();
    storage::mark_published(&mut tx, &outcome.published)
        .await
        .context("relay: marking rows published")?;
    storage::mark_failed(&mut tx, &outcome.failed)
        .await
        .context("relay: recording failed rows")?;
    tx.commit().await.context("relay: commit")?;
    otel::span::db_batch(
        "UPDATE",
        "UPDATE outbox",
        settle_started,
        traces.iter().map(String::as_str),
    );
    let m = metrics();
    m.relay_published_total
        .inc_by(outcome.published.len() as u64);
    m.relay_failed_total.inc_by(outcome.failed.len() as u64);
    m.relay_batch_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    // Returned rows are counted per route and logged once per route and
    // interval (one unbound event type can return every row of every batch);
    // every other failure, and a returned row being parked, gets its own line.
    let mut returned: HashMap<&(String, String), u64> = HashMap::new();
    for f in &outcome.failed {
        let route = routes.get(&f.id);
        if let Some(route) = route {
            *returned.entry(route).or_default() += 1;
        }
        match f.retry_in {
            Some(_) if route.is_some() => {}
            Some(delay) => tracing::warn!(
                outbox.id = f.id,
                error = %f.error,
                retry_in = %humantime::format_duration(delay),
                "relay: row not published"
            ),
            None => {
                m.relay_parked_total.inc();
                tracing::error!(
                    outbox.id = f.id,
                    error = %f.error,
                    "relay: row parked (no longer tried; fix the cause, then `hookfleet outbox unpark`)"
                );
            }
        }
    }
    for ((exchange, routing_key), rows) in returned {
        note_unroutable(exchange, routing_key, rows);
    }
    let suspects = outcome.suspects().to_vec();
    Ok(outcome.broken.map(|e| (e, suspects)))
}

/// How [`publish::confirmed`] words a `mandatory` publish the broker returned.
const UNROUTABLE: &str = "returned as unroutable";
/// At most one unroutable WARN line per (exchange, routing key) per this long.
const UNROUTABLE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Routes remembered for [`UNROUTABLE_LOG_INTERVAL`] before quiet ones are
/// forgotten (routes are event types, so this is never reached in practice).
const UNROUTABLE_ROUTES_KEPT: usize = 1024;

/// What is known of one route's returned rows since its last log line.
struct UnroutableLog {
    logged_at: Instant,
    /// Rows returned since that line (not logged yet).
    rows: u64,
}

/// Returned rows per (exchange, routing key), for the throttled log line.
static UNROUTABLE_LOG: LazyLock<Mutex<HashMap<(String, String), UnroutableLog>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The (exchange, routing key) of each failed row the broker returned as
/// unroutable, read from the outbox (the failures carry only the id). One
/// statement, and only when a row was returned.
async fn unroutable_routes(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    failed: &[Failure],
) -> Result<HashMap<i64, (String, String)>, sqlx::Error> {
    let ids: Vec<i64> = failed
        .iter()
        .filter(|f| f.error.starts_with(UNROUTABLE))
        .map(|f| f.id)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = storage::routes(tx, &ids).await?;
    let mut routes: HashMap<i64, (String, String)> = rows
        .into_iter()
        .map(|(id, exchange, routing_key)| (id, (exchange, routing_key)))
        .collect();
    for id in ids {
        // Cannot happen (the row is locked by this batch); still counted.
        routes
            .entry(id)
            .or_insert_with(|| ("unknown".to_string(), "unknown".to_string()));
    }
    Ok(routes)
}

/// Counts `rows` returned rows of a route, and logs them (with those returned
/// since the route's last line) unless that line is less than
/// [`UNROUTABLE_LOG_INTERVAL`] old.
fn note_unroutable(exchange: &str, routing_key: &str, rows: u64) {
    metrics()
        .relay_unroutable_total
        .with_label_values(&[exchange, routing_key])
        .inc_by(rows);
    let due = {
        let mut log = UNROUTABLE_LOG
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.len() >= UNROUTABLE_ROUTES_KEPT {
            log.retain(|_, l| l.rows > 0 || l.logged_at.elapsed() < UNROUTABLE_LOG_INTERVAL);
        }
        let key = (exchange.to_string(), routing_key.to_string());
        match log.get_mut(&key) {
            Some(l) if l.logged_at.elapsed() < UNROUTABLE_LOG_INTERVAL => {
                l.rows += rows;
                None
            }
            Some(l) => {
                l.logged_at = Instant::now();
                Some(std::mem::take(&mut l.rows) + rows)
            }
            None => {
                log.insert(
                    key,
                    UnroutableLog {
                        logged_at: Instant::now(),
                        rows: 0,
                    },
                );
                Some(rows)
            }
        }
    };
    if let Some(rows) = due {
        tracing::warn!(
            exchange,
            routing_key,
            rows,
            hint = "bind a queue to the exchange for this routing key: the rows are retried with backoff, parked ones once unparked (`hookfleet outbox unpark`)",
            "relay: events returned as unroutable (nothing bound)"
        );
    }
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
    /// Rows to publish one at a time (see the module doc).
    suspects: HashSet<i64>,
    /// Returned messages not yet matched to their row.
    returns: ReturnLedger,
}

/// Samples pending statistics (`outbox_pending`, oldest age, parked) at most every
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
            Ok((count, age, parked)) => {
                metrics().outbox_pending.set(count);
                metrics().outbox_oldest_pending_age_seconds.set(age);
                metrics().outbox_parked.set(parked);
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
    tracing::info!("relay stopped");
    Ok(())
}

/// Reports what the relay's retry loop hears: an outage once, its end.
fn report_batch(event: Event<'_, anyhow::Error>) {
    match event {
        Event::Done { failures } if failures > 0 => {
            tracing::info!(failures, "relay: working again");
        }
        Event::Done { .. } => {}
        Event::Failed {
            error,
            failures,
            retry_in,
        } => {
            let error = crate::error::error_chain(error.as_ref());
            if failures == 1 {
                tracing::warn!(%error, ?retry_in, "relay: batch failed, backing off");
            } else {
                tracing::debug!(%error, failures, ?retry_in, "relay: still failing");
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
        let (to_settle, mut sent_batches) = mpsc::channel::<PublishedBatch>(PIPELINE_DEPTH);
        let failed = CancellationToken::new();
        let returns = &mut self.returns;
        let settler = async {
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

/// Marks a drain that ended because the broker closed the channel over a
/// message: the relay goes on at once instead of backing off.
#[derive(Debug, thiserror::Error)]
#[error("the broker refused a message")]
struct Refused;

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
async fn send_batches(
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
    /// Outbox id, attempts so far, message id, and the confirm to await.
    pending: Vec<(i64, i32, Uuid, PublisherConfirm)>,
    /// Rows already settled (confirmed one by one, or failed before sending),
    /// and a broken channel met while sending.
    outcome: Outcome,
    deadline: tokio::time::Instant,
    policy: RowPolicy,
    timeout: Duration,
}

impl Sent {
    /// Awaits every outstanding confirm (against the batch's deadline) into the
    /// outcome. A row confirmed before the channel broke still counts as
    /// published; of the errors, a broker's refusal is the one kept (it says
    /// why the channel closed; the later ones only that it was closed).
    async fn settle_pending(&mut self) {
        for (id, attempts, message_id, confirm) in std::mem::take(&mut self.pending) {
            // A batch sent just before a slow settle still gets its full window.
            let left = self
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(self.timeout / 2);
            match publish::confirmation(confirm, left).await {
                Ok(c) => {
                    // Whose return this is, the ledger decides (see ReturnLedger).
                    self.outcome.returns.extend(c.returned);
                    if c.acked {
                        self.outcome.published.push(id);
                        self.outcome.acked.push((message_id, id, attempts));
                    } else {
                        let why = "nacked by the broker".to_string();
                        self.outcome
                            .failed
                            .push(self.policy.failure(id, attempts, why));
                    }
                }
                Err(e) => {
                    self.outcome.unconfirmed.push(id);
                    let keep = match &self.outcome.broken {
                        None => true,
                        Some(old) => {
                            refused_by_broker(old).is_none() && refused_by_broker(&e).is_some()
                        }
                    };
                    if keep {
                        self.outcome.broken = Some(e);
                    }
                }
            }
        }
    }
}

/// Sends `rows` in id order on the broker's channel without waiting for their
/// confirms (see [`await_confirms`]), except suspects, each sent alone and
/// confirmed before the next row goes (see the module doc). Rows aimed at an
/// exchange that does not exist, or bigger than the broker takes, are failed
/// here, before they could close the channel.
async fn send_rows(
    broker: &mut Broker,
    rows: &[OutboxRow],
    timeout: Duration,
    policy: RowPolicy,
    suspects: &mut HashSet<i64>,
) -> Sent {
    let mut sent = Sent {
        pending: Vec::with_capacity(rows.len()),
        outcome: Outcome::default(),
        deadline: tokio::time::Instant::now() + timeout,
        policy,
        timeout,
    };
    let missing = match missing_exchanges(broker, rows, timeout).await {
        Ok(m) => m,
        Err(e) => {
            sent.outcome.broken = Some(e);
            return sent;
        }
    };
    for row in rows {
        let body = super::row_body(row);
        if missing.contains(&row.exchange) {
            let error = format!("exchange {:?} does not exist", row.exchange);
            sent.outcome
                .failed
                .push(policy.failure(row.id, row.publish_attempts, error));
            continue;
        }
        if body.len() > policy.max_message_bytes {
            // Retrying cannot help until the limit is raised: parked at once.
            sent.outcome.failed.push(Failure {
                id: row.id,
                error: format!(
                    "body of {} bytes exceeds amqp.max_message_bytes ({})",
                    body.len(),
                    policy.max_message_bytes
                ),
                retry_in: None,
            });
            continue;
        }
        if suspects.contains(&row.id) {
            // Everything sent before it must be settled first, so that a closed
            // channel can only be this row's doing.
            sent.settle_pending().await;
            if sent.outcome.broken.is_some() {
                break;
            }
            if let Err(e) = send_suspect(broker, row, &mut sent, suspects).await {
                sent.outcome.broken = Some(e);
                break;
            }
            continue;
        }
        let send = tokio::time::timeout_at(
            sent.deadline,
            publish::send(
                &broker.channel,
                &row.exchange,
                &row.routing_key,
                body,
                super::row_properties(row),
                true,
            ),
        );
        let result = match send_span(row) {
            Some(span) => send.instrument(span).await,
            None => send.await,
        };
        match result {
            Ok(Ok(confirm)) => {
                sent.pending
                    .push((row.id, row.publish_attempts, row.message_id, confirm));
            }
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

/// `publish <exchange>` for a row written in a trace: a child of the row's
/// creation context, which the message carries on to its consumer. `None` for
/// rows written with tracing off (no span, no cost).
fn send_span(row: &OutboxRow) -> Option<tracing::Span> {
    let sc = otel::propagate::span_context(row.trace_context.as_deref()?, None)?;
    let span = otel::span::publish(
        &row.exchange,
        &row.routing_key,
        &row.message_id.to_string(),
        row.correlation_id.as_deref(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    Some(span)
}

/// The exchanges `rows` aim at that do not exist (checked once per connection).
async fn missing_exchanges(
    broker: &mut Broker,
    rows: &[OutboxRow],
    timeout: Duration,
) -> Result<HashSet<String>, AmqpError> {
    let mut missing: HashSet<String> = HashSet::new();
    for row in rows {
        if broker.known_exchanges.contains(&row.exchange) || missing.contains(&row.exchange) {
            continue;
        }
        if exchange_exists(&broker.conn, &row.exchange, timeout).await? {
            broker.known_exchanges.insert(row.exchange.clone());
        } else {
            missing.insert(row.exchange.clone());
        }
    }
    Ok(missing)
}

/// Publishes a suspect alone and awaits its confirm. If the broker closes the
/// channel over it, it is the culprit: failed with the broker's reason, and a
/// new channel is opened for the rows behind it. Errs only when the connection
/// (not the row) failed.
async fn send_suspect(
    broker: &mut Broker,
    row: &OutboxRow,
    sent: &mut Sent,
    suspects: &mut HashSet<i64>,
) -> Result<(), AmqpError> {
    let result = publish::publish_confirmed(
        &broker.channel,
        &row.exchange,
        &row.routing_key,
        super::row_body(row),
        super::row_properties(row),
        true,
        sent.timeout,
    )
    .await;
    let policy = sent.policy;
    match result {
        Ok(()) => {
            suspects.remove(&row.id);
            sent.outcome.published.push(row.id);
        }
        Err(AmqpError::Rejected(why)) => {
            suspects.remove(&row.id);
            sent.outcome
                .failed
                .push(policy.failure(row.id, row.publish_attempts, why));
        }
        Err(e) => {
            let Some(why) = refused_by_broker(&e) else {
                return Err(e);
            };
            // Stays a suspect: its next attempt is made alone again.
            let failure = policy.failure(row.id, row.publish_attempts, why);
            if failure.retry_in.is_none() {
                suspects.remove(&row.id);
            }
            sent.outcome.failed.push(failure);
            broker.channel =
                tokio::time::timeout(sent.timeout, publish::confirm_channel(&broker.conn))
                    .await
                    .map_err(|_| AmqpError::Timeout {
                        what: "reopening the relay channel",
                        timeout: sent.timeout,
                    })??;
        }
    }
    Ok(())
}

/// Awaits every confirm of a sent batch (against the batch's deadline).
async fn await_confirms(mut sent: Sent) -> Outcome {
    sent.settle_pending().await;
    sent.outcome
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
