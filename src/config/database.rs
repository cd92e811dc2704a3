//! `[database]`: the PostgreSQL pool and the wait for the database at start.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{at_least, positive, range, url};
use super::error::ConfigError;
use super::secret::SecretUrl;
use crate::backoff::Delays;

/// Allowed range of `database.max_connections`.
pub(crate) const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<u64> = 1..=1_000;

/// PostgreSQL settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Database URL; `sslmode` in the query string selects TLS (rustls).
    pub url: SecretUrl,
    /// Pool upper bound.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// Upper bound on opening one connection.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub connect_timeout: Duration,
    /// Upper bound on waiting for a pooled connection.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub acquire_timeout: Duration,
    /// Idle connections above `min_connections` are closed after this.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) idle_timeout: Duration,
    /// Connections are recycled after this (lets failovers and config changes take).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) max_lifetime: Duration,
    /// Server-side `statement_timeout` for every connection.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) statement_timeout: Duration,
    /// Apply migrations at start (dev). Off in Kubernetes, where a Helm hook migrates.
    pub auto_migrate: bool,
    /// First delay between attempts while the worker waits for the database at
    /// start (it retries forever, not ready meanwhile).
    #[serde(with = "humantime_serde", default = "database_reconnect_min")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub reconnect_min: Duration,
    /// Largest delay between attempts while the worker waits for the database
    /// at start.
    #[serde(with = "humantime_serde", default = "database_reconnect_max")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub reconnect_max: Duration,
}

/// Default of `database.reconnect_min` (as `amqp.reconnect_min`).
pub(crate) const DATABASE_RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Default of `database.reconnect_max` (as `amqp.reconnect_max`).
pub(crate) const DATABASE_RECONNECT_MAX: Duration = Duration::from_secs(10);

fn database_reconnect_min() -> Duration {
    DATABASE_RECONNECT_MIN
}

fn database_reconnect_max() -> Duration {
    DATABASE_RECONNECT_MAX
}
impl DatabaseConfig {
    /// The bounds of the start-up wait's series (`reconnect_min`, `reconnect_max`).
    pub(crate) fn reconnect_delays(&self) -> Delays {
        Delays {
            min: self.reconnect_min,
            max: self.reconnect_max,
        }
    }

    /// The `[database]` checks: the URL, pool sizes, timeouts.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        url("database.url", &self.url, &["postgres", "postgresql"])?;
        range(
            "database.max_connections",
            self.max_connections.into(),
            MAX_CONNECTIONS_RANGE,
        )?;
        range(
            "database.min_connections",
            self.min_connections.into(),
            0..=u64::from(self.max_connections),
        )?;
        positive("database.connect_timeout", self.connect_timeout)?;
        positive("database.acquire_timeout", self.acquire_timeout)?;
        positive("database.statement_timeout", self.statement_timeout)?;
        positive("database.reconnect_min", self.reconnect_min)?;
        at_least(
            ("database.reconnect_max", self.reconnect_max),
            ("database.reconnect_min", self.reconnect_min),
        )
    }
}
