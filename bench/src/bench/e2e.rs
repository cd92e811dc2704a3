//! End to end: push jobs published as the hook does (`<prefix>.jobs`, routing key
//! `push`, the job's envelope, confirmed) → the worker's push handler reading a
//! real tiny repository → outbox → the worker's relay → a queue bound to
//! `<prefix>.events`. Throughput at full load (publisher unthrottled) and latency
//! (push's `pushed_at` → its last event consumed) at full and half load.
//!
//! The worker is a real `hookfleet worker` process, as deployed: sharing this
//! bench's runtime with the publisher and the sink consumer would delay its
//! tasks' wake-ups, and a push holds its repository lock across one of them
//! (the statement's reply → COMMIT).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use hookfleet::amqp::{self, publish, topology::Names};
use hookfleet::config::Config;
use hookfleet::push_job::{PUSH_KIND, PushJob};
use lapin::Consumer;
use sqlx::PgPool;

use crate::ceiling::{machine_busy_seconds, ms_per};
use crate::support::{
    OUTBOX_TABLES, PREFETCH, branch_push, declare_queue, declare_topology, delete_queue,
    delete_topology, percentile, sink_consumer, truncate, wait_for_quiet_services,
};
use hookfleet_testkit::gitrepo::TinyRepo;
use hookfleet_testkit::procs::{WorkerProc, free_port, metric, worker_env};

/// Latency percentiles in ms.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Lat {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// The end-to-end figures.
#[derive(Debug, serde::Serialize)]
pub struct E2e {
    /// pushes/s at full load.
    pub full_rate: f64,
    /// Latency at full load.
    pub full: Lat,
    /// The paced rate of the half-load run, when it ran.
    pub half_rate: Option<f64>,
    /// Latency at half load, when it ran.
    pub half: Option<Lat>,
    /// CPU time of the worker process per push at full load, in ms.
    pub cpu_ms_per_push: Option<f64>,
    /// Outbox rows per relay batch at full load (from the worker's `/metrics`).
    pub relay_rows_per_batch: Option<f64>,
    /// Pushes per statement of the group commit at full load (`/metrics`).
    pub pushes_per_statement: Option<f64>,
    /// The same at half load, when it ran.
    pub half_pushes_per_statement: Option<f64>,
    /// The whole machine's busy CPU time per push at full load, in ms
    /// (worker, broker, database and this bench; [`crate::ceiling`]).
    pub machine_cpu_ms_per_push: Option<f64>,
}

/// Pairs of counters from the worker's `/metrics`: what was done and in how
/// many steps (rows and relay batches; pushes and group-commit statements).
#[derive(Clone, Copy)]
struct Counts {
    relay: (f64, f64),
    group: (f64, f64),
}

impl Counts {
    async fn read(port: u16) -> Option<Counts> {
        Some(Counts {
            relay: (
                metric(port, "hookfleet_relay_published_total").await?,
                metric(port, "hookfleet_relay_batch_duration_seconds_count").await?,
            ),
            group: (
                metric(port, "hookfleet_push_group_size_sum").await?,
                metric(port, "hookfleet_push_group_size_count").await?,
            ),
        })
    }

    /// Items per step between two readings.
    fn per_step(
        before: Option<Counts>,
        after: Option<Counts>,
        pick: fn(Counts) -> (f64, f64),
    ) -> Option<f64> {
        let ((items0, steps0), (items1, steps1)) = (pick(before?), pick(after?));
        Some((items1 - items0) / (steps1 - steps0).max(1.0))
    }
}

/// The last event of a branch-creating push (`git.push` comes first).
const LAST_EVENT: &str = "git.branch.created";

fn job(repo: &TinyRepo, i: usize) -> PushJob {
    branch_push(&repo.name, format!("refs/heads/e2e-{i}"), &repo.c2)
}

/// Consumes until `n` pushes completed (their last event arrived); returns the
/// latencies in ms and when the last one arrived.
async fn collect(mut consumer: Consumer, n: usize) -> (Consumer, Vec<f64>, Instant) {
    let mut lat = Vec::with_capacity(n);
    let mut last = Instant::now();
    while lat.len() < n {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(60), consumer.next()).await
        else {
            eprintln!("e2e: gave up waiting with {} of {n} pushes done", lat.len());
            break;
        };
        if d.properties.kind().as_ref().map(|k| k.as_str()) != Some(LAST_EVENT) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        if let Some(at) = v["pushed_at"]
            .as_str()
            .and_then(|s| s.parse::<DateTime<Utc>>().ok())
        {
            lat.push((Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        last = Instant::now();
    }
    (consumer, lat, last)
}

fn lat(v: &mut [f64]) -> Lat {
    Lat {
        p50: percentile(v, 50.0),
        p95: percentile(v, 95.0),
        p99: percentile(v, 99.0),
    }
}

/// Publishes `n` jobs, one every `every` (zero: as fast as the window allows).
async fn publish_jobs(
    cfg: &Config,
    repo: &TinyRepo,
    first: usize,
    n: usize,
    every: Duration,
) -> anyhow::Result<()> {
    let conn = amqp::connect(&cfg.amqp, "bench-hook").await?;
    let ch = publish::confirm_channel(&conn).await?;
    let exchange = Names::new(&cfg.amqp.prefix).jobs_exchange();
    let mut pending = VecDeque::new();
    let start = Instant::now();
    for i in 0..n {
        if !every.is_zero() {
            tokio::time::sleep_until((start + every.mul_f64(i as f64)).into()).await;
        }
        let j = job(repo, first + i);
        let c = publish::send(
            &ch,
            &exchange,
            PUSH_KIND,
            &j.to_json(),
            j.envelope().to_properties(),
            true,
        )
        .await?;
        pending.push_back(c);
        while pending.len() >= usize::from(PREFETCH)
            || pending
                .front()
                .is_some_and(|_| !every.is_zero() && pending.len() > 1)
        {
            if let Some(c) = pending.pop_front() {
                publish::confirmed(c, Duration::from_secs(30)).await?;
            }
        }
    }
    for c in pending {
        publish::confirmed(c, Duration::from_secs(30)).await?;
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

/// Runs `n_full` pushes at full load, then (unless `half_secs` is 0) `half_secs`
/// of half load, paced at half the full-load rate.
pub async fn end_to_end(
    exe: &std::path::Path,
    cfg: &Config,
    pool: &PgPool,
    repo: &TinyRepo,
    n_full: usize,
    half_secs: u64,
    paced_rate: Option<f64>,
) -> anyhow::Result<E2e> {
    end_to_end_with(exe, cfg, pool, repo, n_full, half_secs, paced_rate, &[]).await
}

/// [`end_to_end`] with more variables for the worker (tracing on or off).
#[allow(clippy::too_many_arguments)]
pub async fn end_to_end_with(
    exe: &std::path::Path,
    cfg: &Config,
    pool: &PgPool,
    repo: &TinyRepo,
    n_full: usize,
    half_secs: u64,
    paced_rate: Option<f64>,
    extra_env: &[(String, String)],
) -> anyhow::Result<E2e> {
    declare_topology(cfg).await?;
    let names = Names::new(&cfg.amqp.prefix);
    let sink = format!("{}.e2e-sink", cfg.amqp.prefix);
    declare_queue(cfg, &sink, Some((&names.events_exchange(), "#"))).await?;

    let log = repo.root.join("e2e-worker.log");
    let mut env = worker_env(cfg, repo);
    env.extend(extra_env.iter().cloned());
    let mut worker = WorkerProc::spawn(exe, &env, free_port()?, &log)?;
    worker.wait_ready(Duration::from_secs(30)).await?;
    let conn = amqp::connect(&cfg.amqp, "bench-sink").await?;
    let (_ch, consumer) = sink_consumer(&conn, &sink, "e2e").await?;

    // Full load: the publisher is not throttled.
    wait_for_quiet_services().await;
    let cpu_before = worker.cpu_seconds();
    let counts_before = Counts::read(worker.admin_port).await;
    let busy_before = machine_busy_seconds();
    let start = Instant::now();
    let collector = tokio::spawn(collect(consumer, n_full));
    publish_jobs(cfg, repo, 0, n_full, Duration::ZERO).await?;
    let (consumer, mut full, last) = collector.await?;
    let machine_cpu_ms_per_push = ms_per(busy_before, machine_busy_seconds(), full.len() as f64);
    let full_rate = full.len() as f64 / (last - start).as_secs_f64();
    let cpu_ms_per_push = cpu_before
        .zip(worker.cpu_seconds())
        .map(|(a, b)| (b - a) * 1000.0 / n_full as f64);
    let counts_full = Counts::read(worker.admin_port).await;
    let relay_rows_per_batch = Counts::per_step(counts_before, counts_full, |c| c.relay);
    let pushes_per_statement = Counts::per_step(counts_before, counts_full, |c| c.group);

    // Half load, paced.
    let mut half_load = None;
    if half_secs > 0 {
        let half_rate = paced_rate.unwrap_or(full_rate / 2.0);
        let n_half = ((half_rate * half_secs as f64) as usize).max(10);
        let collector = tokio::spawn(collect(consumer, n_half));
        publish_jobs(
            cfg,
            repo,
            n_full,
            n_half,
            Duration::from_secs_f64(1.0 / half_rate),
        )
        .await?;
        let (_consumer, mut half, _) = collector.await?;
        let per_statement =
            Counts::per_step(counts_full, Counts::read(worker.admin_port).await, |c| {
                c.group
            });
        half_load = Some((half_rate, lat(&mut half), per_statement));
    }

    worker.terminate(Duration::from_secs(30)).await;
    let _ = conn.close(200, "ok".into()).await;
    delete_queue(cfg, &sink).await?;
    delete_topology(cfg).await?;
    truncate(pool, &format!("inbox, pushes, ref_state, {OUTBOX_TABLES}")).await?;
    Ok(E2e {
        full_rate,
        full: lat(&mut full),
        half_rate: half_load.map(|(rate, _, _)| rate),
        half: half_load.map(|(_, l, _)| l),
        half_pushes_per_statement: half_load.and_then(|(_, _, g)| g),
        pushes_per_statement,
        cpu_ms_per_push,
        relay_rows_per_batch,
        machine_cpu_ms_per_push,
    })
}

/// Fills `<prefix>.push` with `n` push jobs (the topology must exist).
pub async fn publish_backlog(cfg: &Config, repo: &TinyRepo, n: usize) -> anyhow::Result<()> {
    publish_jobs(cfg, repo, 0, n, Duration::ZERO).await
}
