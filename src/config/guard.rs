//! `[guard]`: the kill switch and the pause poll.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{positive, range};
use super::error::ConfigError;

/// Default of `guard.failure_share`.
pub(crate) const GUARD_FAILURE_SHARE: f64 = 0.5;
/// Default of `guard.window`.
pub(crate) const GUARD_WINDOW: Duration = Duration::from_secs(30);
/// Default of `guard.min_samples`.
pub(crate) const GUARD_MIN_SAMPLES: u32 = 20;
/// Default of `guard.probe_interval`.
pub(crate) const GUARD_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Default of `guard.probe_timeout`.
pub(crate) const GUARD_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of `guard.half_open_jobs`.
pub(crate) const GUARD_HALF_OPEN_JOBS: u32 = 5;
/// Default of `guard.pause_poll_interval`.
pub(crate) const GUARD_PAUSE_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Guards before a handler runs (`src/guard/`): the kill switch that stops
/// consuming while PostgreSQL is down or most jobs fail transiently, and how
/// often paused job kinds are re-read besides LISTEN/NOTIFY.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Whether the kill switch may stop consuming at all.
    pub enabled: bool,
    /// Share (0 < x <= 1) of recent jobs of `failure_kinds` failing transiently
    /// within `window` that opens the switch.
    pub(crate) failure_share: f64,
    /// How far back the failure share looks.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) window: Duration,
    /// Jobs the window must hold before the share counts.
    pub(crate) min_samples: u32,
    /// Kinds whose transient failures count toward the share (a webhook
    /// receiver's outage is not a fleet outage; its breaker handles it).
    pub(crate) failure_kinds: Vec<String>,
    /// How often PostgreSQL is probed (`SELECT 1`), open or closed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub probe_interval: Duration,
    /// How long one probe may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub probe_timeout: Duration,
    /// Jobs let through after the probes succeed again (half-open); when they
    /// all succeed the switch closes, when one fails transiently it opens again.
    pub half_open_jobs: u32,
    /// How often paused kinds are re-read when no NOTIFY arrives.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub pause_poll_interval: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_share: GUARD_FAILURE_SHARE,
            window: GUARD_WINDOW,
            min_samples: GUARD_MIN_SAMPLES,
            failure_kinds: vec!["push".to_string()],
            probe_interval: GUARD_PROBE_INTERVAL,
            probe_timeout: GUARD_PROBE_TIMEOUT,
            half_open_jobs: GUARD_HALF_OPEN_JOBS,
            pause_poll_interval: GUARD_PAUSE_POLL_INTERVAL,
        }
    }
}

impl GuardConfig {
    /// The `[guard]` checks: the kill switch's share, window, probes and the pause poll.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let share = self.failure_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(ConfigError::Invalid {
                key: "guard.failure_share".into(),
                message: format!("must be > 0 and <= 1, got {share}"),
            });
        }
        positive("guard.window", self.window)?;
        range("guard.min_samples", self.min_samples.into(), 1..=100_000)?;
        positive("guard.probe_interval", self.probe_interval)?;
        positive("guard.probe_timeout", self.probe_timeout)?;
        range(
            "guard.half_open_jobs",
            self.half_open_jobs.into(),
            1..=10_000,
        )?;
        positive("guard.pause_poll_interval", self.pause_poll_interval)?;
        Ok(())
    }
}
