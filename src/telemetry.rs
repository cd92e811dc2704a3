//! Logging setup: `tracing-subscriber` with JSON off a terminal and pretty on one.
//!
//! Called once from `main`; the library never installs a subscriber itself, so tests
//! and embedding programs choose their own.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
/// Logs go to stderr so command output on stdout stays machine-readable.
pub fn init(cfg: &LogConfig) {
    // PostgreSQL NOTICEs ("relation already exists, skipping") are noise at info.
    // lapin logs its own view of every failure as Debug dumps (a refused login is
    // five ERROR lines, a node's routine shutdown an ERROR, every returned message
    // a WARN with the body as decimal bytes), while each of those failures also
    // reaches hookfleet as an error that it reports once, readably, with the node
    // and what it does next. So lapin's own lines are off.
    let quiet = "sqlx::postgres::notice=warn,lapin=off";
    // The quiet directive is appended to RUST_LOG too (a debugging session does not
    // want them either) unless RUST_LOG says something about sqlx or lapin itself.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.trim().is_empty())
        .map(|spec| {
            if spec.contains("sqlx") || spec.contains("lapin") {
                spec
            } else {
                format!("{spec},{quiet}")
            }
        })
        .ok_or(())
        .and_then(|spec| EnvFilter::try_new(spec).map_err(|_| ()));
    let filter = from_env
        .or_else(|_| EnvFilter::try_new(format!("{},{quiet}", cfg.level)))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{quiet}")));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    // A subscriber already installed (tests) is fine.
    let _ = result;
}
