//! One run: each group of rows in turn (all, or the one `--only` names), with a
//! progress line on stderr per step; returns the rows and the JSON details.

use std::time::{Duration, Instant};

use crate::opts::{Opts, sizes};
use crate::support::{self, Row};
use crate::{
    ceiling, consume, deadhost, e2e, giant, gitpush, noisy, outage, relay, resume, rss, tracing,
    txn,
};

pub async fn run(
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
        relay::rows(cfg, &pool, &s, &step, &mut rows, &mut extra).await?;
    }

    if want("tracing") {
        tracing::rows(cfg, &pool, (&exe, &repo), &s, &step, &mut rows, &mut extra).await?;
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
            "noisy neighbour: 20 repositories at 20 pushes/s, quiet, then with a {}-push storm (one FIFO, fairness, not consumed)",
            s.noisy_storm
        ));
        let n = noisy::run(&exe, cfg, &pool, dir, s.noisy_storm, s.noisy_secs).await?;
        extra.insert("noisy".into(), serde_json::to_value(&n)?);
        for (label, lat, target) in [
            ("one FIFO (before)", n.storm_fifo, None),
            ("fairness (after)", n.storm_fair, Some(3.0)),
            (
                "published to a queue nobody consumes",
                n.storm_unconsumed,
                None,
            ),
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

/// A row with the median of `values` (none when there are no values); `label`
/// gets their count.
pub fn median_row(
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

/// The machine's cores, for the CPU ceiling (what the services and the bench share).
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}
