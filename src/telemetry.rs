//! Logging setup: `tracing-subscriber` with JSON off a terminal and pretty on one,
//! and, with `[tracing]` on, the OpenTelemetry layer exporting hookfleet's spans.
//!
//! Called once from `main`; the library never installs a subscriber itself, so tests
//! and embedding programs choose their own ([`otel_layer`] is public for them).

use std::io::IsTerminal;

use opentelemetry::trace::TraceContextExt;
use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::{LogConfig, LogFormat, TracingConfig};
use crate::otel::Exporter;

/// The layer exporting hookfleet's own spans (info and above) through `tracer`;
/// the log filter does not apply to it (quiet logs keep their traces).
pub fn otel_layer<S>(tracer: opentelemetry_sdk::trace::SdkTracer) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target("hookfleet", LevelFilter::INFO))
}

/// The hook's subscriber: spans only, no log output (its stderr is the pusher's
/// terminal). Returns the exporter to flush before exit, when tracing is on.
pub(crate) fn init_spans_only(tracing: &TracingConfig) -> Option<Exporter> {
    let (exporter, tracer) = Exporter::build(tracing)?;
    let _ = tracing_subscriber::registry()
        .with(otel_layer(tracer))
        .try_init();
    Some(exporter)
}

/// JSON log lines with the OpenTelemetry `trace_id` and `span_id` of the span
/// they were written in (when it has them) as the first two fields.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // The OpenTelemetry layer activates the entered span's context.
        let ids = opentelemetry::Context::map_current(|cx| {
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
/// Logs go to stderr so command output on stdout stays machine-readable. With
/// `[tracing]` on, returns the exporter (flush it before exit).
pub(crate) fn init(cfg: &LogConfig, tracing: &TracingConfig) -> Option<Exporter> {
    let filter = log_filter(cfg);
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let (exporter, tracer) = Exporter::build(tracing).unzip();
    let registry = tracing_subscriber::registry().with(tracer.map(otel_layer));
    let result = if json {
        let format = fmt::format()
            .json()
            .with_current_span(true)
            .with_span_list(false);
        registry
            .with(
                fmt::layer()
                    .json()
                    .event_format(WithTraceIds(format))
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    };
    // A subscriber already installed (tests) is fine.
    let _ = result;
    exporter
}

/// The log filter: `RUST_LOG` when set and valid, else `log.level`, either way
/// with the noisy crates quietened and trace-only spans left out.
fn log_filter(cfg: &LogConfig) -> EnvFilter {
    // PostgreSQL NOTICEs ("relation already exists, skipping") are noise at info.
    // lapin logs its own view of every failure as Debug dumps (a refused login is
    // five ERROR lines, a node's routine shutdown an ERROR, every returned message
    // a WARN with the body as decimal bytes), while each of those failures also
    // reaches hookfleet as an error that it reports once, readably, with the node
    // and what it does next. So lapin's own lines are off.
    let quiet = "sqlx::postgres::notice=warn,lapin=off";
    // The quiet directive is appended to RUST_LOG too (a debugging session does not
    // want them either) unless RUST_LOG says something about sqlx or lapin itself.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.trim().is_empty())
        .map(|spec| {
            if spec.contains("sqlx") || spec.contains("lapin") {
                spec
            } else {
                format!("{spec},{quiet}")
            }
        })
        .ok_or(())
        .and_then(|spec| EnvFilter::try_new(spec).map_err(|_| ()));
    let filter = from_env
        .or_else(|_| EnvFilter::try_new(format!("{},{quiet}", cfg.level)))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{quiet}")));
    // Spans made for traces only (database, HTTP client, publish; see
    // `otel::span`) stay out of the logs: a line keeps its delivery span.
    match "hookfleet::otel=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::*;

    /// Collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_ids() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let buf = Buf::default();
        let out = buf.clone();
        let format = fmt::format()
            .json()
            .with_current_span(true)
            .with_span_list(false);
        let subscriber = tracing_subscriber::registry()
            .with(otel_layer(provider.tracer("test")))
            .with(
                fmt::layer()
                    .json()
                    .event_format(WithTraceIds(format))
                    .with_writer(move || out.clone()),
            );
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("delivery");
            let _entered = span.enter();
            tracing::info!("inside");
            let sc = span.context().span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["trace_id"], trace_id.as_str());
        assert_eq!(lines[1]["span_id"], span_id.as_str());
        assert_eq!(lines[1]["fields"]["message"], "inside");
    }
}
