//! The `hookfleet` command line.
//!
//! Owns argument parsing, config loading and exit codes: 0 success, 1 runtime
//! failure, 2 bad usage or bad config. Each subcommand is a thin call into the
//! library; no business logic lives here.
//!
//! # Layout
//! - `mod.rs`: [`main`] (parse, load the config, start the runtime) and `run`,
//!   which hands each command to its file; `migrate`, `worker` and `relay` are
//!   one call each and stay here.
//! - `args`: every command, subcommand and flag (clap types only).
//! - `output`: what the listing commands print (tables and `--json`).
//! - `hook`, `dlq`, `outbox`, `webhook`, `pause`: one file per command group.
//! - `invocation`: exit codes and who runs the command, shared by the groups.

mod args;
mod dlq;
mod hook;
mod invocation;
mod outbox;
mod output;
mod pause;
mod webhook;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use self::args::{Cli, Command, ConfigCommand, HookCommand, SpoolCommand};
use crate::config::Config;
use crate::{db, health::Health, shutdown, telemetry, worker};

pub(crate) use self::invocation::EXIT_USAGE;
/// How long the runtime's blocking threads get once the command has returned.
pub(crate) const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if matches!(cli.command, Command::Worker | Command::Relay) {
        crate::alloc::tune();
    }
    if let Some(code) = run_without_config(&cli) {
        return code;
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hookfleet: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Command::Config {
        command: ConfigCommand::Check,
    } = cli.command
    {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    run_on_runtime(cli, config)
}

/// The commands that run before the config is loaded: `hook post-receive` (it
/// must exit 0 even on a bad config) and `config reference` (from the types and
/// built-in defaults only: no file, no environment).
fn run_without_config(cli: &Cli) -> Option<ExitCode> {
    match &cli.command {
        Command::Hook {
            command: HookCommand::PostReceive,
        } => Some(hook::post_receive(cli.config.as_deref())),
        Command::Config {
            command: ConfigCommand::Reference,
        } => {
            print!("{}", crate::config_reference::markdown());
            Some(ExitCode::SUCCESS)
        }
        _ => None,
    }
}

/// Starts logging and the async runtime, runs the command on it, then stops
/// both within bounds; a runtime error is one `hookfleet: ...` line and exit 1.
fn run_on_runtime(cli: Cli, config: Config) -> ExitCode {
    let exporter = telemetry::init(&config.log, &config.tracing);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookfleet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let flush_timeout = config.tracing.flush_timeout;
    let result = runtime.block_on(run(cli.command, cli.config, config));
    if let Some(e) = exporter {
        e.shutdown(flush_timeout);
    }
    // Dropping a runtime waits for its blocking threads without limit (a DNS lookup
    // or file write stuck on a dead peer would keep a drained process alive).
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, as the README promises: no log line repeating it.
            eprintln!("hookfleet: {}", crate::error::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Hands a command to the file of its group.
async fn run(
    command: Command,
    config_path: Option<PathBuf>,
    config: Config,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Hook {
            command: HookCommand::PostReceive,
        } => unreachable_post_receive(),
        Command::Hook {
            command: HookCommand::Install { repos, force },
        } => hook::install(repos, force, config_path.as_deref(), &config),
        Command::Spool {
            command: SpoolCommand::Flush,
        } => hook::flush_spool(&config).await,
        Command::Config { .. } => Ok(ExitCode::SUCCESS),
        Command::Dlq { command } => dlq::command(command, &config).await,
        Command::Migrate => migrate(&config).await,
        Command::Worker => {
            let token = shutdown::on_signals();
            worker::run(config, Arc::new(Health::new()), token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay => {
            let token = shutdown::on_signals();
            crate::relay_role::run(config, Arc::new(Health::new()), token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox { command } => outbox::command(command, config).await,
        Command::Webhook { command } => webhook::command(command, config).await,
        Command::Pause { kind, reason, list } => pause::pause(kind, reason, list, config).await,
        Command::Resume { kind } => pause::resume(kind, config).await,
    }
}

/// `hook post-receive` is dispatched by [`main`] before the config is loaded
/// (it must exit 0 even on a bad config); reaching `run` with it is a bug,
/// answered the hook's way: exit 0.
fn unreachable_post_receive() -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}

/// `migrate`: creates the database if missing, applies the migrations, then
/// encrypts plaintext secrets and re-encrypts those of a former key
/// (webhook.previous_secret_keys) with webhook.secret_key, if set.
async fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    db::ensure_database(&config.database).await?;
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    let keys = crate::webhook::manage::keyring(&config.webhook)?;
    let resealed = crate::webhook::manage::reseal_secrets(&pool, &keys).await;
    pool.close().await;
    let resealed = resealed?;
    if resealed > 0 {
        tracing::info!(
            subscriptions = resealed,
            key.id = keys.current_id().unwrap_or(""),
            "webhook secrets encrypted with webhook.secret_key"
        );
    }
    Ok(ExitCode::SUCCESS)
}
