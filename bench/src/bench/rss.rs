//! Memory: VmRSS of a real `hookfleet worker` process (target/release/hookfleet,
//! configured through HOOKFLEET_* variables), idle after ready and at its peak
//! while it works through a backlog of push jobs for a tiny repository. The
//! process is measured, not this bench, so the figures are the binary's own.

use std::path::Path;
use std::time::{Duration, Instant};

use hookfleet::config::Config;
use hookfleet::push_job::PUSH_KIND;

use crate::support::{declare_topology, delete_topology};
use hookfleet_testkit::gitrepo::TinyRepo;
use hookfleet_testkit::procs::{WorkerProc, free_port, worker_env};

/// (idle MiB, peak MiB under the backlog).
pub async fn rss(
    exe: &Path,
    cfg: &Config,
    repo: &TinyRepo,
    backlog: usize,
    sample: Duration,
) -> anyhow::Result<(f64, f64)> {
    let mut cfg = cfg.clone();
    cfg.amqp.prefix = format!("{}rss", cfg.amqp.prefix);
    cfg.worker.kinds = vec![PUSH_KIND.into()];
    let env = worker_env(&cfg, repo);
    let log = repo.root.join("rss-worker.log");

    let mut idle = WorkerProc::spawn(exe, &env, free_port()?, &log)?;
    idle.wait_ready(Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = idle.rss_kib().unwrap_or(0);
    idle.terminate(Duration::from_secs(10)).await;

    declare_topology(&cfg).await?;
    crate::e2e::publish_backlog(&cfg, repo, backlog).await?;
    let mut busy = WorkerProc::spawn(exe, &env, free_port()?, &log)?;
    busy.wait_ready(Duration::from_secs(30)).await?;
    let until = Instant::now() + sample;
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(busy.rss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    busy.terminate(Duration::from_secs(5)).await;
    delete_topology(&cfg).await?;
    Ok((idle_kib as f64 / 1024.0, peak as f64 / 1024.0))
}
