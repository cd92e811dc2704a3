//! `[tracing]`: OpenTelemetry trace export.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// OpenTelemetry traces (see `crate::otel`): off by default. The standard
/// `OTEL_*` variables are read on top of this section (see `crate::otel::Settings`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Export spans. Also on when `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT` is set.
    pub enabled: bool,
    /// Collector base URL (`/v1/traces` appended); empty = the `OTEL_*` variables'.
    pub endpoint: String,
    /// `service.name` of the spans; `OTEL_SERVICE_NAME` wins.
    pub service_name: String,
    /// Share of new traces sampled (parent-based, so a push is all or nothing).
    pub(crate) sampler_ratio: f64,
    /// Spans waiting for export at most; more are dropped and counted, never waited for.
    pub(crate) max_queue_size: u64,
    /// Upper bound on one export request.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) export_timeout: Duration,
    /// How long a short-lived process (the hook) waits for its spans to leave at exit.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) flush_timeout: Duration,
}

impl TracingConfig {
    /// The `[tracing]` checks: a ratio in 0..=1, an http(s) endpoint, a queue.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let t = self;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if !(0.0..=1.0).contains(&t.sampler_ratio) {
            return Err(invalid(
                "tracing.sampler_ratio",
                format!("must be 0.0..=1.0, got {}", t.sampler_ratio),
            ));
        }
        let endpoint_ok = t.endpoint.is_empty()
            || url::Url::parse(&t.endpoint)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !endpoint_ok {
            return Err(invalid(
                "tracing.endpoint",
                format!(
                    "must be an absolute http or https URL, got {:?}",
                    t.endpoint
                ),
            ));
        }
        if !(1..=1_000_000).contains(&t.max_queue_size) {
            return Err(invalid(
                "tracing.max_queue_size",
                format!("must be 1..=1000000, got {}", t.max_queue_size),
            ));
        }
        for (key, d) in [
            ("tracing.export_timeout", t.export_timeout),
            ("tracing.flush_timeout", t.flush_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than 0s, got 0s".into()));
            }
        }
        Ok(())
    }
}
