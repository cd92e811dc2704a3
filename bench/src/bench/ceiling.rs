//! How far the end-to-end figure could get on this machine with a worker that
//! cost nothing: the ceiling set by the services' own work per push.
//!
//! The end-to-end run and its baseline (the push transaction alone) share the
//! machine's cores with the broker and the database. Every push of the end-to-end
//! run also moves through RabbitMQ (the job published with a confirm, delivered
//! and acked; two events published with confirms and delivered to the sink),
//! which the baseline never pays. So the bench measures the machine's busy CPU
//! time per push (`/proc/stat`, every process and core) of two parts alone:
//! that broker traffic driven by raw lapin clients (no database, no git, no
//! hookfleet code), and the push transaction (the baseline round). A worker
//! that added nothing to them could not exceed `cores / (broker + transaction)`
//! pushes/s. The estimate is generous: it leaves out the relay's claims and
//! updates, the repository read and every cycle of the worker itself.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use hookfleet::amqp::{self, publish};
use hookfleet::config::Config;
use hookfleet::message::Envelope;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use crate::support::{
    PREFETCH, body, declare_queue, delete_queue, publish_raw_data, sink_consumer,
    wait_for_quiet_services,
};

/// Busy CPU time of the whole machine so far, all cores, in seconds: user, nice,
/// system, irq, softirq and steal of the `cpu` line of `/proc/stat` (USER_HZ
/// ticks, 100 per second on Linux). `None` off Linux.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    Some(busy as f64 / 100.0)
}

/// Milliseconds of machine CPU per item between two [`machine_busy_seconds`]
/// readings.
pub fn ms_per(before: Option<f64>, after: Option<f64>, items: f64) -> Option<f64> {
    let (a, b) = (before?, after?);
    (items > 0.0).then(|| (b - a) * 1000.0 / items)
}

/// The broker traffic of `n` pushes, alone: a publisher sends `n` job-sized
/// messages with confirms (window [`PREFETCH`]) to a quorum queue; a consumer
/// (prefetch [`PREFETCH`], a multiple-ack every 64) publishes two
/// [`body`]-sized events with confirms for each job to a second quorum queue;
/// a sink consumes those. Returns the machine's CPU ms per push.
pub async fn broker_traffic(cfg: &Config, n: u64) -> anyhow::Result<Option<f64>> {
    let jobs = format!("{}.ceiling-jobs", cfg.amqp.prefix);
    let sink = format!("{}.ceiling-sink", cfg.amqp.prefix);
    declare_queue(cfg, &jobs, None).await?;
    declare_queue(cfg, &sink, None).await?;
    wait_for_quiet_services().await;

    let conn = amqp::connect(&cfg.amqp, "bench-ceiling").await?;
    let (_sink_ch, mut sink_consumer) = sink_consumer(&conn, &sink, "ceiling-sink").await?;
    let work_ch = conn.create_channel().await?;
    work_ch
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut work_consumer = work_ch
        .basic_consume(
            jobs.as_str().into(),
            "ceiling-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let events_ch = publish::confirm_channel(&conn).await?;

    let busy_before = machine_busy_seconds();
    let sink_task = tokio::spawn(async move {
        let mut seen = 0u64;
        while seen < 2 * n {
            match tokio::time::timeout(Duration::from_secs(60), sink_consumer.next()).await {
                Ok(Some(Ok(_))) => seen += 1,
                _ => anyhow::bail!("ceiling: the sink saw {seen} of {} events", 2 * n),
            }
        }
        anyhow::Ok(())
    });
    let sink_key = sink.clone();
    let worker_task = tokio::spawn(async move {
        let event = body();
        let mut pending = VecDeque::new();
        let mut seen = 0u64;
        while seen < n {
            let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_secs(60), work_consumer.next()).await
            else {
                anyhow::bail!("ceiling: the worker saw {seen} of {n} jobs");
            };
            seen += 1;
            for _ in 0..2 {
                let props = Envelope::new("bench.event", None).to_properties();
                pending.push_back(
                    publish::send(&events_ch, "", &sink_key, &event, props, false).await?,
                );
                if pending.len() >= usize::from(PREFETCH)
                    && let Some(c) = pending.pop_front()
                {
                    publish::confirmed(c, Duration::from_secs(30)).await?;
                }
            }
            if seen.is_multiple_of(64) || seen == n {
                work_ch
                    .basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                    .await?;
            }
        }
        for c in pending {
            publish::confirmed(c, Duration::from_secs(30)).await?;
        }
        anyhow::Ok(())
    });
    // Job-sized messages: a one-ref push job is about 400 bytes.
    publish_raw_data(cfg, "", &jobs, &[b'x'; 400], n, "push", true).await?;
    worker_task.await??;
    sink_task.await??;
    let cpu = ms_per(busy_before, machine_busy_seconds(), n as f64);
    let _ = conn.close(200, "ok".into()).await;
    delete_queue(cfg, &jobs).await?;
    delete_queue(cfg, &sink).await?;
    Ok(cpu)
}
