//! `[worker]`: the task pool, the job kinds consumed and their limits.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::amqp::AmqpConfig;
use super::check::{positive, range};
use super::error::ConfigError;

/// Allowed range of `worker.concurrency`.
pub(crate) const CONCURRENCY_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;

/// Worker pool settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Global limit on deliveries handled at once.
    pub concurrency: u32,
    /// Job kinds this worker consumes (one queue each).
    pub kinds: Vec<String>,
    /// Extra per-kind limits for heavy work (a limit above `concurrency` is
    /// harmless: the global limit still applies).
    #[serde(default)]
    pub kind_concurrency: BTreeMap<String, u32>,
    /// Upper bound on one handler run; exceeding it is a transient error.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub handler_timeout: Duration,
    /// On shutdown, in-flight work gets this long to finish.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub drain_timeout: Duration,
    /// Completed deliveries are acked together at most this late.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) ack_flush_interval: Duration,
    /// Largest job body accepted, in bytes: a bigger one is dead-lettered as
    /// poison without being parsed. At most `amqp.max_message_bytes`.
    pub max_job_bytes: u32,
}

impl WorkerConfig {
    /// The `[worker]` checks: concurrency, kinds, timeouts, the job size (within
    /// `amqp.max_message_bytes`).
    pub(super) fn validate(&self, amqp: &AmqpConfig) -> Result<(), ConfigError> {
        range(
            "worker.concurrency",
            self.concurrency.into(),
            CONCURRENCY_RANGE,
        )?;
        for (kind, limit) in &self.kind_concurrency {
            range(
                &format!("worker.kind_concurrency.{kind}"),
                (*limit).into(),
                CONCURRENCY_RANGE,
            )?;
        }
        for kind in &self.kinds {
            if kind.is_empty()
                || !kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ConfigError::Invalid {
                    key: "worker.kinds".into(),
                    message: format!("entries must be [A-Za-z0-9_-]+, got {kind:?}"),
                });
            }
        }
        positive("worker.handler_timeout", self.handler_timeout)?;
        positive("worker.ack_flush_interval", self.ack_flush_interval)?;
        range(
            "worker.max_job_bytes",
            self.max_job_bytes.into(),
            16_384..=u64::from(amqp.max_message_bytes),
        )?;
        Ok(())
    }
}
