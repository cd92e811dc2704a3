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
//!
//! Modules: `opts` (command line, sizes of a quick or full run), `run` (each
//! group in turn), one module per group of rows (`consume`, `relay`, `e2e` with
//! `txn` and `ceiling`, `tracing`, `resume`, `outage`, `rss`, `giant`, `gitpush`,
//! `deadhost`, `noisy`), and `support` (rows, configs, queues, percentiles).

mod ceiling;
mod consume;
mod deadhost;
mod e2e;
mod giant;
mod gitpush;
mod noisy;
mod opts;
mod outage;
mod relay;
mod resume;
mod rss;
mod run;
mod support;
mod tracing;
mod txn;

use opts::opts;
use run::run;
use support::{base_config, create_database, drop_database, table};

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
