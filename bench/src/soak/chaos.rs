//! The chaos: the schedule of worker SIGKILLs and service restarts and carrying
//! each one out (both modes), and single-broker mode's loop, which adds the
//! proxy's connection cuts (cluster mode's node losses are in `cluster`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hookfleet_testkit::proxy::TcpProxy;

use crate::env::Env;
use crate::opts::Opts;
use crate::report::Report;

/// One scheduled disruption.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Chaos {
    Kill(usize),
    BrokerRestart,
    DbRestart,
}

/// Kills interleaved with the restarts: kill, broker, kill, db, kill, ...
pub(crate) fn schedule(o: &Opts) -> Vec<Chaos> {
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

pub(crate) async fn run_quiet(program: &str, args: &[&str]) -> anyhow::Result<()> {
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

pub(crate) async fn restart_broker() -> anyhow::Result<()> {
    run_quiet("rabbitmqctl", &["stop_app"]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run_quiet("rabbitmqctl", &["start_app"]).await?;
    run_quiet("rabbitmqctl", &["await_startup"]).await
}

pub(crate) async fn restart_database() -> anyhow::Result<()> {
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

/// Runs one worker SIGKILL or the database restart (both modes).
pub(crate) async fn run_chaos(ev: Chaos, env: &mut Env, report: &mut Report) -> anyhow::Result<()> {
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

/// Single-node mode's chaos: proxy cuts every `o.cut_every`, the other
/// disruptions (`plan`) every `o.event_every`.
pub(crate) async fn single_chaos(
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
