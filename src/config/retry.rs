//! `[retry]`: the delay tiers and attempt limits of transient failures.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::range;
use super::error::ConfigError;

/// Allowed range of `retry.max_attempts`.
pub(crate) const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<u64> = 1..=100;

/// Retry policy for transient failures.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay tiers; attempt n waits `tiers[min(n-1, len-1)]`.
    #[serde(with = "humantime_serde_vec")]
    #[schemars(with = "Vec<crate::config_reference::HumanDuration>")]
    pub tiers: Vec<Duration>,
    /// Attempts (the first included) before a message is dead-lettered.
    pub max_attempts: u32,
    /// Times one message may be postponed by a guard (an open circuit breaker,
    /// a rate limit) without using an attempt; past it a postponement counts as
    /// a transient failure, so nothing circles the retry tiers forever unseen.
    pub max_postponements: u32,
}

impl RetryConfig {
    /// The `[retry]` checks: tiers, attempts, postponements.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.tiers.is_empty() {
            return Err(ConfigError::Invalid {
                key: "retry.tiers".into(),
                message: "must list at least one delay, got []".into(),
            });
        }
        for d in &self.tiers {
            if d.is_zero() || d.as_millis() > u128::from(u32::MAX) {
                return Err(ConfigError::Invalid {
                    key: "retry.tiers".into(),
                    message: format!(
                        "entries must be 1ms..=49d, got {}",
                        humantime::format_duration(*d)
                    ),
                });
            }
        }
        range(
            "retry.max_attempts",
            self.max_attempts.into(),
            MAX_ATTEMPTS_RANGE,
        )?;
        range(
            "retry.max_postponements",
            self.max_postponements.into(),
            1..=100_000,
        )?;
        Ok(())
    }
}

/// `retry.tiers` as humantime strings (`humantime_serde` handles one duration, not a list).
mod humantime_serde_vec {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&humantime::format_duration(*d).to_string())?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}
