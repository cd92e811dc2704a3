//! `[rate_limit]`: token buckets per repository and per webhook subscription.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// Optional rate limits: token buckets per repository (push jobs) and per
/// webhook subscription (webhook jobs). A job over its rate is postponed to a
/// retry tier (its attempt counter unchanged), never dropped. Buckets are per
/// worker process: the fleet-wide rate is these times the number of workers.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Push jobs handled per second per repository; 0: no limit.
    pub push_per_repository: f64,
    /// Pushes of one repository let through at once after a quiet spell (the
    /// bucket size); 0: one second's worth.
    pub push_burst: u32,
    /// Per repository pattern (`owner/*`, `owner/name`) rates that replace
    /// `push_per_repository` (the longest matching pattern wins; 0: no limit).
    pub(crate) repositories: BTreeMap<String, f64>,
    /// Webhook deliveries per second per subscription; 0: no limit.
    pub webhook_per_subscription: f64,
    /// Bucket size of a subscription; 0: one second's worth.
    pub webhook_burst: u32,
}

impl RateLimitConfig {
    /// The `[rate_limit]` checks: every rate a finite number >= 0.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let rates = [
            (
                "rate_limit.push_per_repository".to_string(),
                self.push_per_repository,
            ),
            (
                "rate_limit.webhook_per_subscription".to_string(),
                self.webhook_per_subscription,
            ),
        ];
        let patterns = self
            .repositories
            .iter()
            .map(|(p, r)| (format!("rate_limit.repositories.{p:?}"), *r));
        for (key, r) in rates.into_iter().chain(patterns) {
            if !r.is_finite() || r < 0.0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be a rate per second >= 0, got {r}"),
                });
            }
        }
        Ok(())
    }
}
