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
//!
//! Modules, in the order of a run: `opts` (the command line), `env` (what the
//! drill creates and removes), `drill` (the run itself), `publisher` (the jobs
//! and their confirmed publishing), `chaos` (cuts, SIGKILLs, restarts),
//! `cluster` and `sampler` (cluster mode's node losses and pauses), `verify`
//! (exactly once, at least once) and `report` (the table printed at the end).

mod chaos;
mod cluster;
mod drill;
mod env;
mod opts;
mod publisher;
mod report;
mod sampler;
mod verify;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::drill::drill;
use crate::env::{Env, setup};
use crate::opts::opts;

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
