//! Queue depths on `/metrics`: each kind's work, retry and dead-letter queues,
//! and the consumers on its work queue (the same answer carries both).
//!
//! A dead-letter queue that grows is the first sign of a failure that is not
//! going away, and a retry queue that grows says a dependency is failing; both
//! were visible only in the broker's own UI. The broker tells a queue's message
//! count in its answer to a passive declare, so one round costs one round trip
//! per queue (a few per kind) on a connection of its own, every
//! `admin.queue_depth_interval`. Every worker samples; the gauges agree, alerts take the
//! max. A queue not declared yet is skipped; a failed round drops the connection
//! and the next round opens a new one (logged at debug: the supervisor reports
//! the broker being down).

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use super::topology::Names;
use crate::config::AmqpConfig;

/// Samples the queues of `kinds` (retry queues per delay in `tiers`) every
/// `interval` until `stop`.
pub(crate) async fn run_depth_sampler(
    cfg: AmqpConfig,
    kinds: Vec<String>,
    tiers: Vec<Duration>,
    interval: Duration,
    stop: CancellationToken,
) {
    let names = Names::new(&cfg.prefix);
    let mut conn: Option<lapin::Connection> = None;
    loop {
        let round = sample_once(&cfg, &names, &kinds, &tiers, &mut conn);
        match tokio::time::timeout(cfg.connect_timeout * 2, round).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "queue depths not read this round");
                conn = None;
            }
            Err(_) => {
                tracing::debug!("queue depths not read this round: timed out");
                conn = None;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    if let Some(c) = conn {
        super::close(&[], &c, Duration::from_secs(1)).await;
    }
}

async fn sample_once(
    cfg: &AmqpConfig,
    names: &Names,
    kinds: &[String],
    tiers: &[Duration],
    conn: &mut Option<lapin::Connection>,
) -> Result<(), super::AmqpError> {
    let c = match conn {
        Some(c) if c.status().connected() => c,
        _ => conn.insert(super::connect(cfg, "depths").await?),
    };
    let mut channel = c.create_channel().await?;
    let gauge = &crate::metrics::metrics().queue_messages;
    let consumers = &crate::metrics::metrics().queue_consumers;
    for kind in kinds {
        let work = names.work_queues(kind);
        let retry: Vec<String> = work
            .iter()
            .flat_map(|q| tiers.iter().map(|d| super::topology::retry_queue_of(q, *d)))
            .collect();
        for (role, queues) in [
            ("work", work),
            ("retry", retry),
            ("dead", vec![names.dead_queue(kind)]),
        ] {
            let mut total = 0i64;
            for q in &queues {
                match depth(&channel, q).await {
                    Some((n, on)) => {
                        total += i64::from(n);
                        // The kind's main queue: every worker of the kind
                        // consumes it (and the bulk queue too, when there is one).
                        if *q == names.queue(kind) {
                            consumers
                                .with_label_values(&[kind.as_str()])
                                .set(i64::from(on));
                        }
                    }
                    // A 404 closes the channel: the next queue needs a new one.
                    None => channel = c.create_channel().await?,
                }
            }
            gauge.with_label_values(&[kind.as_str(), role]).set(total);
        }
    }
    let _ = channel.close(200, "sampled".into()).await;
    Ok(())
}

/// The ready-message and consumer counts of `queue`, or `None` when it does
/// not exist (or the broker refused the declare).
async fn depth(channel: &lapin::Channel, queue: &str) -> Option<(u32, u32)> {
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await
        .ok()
        .map(|q| (q.message_count(), q.consumer_count()))
}
