//! `outbox status|replay|unpark`: the transactional outbox as an operator sees it.

use std::process::ExitCode;

use super::args::{OutboxCommand, ReplayArgs};
use super::invocation::EXIT_USAGE;
use super::output;
use crate::config::Config;
use crate::outbox::replay::ReplayRequest;
use crate::{db, outbox, shutdown};

/// Runs one `outbox` subcommand.
pub(super) async fn command(command: OutboxCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        OutboxCommand::Status { json } => status(json, &config).await,
        OutboxCommand::Replay(args) => replay(args, config).await,
        OutboxCommand::Unpark { ids, all: _ } => unpark(&ids, &config).await,
    }
}

/// `outbox status [--json]`.
async fn status(json: bool, config: &Config) -> anyhow::Result<ExitCode> {
    let pool = db::connect(&config.database).await?;
    let status = outbox::status::fetch(&pool).await?;
    pool.close().await;
    output::outbox_status(&status, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `outbox unpark --id ... | --all` (no ids: all); exit 1 when no row matched.
async fn unpark(ids: &[i64], config: &Config) -> anyhow::Result<ExitCode> {
    let pool = db::connect(&config.database).await?;
    let n = outbox::storage::unpark(&pool, ids).await?;
    pool.close().await;
    println!("unparked {n}");
    if n == 0 {
        eprintln!("hookfleet: no parked outbox row matched");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `outbox replay`: a filter that does not parse is bad usage; a failure part
/// way is an error whose message says where to resume.
async fn replay(args: ReplayArgs, config: Config) -> anyhow::Result<ExitCode> {
    use crate::outbox::replay::{self, Progress, ReplayError};
    let jobs = if args.include_jobs {
        "job rows included"
    } else {
        "job rows left out; --include-jobs adds them"
    };
    let request = replay_request(args, &config);
    let plan = match replay::plan(&request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hookfleet: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let token = shutdown::on_signals();
    let pool = db::connect(&config.database).await?;
    let started = std::time::Instant::now();
    let result = replay::run(&pool, &config.amqp, &plan, &Progress::for_stderr(), &token).await;
    let secs = started.elapsed().as_secs_f64();
    pool.close().await;
    let report = match result {
        Ok(r) => r,
        Err(ReplayError::BadFilter(m)) => {
            eprintln!("hookfleet: invalid replay filter: {m}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => return Err(e.into()),
    };
    output::replay_report(&report, plan.dry_run, jobs, secs);
    Ok(ExitCode::SUCCESS)
}

/// The library's request for `outbox replay`'s arguments: without
/// `--include-jobs`, rows of the jobs exchange are left out.
fn replay_request(args: ReplayArgs, config: &Config) -> ReplayRequest {
    ReplayRequest {
        from_id: args.from_id,
        to_id: args.to_id,
        since: args.since,
        until: args.until,
        event_type: args.event_type,
        correlation_id: args.correlation_id,
        to_exchange: args.to_exchange,
        routing_key: args.routing_key,
        dry_run: args.dry_run,
        rate: args.rate,
        exclude_exchange: (!args.include_jobs)
            .then(|| crate::amqp::topology::Names::new(&config.amqp.prefix).jobs_exchange()),
    }
}
