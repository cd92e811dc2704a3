//! The outbox event: what a handler hands to [`enqueue`](super::enqueue), and its
//! headers in the JSON form the `outbox.headers` column stores.
//!
//! A file of its own so that [`storage`](super::storage), which writes events, and
//! the outbox's own functions, which call storage, both sit above it. It never
//! performs I/O.

use std::collections::BTreeMap;

use crate::amqp::topology::Names;
use crate::message::{Envelope, HeaderValue};

/// An outgoing event, as a handler hands it to [`enqueue`](super::enqueue).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Message id, correlation id, type and extra headers.
    pub envelope: Envelope,
    /// Target exchange (normally `<prefix>.events`).
    pub exchange: String,
    /// Routing key (normally the event type).
    pub(crate) routing_key: String,
    /// JSON body.
    pub(crate) payload: serde_json::Value,
    /// `traceparent` of the span that created the event (the creation context
    /// the relay publishes it with); `None` with tracing off.
    pub(crate) trace_context: Option<String>,
}

impl Event {
    /// An event of `event_type` for the events exchange, routed by its type, with a
    /// fresh UUID v7 message id.
    pub fn new(
        names: &Names,
        event_type: impl Into<String>,
        correlation_id: Option<String>,
        payload: serde_json::Value,
    ) -> Self {
        let event_type = event_type.into();
        Self {
            envelope: Envelope::new(event_type.clone(), correlation_id),
            exchange: names.events_exchange(),
            routing_key: event_type,
            payload,
            trace_context: crate::otel::propagate::traceparent_of(&tracing::Span::current()),
        }
    }

    /// The event type (the routing key when the envelope has none).
    pub(crate) fn event_type(&self) -> &str {
        self.envelope
            .event_type
            .as_deref()
            .unwrap_or(&self.routing_key)
    }
}

/// Headers as the JSON object stored in `outbox.headers`.
pub fn headers_to_json(headers: &BTreeMap<String, HeaderValue>) -> serde_json::Value {
    let map = headers
        .iter()
        .map(|(k, v)| {
            let v = match v {
                HeaderValue::Int(n) => serde_json::Value::from(*n),
                HeaderValue::Str(s) => serde_json::Value::String(s.clone()),
            };
            (k.clone(), v)
        })
        .collect();
    serde_json::Value::Object(map)
}

/// Headers read back from `outbox.headers`: integers and strings kept, other JSON
/// values (written by hand, not by hookfleet) carried as their JSON text.
pub fn headers_from_json(value: &serde_json::Value) -> BTreeMap<String, HeaderValue> {
    let Some(map) = value.as_object() else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            let h = match v {
                serde_json::Value::Null => return None,
                serde_json::Value::String(s) => HeaderValue::Str(s.clone()),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => HeaderValue::Int(i),
                    None => HeaderValue::Str(n.to_string()),
                },
                other => HeaderValue::Str(other.to_string()),
            };
            Some((k.clone(), h))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_json() {
        let h = BTreeMap::from([
            ("x-a".to_string(), HeaderValue::Int(3)),
            ("x-b".to_string(), HeaderValue::Str("s".into())),
        ]);
        assert_eq!(headers_from_json(&headers_to_json(&h)), h);
    }

    #[test]
    fn new_event_targets_the_events_exchange_by_type() {
        let e = Event::new(
            &Names::new("p"),
            "git.push",
            Some("c1".into()),
            serde_json::json!({}),
        );
        assert_eq!(e.exchange, "p.events");
        assert_eq!(e.routing_key, "git.push");
        assert_eq!(e.event_type(), "git.push");
    }
}
