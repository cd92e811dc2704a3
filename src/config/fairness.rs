//! `[fairness]`: the bulk queue that storms of pushes are routed to, and its pacing.

use serde::{Deserialize, Serialize};

use super::check::range;
use super::error::ConfigError;

/// Fairness between repositories and owners (`src/hook/fairness.rs`): the
/// hook sends a push to the kind's bulk queue (`<prefix>.push.bulk`) instead of
/// the push queue once its repository or its owner has used up a token bucket,
/// and workers give the bulk queue at most `bulk_concurrency` permits. A storm
/// then queues behind itself, not ahead of other repositories' pushes.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FairnessConfig {
    /// Whether the hook routes storms to the bulk queue (off: every push goes
    /// to the push queue, as one FIFO).
    pub enabled: bool,
    /// Pushes per second one repository may send to the push queue.
    pub(crate) repository_rate: f64,
    /// Pushes of one repository sent to the push queue at once after a quiet
    /// spell (the bucket size).
    pub(crate) repository_burst: u32,
    /// Pushes per second all repositories of one owner (`owner/*`) may send to
    /// the push queue.
    pub(crate) owner_rate: f64,
    /// Bucket size of an owner.
    pub(crate) owner_burst: u32,
    /// Pool permits the bulk queue's deliveries may hold in one worker (they
    /// also count against `worker.concurrency`; the rest stay free for the
    /// push queue).
    pub bulk_concurrency: u32,
    /// Whether a worker paces its bulk queue by how its push queue fares
    /// (`src/guard/pacer.rs`): bulk jobs start only as fast as they leave the
    /// push queue's jobs within `bulk_tolerance` of their time without a storm,
    /// and the outbox's lag within `bulk_tolerance` of its usual value.
    pub(crate) bulk_pacing: bool,
    /// A push-queue job slower than this multiple of its time without a storm
    /// counts as slowed by the storm (more than 1 in 10 slowed halves the bulk
    /// rate), and so does an outbox lag above this multiple of its usual value
    /// (and above 25 ms).
    pub(crate) bulk_tolerance: f64,
    /// Bulk jobs per second a worker starts however slowed its push queue is,
    /// so that a storm always drains.
    pub(crate) bulk_min_rate: f64,
}

/// Default of `fairness.repository_rate`.
pub(crate) const FAIRNESS_REPOSITORY_RATE: f64 = 50.0;
/// Default of `fairness.repository_burst`.
pub(crate) const FAIRNESS_REPOSITORY_BURST: u32 = 20;
/// Default of `fairness.owner_rate`.
pub(crate) const FAIRNESS_OWNER_RATE: f64 = 100.0;
/// Default of `fairness.owner_burst`.
pub(crate) const FAIRNESS_OWNER_BURST: u32 = 100;
/// Default of `fairness.bulk_concurrency`.
pub(crate) const FAIRNESS_BULK_CONCURRENCY: u32 = 4;
/// Default of `fairness.bulk_tolerance`.
pub(crate) const FAIRNESS_BULK_TOLERANCE: f64 = 2.0;
/// Default of `fairness.bulk_min_rate`.
pub(crate) const FAIRNESS_BULK_MIN_RATE: f64 = 20.0;

impl Default for FairnessConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            repository_rate: FAIRNESS_REPOSITORY_RATE,
            repository_burst: FAIRNESS_REPOSITORY_BURST,
            owner_rate: FAIRNESS_OWNER_RATE,
            owner_burst: FAIRNESS_OWNER_BURST,
            bulk_concurrency: FAIRNESS_BULK_CONCURRENCY,
            bulk_pacing: true,
            bulk_tolerance: FAIRNESS_BULK_TOLERANCE,
            bulk_min_rate: FAIRNESS_BULK_MIN_RATE,
        }
    }
}

impl FairnessConfig {
    /// `[fairness]`: rates finite and positive, buckets of at least one push,
    /// a tolerance of at least 1 (a push job is never faster than itself).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let f = self;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("fairness.{key}"),
            message,
        };
        for (key, r) in [
            ("repository_rate", f.repository_rate),
            ("owner_rate", f.owner_rate),
            ("bulk_min_rate", f.bulk_min_rate),
        ] {
            if !r.is_finite() || r <= 0.0 {
                return Err(invalid(
                    key,
                    format!("must be a rate per second > 0, got {r}"),
                ));
            }
        }
        range(
            "fairness.repository_burst",
            f.repository_burst.into(),
            1..=1_000_000,
        )?;
        range("fairness.owner_burst", f.owner_burst.into(), 1..=1_000_000)?;
        range(
            "fairness.bulk_concurrency",
            f.bulk_concurrency.into(),
            1..=10_000,
        )?;
        if !(1.0..=100.0).contains(&f.bulk_tolerance) {
            return Err(invalid(
                "bulk_tolerance",
                format!(
                    "must be a multiple between 1 and 100, got {}",
                    f.bulk_tolerance
                ),
            ));
        }
        Ok(())
    }
}
