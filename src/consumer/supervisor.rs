//! The supervisor: connect → declare topology → qos → consume → (closed?) →
//! back off → reconnect, forever, until shutdown; then drain. The "forever" is
//! [`crate::backoff::retry_forever`], one session an attempt: a session that
//! could not start is a failure (backoff), one lost after it ran a second or
//! more is retried at once, one ended by a guard (kill switch, paused kinds)
//! restarts at once.
//!
//! Owns the consuming connection and its lifecycle, readiness (`Health::consuming`)
//! and the `consumer` connection metrics. It never handles a message itself: each
//! delivery goes to [`super::process`] in a task of the [`super::pool::TaskPool`].
//!
//! ## Why not lapin's auto-recovery
//! lapin 4 can recover connections and replay topology itself
//! (`ConnectionProperties::enable_auto_recover`). We keep it off and reconnect by
//! hand: (1) lapin issue #450 reports recovery that never completes after a
//! broker restart, and a worker stuck "recovering" forever is the worst failure
//! mode for a fleet; (2) its default backoff gives up after 16 tries, while ours
//! must never give up; (3) replay re-registers consumers before we can account for
//! deliveries of the dead channel, whose tags are meaningless on the new one (our
//! acker is per channel and dies with it); (4) we must redeclare from config
//! anyway (a queue deleted on the broker comes back). One code path — a fresh
//! connection, declared from scratch — is simpler to reason about and to test.
//!
//! ## Drain
//! On shutdown: stop pulling deliveries and cancel the consumers, wait for
//! in-flight tasks up to `worker.drain_timeout`, flush acks, close the channels
//! (the broker requeues whatever is still unacked) and the connection.
//!
//! ## Why one file
//! Its length is one lifecycle over the supervisor's own state (the task pool,
//! the task tracker that drain waits on, the bulk pacers kept across sessions):
//! starting a session, watching it and tearing it down all use it. Split, that
//! state would have to be visible to the whole `consumer` folder.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acker;
use super::consume_loop::ConsumeLoop;
use super::pool::TaskPool;
use super::process::{ConsumedQueue, DeliveryCtx};
use crate::amqp::{self, AmqpError, topology};
use crate::backoff::{Attempt, Event, retry_forever};
use crate::guard::killswitch::State as SwitchState;
use crate::guard::pacer::{BulkPacer, PacerSettings};
use crate::health::Health;
use crate::job::Handler;
use crate::metrics::metrics;

const ROLE: &str = "consumer";

/// The node the consumer connection is (or was last) connected to.
fn node() -> String {
    amqp::node_in_use(ROLE).unwrap_or_else(|| "-".into())
}

/// Consumes every queue that has a handler, reconnecting forever.
pub(crate) struct Supervisor {
    ctx: Arc<DeliveryCtx>,
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    pool: TaskPool,
    /// The bulk pacer of each kind with a bulk queue (kept across sessions:
    /// what it learnt outlives a reconnect).
    pacers: BTreeMap<String, Arc<BulkPacer>>,
    health: Arc<Health>,
    /// Tasks of every session, so drain also waits for work started before a reconnect.
    tasks: TaskTracker,
}

/// A bulk pacer per kind with a bulk queue, unless `fairness.bulk_pacing` is off.
fn pacers(config: &crate::config::Config) -> BTreeMap<String, Arc<BulkPacer>> {
    let f = &config.fairness;
    if !f.bulk_pacing {
        return BTreeMap::new();
    }
    let settings = PacerSettings {
        tolerance: f.bulk_tolerance,
        min_rate: f.bulk_min_rate,
    };
    topology::BULK_KINDS
        .iter()
        .map(|k| {
            let p = BulkPacer::new(k, settings, Instant::now());
            (k.to_string(), Arc::new(p))
        })
        .collect()
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Lost(String),
    /// A guard changed what to consume (kill switch opened, kinds paused or
    /// resumed): drained, reconnect at once.
    Gate(Gated),
}

/// Which guard ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gated {
    KillSwitch,
    Pause,
}

struct Session {
    /// The paused kinds this session left out.
    paused: BTreeSet<String>,
    conn: Connection,
    channels: Vec<(Channel, String)>,
    loops: Vec<JoinHandle<String>>,
    ackers: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Supervisor {
    /// A supervisor for `handlers` (keyed by kind).
    pub(crate) fn new(
        ctx: Arc<DeliveryCtx>,
        handlers: Vec<Arc<dyn Handler>>,
        health: Arc<Health>,
    ) -> Self {
        let cfg = &ctx.config.worker;
        // A bulk queue's deliveries take their own few permits (and global ones),
        // so a storm there never holds the permits its kind's queue needs.
        let mut limits = cfg.kind_concurrency.clone();
        for kind in topology::BULK_KINDS {
            limits.insert(topology::bulk_routing_key(kind), ctx.config.bulk_permits());
        }
        let pool = TaskPool::new(cfg.concurrency, &limits);
        let pacers = pacers(&ctx.config);
        let handlers = handlers
            .into_iter()
            .map(|h| (h.kind().to_string(), h))
            .collect();
        Self {
            ctx,
            handlers,
            pool,
            pacers,
            health,
            tasks: TaskTracker::new(),
        }
    }

    /// The task pool (for sampling its gauges).
    pub(crate) fn pool(&self) -> TaskPool {
        self.pool.clone()
    }

    /// The bulk pacers (for feeding them the outbox's lag).
    pub(crate) fn pacers(&self) -> Vec<Arc<BulkPacer>> {
        self.pacers.values().cloned().collect()
    }

    /// Runs until `shutdown`, then drains and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        metrics()
            .amqp_connection_up
            .with_label_values(&[ROLE])
            .set(0);
        let (this, stop) = (&self, &shutdown);
        let drained = retry_forever(
            self.ctx.config.amqp.reconnect_delays(),
            stop,
            ROLE,
            move |failures| this.session(failures, stop),
            start_failed,
        )
        .await;
        if drained.is_none() {
            // Cancelled while disconnected: still wait for work from earlier sessions.
            self.health.set_draining();
            self.wait_for_tasks().await;
        }
    }

    /// One round of [`Supervisor::run`]: waits while the kill switch is open,
    /// starts a session and consumes until it ends. `Done` once drained on
    /// shutdown.
    async fn session(&self, failures: u64, shutdown: &CancellationToken) -> Attempt<(), AmqpError> {
        if !self.wait_while_switch_open(shutdown).await {
            return Attempt::Stopped;
        }
        let session = match Attempt::unless_stopped(shutdown, self.start_session()).await {
            Attempt::Done(session) => session,
            Attempt::Failed(e) => return Attempt::Failed(e),
            _ => return Attempt::Stopped,
        };
        let reconnected = metrics()
            .amqp_reconnects_total
            .with_label_values(&[ROLE])
            .get()
            > 0;
        if failures > 0 || reconnected {
            tracing::info!(amqp = %node(), after_failures = failures, "reconnected; consuming again");
        } else {
            tracing::info!(amqp = %node(), "ready: connected, topology declared, consuming");
        }
        let up = metrics().amqp_connection_up.with_label_values(&[ROLE]);
        up.set(1);
        self.health.set_consuming(true);
        let started = Instant::now();
        let end = self.watch(session, shutdown).await;
        up.set(0);
        self.ended(end, started.elapsed())
    }

    /// How the retry loop goes on after a session that ran for `ran`.
    fn ended(&self, end: SessionEnd, ran: Duration) -> Attempt<(), AmqpError> {
        match end {
            // Operator intent, not a fault: stay ready across the restart.
            SessionEnd::Gate(Gated::Pause) => Attempt::Ended {
                healthy: false,
                at_once: true,
            },
            SessionEnd::Gate(Gated::KillSwitch) => {
                self.health.set_consuming(false);
                Attempt::Ended {
                    healthy: false,
                    at_once: true,
                }
            }
            SessionEnd::Shutdown => {
                self.health.set_consuming(false);
                Attempt::Done(())
            }
            SessionEnd::Lost(why) => {
                self.health.set_consuming(false);
                let node = node();
                tracing::warn!(amqp = %node, reason = %why, "consuming stopped; reconnecting");
                // The next round tries the other nodes first.
                amqp::node_failed(&node);
                metrics()
                    .amqp_reconnects_total
                    .with_label_values(&[ROLE])
                    .inc();
                // After losing a session that ran a while, try once at once: a cut
                // connection usually comes straight back, and every millisecond
                // here is time not consuming. A session that dies young goes
                // through the backoff.
                Attempt::Ended {
                    healthy: ran >= self.ctx.config.amqp.healthy_after,
                    at_once: ran >= Duration::from_secs(1),
                }
            }
        }
    }

    async fn start_session(&self) -> Result<Session, AmqpError> {
        let cfg = &self.ctx.config;
        let conn = amqp::connect(&cfg.amqp, ROLE).await?;
        let kinds: Vec<String> = cfg.worker.kinds.clone();
        self.declare_topology(&conn, &kinds).await?;
        let stop = CancellationToken::new();
        let paused = self.ctx.gates.paused.borrow().clone();
        let mut session = Session {
            paused,
            conn,
            channels: Vec::new(),
            loops: Vec::new(),
            ackers: Vec::new(),
            stop: stop.clone(),
        };
        for (kind, handler) in &self.handlers {
            if !kinds.contains(kind) || session.paused.contains(kind) {
                continue;
            }
            // (queue, pool permits it takes, whether it is the bulk queue)
            let mut queues = vec![(self.ctx.names.queue(kind), kind.clone(), false)];
            if topology::has_bulk(kind) {
                let key = topology::bulk_routing_key(kind);
                queues.push((self.ctx.names.bulk_queue(kind), key, true));
            }
            for (queue, permit_key, bulk) in queues {
                if let Err(e) = self
                    .consume(&mut session, handler, &queue, &permit_key, bulk, &stop)
                    .await
                {
                    self.teardown(session, Duration::ZERO).await;
                    return Err(e.into());
                }
            }
        }
        if session.loops.is_empty() && session.paused.is_empty() {
            tracing::warn!("no handler for any configured kind: nothing to consume");
        }
        Ok(session)
    }

    /// Declares the queues of `kinds` on a channel of its own, within
    /// `amqp.connect_timeout`; on failure closes `conn` (the session never started).
    async fn declare_topology(&self, conn: &Connection, kinds: &[String]) -> Result<(), AmqpError> {
        let cfg = &self.ctx.config;
        let setup = conn.create_channel().await?;
        let declared = tokio::time::timeout(
            cfg.amqp.connect_timeout,
            topology::declare(&setup, &cfg.amqp, &cfg.retry.tiers, kinds),
        )
        .await;
        match declared {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = conn.close(200, "declare failed".into()).await;
                return Err(e.into());
            }
            Err(_) => {
                let _ = conn.close(200, "declare timed out".into()).await;
                return Err(AmqpError::Timeout {
                    what: "topology declaration",
                    timeout: cfg.amqp.connect_timeout,
                });
            }
        }
        let _ = setup.close(200, "declared".into()).await;
        Ok(())
    }

    /// Opens `amqp.consumers_per_queue` consumers of `queue` (`bulk`: the
    /// kind's bulk queue) into `session`, their deliveries taking the pool
    /// permits of `permit_key` (the kind, or its bulk queue's routing key).
    async fn consume(
        &self,
        session: &mut Session,
        handler: &Arc<dyn Handler>,
        queue: &str,
        permit_key: &str,
        bulk: bool,
        stop: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        let cfg = &self.ctx.config;
        let prefetch = cfg.prefetch();
        for i in 0..cfg.amqp.consumers_per_queue {
            let ch = session.conn.create_channel().await?;
            ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
            let tag = format!(
                "hookfleet-{permit_key}-{i}-{}",
                uuid::Uuid::now_v7().simple()
            );
            let consumer = ch
                .basic_consume(
                    queue.into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let (ack, acker_task) =
                acker::spawn(ch.clone(), prefetch, cfg.worker.ack_flush_interval);
            session.ackers.push(acker_task);
            session.channels.push((ch, tag));
            let lp = ConsumeLoop {
                ctx: self.ctx.clone(),
                lane: Arc::new(
                    ConsumedQueue::new(handler.clone(), queue.to_string(), bulk)
                        .with_pacer(self.pacers.get(handler.kind()).cloned()),
                ),
                kind: permit_key.to_string(),
                queue: queue.to_string(),
                pool: self.pool.clone(),
                tasks: self.tasks.clone(),
                ack,
                stop: stop.clone(),
            };
            session.loops.push(tokio::spawn(lp.run(consumer)));
        }
        Ok(())
    }

    /// Waits until a consumer loop ends, the connection reports an error, or shutdown.
    async fn watch(&self, mut session: Session, shutdown: &CancellationToken) -> SessionEnd {
        let mut events = Box::pin(session.conn.events_listener());
        let loops = std::mem::take(&mut session.loops);
        let mut any_loop = futures_util::future::select_all(if loops.is_empty() {
            vec![tokio::spawn(futures_util::future::pending::<String>())]
        } else {
            loops
        });
        let mut switch = self.ctx.gates.killswitch.subscribe();
        let mut paused = self.ctx.gates.paused.clone();
        // A change between the session's start and here counts too.
        switch.mark_changed();
        paused.mark_changed();
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                Ok(()) = switch.changed() => {
                    if *switch.borrow_and_update() == SwitchState::Open {
                        break SessionEnd::Gate(Gated::KillSwitch);
                    }
                }
                Ok(()) = paused.changed() => {
                    if *paused.borrow_and_update() != session.paused {
                        tracing::info!("paused job kinds changed: re-registering consumers");
                        break SessionEnd::Gate(Gated::Pause);
                    }
                }
                (res, _, rest) = &mut any_loop => {
                    let why = match res {
                        Ok(why) => why,
                        Err(e) => format!("consumer loop failed: {e}"),
                    };
                    session.loops = rest;
                    break SessionEnd::Lost(why);
                }
                ev = events.next() => match ev {
                    Some(lapin::Event::Error(e)) => break SessionEnd::Lost(format!("connection error: {e}")),
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        tracing::warn!(reason = %reason, "broker blocked the consumer connection");
                    }
                    Some(_) => {}
                    None => break SessionEnd::Lost("connection closed".into()),
                },
            }
        };
        self.wind_down(session, end).await
    }

    /// Tears `session` down after it ended with `end`: on shutdown or a guard,
    /// in-flight work gets `worker.drain_timeout`; a lost session cannot ack, so
    /// its work is not waited for.
    async fn wind_down(&self, session: Session, end: SessionEnd) -> SessionEnd {
        match end {
            SessionEnd::Shutdown => {
                self.health.set_draining();
                tracing::info!(
                    in_flight = self.ctx.inflight.len(),
                    "draining: consumers cancelled, waiting for in-flight work"
                );
                self.teardown(session, self.ctx.config.worker.drain_timeout)
                    .await;
                SessionEnd::Shutdown
            }
            SessionEnd::Gate(g) => {
                // Stop taking deliveries; let in-flight work finish (while the
                // switch is open, failures are requeued as they came).
                self.teardown(session, self.ctx.config.worker.drain_timeout)
                    .await;
                SessionEnd::Gate(g)
            }
            lost => {
                self.teardown(session, Duration::ZERO).await;
                lost
            }
        }
    }

    /// Waits while the kill switch is open. `false` on shutdown.
    async fn wait_while_switch_open(&self, shutdown: &CancellationToken) -> bool {
        let mut switch = self.ctx.gates.killswitch.subscribe();
        loop {
            if *switch.borrow_and_update() != SwitchState::Open {
                return true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = switch.changed() => if r.is_err() { return true },
            }
        }
    }

    /// Stops the loops, cancels the consumers, waits for in-flight work up to
    /// `drain` (zero: not at all — a lost channel cannot ack anyway), flushes acks
    /// and closes everything.
    async fn teardown(&self, session: Session, drain: Duration) {
        session.stop.cancel();
        for l in &session.loops {
            l.abort();
        }
        for (ch, tag) in &session.channels {
            if ch.status().connected() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
                )
                .await;
            }
        }
        if !drain.is_zero() {
            self.tasks.close();
            if tokio::time::timeout(drain, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    still_running = self.ctx.inflight.len(),
                    "drain timeout reached; closing channels (the broker requeues unacked work)"
                );
            } else {
                tracing::info!("in-flight work finished");
            }
            self.tasks.reopen();
            // Acks are flushed when the last handle drops (all tasks are done).
            for a in session.ackers {
                let _ = tokio::time::timeout(Duration::from_secs(2), a).await;
            }
        }
        for (ch, _) in &session.channels {
            if ch.status().connected() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), ch.close(200, "bye".into())).await;
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            session.conn.close(200, "bye".into()),
        )
        .await;
    }

    async fn wait_for_tasks(&self) {
        self.tasks.close();
        let _ = tokio::time::timeout(self.ctx.config.worker.drain_timeout, self.tasks.wait()).await;
    }
}

/// Reports a session that could not start: the outage once, its retries at debug.
fn start_failed(event: Event<'_, AmqpError>) {
    if let Event::Failed {
        error, failures, ..
    } = event
    {
        if failures == 1 {
            tracing::error!(error = %crate::error::error_chain(error), "cannot start consuming; retrying with backoff");
        } else {
            tracing::debug!(error = %error, failures, "still cannot start consuming");
        }
        metrics()
            .amqp_reconnects_total
            .with_label_values(&[ROLE])
            .inc();
    }
}
