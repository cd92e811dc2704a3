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
//! A 2 s quiet warm-up, not counted, comes first. A last phase publishes the
//! storm to a queue nobody consumes: what the storm's publishing alone (the
//! broker taking 20,000 messages, on the machine the fleet shares) costs the
//! others, the floor no worker-side mechanism can go below.

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
    /// The storm published to a queue nobody consumes.
    pub storm_unconsumed: Lat,
    pub drain_fifo_s: f64,
    pub drain_fair_s: f64,
}

fn job(repository: &str, n: usize, commit: &str) -> PushJob {
    branch_push(repository, format!("refs/heads/n{n}"), commit)
}

/// Where a phase's storm is published.
#[derive(Debug, Clone)]
enum StormTo {
    /// The queue fairness picks, as the hook publishes it.
    Lanes,
    /// This queue, which nobody consumes (fairness still picks, for its cost).
    Unconsumed(String),
}

/// Publishes `jobs` (`every` apart; zero: as fast as confirms allow), each to
/// the queue fairness picks, or all to the unconsumed queue.
async fn publish_all(
    cfg: &Config,
    buckets: &Path,
    jobs: impl Iterator<Item = (String, usize)>,
    commit: &str,
    (every, to): (Duration, &StormTo),
) -> anyhow::Result<()> {
    let conn = amqp::connect(&cfg.amqp, "bench-hook").await?;
    let ch = publish::confirm_channel(&conn).await?;
    let jobs_exchange = Names::new(&cfg.amqp.prefix).jobs_exchange();
    let mut pending = VecDeque::new();
    let start = Instant::now();
    for (i, (repo, n)) in jobs.enumerate() {
        if !every.is_zero() {
            tokio::time::sleep_until((start + every.mul_f64(i as f64)).into()).await;
        }
        let lane = fairness::choose(&cfg.fairness, buckets, &repo);
        let (exchange, key) = match to {
            StormTo::Lanes => (jobs_exchange.as_str(), lane.routing_key()),
            StormTo::Unconsumed(q) => ("", q.clone()),
        };
        let j = job(&repo, n, commit);
        let c = publish::send(
            &ch,
            exchange,
            &key,
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

/// One quiet push as the sink saw its last event: when it was pushed (seconds
/// into the phase), its push → event latency (ms), and the part of it until
/// the handler built the event (ms; from the event id's UUID v7 time), so the
/// rest is the commit, the relay and the broker.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    ms: f64,
    to_handler_ms: f64,
}

/// `d` in milliseconds.
fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// Milliseconds from `from` to the time of the UUID v7 `id` (0 without one).
fn ms_to_v7(from: DateTime<Utc>, id: Option<&str>) -> f64 {
    let Some((secs, nanos)) = id
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .and_then(|u| u.get_timestamp())
        .map(|t| t.to_unix())
    else {
        return 0.0;
    };
    let Some(t) = DateTime::<Utc>::from_timestamp(secs as i64, nanos) else {
        return 0.0;
    };
    ms(t - from)
}

/// The quiet repositories' pushes as [`Sample`]s, and when the storm's last
/// push completed, consuming until `quiet` and `storm` pushes completed.
async fn collect(
    mut consumer: lapin::Consumer,
    quiet: usize,
    storm: usize,
    start: DateTime<Utc>,
) -> (lapin::Consumer, Vec<Sample>, Option<Instant>) {
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
            let id = d.properties.message_id().as_ref().map(|m| m.as_str());
            lat.push(Sample {
                at_s: ms(at - start) / 1000.0,
                ms: ms(Utc::now() - at),
                to_handler_ms: ms_to_v7(at, id),
            });
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
/// see where in a phase the slow pushes are, and the same of the part until
/// the handler built the event.
fn print_seconds(tag: &str, samples: &[Sample]) {
    let mut by_second: std::collections::BTreeMap<i64, Vec<Sample>> = Default::default();
    for s in samples {
        by_second.entry(s.at_s.floor() as i64).or_default().push(*s);
    }
    let cells = |part: fn(&Sample) -> f64| -> String {
        by_second
            .values()
            .map(|v| {
                let mut v: Vec<f64> = v.iter().map(part).collect();
                let (p50, p99) = (percentile(&mut v, 50.0), percentile(&mut v, 99.0));
                format!("{p50:.0}/{p99:.0}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!("noisy {tag}: p50/p99 ms per second: {}", cells(|s| s.ms));
    eprintln!(
        "noisy {tag}: of which until the handler: {}",
        cells(|s| s.to_handler_ms)
    );
}

/// The quiet repositories' pushes for `secs` seconds, round robin.
fn quiet_jobs(secs: u64, first: usize) -> (usize, impl Iterator<Item = (String, usize)>) {
    let n = (QUIET_RATE * QUIET as f64 * secs as f64) as usize;
    (n, (0..n).map(move |i| (quiet_repo(i % QUIET), first + i)))
}

/// One phase: the quiet load for `secs`, with a storm of `storm` pushes
/// published at its start (0: none) to `to`, fairness as `fair` says.
async fn phase(
    cfg: &Config,
    dir: &Path,
    consumer: lapin::Consumer,
    commit: &str,
    (secs, storm, fair, tag, to): (u64, usize, bool, usize, StormTo),
) -> anyhow::Result<(lapin::Consumer, Lat, f64)> {
    let mut cfg = cfg.clone();
    cfg.fairness.enabled = fair;
    // Fresh buckets per phase, as on a git server that saw no storm yet.
    let buckets: PathBuf = dir.join(format!("buckets-{tag}"));
    let first = tag * 1_000_000;
    let (n_quiet, quiet) = quiet_jobs(secs, first);
    wait_for_quiet_services().await;
    let start = Instant::now();
    let storm_events = match to {
        StormTo::Lanes => storm,
        StormTo::Unconsumed(_) => 0,
    };
    let label = match (storm, fair, &to) {
        (0, _, _) => "quiet",
        (_, _, StormTo::Unconsumed(_)) => "storm not consumed",
        (_, false, _) => "one FIFO",
        (_, true, _) => "fairness",
    };
    let collector = tokio::spawn(collect(consumer, n_quiet, storm_events, Utc::now()));
    // The storm is published from a thread and runtime of its own, as git
    // servers' hooks would publish it from processes of their own: busy with
    // 20,000 publishes, it would otherwise delay the collector's reading of
    // the quiet events and so inflate the latency it measures.
    let storm_pub = {
        let (cfg, buckets, commit) = (cfg.clone(), buckets.clone(), commit.to_string());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let jobs = (0..storm).map(|i| (STORM_REPO.to_string(), first + 500_000 + i));
            rt.block_on(publish_all(
                &cfg,
                &buckets,
                jobs,
                &commit,
                (Duration::ZERO, &to),
            ))
        })
    };
    let every = Duration::from_secs_f64(1.0 / (QUIET_RATE * QUIET as f64));
    publish_all(&cfg, &buckets, quiet, commit, (every, &StormTo::Lanes)).await?;
    tokio::task::spawn_blocking(move || storm_pub.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the storm's publisher panicked"))??;
    let (consumer, quiet_lat, storm_done) = collector.await?;
    let drain = storm_done.map_or(0.0, |t| (t - start).as_secs_f64());
    print_seconds(label, &quiet_lat);
    let quiet_lat = quiet_lat.into_iter().map(|s| s.ms).collect();
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
    // The worker runs with the defaults; HOOKFLEET_FAIRNESS__* and
    // HOOKFLEET_AMQP__QUEUE_TYPE given to the bench are passed on, to compare
    // settings (bursts, bulk_concurrency, bulk_pacing, classic queues), and the
    // bench's hook side and topology use them too.
    let passed_env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("HOOKFLEET_FAIRNESS__") || k == "HOOKFLEET_AMQP__QUEUE_TYPE")
        .collect();
    let mut cfg = base.clone();
    let given = Config::load_from(None, passed_env.clone())?;
    cfg.fairness = given.fairness;
    cfg.amqp.queue_type = given.amqp.queue_type;
    declare_topology(&cfg).await?;
    let names = Names::new(&cfg.amqp.prefix);
    let sink = format!("{}.noisy-sink", cfg.amqp.prefix);
    // Every event (an event no queue takes is unroutable, and the relay keeps
    // retrying it); the bench reads only the last of each push.
    declare_queue(&cfg, &sink, Some((&names.events_exchange(), "#"))).await?;
    let mut env = worker_env_at(&cfg, &root);
    env.extend(passed_env);
    let mut worker = WorkerProc::spawn(exe, &env, free_port()?, &root.join("worker.log"))?;
    worker.wait_ready(Duration::from_secs(30)).await?;
    let conn = amqp::connect(&cfg.amqp, "bench-sink").await?;
    let (_ch, consumer) = sink_consumer(&conn, &sink, "noisy").await?;
    let commit = repo.c2.clone();
    // Warm-up, not counted: the worker's first pushes open repositories and
    // connections.
    let run_phase = |consumer, spec| phase(&cfg, &root, consumer, &commit, spec);
    use StormTo::Lanes;
    let (consumer, _, _) = run_phase(consumer, (2, 0, true, 4, Lanes)).await?;
    let (consumer, quiet, _) = run_phase(consumer, (secs, 0, true, 1, Lanes)).await?;
    let (consumer, fifo, drain_fifo_s) =
        run_phase(consumer, (secs, storm, false, 2, Lanes)).await?;
    let (consumer, fair, drain_fair_s) = run_phase(consumer, (secs, storm, true, 3, Lanes)).await?;
    let parked = format!("{}.noisy-unconsumed", cfg.amqp.prefix);
    declare_queue(&cfg, &parked, None).await?;
    let unconsumed = StormTo::Unconsumed(parked.clone());
    let (_consumer, storm_unconsumed, _) =
        run_phase(consumer, (secs, storm, true, 5, unconsumed)).await?;
    delete_queue(&cfg, &parked).await?;
    worker.terminate(Duration::from_secs(30)).await;
    let _ = conn.close(200, "ok".into()).await;
    delete_queue(&cfg, &sink).await?;
    delete_topology(&cfg).await?;
    truncate(pool, &format!("inbox, pushes, ref_state, {OUTBOX_TABLES}")).await?;
    Ok(Noisy {
        quiet,
        storm_fifo: fifo,
        storm_fair: fair,
        storm_unconsumed,
        drain_fifo_s,
        drain_fair_s,
    })
}
