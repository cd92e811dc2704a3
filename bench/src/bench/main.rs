//! `hookfleet-bench`: hookfleet's figures next to raw baselines, measured in one
//! run on the local broker and database. Prints a markdown table and writes JSON
//! (`bench-results/bench.json`). Never part of `cargo test`.
//!
//! Usage: `scripts/bench [--quick] [--only GROUP] [--rounds N] [--out FILE]` (builds `hookfleet` and this
//! binary in release, then runs it; the RSS and `git push` figures run the real
//! `hookfleet` binary next to this one).
//!
//! Rows: no-op consume vs raw lapin consume; relay vs raw publish-with-confirms;
//! relay commit→consume latency; end-to-end pushes/s vs the push transaction
//! alone (pgbench-style through sqlx); e2e latency at full and half load; resume
//! after a broker outage; RSS idle and under a backlog; `git push` with and
//! without the hook.

mod ceiling;
mod consume;
mod deadhost;
mod e2e;
mod giant;
mod gitpush;
mod noisy;
mod outage;
mod relay;
mod resume;
mod rss;
mod support;
mod tracing;
mod txn;

use std::time::{Duration, Instant};

use support::{Row, base_config, create_database, drop_database, table};

struct Opts {
    quick: bool,
    /// `--only consume|relay|e2e|resume|outage|rss|giant|gitpush`: just that group of rows
    /// (for repeated runs of a noisy figure, or profiling one path).
    only: Option<String>,
    /// `--rounds N`: overrides the mode's number of alternating throughput rounds.
    rounds: Option<usize>,
    /// `--latency-rate N`: the paced end-to-end latency run at N pushes/s
    /// instead of half the full-load rate, to compare two builds at one rate.
    latency_rate: Option<f64>,
    out: String,
}

/// The groups `--only` accepts.
const GROUPS: [&str; 11] = [
    "consume", "relay", "e2e", "tracing", "resume", "outage", "rss", "giant", "gitpush",
    "deadhost", "noisy",
];

/// Parses the arguments; a bad one is an error naming it (never silently ignored:
/// a typo in `--only` would otherwise run the whole 4-minute bench).
fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        only: None,
        rounds: None,
        latency_rate: None,
        out: "bench-results/bench.json".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => o.quick = true,
            // Kept for scripts written before `--only`.
            "--consume-only" => o.only = Some("consume".into()),
            "--only" => {
                let g = value("--only")?;
                if !GROUPS.contains(&g.as_str()) {
                    return Err(format!(
                        "--only must be one of {}, got {g:?}",
                        GROUPS.join("|")
                    ));
                }
                o.only = Some(g);
            }
            "--rounds" => {
                let n = value("--rounds")?;
                o.rounds = match n.parse::<usize>() {
                    Ok(n) if (1..=100).contains(&n) => Some(n),
                    _ => return Err(format!("--rounds must be 1..=100, got {n:?}")),
                };
            }
            "--latency-rate" => {
                let n = value("--latency-rate")?;
                o.latency_rate = match n.parse::<f64>() {
                    Ok(r) if (1.0..=100_000.0).contains(&r) => Some(r),
                    _ => return Err(format!("--latency-rate must be 1..=100000, got {n:?}")),
                };
            }
            "--out" => o.out = value("--out")?,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: [--quick] [--only GROUP] [--rounds N] [--latency-rate N] [--out FILE])"
                ));
            }
        }
    }
    Ok(o)
}

/// Sizes of one run.
struct Sizes {
    /// Alternating baseline/hookfleet rounds of the throughput rows (medians reported).
    rounds: usize,
    consume: u64,
    relay: u64,
    latency_rate: u64,
    latency_secs: u64,
    txn_secs: u64,
    e2e_full: usize,
    e2e_half_secs: u64,
    resume_trials: usize,
    /// Jobs published during the database outage, and its length.
    outage_jobs: usize,
    outage: Duration,
    backlog: usize,
    rss_sample: Duration,
    git_pushes: usize,
    /// The noisy neighbour's storm, and how long the quiet load runs per phase.
    noisy_storm: usize,
    noisy_secs: u64,
}

fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            rounds: 1,
            consume: 20_000,
            relay: 10_000,
            latency_rate: 200,
            latency_secs: 3,
            txn_secs: 3,
            e2e_full: 1_000,
            e2e_half_secs: 3,
            resume_trials: 2,
            outage_jobs: 500,
            outage: Duration::from_secs(5),
            backlog: 20_000,
            rss_sample: Duration::from_secs(3),
            git_pushes: 5,
            noisy_storm: 5_000,
            noisy_secs: 4,
        }
    } else {
        Sizes {
            rounds: 5,
            consume: 100_000,
            relay: 50_000,
            latency_rate: 500,
            latency_secs: 10,
            txn_secs: 6,
            e2e_full: 5_000,
            e2e_half_secs: 10,
            resume_trials: 3,
            outage_jobs: 5_000,
            outage: Duration::from_secs(30),
            backlog: 100_000,
            rss_sample: Duration::from_secs(10),
            git_pushes: 20,
            noisy_storm: 20_000,
            noisy_secs: 10,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hookfleet-bench: {e}");
            std::process::exit(2);
        }
    };
    let rand = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let prefix = format!("bench{rand}");
    let db_name = format!("hookfleet_bench_{rand}");
    let cfg = base_config(&prefix, &db_name)?;
    create_database(&db_name, &cfg).await?;
    let dir = hookfleet_testkit::gitrepo::temp_dir("hookfleet-bench")?;
    let result = run(&o, &cfg, &dir).await;
    let _ = drop_database(&db_name).await;
    let _ = std::fs::remove_dir_all(&dir);
    let (rows, extra) = result?;

    let t = table(&rows);
    println!("{t}");
    if let Some(dir) = std::path::Path::new(&o.out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::json!({
        "mode": if o.quick { "quick" } else { "full" },
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu": cpu_model(),
        },
        "body_bytes": support::BODY_SIZE,
        "prefetch_and_window": support::PREFETCH,
        "queue_type": "quorum",
        "rows": rows,
        "details": extra,
    });
    std::fs::write(&o.out, serde_json::to_string_pretty(&json)?)?;
    println!("JSON written to {}", o.out);
    Ok(())
}

/// The machine's cores, for the CPU ceiling (what the services and the bench share).
fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default()
}

/// End to end with tracing off / on / on with an unreachable collector,
/// alternating per round; medians and their ratios to off.
async fn tracing_rows(
    cfg: &hookfleet::config::Config,
    pool: &sqlx::PgPool,
    (exe, repo): (&std::path::Path, &hookfleet_testkit::gitrepo::TinyRepo),
    s: &Sizes,
    step: &impl Fn(&str),
    rows: &mut Vec<Row>,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let (url, received) = tracing::collector().await?;
    // Bound, never accepted: the exporter's requests hang until their timeout.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let unreachable = format!("http://{}", blackhole.local_addr()?);
    let modes = [
        ("off", None),
        ("on", Some(url.as_str())),
        ("unreachable", Some(unreachable.as_str())),
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 1..=s.rounds {
        for (i, (mode, endpoint)) in modes.iter().enumerate() {
            step(&format!(
                "tracing round {round}/{}: end to end, tracing {mode}",
                s.rounds
            ));
            let e = e2e::end_to_end_with(
                exe,
                cfg,
                pool,
                repo,
                s.e2e_full,
                0,
                None,
                &tracing::env(*endpoint),
            )
            .await?;
            rates[i].push(e.full_rate);
        }
    }
    extra.insert(
        "tracing_rounds".into(),
        serde_json::json!({
            "off": rates[0].clone(), "on": rates[1].clone(), "unreachable": rates[2].clone(),
            "otlp_bytes_received": received.load(std::sync::atomic::Ordering::Relaxed),
        }),
    );
    let off = support::percentile(&mut rates[0], 50.0);
    for (i, label) in [
        (1, "tracing on, sampling 1.0, OTLP/HTTP collector"),
        (2, "tracing on, collector unreachable (hangs)"),
    ] {
        rows.push(Row::vs(
            &format!("end-to-end pushes/s, {label} (median of {})", s.rounds),
            support::percentile(&mut rates[i], 50.0),
            "same, tracing off",
            off,
            "push/s",
            0.9,
        ));
    }
    drop(blackhole);
    Ok(())
}

async fn run(
    o: &Opts,
    cfg: &hookfleet::config::Config,
    dir: &std::path::Path,
) -> anyhow::Result<(Vec<Row>, serde_json::Value)> {
    let mut s = sizes(o.quick);
    s.rounds = o.rounds.unwrap_or(s.rounds);
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
    let want = |group: &str| o.only.as_deref().is_none_or(|g| g == group);
    let mut rows = Vec::new();
    let mut extra = serde_json::Map::new();
    let pool = hookfleet::db::connect(&cfg.database).await?;
    let exe = hookfleet_testkit::cli::hookfleet_exe()?;
    let repo = hookfleet_testkit::gitrepo::TinyRepo::create(dir)?;

    if want("consume") {
        // Alternating rounds, medians: the broker's own throughput drifts by tens
        // of percent between minutes on a shared 2-core machine.
        let (mut raws, mut noops) = (Vec::new(), Vec::new());
        for round in 1..=s.rounds {
            step(&format!("consume round {round}/{}: raw lapin", s.rounds));
            raws.push(consume::raw_round(cfg, round, s.consume).await?);
            step(&format!(
                "consume round {round}/{}: hookfleet no-op worker",
                s.rounds
            ));
            noops.push(consume::hookfleet_noop(cfg, round, s.consume).await?);
        }
        extra.insert(
            "consume_rounds".into(),
            serde_json::json!({ "raw": raws.clone(), "hookfleet": noops.clone() }),
        );
        rows.push(Row::vs(
            &format!("no-op worker throughput (median of {})", s.rounds),
            support::percentile(&mut noops, 50.0),
            "raw lapin consume, multiple-ack every 64",
            support::percentile(&mut raws, 50.0),
            "msg/s",
            0.95,
        ));
    }

    if want("relay") {
        relay_rows(cfg, &pool, &s, &step, &mut rows, &mut extra).await?;
    }

    if want("tracing") {
        tracing_rows(cfg, &pool, (&exe, &repo), &s, &step, &mut rows, &mut extra).await?;
    }

    if want("e2e") {
        // Alternating rounds, medians: the baseline is bound by fsync latency,
        // which on a shared VM drifts by a factor of two between minutes.
        let (mut txns, mut fulls, mut lats) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cpus, mut per_batch, mut per_statement) = (Vec::new(), Vec::new(), Vec::new());
        // Machine CPU per push (all processes): end to end, the transaction
        // alone, the broker traffic alone; and the ceiling they set.
        let (mut m_e2e, mut m_txn, mut m_broker) = (Vec::new(), Vec::new(), Vec::new());
        let mut ceilings = Vec::new();
        for round in 1..=s.rounds {
            step(&format!(
                "e2e round {round}/{}: transaction baseline (16 connections)",
                s.rounds
            ));
            support::wait_for_quiet_services().await;
            let t = txn::push_transactions(&pool, &cfg.amqp.prefix, 16, s.txn_secs).await?;
            txns.push(t.rate);
            m_txn.extend(t.cpu_ms);
            step(&format!(
                "e2e round {round}/{}: end to end, full load",
                s.rounds
            ));
            let e = e2e::end_to_end(&exe, cfg, &pool, &repo, s.e2e_full, 0, None).await?;
            fulls.push(e.full_rate);
            lats.push(e.full);
            cpus.extend(e.cpu_ms_per_push);
            per_batch.extend(e.relay_rows_per_batch);
            per_statement.extend(e.pushes_per_statement);
            m_e2e.extend(e.machine_cpu_ms_per_push);
            step(&format!(
                "e2e round {round}/{}: broker traffic of the pushes alone (raw lapin)",
                s.rounds
            ));
            let broker_ms = ceiling::broker_traffic(cfg, s.e2e_full as u64).await?;
            m_broker.extend(broker_ms);
            if let (Some(b), Some(t)) = (broker_ms, t.cpu_ms) {
                ceilings.push(cores() * 1000.0 / (b + t));
            }
        }
        step("end to end: half load");
        let e = e2e::end_to_end(
            &exe,
            cfg,
            &pool,
            &repo,
            s.e2e_full,
            s.e2e_half_secs,
            o.latency_rate,
        )
        .await?;
        // The paced run: half the full-load rate, or the rate asked for.
        let paced = o.latency_rate.map_or("half load".to_string(), |r| {
            format!("{r:.0} push/s (paced)")
        });
        extra.insert(
            "e2e_rounds".into(),
            serde_json::json!({
                "baseline": txns.clone(), "hookfleet": fulls.clone(),
                "cpu_ms_per_push": cpus.clone(), "relay_rows_per_batch": per_batch.clone(),
                "pushes_per_statement": per_statement.clone(),
                "machine_cpu_ms_per_push": { "end_to_end": m_e2e.clone(), "transaction": m_txn.clone(), "broker_traffic": m_broker.clone() },
                "ceiling_push_per_s": ceilings.clone(),
            }),
        );
        let baseline = support::percentile(&mut txns, 50.0);
        rows.push(Row::vs(
            &format!(
                "end-to-end pushes/s (hook publish → handler + git → outbox → relay → consumer, median of {})",
                s.rounds
            ),
            support::percentile(&mut fulls, 50.0),
            "push transaction alone, 16 sqlx connections",
            baseline,
            "push/s",
            0.75,
        ));
        // What the worker process itself spends per push (handler, repository
        // read, relay): steadier than the rate, which the whole machine sets.
        median_row(&mut rows, &mut cpus, "ms", |n| {
            format!("worker CPU time per push at full load (user + system, median of {n})")
        });
        median_row(&mut rows, &mut per_batch, "rows", |n| {
            format!("outbox rows per relay batch at full load (median of {n})")
        });
        median_row(&mut rows, &mut per_statement, "pushes", |n| {
            format!("pushes written per statement (group commit) at full load (median of {n})")
        });
        if let Some(g) = e.half_pushes_per_statement {
            rows.push(Row::alone(
                &format!("pushes written per statement (group commit) at {paced}"),
                g,
                "pushes",
                None,
            ));
        }
        // Why the ratio is what it is: the machine's CPU per push of the whole
        // run and of its parts alone, and the ceiling the parts set.
        let cores = cores();
        for (values, what) in [
            (&mut m_e2e, "end to end at full load"),
            (&mut m_txn, "push transaction alone (the baseline)"),
            (
                &mut m_broker,
                "broker traffic of a push alone (raw lapin, no database)",
            ),
        ] {
            median_row(&mut rows, values, "ms", |n| {
                format!(
                    "machine CPU per push, all processes on {cores} cores: {what} (median of {n})"
                )
            });
        }
        if !ceilings.is_empty() {
            let ceiling = support::percentile(&mut ceilings, 50.0);
            rows.push(Row {
                name: format!(
                    "end-to-end ceiling for a worker that cost no CPU: {cores} cores / (transaction + broker traffic CPU per push) (median of {})",
                    ceilings.len()
                ),
                hookfleet: ceiling,
                baseline_name: "push transaction alone".into(),
                baseline: Some(baseline),
                unit: "push/s".into(),
                ratio: Some(ceiling / baseline.max(0.001)),
                target: "-".into(),
                met: None,
            });
        }
        // Latency at full load is queueing behind the backlog the unthrottled
        // publisher builds: the last round's, as a shape, not a target.
        let full = lats.last().copied().unwrap_or(e.full);
        for (load, l) in [("full load".to_string(), Some(full)), (paced, e.half)] {
            let Some(l) = l else { continue };
            rows.push(Row::alone(
                &format!("end-to-end latency p50 / p95 / p99 at {load}: p50"),
                l.p50,
                "ms",
                None,
            ));
            rows.push(Row::alone(
                &format!("... at {load}: p95"),
                l.p95,
                "ms",
                None,
            ));
            rows.push(Row::alone(
                &format!("... at {load}: p99"),
                l.p99,
                "ms",
                None,
            ));
        }
        extra.insert("e2e".into(), serde_json::to_value(&e)?);
    }

    if want("resume") {
        step("resume after a 1 s broker outage");
        let mut resumes =
            resume::resume_after_cut(cfg, Duration::from_secs(1), s.resume_trials).await?;
        let worst = resumes.iter().copied().fold(0.0, f64::max);
        rows.push(Row::alone(
            &format!("resume after a 1 s outage (worst of {})", resumes.len()),
            worst / 1000.0,
            "s",
            Some(1.0),
        ));
        extra.insert(
            "resume_ms".into(),
            serde_json::json!({ "trials": resumes.clone(), "median": support::percentile(&mut resumes, 50.0) }),
        );
    }

    if want("outage") {
        let mut runs = Vec::new();
        for on in [false, true] {
            step(&format!(
                "{} jobs during a {:?} database outage, kill switch {}",
                s.outage_jobs,
                s.outage,
                if on { "on" } else { "off" }
            ));
            let r = outage::database_outage(cfg, s.outage_jobs, s.outage, on).await?;
            let label = if on { "kill switch" } else { "no kill switch" };
            rows.push(Row::alone(
                &format!(
                    "DB outage, {label}: dead {} lost {} attempts max {} mean {:.2}; drain",
                    r.dead, r.lost, r.max_attempt, r.mean_attempt
                ),
                r.drain_s,
                "s",
                None,
            ));
            runs.push(r);
        }
        extra.insert("database_outage".into(), serde_json::to_value(&runs)?);
    }

    if want("rss") {
        step("RSS of a hookfleet worker process");
        let (idle, busy) = rss::rss(&exe, cfg, &repo, s.backlog, s.rss_sample).await?;
        rows.push(Row::alone(
            "RSS idle (after ready)",
            idle,
            "MiB",
            Some(15.0),
        ));
        rows.push(Row::alone(
            &format!("RSS peak working through a {}-push backlog", s.backlog),
            busy,
            "MiB",
            None,
        ));
    }

    if want("deadhost") {
        step("dead webhook host: healthy receivers' latency, quiet then with one host blackholed");
        let f = deadhost::run(cfg).await?;
        extra.insert(
            "deadhost".into(),
            serde_json::json!({ "quiet_ms": [f.quiet.0, f.quiet.1], "dead_ms": [f.dead.0, f.dead.1] }),
        );
        for (name, i, target) in [("p50", 0, None), ("p99", 1, Some(2.0))] {
            let (dead, quiet) = if i == 0 {
                (f.dead.0, f.quiet.0)
            } else {
                (f.dead.1, f.quiet.1)
            };
            let ratio = dead / quiet.max(0.001);
            rows.push(Row {
                name: format!("webhook delivery {name}, 20 healthy hosts + 1 blackholed"),
                hookfleet: dead,
                baseline_name: "same 20 hosts, no dead host".into(),
                baseline: Some(quiet),
                unit: "ms".into(),
                ratio: Some(ratio),
                target: target.map_or("-".into(), |t| format!("ratio <= {t:.2}")),
                met: target.map(|t| ratio <= t),
            });
        }
    }

    if want("noisy") {
        step(&format!(
            "noisy neighbour: 20 repositories at 20 pushes/s, quiet, then with a {}-push storm (one FIFO, then fairness)",
            s.noisy_storm
        ));
        let n = noisy::run(&exe, cfg, &pool, dir, s.noisy_storm, s.noisy_secs).await?;
        extra.insert("noisy".into(), serde_json::to_value(&n)?);
        for (label, lat, target) in [
            ("one FIFO (before)", n.storm_fifo, None),
            ("fairness (after)", n.storm_fair, Some(3.0)),
        ] {
            for (name, v, quiet, target) in [
                ("p50", lat.p50, n.quiet.p50, None),
                ("p99", lat.p99, n.quiet.p99, target),
            ] {
                let ratio = v / quiet.max(0.001);
                rows.push(Row {
                    name: format!(
                        "push→event {name} of 20 repositories during a {}-push storm, {label}",
                        s.noisy_storm
                    ),
                    hookfleet: v,
                    baseline_name: "same 20 repositories, no storm".into(),
                    baseline: Some(quiet),
                    unit: "ms".into(),
                    ratio: Some(ratio),
                    target: target.map_or("-".into(), |t: f64| format!("ratio <= {t:.2}")),
                    met: target.map(|t| ratio <= t),
                });
            }
        }
        for (label, v) in [("one FIFO", n.drain_fifo_s), ("fairness", n.drain_fair_s)] {
            rows.push(Row::alone(
                &format!("storm of {} pushes drained, {label}", s.noisy_storm),
                v,
                "s",
                None,
            ));
        }
    }

    // Heavy (a 20,000-commit repository is built): full runs, or asked for.
    if want("giant") && (!o.quick || o.only.is_some()) {
        step("RSS under giant pushes");
        let g = giant::giant(&exe, cfg, dir).await?;
        let after = |name: &str, v: f64| {
            let ratio = v / g.idle.max(0.001);
            Row {
                name: name.into(),
                hookfleet: v,
                baseline_name: "idle, after ready".into(),
                baseline: Some(g.idle),
                unit: "MiB".into(),
                ratio: Some(ratio),
                target: "ratio <= 2.00".into(),
                met: Some(ratio <= 2.0),
            }
        };
        rows.push(Row::alone(
            "RSS peak reading one giant push (50,000-file commit + 20,000-commit branch)",
            g.peak_one,
            "MiB",
            None,
        ));
        rows.push(after("RSS 30 s after one giant push", g.after_one));
        rows.push(Row::alone(
            "RSS peak reading 8 giant pushes at once",
            g.peak_eight,
            "MiB",
            Some(256.0),
        ));
        rows.push(after("RSS 30 s after 8 giant pushes", g.after_eight));
        extra.insert("giant".into(), serde_json::to_value(&g)?);
    }

    if want("gitpush") {
        step("git push with and without the hook");
        let (without, with, published) = gitpush::git_push_times(&exe, cfg, s.git_pushes).await?;
        rows.push(Row {
            name: format!(
                "`git push` wall time with the hook (median of {})",
                s.git_pushes
            ),
            hookfleet: with,
            baseline_name: "without a hook".into(),
            baseline: Some(without),
            unit: "ms".into(),
            ratio: Some(with / without.max(0.001)),
            target: "-".into(),
            met: None,
        });
        extra.insert(
            "git_push".into(),
            serde_json::json!({ "without_ms": without, "with_ms": with, "jobs_published_by_hook": published, "pushes": s.git_pushes }),
        );
    }
    step("done");
    pool.close().await;
    extra.insert(
        "seconds".into(),
        serde_json::json!(started.elapsed().as_secs_f64()),
    );
    Ok((rows, serde_json::Value::Object(extra)))
}

/// Relay throughput vs raw publish-with-confirms, and commit→consume latency.
/// A row with the median of `values` (none when there are no values); `label`
/// gets their count.
fn median_row(
    rows: &mut Vec<Row>,
    values: &mut [f64],
    unit: &str,
    label: impl Fn(usize) -> String,
) {
    if !values.is_empty() {
        let median = support::percentile(values, 50.0);
        rows.push(Row::alone(&label(values.len()), median, unit, None));
    }
}

async fn relay_rows(
    cfg: &hookfleet::config::Config,
    pool: &sqlx::PgPool,
    s: &Sizes,
    step: &impl Fn(&str),
    rows: &mut Vec<Row>,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let mut relay_cfg = cfg.clone();
    relay_cfg.worker.kinds = vec!["push".into()];
    support::declare_topology(&relay_cfg).await?;
    let events = hookfleet::amqp::topology::Names::new(&cfg.amqp.prefix).events_exchange();
    let (mut raws, mut relays) = (Vec::new(), Vec::new());
    for round in 1..=s.rounds {
        step(&format!(
            "relay round {round}/{}: raw publish-with-confirms",
            s.rounds
        ));
        let sink = format!("{}.pub-sink", cfg.amqp.prefix);
        support::declare_queue(cfg, &sink, Some((&events, "#"))).await?;
        support::wait_for_quiet_services().await;
        raws.push(
            support::publish_raw(cfg, &events, "bench.event", s.relay, "bench.event", true).await?,
        );
        support::delete_queue(cfg, &sink).await?;
        step(&format!(
            "relay round {round}/{}: throughput from a pre-filled outbox",
            s.rounds
        ));
        relays.push(relay::relay_throughput(cfg, pool, s.relay).await?);
    }
    extra.insert(
        "relay_rounds".into(),
        serde_json::json!({ "raw": raws.clone(), "hookfleet": relays.clone() }),
    );
    rows.push(Row::vs(
        &format!(
            "relay throughput ({} rows, batch {}, median of {})",
            s.relay,
            support::PREFETCH,
            s.rounds
        ),
        support::percentile(&mut relays, 50.0),
        "raw publish-with-confirms, window 256",
        support::percentile(&mut raws, 50.0),
        "msg/s",
        0.90,
    ));
    step("relay: commit→consume latency");
    let (p50, p99) = relay::relay_latency(cfg, pool, s.latency_rate, s.latency_secs).await?;
    rows.push(Row::alone(
        &format!("relay commit→consume latency p50 at {}/s", s.latency_rate),
        p50,
        "ms",
        None,
    ));
    rows.push(Row::alone(
        &format!("relay commit→consume latency p99 at {}/s", s.latency_rate),
        p99,
        "ms",
        None,
    ));
    extra.insert(
        "relay_latency".into(),
        serde_json::json!({ "rate_per_s": s.latency_rate, "secs": s.latency_secs }),
    );
    support::delete_topology(&relay_cfg).await
}
