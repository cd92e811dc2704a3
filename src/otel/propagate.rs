//! W3C Trace Context across processes: AMQP headers, outbox rows, the hook's
//! environment and webhook requests.
//!
//! Owns the header names (`traceparent`, `tracestate`) and the mapping between a
//! `tracing` span's OpenTelemetry context and those strings. With tracing off no
//! span has a valid context, so nothing is written and nothing read back changes
//! anything.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::message::HeaderValue;

/// The W3C header carrying trace id, parent span id and flags.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor state.
pub(crate) const TRACESTATE: &str = "tracestate";

/// The `traceparent` and (when not empty) `tracestate` of `span`, or nothing
/// when it has no valid context (tracing off, or not sampled by a layer).
pub(crate) fn headers_of(span: &tracing::Span) -> Vec<(&'static str, String)> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut map));
    [TRACEPARENT, TRACESTATE]
        .into_iter()
        .filter_map(|k| map.remove(k).filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
}

/// The `traceparent` of `span`, if it has a valid context.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    headers_of(span)
        .into_iter()
        .find_map(|(k, v)| (k == TRACEPARENT).then_some(v))
}

#[cfg(test)]
/// Writes the current span's context into message headers (replacing any).
pub(crate) fn inject_current(headers: &mut BTreeMap<String, HeaderValue>) {
    for (k, v) in headers_of(&tracing::Span::current()) {
        headers.insert(k.to_string(), HeaderValue::Str(v));
    }
}

/// The context carried by message headers (empty when none or malformed).
pub(crate) fn extract(headers: &BTreeMap<String, HeaderValue>) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The span context of a `traceparent` (+ `tracestate`) pair, if valid.
pub(crate) fn span_context(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut map = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    if let Some(s) = tracestate {
        map.insert(TRACESTATE.to_string(), s.to_string());
    }
    let cx = TraceContextPropagator::new().extract(&map);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The context CI systems hand a process in `TRACEPARENT`/`TRACESTATE`.
pub(crate) fn from_env() -> Option<Context> {
    let parent = std::env::var("TRACEPARENT").ok()?;
    let state = std::env::var("TRACESTATE").ok();
    let sc = span_context(parent.trim(), state.as_deref())?;
    Some(Context::new().with_remote_span_context(sc))
}

/// Makes `span` a child of the context in `headers`, when there is one.
pub(crate) fn continue_from(span: &tracing::Span, headers: &BTreeMap<String, HeaderValue>) {
    let cx = extract(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct HeaderExtractor<'a>(&'a BTreeMap<String, HeaderValue>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(HeaderValue::Str(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let headers = BTreeMap::from([(TRACEPARENT.to_string(), HeaderValue::Str(tp.into()))]);
        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span_context(tp, None), Some(sc));
        assert_eq!(span_context("00-zz-1-01", None), None);
        assert!(!extract(&BTreeMap::new()).span().span_context().is_valid());
    }

    #[test]
    fn without_a_tracing_layer_nothing_is_injected() {
        let mut headers = BTreeMap::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
    }
}
