//! `hookfleet-bench`: throughput figures of hookfleet next to raw baselines, measured
//! in one run on the same broker and database. Prints a markdown table and writes
//! JSON (`bench-results/bench.json`). Never part of `cargo test`.
//!
//! Usage: `cargo run --release --bin hookfleet-bench -- [--quick] [--out FILE]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hookfleet::amqp::{self, publish, topology};
use hookfleet::config::{Config, QueueType};
use hookfleet::job::{Done, Handler, Job, JobError};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    hookfleet: f64,
    baseline_name: String,
    baseline: f64,
    unit: String,
    ratio: f64,
    target: String,
}

struct Opts {
    quick: bool,
    out: String,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "bench-results/bench.json".into());
    Opts { quick, out }
}

const BODY_SIZE: usize = 1024;
const PREFETCH: u16 = 256;

fn base_config(prefix: &str) -> anyhow::Result<Config> {
    let mut c = Config::load(None)?;
    c.amqp.prefix = prefix.to_string();
    c.amqp.queue_type = QueueType::Quorum;
    c.worker.concurrency = u32::from(PREFETCH);
    c.worker.kind_concurrency.clear();
    c.log.level = "warn".into();
    Ok(c)
}

fn body() -> Vec<u8> {
    let pad = "x".repeat(BODY_SIZE - 20);
    format!("{{\"n\":0,\"pad\":\"{pad}\"}}").into_bytes()
}

/// Publishes `n` messages with pipelined confirms (window 256) to `queue` via the default exchange.
async fn prefill(cfg: &Config, queue: &str, n: u64, kind: &str) -> anyhow::Result<f64> {
    let conn = amqp::connect(&cfg.amqp, "bench-publisher").await?;
    let ch = publish::confirm_channel(&conn).await?;
    let data = body();
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..n {
        let env = hookfleet::message::Envelope::new(kind, None);
        let c = publish::send(&ch, "", queue, &data, env.to_properties(), false).await?;
        pending.push_back(c);
        if pending.len() >= usize::from(PREFETCH)
            && let Some(c) = pending.pop_front()
        {
            publish::confirmed(c, Duration::from_secs(30)).await?;
        }
    }
    for c in pending {
        publish::confirmed(c, Duration::from_secs(30)).await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "ok".into()).await;
    Ok(rate)
}

async fn declare_queue(cfg: &Config, queue: &str) -> anyhow::Result<()> {
    let conn = amqp::connect(&cfg.amqp, "bench-setup").await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

async fn delete_queue(cfg: &Config, queue: &str) -> anyhow::Result<()> {
    let conn = amqp::connect(&cfg.amqp, "bench-setup").await?;
    let ch = conn.create_channel().await?;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
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

struct Noop {
    count: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Handler for Noop {
    fn kind(&self) -> &str {
        "noop"
    }
    async fn handle(&self, _job: Job) -> Result<Done, JobError> {
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(Done::Handled)
    }
}

/// hookfleet's worker with a no-op handler on a pre-filled queue.
async fn hookfleet_noop(cfg: &Config, n: u64) -> anyhow::Result<f64> {
    let mut cfg = cfg.clone();
    cfg.worker.kinds = vec!["noop".into()];
    let count = Arc::new(AtomicU64::new(0));
    let token = CancellationToken::new();
    let state = hookfleet::worker::WorkerState::default();
    let handler: Arc<dyn Handler> = Arc::new(Noop {
        count: count.clone(),
    });
    // Declare and fill while no consumer runs, then start the clock with the worker.
    {
        let conn = amqp::connect(&cfg.amqp, "bench-setup").await?;
        let ch = conn.create_channel().await?;
        topology::declare(&ch, &cfg.amqp, &cfg.retry.tiers, &cfg.worker.kinds).await?;
        let _ = conn.close(200, "ok".into()).await;
    }
    let queue = topology::Names::new(&cfg.amqp.prefix).queue("noop");
    prefill(&cfg, &queue, n, "noop").await?;
    let task = tokio::spawn(hookfleet::worker::run_with(
        cfg.clone(),
        state.clone(),
        Box::new(move |_, _| vec![handler]),
        token.clone(),
    ));
    // The clock starts at the first handled message (start-up is measured elsewhere).
    while count.load(Ordering::Relaxed) < 1 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let start = Instant::now();
    while count.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = (n - 1) as f64 / start.elapsed().as_secs_f64();
    token.cancel();
    let _ = task.await;
    let conn = amqp::connect(&cfg.amqp, "bench-setup").await?;
    let ch = conn.create_channel().await?;
    let _ = topology::delete(&ch, &cfg.amqp.prefix, &cfg.retry.tiers, &cfg.worker.kinds).await;
    Ok(rate)
}

fn print_table(rows: &[Row]) {
    println!("| figure | hookfleet | baseline | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {:.0} {} | {:.0} {} ({}) | {:.2} | {} |",
            r.name, r.hookfleet, r.unit, r.baseline, r.unit, r.baseline_name, r.ratio, r.target
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = opts();
    let n: u64 = if o.quick { 20_000 } else { 100_000 };
    let prefix = format!("bench{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let cfg = base_config(&prefix)?;
    let mut rows = Vec::new();

    // Consume: raw lapin vs hookfleet no-op, same queue type, size and prefetch.
    let raw_q = format!("{prefix}.raw");
    declare_queue(&cfg, &raw_q).await?;
    let publish_rate = prefill(&cfg, &raw_q, n, "raw").await?;
    let raw = raw_consume(&cfg, &raw_q, n).await?;
    delete_queue(&cfg, &raw_q).await?;
    let noop = hookfleet_noop(&cfg, n).await?;
    rows.push(Row {
        name: "no-op worker throughput".into(),
        hookfleet: noop,
        baseline_name: "raw lapin consume, multiple-ack every 64".into(),
        baseline: raw,
        unit: "msg/s".into(),
        ratio: noop / raw,
        target: ">= 0.95 (issue 9), >= 0.80 (issue 4)".into(),
    });
    eprintln!("raw publish-with-confirms (window {PREFETCH}): {publish_rate:.0} msg/s");

    print_table(&rows);
    if let Some(dir) = std::path::Path::new(&o.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "messages": n,
        "body_bytes": BODY_SIZE,
        "prefetch": PREFETCH,
        "queue_type": "quorum",
        "rows": rows,
    });
    std::fs::write(&o.out, serde_json::to_string_pretty(&json)?)?;
    println!("\nJSON written to {}", o.out);
    Ok(())
}
