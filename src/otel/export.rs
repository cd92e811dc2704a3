//! Span export: the OpenTelemetry tracer provider behind the `tracing` layer.
//!
//! Owns the `[tracing]` section's effect and the standard `OTEL_*` variables on
//! top of it ([`Settings`]), the parent-based sampler, and the bounded batch
//! export over OTLP HTTP/protobuf. Export never blocks a job: spans go to a
//! bounded queue drained by the batch processor's own thread, and when the queue
//! is full (a slow or unreachable collector) a span is dropped and counted in
//! `hookfleet_trace_spans_dropped_total` instead of waited for.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};

use crate::config::TracingConfig;

/// Spans per export request.
const MAX_EXPORT_BATCH: usize = 512;
/// How long spans wait to fill a batch.
const SCHEDULED_DELAY: Duration = Duration::from_millis(200);

/// What the exporter is set to after the `OTEL_*` variables are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Whether spans are exported at all.
    pub(crate) enabled: bool,
    /// Full traces URL (`.../v1/traces`), or `None` for the exporter's own
    /// reading of `OTEL_EXPORTER_OTLP_*ENDPOINT` (default `http://localhost:4318`).
    pub(crate) traces_url: Option<String>,
    /// `service.name`.
    pub(crate) service_name: String,
    /// Sampler of root spans (children follow their parent).
    pub(crate) root_ratio: f64,
    /// Whether the parent's decision is followed (`parentbased_*`, the default).
    pub(crate) parent_based: bool,
}

impl Settings {
    /// The `[tracing]` section with the process environment on top.
    pub(crate) fn from_env(cfg: &TracingConfig) -> Settings {
        Self::from_vars(cfg, |k| {
            std::env::var(k).ok().filter(|v| !v.trim().is_empty())
        })
    }

    /// As [`Settings::from_env`], with the variables given (tests).
    pub(crate) fn from_vars(cfg: &TracingConfig, var: impl Fn(&str) -> Option<String>) -> Settings {
        let env_endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true");
        let enabled = !disabled && (cfg.enabled || env_endpoint.is_some());
        let traces_url = (!cfg.endpoint.is_empty())
            .then(|| format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/')));
        let service_name = var("OTEL_SERVICE_NAME").unwrap_or_else(|| cfg.service_name.clone());
        let arg = var("OTEL_TRACES_SAMPLER_ARG").and_then(|a| a.trim().parse::<f64>().ok());
        let (root_ratio, parent_based) = match var("OTEL_TRACES_SAMPLER").as_deref().map(str::trim)
        {
            Some("always_on") => (1.0, false),
            Some("always_off") => (0.0, false),
            Some("traceidratio") => (arg.unwrap_or(1.0), false),
            Some("parentbased_always_on") => (1.0, true),
            Some("parentbased_always_off") => (0.0, true),
            Some("parentbased_traceidratio") => (arg.unwrap_or(1.0), true),
            _ => (cfg.sampler_ratio, true),
        };
        Settings {
            enabled,
            traces_url,
            service_name,
            root_ratio: root_ratio.clamp(0.0, 1.0),
            parent_based,
        }
    }

    fn sampler(&self) -> Sampler {
        let root = if self.root_ratio >= 1.0 {
            Sampler::AlwaysOn
        } else if self.root_ratio <= 0.0 {
            Sampler::AlwaysOff
        } else {
            Sampler::TraceIdRatioBased(self.root_ratio)
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }
}

/// The installed provider; flush it before a short-lived process exits.
#[derive(Debug, Clone)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Builds the provider of `cfg` (with the `OTEL_*` variables), or `None` when
    /// tracing is off or the exporter cannot be built (reported on stderr: the
    /// program runs on without traces).
    pub fn build(cfg: &TracingConfig) -> Option<(Exporter, SdkTracer)> {
        let settings = Settings::from_env(cfg);
        if !settings.enabled {
            return None;
        }
        // reqwest is built without a default TLS provider (see Cargo.toml): the
        // exporter's client takes the process default, ring, as the rest of
        // hookfleet uses. Already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(cfg.export_timeout);
        if let Some(url) = &settings.traces_url {
            builder = builder.with_endpoint(url.clone());
        }
        let exporter = match builder.build() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("hookfleet: tracing off: cannot build the OTLP exporter: {e}");
                return None;
            }
        };
        let cap = usize::try_from(cfg.max_queue_size).unwrap_or(usize::MAX);
        let queued = Arc::new(AtomicUsize::new(0));
        let batch = BatchSpanProcessor::builder(Counted {
            inner: exporter,
            queued: queued.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                // Room above the cap: [`Bounded`] drops first, and counts.
                .with_max_queue_size(cap.saturating_mul(2))
                .with_max_export_batch_size(MAX_EXPORT_BATCH)
                .with_scheduled_delay(SCHEDULED_DELAY)
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batch,
                queued,
                cap,
            })
            .with_sampler(settings.sampler())
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("hookfleet");
        // Spans built outside `tracing` (see `super::span::db_batch`) use it too.
        opentelemetry::global::set_tracer_provider(provider.clone());
        Some((Exporter { provider }, tracer))
    }

    /// Sends what is queued, waiting at most `timeout`; then stops the exporter.
    pub(crate) fn shutdown(&self, timeout: Duration) {
        let _ = self.provider.shutdown_with_timeout(timeout);
    }
}

/// The batch processor behind a counter: spans beyond `cap` waiting for export
/// are dropped here, counted in `hookfleet_trace_spans_dropped_total`.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.cap {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            crate::metrics::metrics().trace_spans_dropped_total.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, giving back [`Bounded`]'s room as batches leave the queue.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
        self.inner.export(batch).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TracingConfig {
        TracingConfig {
            enabled: false,
            endpoint: String::new(),
            service_name: "hookfleet".into(),
            sampler_ratio: 1.0,
            max_queue_size: 16,
            export_timeout: Duration::from_secs(2),
            flush_timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn spans_beyond_the_queue_are_dropped_and_counted_not_waited_for() {
        use opentelemetry::trace::{Span as _, Tracer as _};
        // Bound and never accepted: every export request hangs.
        let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = cfg();
        c.enabled = true;
        c.endpoint = format!("http://{}", blackhole.local_addr().unwrap());
        c.max_queue_size = 4;
        let (exporter, tracer) = Exporter::build(&c).unwrap();
        let dropped = || crate::metrics::metrics().trace_spans_dropped_total.get();
        let before = dropped();
        for _ in 0..20 {
            tracer.start("span").end();
        }
        // 4 fit; the first export (which frees room) starts only after the
        // batch delay, so most of the other 16 are dropped, and counted.
        assert!(dropped() - before >= 8, "dropped {}", dropped() - before);
        exporter.shutdown(Duration::from_millis(50));
    }

    #[test]
    fn otel_variables_turn_it_on_and_win_over_the_section() {
        let vars = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://c:4318".to_string()),
            "OTEL_SERVICE_NAME" => Some("git-host".to_string()),
            "OTEL_TRACES_SAMPLER" => Some("parentbased_traceidratio".to_string()),
            "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".to_string()),
            _ => None,
        };
        let s = Settings::from_vars(&cfg(), vars);
        assert!(s.enabled);
        assert_eq!(s.traces_url, None, "the exporter reads the variable itself");
        assert_eq!(s.service_name, "git-host");
        assert_eq!((s.root_ratio, s.parent_based), (0.25, true));
        let off = Settings::from_vars(&cfg(), |_| None);
        assert!(!off.enabled, "off by default");
        let mut on = cfg();
        on.enabled = true;
        on.endpoint = "http://collector:4318/".into();
        let s = Settings::from_vars(&on, |k| {
            (k == "OTEL_SDK_DISABLED").then(|| "true".to_string())
        });
        assert!(!s.enabled, "OTEL_SDK_DISABLED wins");
        let s = Settings::from_vars(&on, |_| None);
        assert_eq!(
            s.traces_url.as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert!(s.parent_based, "a push is sampled whole");
    }
}
