//! The `hookfleet` command line.
//!
//! Owns argument parsing, config loading and exit codes: 0 success, 1 runtime
//! failure, 2 bad usage or bad config. Each subcommand is a thin call into the
//! library; no business logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::{build_info, db, health::Health, shutdown, telemetry, worker};

/// Exit code for bad usage or invalid configuration.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "hookfleet", version = LONG_VERSION.as_str(), about = "Turns git pushes into reliable, observable work")]
struct Cli {
    /// Config file layered over the built-in defaults (env: HOOKFLEET_CONFIG).
    #[arg(long, global = true, env = "HOOKFLEET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

static LONG_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(build_info::long_version);

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Apply database migrations (creating the database if missing).
    Migrate,
    /// Run the worker: consumers, relay and admin HTTP.
    Worker,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective config with secrets redacted.
    Check,
}

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
    telemetry::init(&config.log);
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
    let result = runtime.block_on(run(cli.command, config));
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = error_chain(e.as_ref());
            tracing::error!(error = %message, "hookfleet failed");
            eprintln!("hookfleet: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Config { .. } => Ok(ExitCode::SUCCESS),
        Command::Migrate => {
            db::ensure_database(&config.database).await?;
            let pool = db::connect(&config.database).await?;
            db::migrate(&pool).await?;
            pool.close().await;
            tracing::info!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker => {
            let token = shutdown::on_signals();
            worker::run(config, Arc::new(Health::new()), token).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Renders an error and its causes on one line, skipping a cause whose text the
/// message already contains (sqlx and lapin repeat their sources in `Display`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}
