//! [`Config`]: every section, and the checks and values that span sections.

use serde::{Deserialize, Serialize};

use super::admin::AdminConfig;
use super::amqp::AmqpConfig;
use super::database::DatabaseConfig;
use super::error::ConfigError;
use super::fairness::FairnessConfig;
use super::guard::GuardConfig;
use super::hook::HookConfig;
use super::log::LogConfig;
use super::outbox::OutboxConfig;
use super::push::PushConfig;
use super::rate_limit::RateLimitConfig;
use super::retry::RetryConfig;
use super::site::SiteConfig;
use super::spool::SpoolConfig;
use super::tracing::TracingConfig;
use super::webhook::WebhookConfig;
use super::worker::WorkerConfig;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// RabbitMQ.
    pub amqp: AmqpConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Task pool.
    pub worker: WorkerConfig,
    /// Retries.
    pub retry: RetryConfig,
    /// Outbox and relay.
    pub outbox: OutboxConfig,
    /// Admin HTTP.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// OpenTelemetry traces.
    pub tracing: TracingConfig,
    /// Hook spool.
    pub spool: SpoolConfig,
    /// post-receive hook.
    pub hook: HookConfig,
    /// Push handler.
    pub push: PushConfig,
    /// Webhook delivery.
    pub webhook: WebhookConfig,
    /// Optional rate limits (token buckets) that postpone the excess.
    pub rate_limit: RateLimitConfig,
    /// The git host's URLs in webhook bodies.
    pub(crate) site: SiteConfig,
    /// Guards before a handler runs (kill switch, pause polling).
    #[serde(default)]
    pub guard: GuardConfig,
    /// Fairness between repositories: the bulk queue for storms.
    #[serde(default)]
    pub fairness: FairnessConfig,
}

impl Config {
    /// Checks ranges and cross-field rules, naming the key, the value and what is allowed.
    /// Each section checks itself (its own `validate`); a section whose ranges depend
    /// on another's values (worker on amqp, push on database and amqp, webhook on
    /// worker) is given that section and checked after it, so a bad value is reported
    /// under its own key first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.amqp.validate()?;
        self.database.validate()?;
        self.worker.validate(&self.amqp)?;
        self.retry.validate()?;
        self.rate_limit.validate()?;
        self.outbox.validate()?;
        self.admin.validate()?;
        self.guard.validate()?;
        self.fairness.validate()?;
        self.hook.validate()?;
        self.push.validate(&self.database, &self.amqp)?;
        self.webhook.validate(&self.worker)?;
        self.site.validate()?;
        self.tracing.validate()
    }

    /// The effective config as TOML with every secret redacted (for `config check`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Permits the bulk queue may hold: `fairness.bulk_concurrency`, but
    /// always one fewer than `worker.concurrency` (at least one), so the push
    /// queue keeps a permit however the two are set.
    pub(crate) fn bulk_permits(&self) -> u32 {
        self.fairness
            .bulk_concurrency
            .min(self.worker.concurrency.saturating_sub(1))
            .max(1)
    }

    /// Prefetch per consumer channel: the override, or the pool size (capped to u16).
    pub(crate) fn prefetch(&self) -> u16 {
        if self.amqp.prefetch > 0 {
            self.amqp.prefetch
        } else {
            u16::try_from(self.worker.concurrency).unwrap_or(u16::MAX)
        }
    }
}
