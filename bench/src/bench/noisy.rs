//! Noisy neighbour: 20 repositories (each its own owner) push at 20 pushes/s
//! each; their push → last event latency on a quiet fleet, then while one
//! repository publishes a storm of pushes at once, with fairness off (one FIFO:
//! the behaviour before `src/hook/fairness.rs`) and on. One real `hookfleet
//! worker` process (defaults: 64 permits, `fairness.bulk_concurrency` 4) reads
//! real bare repositories; every push is published as the hook publishes it,
//! its queue chosen by `hook::fairness::choose` with the run's `[fairness]`
//! (the bucket file in a directory of the run), so the rates and the bucket
//! file are the hook's own. The storm's drain time (first publish → its last
//! event) is reported too: fairness trades the storm's speed for the others'.
//! A 2 s quiet warm-up, not counted, comes first.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use hookfleet::amqp::{self, publish, topology::Names};
use hookfleet::config::Config;
use hookfleet::hook::fairness;
use hookfleet::push_job::PushJob;
use sqlx::PgPool;

use crate::support::{
    OUTBOX_TABLES, branch_push, declare_queue, declare_topology, delete_queue, delete_topology,
    percentile, sink_consumer, truncate, wait_for_quiet_services,
};
use hookfleet_testkit::gitrepo::{TinyRepo, try_git};
use hookfleet_testkit::procs::{WorkerProc, free_port, worker_env_at};

/// Quiet repositories and each one's pushes per second.
const QUIET: usize = 20;
const QUIET_RATE: f64 = 20.0;
/// The last event of a branch-creating push.
const LAST_EVENT: &str = "git.branch.created";
const STORM_REPO: &str = "mirror/storm.git";

fn quiet_repo(i: usize) -> String {
    format!("team{i}/app.git")
}

/// p50 and p99 in ms.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Lat {
    pub p50: f64,
    pub p99: f64,
}

/// The quiet repositories' latency in each phase, and the storm's drain.
#[derive(Debug, serde::Serialize)]
pub struct Noisy {
    pub quiet: Lat,
    pub storm_fifo: Lat,
    pub storm_fair: Lat,
    pub drain_fifo_s: f64,
    pub drain_fair_s: f64,
}

fn job(repository: &str, n: usize, commit: &str) -> PushJob {
    branch_push(repository, format!("refs/heads/n{n}"), commit)
}

/// Publishes `jobs` (`every` apart; zero: as fast as confirms allow), each to
/// the queue fairness picks.
async fn publish_all(
    cfg: &Config,
    buckets: &Path,
    jobs: impl Iterator<Item = (String, usize)>,
    commit: &str,
    every: Duration,
) -> anyhow::Result<()> {
    let conn = amqp::connect(&cfg.amqp, "bench-hook").await?;
    let ch = publish::confirm_channel(&conn).await?;
    let exchange = Names::new(&cfg.amqp.prefix).jobs_exchange();
    let mut pending = VecDeque::new();
    let start = Instant::now();
    for (i, (repo, n)) in jobs.enumerate() {
        if !every.is_zero() {
            tokio::time::sleep_until((start + every.mul_f64(i as f64)).into()).await;
        }
        let lane = fairness::choose(&cfg.fairness, buckets, &repo);
        let j = job(&repo, n, commit);
        let c = publish::send(
            &ch,
            &exchange,
            &lane.routing_key(),
            &j.to_json(),
            j.envelope().to_properties(),
            true,
        )
        .await?;
        pending.push_back(c);
        while pending.len() >= 512 || (!every.is_zero() && pending.len() > 1) {
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

/// The quiet repositories' pushes: when each was pushed (seconds into the
/// phase) and its latency (ms), and when the storm's last push completed,
/// consuming until `quiet` and `storm` pushes completed.
async fn collect(
    mut consumer: lapin::Consumer,
    quiet: usize,
    storm: usize,
    start: DateTime<Utc>,
) -> (lapin::Consumer, Vec<(f64, f64)>, Option<Instant>) {
    let (mut lat, mut storm_seen, mut storm_done) = (Vec::with_capacity(quiet), 0, None);
    while lat.len() < quiet || storm_seen < storm {
        let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_secs(120), consumer.next()).await
        else {
            eprintln!(
                "noisy: gave up with {} of {quiet} quiet and {storm_seen} of {storm} storm pushes",
                lat.len()
            );
            break;
        };
        if d.properties.kind().as_ref().map(|k| k.as_str()) != Some(LAST_EVENT) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
        if v["repository"]["full_name"]
            .as_str()
            .is_some_and(|n| n.starts_with("mirror/"))
        {
            storm_seen += 1;
            storm_done = Some(Instant::now());
            continue;
        }
        if let Some(at) = v["pushed_at"]
            .as_str()
            .and_then(|s| s.parse::<DateTime<Utc>>().ok())
        {
            let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
            lat.push((ms(at - start) / 1000.0, ms(Utc::now() - at)));
        }
    }
    (consumer, lat, storm_done)
}

fn lat(mut v: Vec<f64>) -> Lat {
    Lat {
        p50: percentile(&mut v, 50.0),
        p99: percentile(&mut v, 99.0),
    }
}

/// Prints the quiet pushes' p50/p99 per second of the phase (to stderr), to
/// see where in a storm phase the slow pushes are.
fn print_seconds(tag: &str, samples: &[(f64, f64)]) {
    let mut by_second: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    for (at, ms) in samples {
        by_second.entry(at.floor() as i64).or_default().push(*ms);
    }
    let cells: Vec<String> = by_second
        .into_values()
        .map(|mut v| {
            let (p50, p99) = (percentile(&mut v, 50.0), percentile(&mut v, 99.0));
            format!("{p50:.0}/{p99:.0}")
        })
        .collect();
    eprintln!("noisy {tag}: p50/p99 ms per second: {}", cells.join(" "));
}

/// The quiet repositories' pushes for `secs` seconds, round robin.
fn quiet_jobs(secs: u64, first: usize) -> (usize, impl Iterator<Item = (String, usize)>) {
    let n = (QUIET_RATE * QUIET as f64 * secs as f64) as usize;
    (n, (0..n).map(move |i| (quiet_repo(i % QUIET), first + i)))
}

/// One phase: the quiet load for `secs`, with a storm of `storm` pushes
/// published at its start (0: none), fairness as `fair` says.
async fn phase(
    cfg: &Config,
    dir: &Path,
    consumer: lapin::Consumer,
    commit: &str,
    (secs, storm, fair, tag): (u64, usize, bool, usize),
) -> anyhow::Result<(lapin::Consumer, Lat, f64)> {
    let mut cfg = cfg.clone();
    cfg.fairness.enabled = fair;
    // Fresh buckets per phase, as on a git server that saw no storm yet.
    let buckets: PathBuf = dir.join(format!("buckets-{tag}"));
    let first = tag * 1_000_000;
    let (n_quiet, quiet) = quiet_jobs(secs, first);
    wait_for_quiet_services().await;
    let start = Instant::now();
    let collector = tokio::spawn(collect(consumer, n_quiet, storm, Utc::now()));
    let storm_pub = {
        let (cfg, buckets, commit) = (cfg.clone(), buckets.clone(), commit.to_string());
        tokio::spawn(async move {
            let jobs = (0..storm).map(|i| (STORM_REPO.to_string(), first + 500_000 + i));
            publish_all(&cfg, &buckets, jobs, &commit, Duration::ZERO).await
        })
    };
    let every = Duration::from_secs_f64(1.0 / (QUIET_RATE * QUIET as f64));
    publish_all(&cfg, &buckets, quiet, commit, every).await?;
    storm_pub.await??;
    let (consumer, quiet_lat, storm_done) = collector.await?;
    let drain = storm_done.map_or(0.0, |t| (t - start).as_secs_f64());
    if storm > 0 {
        print_seconds(if fair { "fairness" } else { "one FIFO" }, &quiet_lat);
    }
    let quiet_lat = quiet_lat.into_iter().map(|(_, ms)| ms).collect();
    Ok((consumer, lat(quiet_lat), drain))
}

/// Runs the three phases: quiet fleet, storm with one FIFO, storm with fairness.
pub async fn run(
    exe: &Path,
    base: &Config,
    pool: &PgPool,
    dir: &Path,
    storm: usize,
    secs: u64,
) -> anyhow::Result<Noisy> {
    let root = dir.join("noisy");
    std::fs::create_dir_all(&root)?;
    let repo = TinyRepo::create(&root)?;
    for name in (0..QUIET).map(quiet_repo).chain([STORM_REPO.to_string()]) {
        let target = root.join(&name);
        try_git(
            &root,
            &[
                "clone",
                "-q",
                "--bare",
                "repo.git",
                &target.display().to_string(),
            ],
        )?;
    }
    let cfg = base.clone();
    declare_topology(&cfg).await?;
    let names = Names::new(&cfg.amqp.prefix);
    let sink = format!("{}.noisy-sink", cfg.amqp.prefix);
    // Every event (an event no queue takes is unroutable, and the relay keeps
    // retrying it); the bench reads only the last of each push.
    declare_queue(&cfg, &sink, Some((&names.events_exchange(), "#"))).await?;
    // The worker runs with the defaults; HOOKFLEET_FAIRNESS__* given to the
    // bench is passed on, to compare settings (bulk_concurrency, bulk_pacing).
    let mut env = worker_env_at(&cfg, &root);
    env.extend(std::env::vars().filter(|(k, _)| k.starts_with("HOOKFLEET_FAIRNESS__")));
    let mut worker = WorkerProc::spawn(exe, &env, free_port()?, &root.join("worker.log"))?;
    worker.wait_ready(Duration::from_secs(30)).await?;
    let conn = amqp::connect(&cfg.amqp, "bench-sink").await?;
    let (_ch, consumer) = sink_consumer(&conn, &sink, "noisy").await?;
    let commit = repo.c2.clone();
    // Warm-up, not counted: the worker's first pushes open repositories and
    // connections.
    let (consumer, _, _) = phase(&cfg, &root, consumer, &commit, (2, 0, true, 4)).await?;
    let (consumer, quiet, _) = phase(&cfg, &root, consumer, &commit, (secs, 0, true, 1)).await?;
    let (consumer, fifo, drain_fifo_s) =
        phase(&cfg, &root, consumer, &commit, (secs, storm, false, 2)).await?;
    let (_consumer, fair, drain_fair_s) =
        phase(&cfg, &root, consumer, &commit, (secs, storm, true, 3)).await?;
    worker.terminate(Duration::from_secs(30)).await;
    let _ = conn.close(200, "ok".into()).await;
    delete_queue(&cfg, &sink).await?;
    delete_topology(&cfg).await?;
    truncate(pool, &format!("inbox, pushes, ref_state, {OUTBOX_TABLES}")).await?;
    Ok(Noisy {
        quiet,
        storm_fifo: fifo,
        storm_fair: fair,
        drain_fifo_s,
        drain_fair_s,
    })
}
