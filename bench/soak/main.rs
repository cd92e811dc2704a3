//! `hookfleet-soak`: the chaos drill. Runs a fleet of real `hookfleet worker`
//! processes (relay on in each) behind a TCP proxy to the broker, publishes push
//! jobs as the hook does while it cuts the broker connections every few seconds,
//! restarts RabbitMQ and PostgreSQL once each, and SIGKILLs and restarts workers;
//! then verifies from the database and a sink queue bound to `<prefix>.events`
//! (binding `#`) that every push was processed exactly once and every event
//! published at least once. Exits 1 on any loss (or on dead letters, which a
//! correct run never produces), 2 on bad usage.
//!
//! It owns its resources and removes them on every path: its database
//! (`hookfleet_soak_<rand>`), its AMQP prefix's queues and exchanges, its worker
//! processes, its temp dir. `--max-seconds` bounds the whole drill.
//!
//! Usage: `hookfleet-soak [--jobs N] [--workers N] [--kills N] [--cuts N]
//! [--cut-every SECS] [--event-every SECS] [--no-broker-restart] [--no-db-restart]
//! [--max-seconds N] [--hookfleet PATH]`

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use common::procs::{WorkerProc, free_port, hookfleet_exe};
use common::proxy::TcpProxy;
use common::repo::{TinyRepo, temp_dir};
use futures_util::StreamExt;
use hookfleet::amqp::{self, publish, topology};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::push::job::{PUSH_KIND, PushJob};
use hookfleet::push::update::RefUpdate;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use sqlx::{Connection, PgConnection};
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
}

fn usage(msg: &str) -> ! {
    eprintln!("hookfleet-soak: {msg}");
    eprintln!(
        "usage: hookfleet-soak [--jobs N] [--workers N] [--kills N] [--cuts N] [--cut-every SECS] \
         [--event-every SECS] [--no-broker-restart] [--no-db-restart] [--max-seconds N] [--hookfleet PATH]"
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
        pg_admin_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
        amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
    };
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
            "--workers" => o.workers = num(&a, args.next()),
            "--kills" => o.kills = num(&a, args.next()),
            "--cuts" => o.cuts = Some(num(&a, args.next())),
            "--cut-every" => o.cut_every = secs(&a, args.next()),
            "--event-every" => o.event_every = secs(&a, args.next()),
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
                    .unwrap_or_else(|| usage("--amqp-url needs a URL"))
            }
            "-h" | "--help" => usage("chaos drill"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if o.jobs == 0 || o.workers == 0 || o.cut_every.is_zero() || o.event_every.is_zero() {
        usage("--jobs, --workers, --cut-every and --event-every must be positive");
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
        println!("| check | value |");
        println!("| --- | --- |");
        let rows: Vec<(&str, String)> = vec![
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
        ];
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
}

impl Env {
    fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("worker-{i}.log"))
    }

    fn spawn_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let w = WorkerProc::spawn(&self.exe, &self.worker_env, self.ports[i], &self.log(i))?;
        self.workers[i] = Some(w);
        Ok(())
    }

    async fn cleanup(&mut self) {
        for w in self.workers.iter_mut().flatten() {
            w.kill().await;
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
        let _ = std::fs::remove_dir_all(&self.dir);
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

/// The last lines of each worker's log (on failure).
fn print_logs(env: &Env) {
    for i in 0..env.workers.len() {
        if let Ok(text) = std::fs::read_to_string(env.log(i)) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- worker {i} log (last 30 lines) ---");
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
/// many were republished.
async fn publish_jobs(
    cfg: Config,
    jobs: Vec<PushJob>,
    span: Duration,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let exchange = topology::Names::new(&cfg.amqp.prefix).jobs_exchange();
    let start = Instant::now();
    let per_job = span.div_f64(jobs.len().max(1) as f64);
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
                let due = start + per_job.mul_f64(next as f64);
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
                        let _ = bounded(conn.close(200, "reconnect".into())).await;
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
                    let _ = bounded(conn.close(200, "reconnect".into())).await;
                    continue 'connect;
                }
            }
            if drain_all && retry.is_empty() && pending.is_empty() {
                let _ = bounded(conn.close(200, "done".into())).await;
                return Ok(republished);
            }
        }
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

async fn drill(
    o: &Opts,
    env: &mut Env,
    started: Instant,
    budget: Duration,
) -> anyhow::Result<Report> {
    let deadline = started + budget;
    let repo = TinyRepo::create(&env.dir)?;
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
    env.worker_env = vec![
        ("HOOKFLEET_AMQP__URL".into(), via_proxy.to_string()),
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
    env.ports = (0..o.workers)
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    for i in 0..o.workers {
        env.spawn_worker(i)?;
    }
    for w in env.workers.iter_mut().flatten() {
        w.wait_ready(Duration::from_secs(60)).await?;
    }
    eprintln!("soak: {} workers ready", o.workers);

    let plan = schedule(o);
    let span = o.event_every.mul_f64(plan.len() as f64 + 1.0);
    let all = jobs(&repo, o.jobs);
    let expected: HashMap<Uuid, usize> = all.iter().map(|(j, n)| (j.push_id, *n)).collect();
    let publisher = tokio::spawn(publish_jobs(
        env.cfg.clone(),
        all.into_iter().map(|(j, _)| j).collect(),
        span,
        deadline,
    ));
    eprintln!(
        "soak: publishing {} jobs over {:.0} s; chaos: {plan:?}, cuts every {:?}",
        o.jobs,
        span.as_secs_f64(),
        o.cut_every
    );

    let mut report = Report {
        jobs: o.jobs,
        ..Report::default()
    };
    let t0 = Instant::now();
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
        }
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
    for w in env.workers.iter_mut().flatten() {
        w.terminate(Duration::from_secs(15)).await;
    }
    drop(proxy);

    verify(env, &pool, &expected, &mut report).await?;
    pool.close().await;
    report.wall = started.elapsed();
    Ok(report)
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
