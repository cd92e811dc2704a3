//! `[log]`: the log format and filter (nothing to validate: `tracing` parses the
//! filter when logging starts).

use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// JSON when stderr is not a terminal, pretty when it is.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format.
    pub(crate) format: LogFormat,
    /// `tracing` filter directive (`info`, `hookfleet=debug,lapin=warn`); `RUST_LOG` wins.
    pub level: String,
}
