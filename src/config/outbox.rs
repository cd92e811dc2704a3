//! `[outbox]`: the relay's batches and polling, row backoff and parking, pruning.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{positive, range};
use super::error::ConfigError;

/// Allowed range of `outbox.batch_size`.
pub(crate) const BATCH_SIZE_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;
/// Allowed range of `outbox.prune_batch_size` and `webhook.prune_batch_size`.
pub(crate) const PRUNE_BATCH_SIZE_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000;

/// Transactional outbox and relay settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Run the relay inside `hookfleet worker`.
    pub relay: bool,
    /// Rows claimed and published per relay transaction.
    pub batch_size: u32,
    /// Polling fallback when no notification arrives.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub poll_interval: Duration,
    /// Published rows are kept this long (the replay window).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub retention: Duration,
    /// Inbox rows are kept this long (the dedupe window).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub inbox_retention: Duration,
    /// How often pruning runs.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub prune_interval: Duration,
    /// Rows deleted per pruning statement.
    pub prune_batch_size: u32,
    /// Largest delay before a failing row is tried again.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) max_backoff: Duration,
    /// Failed publish attempts after which a row is parked: set aside, no longer
    /// tried, shown by `outbox status`, until `outbox unpark`.
    pub park_after_attempts: u32,
}

impl OutboxConfig {
    /// The `[outbox]` checks: batch sizes, intervals, backoff, parking.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        range(
            "outbox.batch_size",
            self.batch_size.into(),
            BATCH_SIZE_RANGE,
        )?;
        positive("outbox.poll_interval", self.poll_interval)?;
        positive("outbox.prune_interval", self.prune_interval)?;
        positive("outbox.max_backoff", self.max_backoff)?;
        range(
            "outbox.park_after_attempts",
            self.park_after_attempts.into(),
            1..=1_000,
        )?;
        range(
            "outbox.prune_batch_size",
            self.prune_batch_size.into(),
            PRUNE_BATCH_SIZE_RANGE,
        )?;
        Ok(())
    }
}
