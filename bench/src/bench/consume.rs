//! Consuming: raw lapin consume-with-ack vs hookfleet's worker with a no-op
//! handler, same queue type, message size and prefetch.
//!
//! Both rounds are set up alike so that only the consumer differs: declare,
//! fill with `n` messages, wait for quiet services, then consume as a task on
//! the bench's runtime (the raw loop is spawned too: run inline it would sit on
//! the main thread, which parks on a futex rather than the I/O driver, a
//! cheaper wake-up than any worker task gets).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hookfleet::amqp::{self, topology};
use hookfleet::config::Config;
use hookfleet::job::{Done, Handler, Job, JobError};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{
    PREFETCH, declare_queue, declare_topology, delete_queue, delete_topology, publish_raw,
    wait_for_quiet_services,
};

/// Longest a no-op round may take (100k messages take 1–3 s).
const ROUND_LIMIT: Duration = Duration::from_secs(120);

/// The run's config with only the `noop` kind (and no relay), under a prefix of
/// the round's own so that no round declares a queue another just deleted.
fn noop_config(cfg: &Config, round: usize) -> Config {
    let mut cfg = cfg.clone();
    cfg.amqp.prefix = format!("{}-noop{round}", cfg.amqp.prefix);
    cfg.worker.kinds = vec!["noop".into()];
    cfg.outbox.relay = false;
    cfg
}

/// One baseline round: [`raw_consume`] of `n` messages from a filled quorum
/// queue of the round's own (hookfleet's work queue adds a delivery limit and a
/// dead-letter target; consuming from a queue declared with those arguments
/// measured the same, and a plain queue keeps the broker's queue churn per
/// round to one).
pub async fn raw_round(cfg: &Config, round: usize, n: u64) -> anyhow::Result<f64> {
    let queue = format!("{}.raw{round}", cfg.amqp.prefix);
    declare_queue(cfg, &queue, None).await?;
    publish_raw(cfg, "", &queue, n, "raw", false).await?;
    wait_for_quiet_services().await;
    let (c, q) = (cfg.clone(), queue.clone());
    let rate = tokio::spawn(async move { raw_consume(&c, &q, n).await }).await??;
    delete_queue(cfg, &queue).await?;
    Ok(rate)
}

/// Baseline: a lapin loop that acks with `multiple: true` every 64 deliveries.
async fn raw_consume(cfg: &Config, queue: &str, n: u64) -> anyhow::Result<f64> {
    let conn = amqp::connect(&cfg.amqp, "bench-raw").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // The clock starts at the first delivery, as it does for hookfleet.
    let mut start = Instant::now();
    let mut seen = 0u64;
    while let Some(d) = consumer.next().await {
        let d = d?;
        seen += 1;
        if seen == 1 {
            start = Instant::now();
        }
        if seen.is_multiple_of(64) || seen == n {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
        if seen == n {
            break;
        }
    }
    let rate = (n - 1) as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "ok".into()).await;
    Ok(rate)
}

/// Counts jobs and does nothing else, and clocks them itself: the first job
/// handled starts the clock and the `n`th signals the round, so nothing polls
/// the count while the worker runs (a timer waking the bench every millisecond
/// would share the worker's runtime threads; the raw loop clocks itself too).
pub struct Noop {
    count: AtomicU64,
    n: u64,
    first: OnceLock<Instant>,
    last: Notify,
}

impl Noop {
    fn new(n: u64) -> Self {
        Self {
            count: AtomicU64::new(0),
            n,
            first: OnceLock::new(),
            last: Notify::new(),
        }
    }
}

#[async_trait::async_trait]
impl Handler for Noop {
    fn kind(&self) -> &str {
        "noop"
    }
    async fn handle(&self, _job: Job) -> Result<Done, JobError> {
        let seen = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == 1 {
            let _ = self.first.set(Instant::now());
        }
        if seen == self.n {
            // A stored permit: the round may start waiting after this.
            self.last.notify_one();
        }
        Ok(Done::Handled)
    }
}

/// One hookfleet round: its worker with a no-op handler on a filled `noop` queue.
pub async fn hookfleet_noop(cfg: &Config, round: usize, n: u64) -> anyhow::Result<f64> {
    let cfg = noop_config(cfg, round);
    let noop = Arc::new(Noop::new(n));
    let token = CancellationToken::new();
    let state = hookfleet::worker::WorkerState::default();
    let handler: Arc<dyn Handler> = noop.clone();
    // Declare and fill while no consumer runs, then start the worker.
    declare_topology(&cfg).await?;
    let queue = topology::Names::new(&cfg.amqp.prefix).queue("noop");
    publish_raw(&cfg, "", &queue, n, "noop", false).await?;
    wait_for_quiet_services().await;
    let task = tokio::spawn(hookfleet::worker::run_with(
        cfg.clone(),
        state.clone(),
        Box::new(move |_, _| vec![handler]),
        token.clone(),
    ));
    // The clock runs from the first handled message (start-up is measured
    // elsewhere) to the last; a worker that stops short fails the round.
    let finished = tokio::time::timeout(ROUND_LIMIT, noop.last.notified()).await;
    let end = Instant::now();
    if finished.is_err() {
        token.cancel();
        let _ = task.await;
        anyhow::bail!(
            "no-op round: {} of {n} messages handled within {ROUND_LIMIT:?}",
            noop.count.load(Ordering::Relaxed)
        );
    }
    let start = noop.first.get().copied().unwrap_or(end);
    let rate = (n - 1) as f64 / end.duration_since(start).as_secs_f64();
    token.cancel();
    let _ = task.await;
    delete_topology(&cfg).await?;
    Ok(rate)
}
