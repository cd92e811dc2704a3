//! `hookfleet-soak`: the chaos drill. Runs a fleet of real `hookfleet worker`
//! processes (relay on in each) behind a TCP proxy to the broker, publishes push
//! jobs as the hook does while it cuts the broker connections every few seconds,
//! restarts RabbitMQ and PostgreSQL once each, and SIGKILLs and restarts workers;
//! then verifies from the database and a sink queue bound to `<prefix>.events`
//! (binding `#`) that every push was processed exactly once and every event
//! published at least once. Exits 1 on any loss (or on dead letters, which a
//! correct run never produces), 2 on bad usage.
//!
//! `--cluster` runs it against the 3-node RabbitMQ cluster of
//! `scripts/rabbit-cluster` instead (which it starts with `up` and leaves running,
//! every node started): 3 workers with the relay off and 2 separate
//! `hookfleet relay` processes, all given the nodes as `amqp.urls` and connected
//! to them directly (no proxy), quorum queues. The chaos is node losses: every
//! `--node-every` seconds (or as soon as the last stopped node runs in the cluster
//! again: never two nodes down at once) it stops a node for real and starts it
//! again, every other time the node holding the push work queue's leader
//! (`list_queues name leader`), otherwise the next follower in turn; between them,
//! the worker SIGKILLs and the PostgreSQL restart (no broker restart). A sampler
//! reads the processed count every 100 ms, and the report gives for each node loss
//! how long consumption paused: from the stop until the count next rose.
//!
//! It owns its resources and removes them on every path: its database
//! (`hookfleet_soak_<rand>`), its AMQP prefix's queues and exchanges, its worker
//! (and relay) processes, its temp dir (kept with `--keep-logs`: the processes'
//! logs and, in cluster mode, `samples.csv` of the sampler). `--max-seconds`
//! bounds the whole drill.
//!
//! Usage: `hookfleet-soak [--jobs N] [--workers N] [--kills N] [--cuts N]
//! [--cut-every SECS] [--event-every SECS] [--no-broker-restart] [--no-db-restart]
//! [--max-seconds N] [--hookfleet PATH] [--keep-logs]`, or with `--cluster
//! [--relays N] [--node-stops N] [--node-every SECS] [--node-down SECS] [--node-kill]
//! [--publish-over SECS] [--rabbit-cluster PATH]` (no `--cuts`, `--cut-every` or
//! `--amqp-url` then; `--node-kill` SIGKILLs the node instead of stopping it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use futures_util::StreamExt;
use hookfleet::amqp::{self, publish, topology};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::push_job::update::RefUpdate;
use hookfleet::push_job::{PUSH_KIND, PushJob};
use hookfleet_testkit::cli::hookfleet_exe;
use hookfleet_testkit::gitrepo::{TinyRepo, temp_dir};
use hookfleet_testkit::procs::{WorkerProc, free_port};
use hookfleet_testkit::proxy::TcpProxy;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ZERO: &str = "0000000000000000000000000000000000000000";
/// Retry tiers of the workers, in milliseconds: short, because a database
/// restart fails a few attempts.
const RETRY_TIERS: [u64; 4] = [500, 1000, 2000, 5000];
/// Unconfirmed publishes in flight from the job publisher.
const WINDOW: usize = 64;

struct Opts {
    jobs: usize,
    workers: usize,
    kills: usize,
    cuts: Option<usize>,
    cut_every: Duration,
    event_every: Duration,
    broker_restart: bool,
    db_restart: bool,
    max_seconds: u64,
    hookfleet: Option<PathBuf>,
    pg_admin_url: String,
    amqp_url: String,
    /// Against the 3-node cluster of `scripts/rabbit-cluster` (see the module doc).
    cluster: bool,
    /// Cluster mode: separate `hookfleet relay` processes (the workers' relay is off).
    relays: usize,
    /// Cluster mode: node losses (stop, then start again).
    node_stops: usize,
    /// Cluster mode: at least this long between two node stops.
    node_every: Duration,
    /// Cluster mode: how long a stopped node stays down before it is started.
    node_down: Duration,
    /// Cluster mode: the jobs are published evenly over this long. Default: the
    /// publisher's end follows the node losses measured so far (it ends a few
    /// seconds after the last one), starting from `CLUSTER_CYCLE` per loss.
    publish_over: Option<Duration>,
    /// Cluster mode: the `rabbit-cluster` script.
    rabbit_cluster: PathBuf,
    /// Cluster mode: SIGKILL the node (`rabbit-cluster kill N`) instead of stopping it.
    node_kill: bool,
    /// Leave the temp dir (worker and relay logs) in place.
    keep_logs: bool,
}

/// Cluster mode: how long one node loss takes on a small machine under the
/// drill's load (2 cores: 5-7 s to stop, 12-30 s to start and rejoin). Without
/// `--publish-over`, the jobs are published over this long per node loss at
/// first (or `--node-every`, if longer); then the publisher's end follows the
/// losses measured so far.
const CLUSTER_CYCLE: Duration = Duration::from_secs(25);

fn usage(msg: &str) -> ! {
    eprintln!("hookfleet-soak: {msg}");
    eprintln!(
        "usage: hookfleet-soak [--jobs N] [--workers N] [--kills N] [--cuts N] [--cut-every SECS] \
         [--event-every SECS] [--no-broker-restart] [--no-db-restart] [--max-seconds N] [--hookfleet PATH] \
         [--keep-logs]\n       \
         hookfleet-soak --cluster [--jobs N] [--workers N] [--relays N] [--kills N] [--node-stops N] \
         [--node-every SECS] [--node-down SECS] [--node-kill] [--publish-over SECS] [--no-db-restart] \
         [--max-seconds N] [--hookfleet PATH] [--rabbit-cluster PATH] [--keep-logs]\n\
         --cluster: the 3-node cluster of scripts/rabbit-cluster (started with `up`, left running), \
         3 workers (relay off) + 2 `hookfleet relay` processes, quorum queues, no proxy; a node \
         stopped and started again every --node-every (10) s, every other one the push queue's \
         leader, --node-stops (6) in all, plus the SIGKILLs and the PostgreSQL restart; reports how \
         long consumption paused at each node loss (--node-kill: SIGKILL the node, not a graceful stop)"
    );
    std::process::exit(2)
}

fn opts() -> Opts {
    let mut o = Opts {
        jobs: 20_000,
        workers: 2,
        kills: 3,
        cuts: None,
        cut_every: Duration::from_secs(3),
        event_every: Duration::from_secs(6),
        broker_restart: true,
        db_restart: true,
        max_seconds: 600,
        hookfleet: None,
        pg_admin_url: hookfleet_testkit::PG_ADMIN_URL.into(),
        amqp_url: hookfleet_testkit::AMQP_URL.into(),
        cluster: false,
        relays: 2,
        node_stops: 6,
        node_every: Duration::from_secs(10),
        node_down: Duration::from_secs(1),
        publish_over: None,
        rabbit_cluster: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/rabbit-cluster"
        )),
        node_kill: false,
        keep_logs: false,
    };
    // Flags that only one of the two modes takes.
    let mut single_only: Vec<String> = Vec::new();
    let mut cluster_only: Vec<String> = Vec::new();
    let mut workers_set = false;
    let mut args = std::env::args().skip(1);
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
    }
    /// Seconds > 0 and finite (`Duration::from_secs_f64` panics otherwise).
    fn secs(flag: &str, v: Option<String>) -> Duration {
        let s: f64 = num(flag, v);
        if !(s.is_finite() && s > 0.0 && s < 1e6) {
            usage(&format!("{flag} needs a positive number of seconds"));
        }
        Duration::from_secs_f64(s)
    }
    while let Some(a) = args.next() {
        match a.as_str() {
            "--jobs" => o.jobs = num(&a, args.next()),
            "--workers" => {
                o.workers = num(&a, args.next());
                workers_set = true;
            }
            "--kills" => o.kills = num(&a, args.next()),
            "--cuts" => {
                o.cuts = Some(num(&a, args.next()));
                single_only.push(a);
            }
            "--cut-every" => {
                o.cut_every = secs(&a, args.next());
                single_only.push(a);
            }
            "--event-every" => {
                o.event_every = secs(&a, args.next());
                single_only.push(a);
            }
            "--no-broker-restart" => o.broker_restart = false,
            "--no-db-restart" => o.db_restart = false,
            "--max-seconds" => o.max_seconds = num(&a, args.next()),
            "--hookfleet" => {
                o.hookfleet = Some(
                    args.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage("--hookfleet needs a path")),
                )
            }
            "--pg-admin-url" => {
                o.pg_admin_url = args
                    .next()
                    .unwrap_or_else(|| usage("--pg-admin-url needs a URL"))
            }
            "--amqp-url" => {
                o.amqp_url = args
                    .next()
                    .unwrap_or_else(|| usage("--amqp-url needs a URL"));
                single_only.push(a);
            }
            "--cluster" => o.cluster = true,
            "--relays" => {
                o.relays = num(&a, args.next());
                cluster_only.push(a);
            }
            "--node-stops" => {
                o.node_stops = num(&a, args.next());
                cluster_only.push(a);
            }
            "--node-every" => {
                o.node_every = secs(&a, args.next());
                cluster_only.push(a);
            }
            "--node-down" => {
                o.node_down = secs(&a, args.next());
                cluster_only.push(a);
            }
            "--publish-over" => {
                o.publish_over = Some(secs(&a, args.next()));
                cluster_only.push(a);
            }
            "--rabbit-cluster" => {
                o.rabbit_cluster = args
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| usage("--rabbit-cluster needs a path"));
                cluster_only.push(a);
            }
            "--node-kill" => {
                o.node_kill = true;
                cluster_only.push(a);
            }
            "--keep-logs" => o.keep_logs = true,
            "-h" | "--help" => usage("chaos drill"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if o.jobs == 0 || o.workers == 0 || o.cut_every.is_zero() || o.event_every.is_zero() {
        usage("--jobs, --workers, --cut-every and --event-every must be positive");
    }
    if o.cluster {
        if let Some(f) = single_only.first() {
            usage(&format!(
                "{f} is not for --cluster (no proxy there: the workers connect to the nodes)"
            ));
        }
        if !workers_set {
            o.workers = 3;
        }
        // Node losses replace the connection cuts and the default node's restart.
        o.cuts = Some(0);
        o.broker_restart = false;
        if o.relays == 0 {
            usage("--relays must be positive (the workers' relay is off with --cluster)");
        }
    } else if let Some(f) = cluster_only.first() {
        usage(&format!("{f} needs --cluster"));
    }
    o
}

/// One scheduled disruption.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chaos {
    Kill(usize),
    BrokerRestart,
    DbRestart,
}

/// Kills interleaved with the restarts: kill, broker, kill, db, kill, ...
fn schedule(o: &Opts) -> Vec<Chaos> {
    let mut restarts = Vec::new();
    if o.broker_restart {
        restarts.push(Chaos::BrokerRestart);
    }
    if o.db_restart {
        restarts.push(Chaos::DbRestart);
    }
    let mut out = Vec::new();
    let mut r = restarts.into_iter();
    for k in 0..o.kills {
        out.push(Chaos::Kill(k % o.workers));
        if let Some(x) = r.next() {
            out.push(x);
        }
    }
    out.extend(r);
    out
}

/// What the drill found.
#[derive(Debug, Default)]
struct Report {
    jobs: usize,
    republished_jobs: u64,
    cuts: usize,
    kills: usize,
    broker_restarts: usize,
    db_restarts: usize,
    processed: usize,
    lost_jobs: usize,
    dead_lettered: usize,
    inbox_rows: i64,
    effects_duplicated: usize,
    outbox_rows: usize,
    outbox_unpublished: i64,
    events_short: usize,
    sink_deliveries: usize,
    events_missing: usize,
    events_duplicated: usize,
    events_unknown: usize,
    converged_after: Option<Duration>,
    wall: Duration,
    /// Cluster mode only (none of it printed otherwise).
    cluster: Option<ClusterReport>,
}

/// What cluster mode adds to the report.
#[derive(Debug, Default)]
struct ClusterReport {
    workers: usize,
    relays: usize,
    losses: Vec<NodeLoss>,
}

/// One node stopped and started again.
#[derive(Debug)]
struct NodeLoss {
    /// Node number (1..=3).
    node: u8,
    /// Its name (`hf2@localhost`).
    name: String,
    /// The push work queue's leader before the stop, when known.
    leader_before: Option<u8>,
    /// ... and after the node was started again.
    leader_after: Option<u8>,
    /// Since the chaos began.
    at: Duration,
    /// `stop N` began.
    stop_at: Instant,
    /// `stop N` returned (the VM gone, its port closed).
    stopped_at: Instant,
    /// `start N` returned (the node running in the cluster again).
    started_at: Instant,
    /// Our processes connected to the node when it was stopped (workers by their
    /// consumer connection, relays by their relay connection), each with how long
    /// after the stop it was connected to another node (`None`: not within 60 s).
    moved: Vec<(String, Option<Duration>)>,
    /// The soak's job publisher was connected to the node.
    publisher_there: bool,
    /// Jobs confirmed by the broker and not yet processed, at the stop
    /// (approximate: the publisher counts a confirm when its window is full).
    backlog: i64,
    /// The publisher still had jobs to publish at the stop.
    publishing: bool,
    /// From the stop until the processed count next rose after `stopped_at`: the
    /// longest stretch without progress in between (`None`: it never rose again).
    pause: Option<Duration>,
    /// It never rose again because every job was processed by then.
    nothing_left: bool,
    /// The longest stretch without a rise from the stop until the count first
    /// rose after `started_at` (the node down, then rejoining).
    stall: Option<Duration>,
    /// The same for the publisher's confirmed count (`None` once it is done).
    publish_pause: Option<Duration>,
    /// As `stall`, for the events the relays published (`outbox_published`).
    relay_stall: Option<Duration>,
}

impl NodeLoss {
    fn held_leader(&self) -> bool {
        self.leader_before == Some(self.node)
    }

    /// `worker 2 (0.1 s); relay 0 (1.3 s); soak publisher`.
    fn connected(&self) -> String {
        let mut parts: Vec<String> = self
            .moved
            .iter()
            .map(|(who, d)| {
                format!(
                    "{who} ({})",
                    d.map_or("not reconnected within 60 s".into(), |d| format!(
                        "{:.1} s",
                        d.as_secs_f64()
                    ))
                )
            })
            .collect();
        if self.publisher_there {
            parts.push("soak publisher".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("; ")
        }
    }
}

fn fmt_secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn fmt_node(n: Option<u8>) -> String {
    n.map_or("?".into(), |n| format!("node {n}"))
}

impl ClusterReport {
    /// Pauses of the node losses that ended, sorted (the others are counted
    /// apart: never resumed, or nothing left to process).
    fn pauses(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.losses.iter().filter_map(|l| l.pause).collect();
        v.sort();
        v
    }

    fn print_losses(&self) {
        println!(
            "node losses. Consumption paused: the longest stretch without a rise of the processed \
             count (rows in `pushes`, sampled every 100 ms, so 0.1 s means no pause seen) from the \
             stop until the count rose after the node was gone; longest stall until it was back: the \
             same until the count rose after the node ran in the cluster again. Reconnected: from \
             the stop until the process's connection named another node (`/info`). Relays' longest \
             stall: as the consumption's, for the rows in `outbox_published`.\n"
        );
        println!(
            "| # | t | node | held the push queue's leader | leader after | stop took | down for | \
             connected to it (reconnected after) | backlog at stop | \
             **consumption paused** | longest stall until it was back | relays' longest stall | \
             publisher paused |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for (i, l) in self.losses.iter().enumerate() {
            let leader = match l.leader_before {
                None => "? (leader unknown)".to_string(),
                Some(n) if n == l.node => "yes".into(),
                Some(n) => format!("no (node {n})"),
            };
            let backlog = if l.publishing {
                l.backlog.to_string()
            } else {
                format!("{} (publishing over)", l.backlog)
            };
            println!(
                "| {} | {:.1} s | {} | {} | {} | {:.1} s | {:.1} s | {} | {} | {} | {} | {} | {} |",
                i + 1,
                l.at.as_secs_f64(),
                l.name,
                leader,
                fmt_node(l.leader_after),
                (l.stopped_at - l.stop_at).as_secs_f64(),
                (l.started_at - l.stop_at).as_secs_f64(),
                l.connected(),
                backlog,
                match l.pause {
                    Some(d) => format!("{:.1} s", d.as_secs_f64()),
                    None if l.nothing_left => "- (nothing left to process)".into(),
                    None => "never resumed".into(),
                },
                fmt_secs(l.stall),
                fmt_secs(l.relay_stall),
                fmt_secs(l.publish_pause),
            );
        }
        println!();
    }
}

impl Report {
    fn failed(&self) -> bool {
        self.lost_jobs > 0
            || self.dead_lettered > 0
            || self.effects_duplicated > 0
            || self.events_short > 0
            || self.events_missing > 0
            || self.outbox_unpublished > 0
            || self.processed < self.jobs
    }

    fn print(&self) {
        if let Some(c) = &self.cluster {
            c.print_losses();
        }
        println!("| check | value |");
        println!("| --- | --- |");
        let mut rows: Vec<(&str, String)> = vec![
            ("push jobs published", self.jobs.to_string()),
            (
                "jobs republished (unconfirmed when a connection broke)",
                self.republished_jobs.to_string(),
            ),
            (
                "chaos: connection cuts / worker SIGKILLs / broker restarts / db restarts",
                format!(
                    "{} / {} / {} / {}",
                    self.cuts, self.kills, self.broker_restarts, self.db_restarts
                ),
            ),
        ];
        if let Some(c) = &self.cluster {
            let pauses = c.pauses();
            let never = c
                .losses
                .iter()
                .filter(|l| l.pause.is_none() && !l.nothing_left)
                .count();
            rows.extend([
                (
                    "processes: workers (relay off) / `hookfleet relay`",
                    format!("{} / {}", c.workers, c.relays),
                ),
                (
                    "node losses (of them the push queue's leader)",
                    format!(
                        "{} ({})",
                        c.losses.len(),
                        c.losses.iter().filter(|l| l.held_leader()).count()
                    ),
                ),
                (
                    "**consumption pause at a node loss**: max / median",
                    if pauses.is_empty() {
                        "-".into()
                    } else {
                        format!(
                            "{} / {}",
                            fmt_secs(pauses.last().copied()),
                            fmt_secs(Some(pauses[pauses.len() / 2]))
                        )
                    },
                ),
                (
                    "longest consumption stall while a node was down or rejoining",
                    fmt_secs(c.losses.iter().filter_map(|l| l.stall).max()),
                ),
                (
                    "longest relay stall (events published) while a node was down or rejoining",
                    fmt_secs(c.losses.iter().filter_map(|l| l.relay_stall).max()),
                ),
                (
                    "consumption pause at a leader loss: max",
                    fmt_secs(
                        c.losses
                            .iter()
                            .filter(|l| l.held_leader())
                            .filter_map(|l| l.pause)
                            .max(),
                    ),
                ),
                (
                    "node losses after which consumption never resumed",
                    never.to_string(),
                ),
            ]);
        }
        rows.extend([
            (
                "pushes processed (rows in `pushes`)",
                self.processed.to_string(),
            ),
            ("**lost jobs**", self.lost_jobs.to_string()),
            ("**dead-lettered**", self.dead_lettered.to_string()),
            ("inbox rows for the push queue", self.inbox_rows.to_string()),
            (
                "**pushes whose effects were applied twice** (more outbox rows than expected)",
                self.effects_duplicated.to_string(),
            ),
            ("outbox rows", self.outbox_rows.to_string()),
            (
                "pushes with fewer outbox rows than expected",
                self.events_short.to_string(),
            ),
            (
                "outbox rows never published",
                self.outbox_unpublished.to_string(),
            ),
            ("sink deliveries", self.sink_deliveries.to_string()),
            (
                "**events missing at the sink**",
                self.events_missing.to_string(),
            ),
            (
                "events duplicated at the sink (at-least-once)",
                self.events_duplicated.to_string(),
            ),
            (
                "sink events not in the outbox",
                self.events_unknown.to_string(),
            ),
            (
                "converged after",
                self.converged_after.map_or("never (deadline)".into(), |d| {
                    format!("{:.1} s", d.as_secs_f64())
                }),
            ),
            ("wall time", format!("{:.1} s", self.wall.as_secs_f64())),
        ]);
        for (k, v) in rows {
            println!("| {k} | {v} |");
        }
        println!("\nresult: {}", if self.failed() { "FAIL" } else { "PASS" });
    }
}

/// Everything the drill creates, removed by [`Env::cleanup`].
struct Env {
    cfg: Config,
    db_name: String,
    pg_admin_url: String,
    dir: PathBuf,
    workers: Vec<Option<WorkerProc>>,
    worker_env: Vec<(String, String)>,
    ports: Vec<u16>,
    exe: PathBuf,
    sink: String,
    /// Cluster mode: `hookfleet relay` processes, their env and admin ports.
    relays: Vec<Option<WorkerProc>>,
    relay_env: Vec<(String, String)>,
    relay_ports: Vec<u16>,
    /// Cluster mode: the cluster (every node started again at cleanup).
    cluster: Option<Cluster>,
    keep_logs: bool,
}

impl Env {
    fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("worker-{i}.log"))
    }

    fn relay_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("relay-{i}.log"))
    }

    fn spawn_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let w = WorkerProc::spawn(&self.exe, &self.worker_env, self.ports[i], &self.log(i))?;
        self.workers[i] = Some(w);
        Ok(())
    }

    /// `hookfleet relay` as [`WorkerProc::spawn`] runs `hookfleet worker`: the
    /// HOOKFLEET_* variables of this process removed, `relay_env` and its own
    /// admin port set, output appended to its log.
    fn spawn_relay(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self.relay_log(i);
        let relay = WorkerProc::spawn_role(
            &self.exe,
            "relay",
            &self.relay_env,
            self.relay_ports[i],
            &log,
        )?;
        self.relays[i] = Some(relay);
        Ok(())
    }

    async fn cleanup(&mut self) {
        for w in self.workers.iter_mut().flatten() {
            w.kill().await;
        }
        for r in self.relays.iter_mut().flatten() {
            r.kill().await;
        }
        if let Some(cluster) = &self.cluster {
            // Every node running again (a drill cut short may have left one stopped),
            // so the topology can be deleted and the cluster is left whole.
            if let Err(e) = cluster.up().await {
                eprintln!("soak: rabbit-cluster up failed: {e:#}");
            }
        }
        let cfg = &self.cfg;
        let del = async {
            let conn = amqp::connect(&cfg.amqp, "soak-cleanup").await?;
            let ch = conn.create_channel().await?;
            let _ = ch
                .queue_delete(self.sink.as_str().into(), QueueDeleteOptions::default())
                .await;
            topology::delete(&ch, &cfg.amqp.prefix, &cfg.retry.tiers, &cfg.worker.kinds).await?;
            let _ = conn.close(200, "bye".into()).await;
            anyhow::Ok(())
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(30), del)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            eprintln!("soak: deleting the AMQP topology failed: {e:#}");
        }
        let drop_db = async {
            let mut c = PgConnection::connect(&self.pg_admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db_name
            ))
            .execute(&mut c)
            .await?;
            anyhow::Ok(())
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(30), drop_db)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            eprintln!("soak: dropping database {} failed: {e:#}", self.db_name);
        }
        if self.keep_logs {
            eprintln!("soak: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let o = opts();
    let rand = &Uuid::now_v7().simple().to_string()[20..];
    let prefix = format!("soak{rand}");
    let db_name = format!("hookfleet_soak_{rand}");
    let mut env = match setup(&o, &prefix, &db_name).await {
        Ok(env) => env,
        Err(e) => {
            eprintln!("soak: setup failed: {e:#}");
            return ExitCode::from(1);
        }
    };
    let started = Instant::now();
    let budget = Duration::from_secs(o.max_seconds);
    let result = tokio::time::timeout(budget, drill(&o, &mut env, started, budget)).await;
    let code = match result {
        Ok(Ok(report)) => {
            report.print();
            if report.failed() { 1 } else { 0 }
        }
        Ok(Err(e)) => {
            eprintln!("soak: drill failed: {e:#}");
            1
        }
        Err(_) => {
            eprintln!("soak: --max-seconds ({}) exceeded", o.max_seconds);
            1
        }
    };
    if code != 0 {
        print_logs(&env);
    }
    env.cleanup().await;
    ExitCode::from(code)
}

/// The last lines of each worker's (and relay's) log (on failure).
fn print_logs(env: &Env) {
    let logs = (0..env.workers.len())
        .map(|i| (format!("worker {i}"), env.log(i)))
        .chain((0..env.relays.len()).map(|i| (format!("relay {i}"), env.relay_log(i))));
    for (what, path) in logs {
        if let Ok(text) = std::fs::read_to_string(path) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {what} log (last 30 lines) ---");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
    }
}

async fn setup(o: &Opts, prefix: &str, db_name: &str) -> anyhow::Result<Env> {
    let mut cfg = Config::load_from(None, Vec::<(String, String)>::new())?;
    let mut db_url = url::Url::parse(&o.pg_admin_url).context("--pg-admin-url")?;
    db_url.set_path(db_name);
    cfg.database.url = SecretUrl::new(db_url.as_str());
    cfg.amqp.url = SecretUrl::new(&o.amqp_url);
    let cluster = if o.cluster {
        let mut cluster = Cluster::new(&o.rabbit_cluster);
        eprintln!("soak: rabbit-cluster up");
        cluster.up().await?;
        cluster.urls = cluster.fetch_urls().await?;
        // The soak's own connections (setup, publisher, checks, cleanup) try the
        // nodes too, as the workers do.
        cfg.amqp.urls = cluster.urls.iter().map(SecretUrl::new).collect();
        Some(cluster)
    } else {
        None
    };
    cfg.amqp.prefix = prefix.to_string();
    cfg.worker.kinds = vec![PUSH_KIND.into()];
    // The workers get the same tiers (RETRY_TIERS), so cleanup finds their queues.
    cfg.retry.tiers = RETRY_TIERS
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    let exe = match &o.hookfleet {
        Some(p) => p.clone(),
        None => hookfleet_exe()?,
    };
    let dir = temp_dir("hookfleet-soak")?;
    let sink = format!("{prefix}.sink");
    let mut env = Env {
        cfg,
        db_name: db_name.to_string(),
        pg_admin_url: o.pg_admin_url.clone(),
        dir,
        workers: (0..o.workers).map(|_| None).collect(),
        worker_env: Vec::new(),
        ports: Vec::new(),
        exe,
        sink,
        relays: (0..if o.cluster { o.relays } else { 0 })
            .map(|_| None)
            .collect(),
        relay_env: Vec::new(),
        relay_ports: Vec::new(),
        cluster,
        keep_logs: o.keep_logs,
    };
    // From here on, failures still clean up what exists.
    if let Err(e) = prepare(&mut env).await {
        env.cleanup().await;
        return Err(e);
    }
    Ok(env)
}

async fn prepare(env: &mut Env) -> anyhow::Result<()> {
    let mut c = PgConnection::connect(&env.pg_admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{}\"", env.db_name))
        .execute(&mut c)
        .await?;
    let _ = c.close().await;
    let pool = hookfleet::db::connect(&env.cfg.database).await?;
    hookfleet::db::migrate(&pool).await?;
    pool.close().await;

    let cfg = &env.cfg;
    let conn = amqp::connect(&cfg.amqp, "soak-setup").await?;
    let ch = conn.create_channel().await?;
    topology::declare(&ch, &cfg.amqp, &cfg.retry.tiers, &cfg.worker.kinds).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        env.sink.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    ch.queue_bind(
        env.sink.as_str().into(),
        topology::Names::new(&cfg.amqp.prefix)
            .events_exchange()
            .as_str()
            .into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

fn jobs(repo: &TinyRepo, n: usize) -> Vec<(PushJob, usize)> {
    (0..n)
        .map(|i| {
            // Three shapes: an update of main (git.push), a new branch (git.push +
            // git.branch.created), a new tag (git.push + git.tag.created).
            let (refname, before, after, events) = match i % 3 {
                0 => (
                    "refs/heads/main".to_string(),
                    repo.c1.clone(),
                    repo.c2.clone(),
                    1,
                ),
                1 => (
                    format!("refs/heads/soak-{i}"),
                    ZERO.to_string(),
                    repo.c2.clone(),
                    2,
                ),
                _ => (
                    format!("refs/tags/soak-{i}"),
                    ZERO.to_string(),
                    repo.c1.clone(),
                    2,
                ),
            };
            let job = PushJob {
                push_id: Uuid::now_v7(),
                repository: repo.name.clone(),
                path: None,
                pusher: Some("soak".into()),
                push_options: Vec::new(),
                pushed_at: Utc::now(),
                refs_omitted: 0,
                updates: vec![RefUpdate {
                    refname,
                    before,
                    after,
                }],
            };
            (job, events)
        })
        .collect()
}

/// Publishes `jobs` as the hook does (jobs exchange, routing key `push`,
/// mandatory, confirmed), paced evenly over `span`, pipelined; jobs unconfirmed
/// when a connection breaks are published again (same message id). Returns how
/// many were republished; counts the confirmed ones in `confirmed`.
async fn publish_jobs(
    cfg: Config,
    jobs: Vec<PushJob>,
    span: Duration,
    deadline: Instant,
    confirmed: Arc<AtomicU64>,
    end: Option<PublishEnd>,
) -> anyhow::Result<u64> {
    let exchange = topology::Names::new(&cfg.amqp.prefix).jobs_exchange();
    let start = Instant::now();
    let per_job = span.div_f64(jobs.len().max(1) as f64);
    // With a movable end: each job after the last one by an even share of the
    // time left.
    let mut last_due = start;
    // Cluster mode: a connection that broke is closed in the background (on a
    // node that was killed, the close waits out `bounded`), so the publisher does
    // not stall for 5 s and pass that off as a consumption pause.
    let background_close = end.is_some();
    let mut next = 0usize;
    let mut republished = 0u64;
    // Jobs sent on the current channel and not yet confirmed, in order.
    let mut pending: VecDeque<(usize, lapin::PublisherConfirm)> = VecDeque::new();
    let mut retry: VecDeque<usize> = VecDeque::new();
    'connect: loop {
        if Instant::now() > deadline {
            bail!("job publisher gave up at the deadline");
        }
        let conn = match amqp::connect(&cfg.amqp, "soak-publisher").await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let Some(Ok(ch)) = bounded(publish::confirm_channel(&conn)).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        loop {
            let item = if let Some(i) = retry.pop_front() {
                Some(i)
            } else if next < jobs.len() {
                let due = match &end {
                    None => start + per_job.mul_f64(next as f64),
                    Some(end) => {
                        let left = (jobs.len() - next) as f64;
                        last_due += end.get().saturating_duration_since(last_due).div_f64(left);
                        last_due
                    }
                };
                tokio::time::sleep_until(due.into()).await;
                next += 1;
                Some(next - 1)
            } else {
                None
            };
            if let Some(i) = item {
                let job = &jobs[i];
                match bounded(publish::send(
                    &ch,
                    &exchange,
                    PUSH_KIND,
                    &job.to_json(),
                    job.envelope().to_properties(),
                    true,
                ))
                .await
                {
                    Some(Ok(c)) => pending.push_back((i, c)),
                    _ => {
                        retry.push_back(i);
                        republished += requeue(&mut pending, &mut retry);
                        drop_connection(conn, background_close).await;
                        continue 'connect;
                    }
                }
            }
            let drain_all = item.is_none();
            while pending.len() >= WINDOW || (drain_all && !pending.is_empty()) {
                let Some((i, c)) = pending.pop_front() else {
                    break;
                };
                if publish::confirmed(c, Duration::from_secs(10))
                    .await
                    .is_err()
                {
                    retry.push_back(i);
                    republished += requeue(&mut pending, &mut retry);
                    drop_connection(conn, background_close).await;
                    continue 'connect;
                }
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
            if drain_all && retry.is_empty() && pending.is_empty() {
                let _ = bounded(conn.close(200, "done".into())).await;
                return Ok(republished);
            }
        }
    }
}

/// Closes a connection that broke: inline as always, or (`background`) in a task
/// of its own, so the caller can reconnect at once.
async fn drop_connection(conn: lapin::Connection, background: bool) {
    if background {
        tokio::spawn(async move {
            let _ = bounded(conn.close(200, "reconnect".into())).await;
        });
    } else {
        let _ = bounded(conn.close(200, "reconnect".into())).await;
    }
}

/// `f`, or `None` after 5 s: a broker restarted under the publisher can leave a
/// lapin call (opening a channel, sending, closing) waiting on a connection that
/// will not answer, and the publisher must go on to reconnect.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(5), f).await.ok()
}

fn requeue(
    pending: &mut VecDeque<(usize, lapin::PublisherConfirm)>,
    retry: &mut VecDeque<usize>,
) -> u64 {
    let n = pending.len() as u64 + 1;
    retry.extend(pending.drain(..).map(|(i, _)| i));
    n
}

async fn run_quiet(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(program).args(args).output(),
    )
    .await
    .with_context(|| format!("{program} {args:?} timed out"))?
    .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn restart_broker() -> anyhow::Result<()> {
    run_quiet("rabbitmqctl", &["stop_app"]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run_quiet("rabbitmqctl", &["start_app"]).await?;
    run_quiet("rabbitmqctl", &["await_startup"]).await
}

async fn restart_database() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")
        .context("reading /etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .max()
        .context("no cluster under /etc/postgresql")?;
    run_quiet(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "restart"],
    )
    .await
}

/// When the job publisher is to send its last job. Cluster mode moves it later
/// while node losses remain, so that every one of them happens under load.
#[derive(Clone)]
struct PublishEnd {
    base: Instant,
    /// Milliseconds after `base`.
    ms: Arc<AtomicU64>,
}

impl PublishEnd {
    fn new(base: Instant, span: Duration) -> PublishEnd {
        PublishEnd {
            base,
            ms: Arc::new(AtomicU64::new(span.as_millis() as u64)),
        }
    }

    fn get(&self) -> Instant {
        self.base + Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }

    fn set(&self, t: Instant) {
        let ms = t.saturating_duration_since(self.base).as_millis() as u64;
        self.ms.store(ms, Ordering::Relaxed);
    }
}

/// The 3-node cluster, driven through `scripts/rabbit-cluster`.
struct Cluster {
    script: PathBuf,
    /// AMQP URLs of nodes 1..=3, in order.
    urls: Vec<String>,
}

impl Cluster {
    fn new(script: &Path) -> Cluster {
        Cluster {
            script: script.to_path_buf(),
            urls: Vec::new(),
        }
    }

    /// Runs the script with `args`, returning its stdout; its stderr (progress
    /// lines) is kept for the error. Not killed when dropped: a stop or start cut
    /// short by `--max-seconds` finishes, and the cleanup's `up` waits for its lock.
    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new(&self.script)
                .args(args)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .with_context(|| format!("rabbit-cluster {args:?} timed out"))?
        .with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "rabbit-cluster {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    async fn up(&self) -> anyhow::Result<()> {
        self.run(&["up"]).await.map(drop)
    }

    async fn fetch_urls(&self) -> anyhow::Result<Vec<String>> {
        let urls: Vec<String> = self
            .run(&["urls"])
            .await?
            .trim()
            .split(',')
            .map(str::to_string)
            .collect();
        if urls.len() != 3 {
            bail!("rabbit-cluster urls printed {} URLs, not 3", urls.len());
        }
        Ok(urls)
    }

    async fn stop(&self, n: u8) -> anyhow::Result<()> {
        self.run(&["stop", &n.to_string()]).await.map(drop)
    }

    async fn kill(&self, n: u8) -> anyhow::Result<()> {
        self.run(&["kill", &n.to_string()]).await.map(drop)
    }

    async fn start(&self, n: u8) -> anyhow::Result<()> {
        self.run(&["start", &n.to_string()]).await.map(drop)
    }

    /// `host:port` of node `n`.
    fn address(&self, n: u8) -> String {
        SecretUrl::new(&self.urls[usize::from(n) - 1]).address()
    }

    /// True when every node's AMQP port accepts a connection.
    async fn all_listening(&self) -> bool {
        for n in 1..=3u8 {
            let ok = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(self.address(n)),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if !ok {
                return false;
            }
        }
        true
    }

    /// The node (1..=3) holding `queue`'s leader, asked of node `via`; `None`
    /// when the answer has none (an election under way) or the call failed.
    async fn leader(&self, via: u8, queue: &str) -> Option<u8> {
        self.leaders(via, &[queue]).await[0]
    }

    /// [`Cluster::leader`] of each of `queues`, in one call.
    async fn leaders(&self, via: u8, queues: &[&str]) -> Vec<Option<u8>> {
        let Some(out) = self
            .run(&[
                "ctl",
                &via.to_string(),
                "list_queues",
                "name",
                "leader",
                "--quiet",
                "--no-table-headers",
            ])
            .await
            .map_err(|e| eprintln!("soak: looking up queue leaders: {e:#}"))
            .ok()
        else {
            return vec![None; queues.len()];
        };
        let of = |queue: &str| {
            out.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == queue).then_some(())?;
                // `hf2@localhost` -> 2: the digit before the `@`.
                let name = f.next()?;
                let at = name.find('@')?;
                name[..at]
                    .chars()
                    .last()?
                    .to_digit(10)
                    .and_then(|d| u8::try_from(d).ok())
                    .filter(|d| (1..=3).contains(d))
            })
        };
        queues.iter().map(|q| of(q)).collect()
    }
}

/// The processed count (rows in `pushes`) and the publisher's confirmed count
/// at one instant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: Instant,
    processed: i64,
    /// Outbox rows published (rows in `outbox_published`).
    published: i64,
    confirmed: u64,
}

type Samples = Arc<Mutex<Vec<Sample>>>;

fn samples_of(s: &Samples) -> Vec<Sample> {
    s.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Every 100 ms until `stop`: the rows in `pushes` and `outbox_published` on its own
/// connection (made again after a failure, e.g. across the database restart;
/// no sample while it is down) and the publisher's confirmed count.
async fn sample(db_url: String, confirmed: Arc<AtomicU64>, out: Samples, stop: CancellationToken) {
    let mut conn: Option<PgConnection> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if conn.is_none() {
            let c =
                tokio::time::timeout(Duration::from_secs(1), PgConnection::connect(&db_url)).await;
            conn = c.ok().and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else { continue };
        let t = Instant::now();
        let q = sqlx::query_as::<_, (i64, i64)>(
            "SELECT (SELECT count(*) FROM pushes), (SELECT count(*) FROM outbox_published)",
        )
        .fetch_one(&mut *c);
        match tokio::time::timeout(Duration::from_secs(1), q).await {
            Ok(Ok((processed, published))) => {
                let confirmed = confirmed.load(Ordering::Relaxed);
                out.lock().unwrap_or_else(|e| e.into_inner()).push(Sample {
                    t,
                    processed,
                    published,
                    confirmed,
                });
            }
            _ => conn = None,
        }
    }
}

/// From `from` until `key` first rose after `after`: the longest stretch
/// without a rise (`from` counting as one). `None` when it did not rise after
/// `after` within the samples.
fn pause(
    samples: &[Sample],
    from: Instant,
    after: Instant,
    key: impl Fn(&Sample) -> u64,
) -> Option<Duration> {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for w in samples.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.t <= from || key(b) <= key(a) {
            continue;
        }
        longest = longest.max(b.t - last);
        last = b.t;
        if b.t > after {
            return Some(longest);
        }
    }
    None
}

/// Waits (up to `limit`) until the processed count rises after `after`, or
/// every job is processed. False on timeout.
async fn wait_flow(samples: &Samples, after: Instant, limit: Duration, jobs: usize) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        {
            let s = samples.lock().unwrap_or_else(|e| e.into_inner());
            let base = s.iter().rev().find(|x| x.t <= after).or(s.first());
            if let Some(base) = base
                && (base.processed as usize >= jobs
                    || s.iter()
                        .any(|x| x.t > after && x.processed > base.processed))
            {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node (`host:port`) the process with admin `port` has its `role`
/// connection to, from its `/info` (`None`: no answer, or no such connection yet).
async fn node_of(port: u16, role: &str) -> Option<String> {
    let body = http_get(port, "/info").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v.get("amqp_nodes")?.get(role)?.as_str()?.to_string())
}

/// Our processes whose main broker connection is on `address`: workers by
/// their consumer connection, relays by their relay connection.
async fn connected_to(env: &Env, address: &str) -> Vec<(String, u16, &'static str)> {
    let mut out = Vec::new();
    let procs = env
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("worker {i}"), *p, "consumer"))
        .chain(
            env.relay_ports
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("relay {i}"), *p, "relay")),
        );
    for (who, port, role) in procs {
        if node_of(port, role).await.as_deref() == Some(address) {
            out.push((who, port, role));
        }
    }
    out
}

/// Which node each process's main connection is on: `worker 0 -> 2, ...`.
async fn placement(env: &Env, cluster: &Cluster) -> String {
    let node = |a: Option<String>| {
        a.and_then(|a| (1..=3u8).find(|n| cluster.address(*n) == a))
            .map_or("?".to_string(), |n| n.to_string())
    };
    let mut parts = Vec::new();
    for (i, p) in env.ports.iter().enumerate() {
        parts.push(format!(
            "worker {i} -> {}",
            node(node_of(*p, "consumer").await)
        ));
    }
    for (i, p) in env.relay_ports.iter().enumerate() {
        parts.push(format!("relay {i} -> {}", node(node_of(*p, "relay").await)));
    }
    parts.push(format!(
        "publisher -> {}",
        node(amqp::node_in_use("soak-publisher"))
    ));
    parts.join(", ")
}

/// For each of `procs` (connected to `address` at `from`), how long after
/// `from` its connection named another node; polls every 100 ms, up to 60 s.
async fn watch_moves(
    procs: Vec<(String, u16, &'static str)>,
    address: String,
    from: Instant,
) -> Vec<(String, Option<Duration>)> {
    let mut out: Vec<(String, Option<Duration>)> =
        procs.iter().map(|(w, _, _)| (w.clone(), None)).collect();
    while from.elapsed() < Duration::from_secs(60) && out.iter().any(|(_, d)| d.is_none()) {
        for (k, (_, port, role)) in procs.iter().enumerate() {
            if out[k].1.is_some() {
                continue;
            }
            if let Some(node) = node_of(*port, role).await
                && node != address
            {
                out[k].1 = Some(from.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// The body of `GET path` on 127.0.0.1:`port`, within a second.
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (_, body) = text.split_once("\r\n\r\n")?;
        Some(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

/// Runs one worker SIGKILL or the database restart (both modes).
async fn run_chaos(ev: Chaos, env: &mut Env, report: &mut Report) -> anyhow::Result<()> {
    match ev {
        Chaos::Kill(i) => {
            if let Some(w) = env.workers[i].as_mut() {
                w.kill().await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            env.spawn_worker(i)?;
            report.kills += 1;
        }
        Chaos::BrokerRestart => {
            restart_broker().await?;
            report.broker_restarts += 1;
        }
        Chaos::DbRestart => {
            restart_database().await?;
            report.db_restarts += 1;
        }
    }
    Ok(())
}

/// Cluster mode's chaos: `o.node_stops` node losses, never two nodes down at
/// once, the other disruptions (`plan`) between them.
#[allow(clippy::too_many_arguments)]
async fn cluster_chaos(
    o: &Opts,
    env: &mut Env,
    report: &mut Report,
    plan: Vec<Chaos>,
    samples: &Samples,
    confirmed: &AtomicU64,
    publish_end: &PublishEnd,
    t0: Instant,
) -> anyhow::Result<Vec<NodeLoss>> {
    let queue = topology::Names::new(&env.cfg.amqp.prefix).queue(PUSH_KIND);
    let mut events = plan.into_iter();
    let mut losses: Vec<NodeLoss> = Vec::new();
    let mut prev: Option<u8> = None;
    let mut turn: u8 = 0;
    // The next node in turn (1, 2, 3, 1, ...) that is not excluded.
    let mut next_in_turn = |exclude: &[Option<u8>]| -> u8 {
        for _ in 0..3 {
            turn = turn % 3 + 1;
            if !exclude.contains(&Some(turn)) {
                return turn;
            }
        }
        turn % 3 + 1
    };
    let mut next_stop = t0 + o.node_every;
    let settle = Duration::from_secs(60);
    for k in 0..o.node_stops {
        tokio::time::sleep_until(next_stop.into()).await;
        let Some(cluster) = env.cluster.as_ref() else {
            bail!("no cluster");
        };
        // Quorum needs 2 of 3: every node must be back before the next stop.
        if !cluster.all_listening().await {
            cluster.up().await?;
        }
        if !wait_flow(samples, Instant::now(), settle, report.jobs).await {
            eprintln!(
                "soak: t={:.1}s consumption not flowing after {settle:?}; stopping a node anyway",
                t0.elapsed().as_secs_f64()
            );
        }
        // Node losses take longer than planned on a slow machine: keep publishing
        // (at a lower rate) until the remaining ones are over.
        // (A cycle: from one stop to the next, as measured so far.)
        let per_loss = match losses.first() {
            Some(first) if k > 0 => first.stop_at.elapsed().div_f64(k as f64),
            _ => o.node_every.max(CLUSTER_CYCLE),
        };
        if o.publish_over.is_none() {
            // Generous: jobs left when the last loss is over go out within a few
            // seconds (below), while a publisher done too early leaves the last
            // losses without load.
            publish_end.set(
                Instant::now() + per_loss.mul_f64((o.node_stops - k) as f64 * 1.25) + o.node_every,
            );
        }
        eprintln!(
            "soak: t={:.1}s placement: {}",
            t0.elapsed().as_secs_f64(),
            placement(env, cluster).await
        );
        let both = cluster.leaders(1, &[&queue, &env.sink]).await;
        let (leader, sink_leader) = (both[0], both[1]);
        // Every other stop the leader's node (when it is not the one just
        // stopped), else the next follower in turn.
        let node = match leader {
            Some(l) if k % 2 == 0 && Some(l) != prev => l,
            _ => next_in_turn(&[leader, prev]),
        };
        let address = cluster.address(node);
        let name = format!("node {node} ({address})");
        let targets = connected_to(env, &address).await;
        let connected = targets
            .iter()
            .map(|(w, _, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let publisher_there =
            amqp::node_in_use("soak-publisher").as_deref() == Some(address.as_str());
        let processed = samples_of(samples).last().map_or(0, |s| s.processed);
        // Approximate: the publisher counts a confirm when its window is full.
        let backlog = (confirmed.load(Ordering::Relaxed) as i64 - processed).max(0);
        let stop_at = Instant::now();
        let at = stop_at - t0;
        let watch = tokio::spawn(watch_moves(targets, address.clone(), stop_at));
        eprintln!(
            "soak: t={:.1}s {} {name}{}; connected to it: {connected}{}",
            at.as_secs_f64(),
            if o.node_kill { "killing" } else { "stopping" },
            if leader == Some(node) {
                " (the push queue's leader)"
            } else {
                ""
            },
            if publisher_there {
                "; soak publisher"
            } else {
                ""
            }
        );
        eprintln!("soak: (the sink queue's leader: {})", fmt_node(sink_leader));
        if o.node_kill {
            cluster.kill(node).await?;
        } else {
            cluster.stop(node).await?;
        }
        let stopped_at = Instant::now();
        tokio::time::sleep(o.node_down).await;
        cluster.start(node).await?;
        let started_at = Instant::now();
        let leader_after = cluster.leader(node, &queue).await;
        eprintln!(
            "soak: t={:.1}s node {node} running again (stop took {:.1} s, down {:.1} s); leader now {}",
            t0.elapsed().as_secs_f64(),
            (stopped_at - stop_at).as_secs_f64(),
            (started_at - stop_at).as_secs_f64(),
            fmt_node(leader_after),
        );
        // Let consumption resume before anything else happens, so the next
        // disruption does not add to this pause.
        wait_flow(samples, stopped_at, settle, report.jobs).await;
        let moved = watch.await.unwrap_or_default();
        let name = match node_name(cluster, node).await {
            Some(n) => n,
            None => format!("node {node}"),
        };
        losses.push(NodeLoss {
            node,
            name,
            leader_before: leader,
            leader_after,
            at,
            stop_at,
            stopped_at,
            started_at,
            moved,
            publisher_there,
            backlog,
            publishing: stop_at < publish_end.get(),
            pause: None,
            nothing_left: false,
            stall: None,
            relay_stall: None,
            publish_pause: None,
        });
        prev = Some(node);
        next_stop = stop_at + o.node_every;
        if let Some(ev) = events.next() {
            // Half way to the next stop (or at once if that is past).
            let mid = stop_at + o.node_every / 2;
            tokio::time::sleep_until(mid.max(Instant::now()).into()).await;
            eprintln!("soak: t={:.1}s {ev:?}", t0.elapsed().as_secs_f64());
            run_chaos(ev, env, report).await?;
            let done = Instant::now();
            wait_flow(samples, done, settle, report.jobs).await;
            next_stop = next_stop.max(Instant::now() + Duration::from_secs(1));
        }
    }
    // The last loss is over: the rest of the jobs within a few seconds.
    if o.node_stops > 0 && o.publish_over.is_none() {
        publish_end.set(Instant::now() + o.node_every / 2);
    }
    for ev in events {
        tokio::time::sleep_until(next_stop.into()).await;
        eprintln!("soak: t={:.1}s {ev:?}", t0.elapsed().as_secs_f64());
        run_chaos(ev, env, report).await?;
        wait_flow(samples, Instant::now(), settle, report.jobs).await;
        next_stop = Instant::now() + o.node_every / 2;
    }
    Ok(losses)
}

/// `hf<N>@localhost` for node `n`, from the script.
async fn node_name(cluster: &Cluster, n: u8) -> Option<String> {
    let port = cluster.address(n).rsplit(':').next()?.to_string();
    cluster
        .run(&["node-of-port", &port])
        .await
        .ok()
        .map(|s| s.trim().to_string())
}

async fn drill(
    o: &Opts,
    env: &mut Env,
    started: Instant,
    budget: Duration,
) -> anyhow::Result<Report> {
    let deadline = started + budget;
    let repo = TinyRepo::create(&env.dir)?;
    // Single node: the workers reach the broker through a proxy that cuts their
    // connections. Cluster: they get every node (`amqp.urls`) and connect directly,
    // so a stopped node really cuts them.
    let (proxy, broker) = if let Some(cluster) = &env.cluster {
        (
            None,
            ("HOOKFLEET_AMQP__URLS".to_string(), cluster.urls.join(",")),
        )
    } else {
        let broker_target = {
            let u = url::Url::parse(&o.amqp_url).context("--amqp-url")?;
            let host = u.host_str().unwrap_or("127.0.0.1").to_string();
            let port = u.port().unwrap_or(5672);
            tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .context("broker address does not resolve")?
        };
        let proxy = TcpProxy::start(broker_target).await?;
        let mut via_proxy = url::Url::parse(&o.amqp_url)?;
        via_proxy
            .set_host(Some("127.0.0.1"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        via_proxy
            .set_port(Some(proxy.addr.port()))
            .map_err(|_| anyhow::anyhow!("cannot set port"))?;
        (
            Some(proxy),
            ("HOOKFLEET_AMQP__URL".to_string(), via_proxy.to_string()),
        )
    };
    env.worker_env = vec![
        broker,
        ("HOOKFLEET_AMQP__PREFIX".into(), env.cfg.amqp.prefix.clone()),
        ("HOOKFLEET_AMQP__RECONNECT_MAX".into(), "1s".into()),
        (
            "HOOKFLEET_DATABASE__URL".into(),
            env.cfg.database.url.expose().to_string(),
        ),
        ("HOOKFLEET_DATABASE__AUTO_MIGRATE".into(), "false".into()),
        ("HOOKFLEET_WORKER__KINDS".into(), "[\"push\"]".into()),
        // Short tiers and more attempts: a database restart fails a few attempts.
        (
            "HOOKFLEET_RETRY__TIERS".into(),
            format!(
                "[{}]",
                RETRY_TIERS
                    .iter()
                    .map(|ms| format!("\"{ms}ms\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        ("HOOKFLEET_RETRY__MAX_ATTEMPTS".into(), "12".into()),
        ("HOOKFLEET_OUTBOX__POLL_INTERVAL".into(), "500ms".into()),
        (
            "HOOKFLEET_HOOK__REPOSITORIES_ROOT".into(),
            repo.root.display().to_string(),
        ),
        (
            "HOOKFLEET_SPOOL__DIR".into(),
            env.dir.join("spool").display().to_string(),
        ),
        ("HOOKFLEET_LOG__LEVEL".into(), "warn".into()),
        ("HOOKFLEET_LOG__FORMAT".into(), "pretty".into()),
    ];
    if env.cluster.is_some() {
        // The relay runs in separate processes: the same settings, relay on.
        env.relay_env = env.worker_env.clone();
        env.worker_env
            .push(("HOOKFLEET_OUTBOX__RELAY".into(), "false".into()));
    }
    env.ports = (0..o.workers)
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    env.relay_ports = (0..env.relays.len())
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    for i in 0..o.workers {
        env.spawn_worker(i)?;
    }
    for i in 0..env.relays.len() {
        env.spawn_relay(i)?;
    }
    for w in env.workers.iter_mut().flatten() {
        w.wait_ready(Duration::from_secs(60)).await?;
    }
    for r in env.relays.iter_mut().flatten() {
        r.wait_ready(Duration::from_secs(60)).await?;
    }
    if env.relays.is_empty() {
        eprintln!("soak: {} workers ready", o.workers);
    } else {
        eprintln!(
            "soak: {} workers (relay off) and {} relays ready",
            o.workers,
            env.relays.len()
        );
    }

    let plan = schedule(o);
    let span = if o.cluster {
        o.publish_over.unwrap_or_else(|| {
            o.node_every
                .max(CLUSTER_CYCLE)
                .mul_f64(o.node_stops as f64 + 1.0)
        })
    } else {
        o.event_every.mul_f64(plan.len() as f64 + 1.0)
    };
    let all = jobs(&repo, o.jobs);
    let expected: HashMap<Uuid, usize> = all.iter().map(|(j, n)| (j.push_id, *n)).collect();
    let confirmed = Arc::new(AtomicU64::new(0));
    let publish_end = PublishEnd::new(Instant::now(), span);
    let publisher = tokio::spawn(publish_jobs(
        env.cfg.clone(),
        all.into_iter().map(|(j, _)| j).collect(),
        span,
        deadline,
        confirmed.clone(),
        o.cluster.then(|| publish_end.clone()),
    ));
    if o.cluster {
        eprintln!(
            "soak: publishing {} jobs over {:.0} s; chaos: {} node losses (at most one node down, \
             one every {:?} at the most), between them {plan:?}",
            o.jobs,
            span.as_secs_f64(),
            o.node_stops,
            o.node_every
        );
    } else {
        eprintln!(
            "soak: publishing {} jobs over {:.0} s; chaos: {plan:?}, cuts every {:?}",
            o.jobs,
            span.as_secs_f64(),
            o.cut_every
        );
    }

    let mut report = Report {
        jobs: o.jobs,
        ..Report::default()
    };
    let t0 = Instant::now();
    let sampling = CancellationToken::new();
    let mut sampler = None;
    if o.cluster {
        let samples: Samples = Arc::default();
        sampler = Some((
            samples.clone(),
            tokio::spawn(sample(
                env.cfg.database.url.expose().to_string(),
                confirmed.clone(),
                samples.clone(),
                sampling.clone(),
            )),
        ));
        let losses = cluster_chaos(
            o,
            env,
            &mut report,
            plan,
            &samples,
            &confirmed,
            &publish_end,
            t0,
        )
        .await?;
        report.cluster = Some(ClusterReport {
            workers: o.workers,
            relays: env.relays.len(),
            losses,
        });
    } else {
        single_chaos(o, env, &mut report, plan, proxy.as_ref(), span, t0).await?;
    }
    report.republished_jobs = publisher.await.context("publisher task")??;
    eprintln!(
        "soak: all jobs published at t={:.1}s; waiting for convergence",
        t0.elapsed().as_secs_f64()
    );

    // Converged: every push recorded (or dead-lettered) and the outbox empty.
    let pool = hookfleet::db::connect(&env.cfg.database).await?;
    let dead_queue = topology::Names::new(&env.cfg.amqp.prefix).dead_queue(PUSH_KIND);
    loop {
        let state: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pushes), \
                    (SELECT count(*) FROM outbox_pending)",
        )
        .fetch_one(&pool)
        .await;
        let dead = queue_depth(&env.cfg, &dead_queue).await.unwrap_or(0);
        if let Ok((pushes, unpublished)) = state
            && pushes as usize + dead as usize >= o.jobs
            && unpublished == 0
        {
            report.converged_after = Some(t0.elapsed());
            break;
        }
        if Instant::now() + Duration::from_secs(20) > deadline {
            eprintln!("soak: not converged before the deadline; verifying what there is");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some((samples, task)) = sampler {
        sampling.cancel();
        let _ = task.await;
        let samples = samples_of(&samples);
        if env.keep_logs {
            let mut csv =
                String::from("t_seconds,processed,events_published,publisher_confirmed\n");
            for s in &samples {
                let t = s.t.saturating_duration_since(t0).as_secs_f64();
                csv.push_str(&format!(
                    "{t:.3},{},{},{}\n",
                    s.processed, s.published, s.confirmed
                ));
            }
            let _ = std::fs::write(env.dir.join("samples.csv"), csv);
        }
        if let Some(c) = report.cluster.as_mut() {
            let last = samples.last().map_or(0, |s| s.processed);
            for l in &mut c.losses {
                l.pause = pause(&samples, l.stop_at, l.stopped_at, |s| s.processed as u64);
                l.stall = pause(&samples, l.stop_at, l.started_at, |s| s.processed as u64);
                l.relay_stall = pause(&samples, l.stop_at, l.started_at, |s| s.published as u64);
                let then = samples
                    .iter()
                    .rev()
                    .find(|s| s.t <= l.stopped_at)
                    .map_or(0, |s| s.processed);
                l.nothing_left = l.pause.is_none() && then >= last;
                l.publish_pause = if l.publishing {
                    pause(&samples, l.stop_at, l.stopped_at, |s| s.confirmed)
                } else {
                    None
                };
            }
        }
    }
    for w in env.workers.iter_mut().flatten() {
        w.terminate(Duration::from_secs(15)).await;
    }
    for r in env.relays.iter_mut().flatten() {
        r.terminate(Duration::from_secs(15)).await;
    }
    drop(proxy);

    verify(env, &pool, &expected, &mut report).await?;
    pool.close().await;
    report.wall = started.elapsed();
    Ok(report)
}

/// Single-node mode's chaos: proxy cuts every `o.cut_every`, the other
/// disruptions (`plan`) every `o.event_every`.
async fn single_chaos(
    o: &Opts,
    env: &mut Env,
    report: &mut Report,
    plan: Vec<Chaos>,
    proxy: Option<&TcpProxy>,
    span: Duration,
    t0: Instant,
) -> anyhow::Result<()> {
    let proxy = proxy.context("no proxy")?;
    let mut next_cut = t0 + o.cut_every;
    let mut events = plan.into_iter().enumerate().peekable();
    let max_cuts = o.cuts.unwrap_or(usize::MAX);
    loop {
        let next_event = events
            .peek()
            .map(|(k, _)| t0 + o.event_every.mul_f64(*k as f64 + 1.0));
        let cut_due = report.cuts < max_cuts && next_cut < t0 + span;
        let wake = match (next_event, cut_due) {
            (None, false) => break,
            (Some(e), true) => e.min(next_cut),
            (Some(e), false) => e,
            (None, true) => next_cut,
        };
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if cut_due && now >= next_cut {
            proxy.cut();
            report.cuts += 1;
            next_cut += o.cut_every;
        }
        if next_event.is_some_and(|e| now >= e)
            && let Some((_, ev)) = events.next()
        {
            eprintln!("soak: t={:.1}s {ev:?}", t0.elapsed().as_secs_f64());
            run_chaos(ev, env, report).await?;
        }
    }
    Ok(())
}

async fn queue_depth(cfg: &Config, queue: &str) -> anyhow::Result<u32> {
    let conn = amqp::connect(&cfg.amqp, "soak-check").await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(q.message_count())
}

/// Every message id in `queue` (consumed without ack, so the queue empties),
/// stopping when the queue's depth at the start is reached and nothing more
/// arrives for a second.
async fn drain_ids(cfg: &Config, queue: &str) -> anyhow::Result<Vec<String>> {
    let depth = queue_depth(cfg, queue).await? as usize;
    let conn = amqp::connect(&cfg.amqp, "soak-drain").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "soak-drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut ids = Vec::with_capacity(depth);
    loop {
        let idle = if ids.len() >= depth {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(d)) => {
                let d = d?;
                ids.push(
                    d.properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                );
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(ids)
}

async fn verify(
    env: &Env,
    pool: &sqlx::PgPool,
    expected: &HashMap<Uuid, usize>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let names = topology::Names::new(&env.cfg.amqp.prefix);
    let processed: Vec<Uuid> = sqlx::query_scalar("SELECT push_id FROM pushes")
        .fetch_all(pool)
        .await?;
    let processed: HashSet<Uuid> = processed.into_iter().collect();
    report.processed = processed.len();
    let dead = drain_ids(&env.cfg, &names.dead_queue(PUSH_KIND)).await?;
    report.dead_lettered = dead.len();
    let dead: HashSet<Uuid> = dead.iter().filter_map(|s| s.parse().ok()).collect();
    report.lost_jobs = expected
        .keys()
        .filter(|id| !processed.contains(id) && !dead.contains(id))
        .count();
    report.inbox_rows = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE queue = $1")
        .bind(names.queue(PUSH_KIND))
        .fetch_one(pool)
        .await?;

    let rows: Vec<(Uuid, Option<String>, bool)> = sqlx::query_as(
        "SELECT o.message_id, o.correlation_id, \
                    EXISTS (SELECT 1 FROM outbox_published p WHERE p.id = o.id) \
             FROM outbox o",
    )
    .fetch_all(pool)
    .await?;
    report.outbox_rows = rows.len();
    report.outbox_unpublished = rows.iter().filter(|r| !r.2).count() as i64;
    let mut per_push: HashMap<Uuid, usize> = HashMap::new();
    for (_, corr, _) in &rows {
        if let Some(id) = corr.as_deref().and_then(|c| c.parse().ok()) {
            *per_push.entry(id).or_default() += 1;
        }
    }
    for (id, want) in expected {
        let got = per_push.get(id).copied().unwrap_or(0);
        if got > *want {
            report.effects_duplicated += 1;
        } else if got < *want && processed.contains(id) {
            report.events_short += 1;
        }
    }

    let sink = drain_ids(&env.cfg, &env.sink).await?;
    report.sink_deliveries = sink.len();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in &sink {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    report.events_duplicated = sink.len() - seen.len();
    let outbox_ids: HashSet<String> = rows.iter().map(|r| r.0.to_string()).collect();
    report.events_missing = outbox_ids
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .count();
    report.events_unknown = seen.keys().filter(|id| !outbox_ids.contains(**id)).count();
    Ok(())
}
