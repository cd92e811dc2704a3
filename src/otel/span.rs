//! Spans named and attributed per the OpenTelemetry semantic conventions
//! (messaging, database, HTTP client), built once here so every call site says
//! the same. `otel.name` and `otel.kind` are read by `tracing-opentelemetry`.

use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::Link;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::message::Envelope;

/// `publish <exchange>` (producer): a message sent to RabbitMQ.
pub(crate) fn publish(
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    conversation: Option<&str>,
) -> tracing::Span {
    tracing::info_span!(
        "publish",
        otel.name = format!("publish {exchange}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = message_id,
        messaging.message.conversation_id = conversation,
        hookfleet.replayed_from = Empty,
    )
}

/// The messaging attributes of a worker's `process <queue>` span (the
/// consumer's delivery span). Set on the OpenTelemetry span only, so the
/// delivery's JSON log lines stay as short as they were.
pub(crate) fn process_attributes(
    span: &tracing::Span,
    envelope: &Envelope,
    queue: &str,
    routing_key: &str,
) {
    span.set_attribute("messaging.system", "rabbitmq");
    span.set_attribute("messaging.operation.type", "process");
    span.set_attribute("messaging.destination.name", queue.to_string());
    span.set_attribute(
        "messaging.rabbitmq.destination.routing_key",
        routing_key.to_string(),
    );
    span.set_attribute("messaging.message.id", envelope.message_id.to_string());
    if let Some(c) = &envelope.correlation_id {
        span.set_attribute("messaging.message.conversation_id", c.clone());
    }
    span.set_attribute(
        "messaging.rabbitmq.message.attempt",
        i64::from(envelope.attempt()),
    );
}

/// A PostgreSQL statement (client): `summary` is the span name, e.g.
/// `INSERT pushes` or `SELECT outbox`.
pub(crate) fn db(operation: &'static str, summary: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db",
        otel.name = summary,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.query.summary = summary,
    )
}

/// An outgoing webhook request (client): named after its method. Only the
/// host is recorded: a webhook URL's path or query may hold a token.
pub(crate) fn http_client(method: &'static str, host: &str) -> tracing::Span {
    tracing::info_span!(
        "http",
        otel.name = method,
        otel.kind = "client",
        http.request.method = method,
        server.address = host,
        http.response.status_code = Empty,
    )
}

/// A finished database span (client, a new root) from `started` to now, linked
/// to the creation contexts (`traceparent`s) of the rows it handled. Built after
/// the fact so that only statements that found rows are traced: the relay's
/// idle polls would otherwise be a trace each. Does nothing with tracing off
/// or without rows.
pub(crate) fn db_batch<'a>(
    operation: &'static str,
    summary: &'static str,
    started: SystemTime,
    rows: impl IntoIterator<Item = &'a str>,
) {
    use opentelemetry::trace::{Span as _, SpanKind, Tracer as _};
    let links: Vec<Link> = rows
        .into_iter()
        .filter_map(|tp| super::propagate::span_context(tp, None))
        .map(Link::with_context)
        .collect();
    if links.is_empty() {
        return;
    }
    let tracer = opentelemetry::global::tracer("hookfleet");
    let rows = i64::try_from(links.len()).unwrap_or(i64::MAX);
    let mut span = tracer
        .span_builder(summary)
        .with_kind(SpanKind::Client)
        .with_start_time(started)
        .with_links(links)
        .with_attributes([
            KeyValue::new("db.system.name", "postgresql"),
            KeyValue::new("db.operation.name", operation),
            KeyValue::new("db.query.summary", summary),
            KeyValue::new("db.response.returned_rows", rows),
        ])
        .start_with_context(&tracer, &opentelemetry::Context::new());
    span.end();
}
