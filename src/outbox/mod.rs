//! The transactional outbox: events written in the caller's database transaction,
//! published later by the [`relay`].
//!
//! Owns the outbox side of the message contract: [`Event`], [`enqueue`] /
//! [`enqueue_many`] (called inside a handler's transaction, so an event exists if
//! and only if the handler's effects committed), the relay, retention pruning,
//! `outbox status` and `outbox replay`. All SQL lives in [`storage`]. This module
//! never begins or commits the handler's transaction and never touches the inbox
//! claim (the consumer core owns both); it only prunes old inbox rows.
//!
//! # Delivery and ordering guarantees
//! - At least once: a row is marked published only after the broker confirmed it
//!   (ack, not returned). A crash between confirm and commit publishes it again with
//!   the same `message_id`, which consumers dedupe on.
//! - No double publication in normal operation: relays claim rows with
//!   `FOR UPDATE SKIP LOCKED`, so several relays never hold the same row.
//! - Order: one relay claims rows `ORDER BY id` and publishes a batch in that order
//!   on one channel, so events of one correlation id published by one relay arrive
//!   in id (insertion) order. Not guaranteed: across several relays (each takes a
//!   different batch), and for a row whose publish failed — it is retried after a
//!   backoff, later rows are not held back for it.

pub mod prune;
pub mod relay;
pub mod replay;
pub mod status;
pub mod storage;

use std::collections::BTreeMap;

use lapin::BasicProperties;
use sqlx::{Postgres, Transaction};

use crate::amqp::topology::Names;
use crate::message::{Envelope, HeaderValue};

pub use prune::{prune_once, run_pruner};
pub use relay::run_relay;

/// The PostgreSQL notification channel the outbox trigger signals on insert.
pub const NOTIFY_CHANNEL: &str = "hookfleet_outbox";

/// An outgoing event, as a handler hands it to [`enqueue`].
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Message id, correlation id, type and extra headers.
    pub envelope: Envelope,
    /// Target exchange (normally `<prefix>.events`).
    pub exchange: String,
    /// Routing key (normally the event type).
    pub routing_key: String,
    /// JSON body.
    pub payload: serde_json::Value,
    /// `traceparent` of the span that created the event (the creation context
    /// the relay publishes it with); `None` with tracing off.
    pub trace_context: Option<String>,
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

    /// Sets a header.
    pub fn with_header(mut self, key: &str, value: HeaderValue) -> Self {
        self.envelope = self.envelope.with_header(key, value);
        self
    }

    /// The event type (the routing key when the envelope has none).
    pub fn event_type(&self) -> &str {
        self.envelope
            .event_type
            .as_deref()
            .unwrap_or(&self.routing_key)
    }
}

/// Writes one event in the caller's transaction. It is published once the
/// transaction commits (and never if it rolls back).
pub async fn enqueue(
    tx: &mut Transaction<'static, Postgres>,
    event: &Event,
) -> Result<(), sqlx::Error> {
    storage::insert_events(tx, std::slice::from_ref(event)).await
}

/// Writes many events with one multi-row INSERT (one round trip), in slice order
/// (so ids, and thus publication order, follow the slice).
pub async fn enqueue_many(
    tx: &mut Transaction<'static, Postgres>,
    events: &[Event],
) -> Result<(), sqlx::Error> {
    storage::insert_events(tx, events).await
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

/// The envelope a stored row is published with.
pub fn row_envelope(row: &storage::OutboxRow) -> Envelope {
    Envelope {
        message_id: row.message_id,
        correlation_id: row.correlation_id.clone(),
        event_type: Some(row.event_type.clone()),
        timestamp: Some(u64::try_from(row.created_at.timestamp()).unwrap_or(0)),
        headers: row_headers(row),
    }
}

/// The row's headers, with its creation context as `traceparent` (the relay
/// publishes each event in the trace that wrote it).
fn row_headers(row: &storage::OutboxRow) -> BTreeMap<String, HeaderValue> {
    let mut headers = headers_from_json(&row.headers);
    if let Some(tp) = &row.trace_context {
        headers.insert(
            crate::otel::propagate::TRACEPARENT.to_string(),
            HeaderValue::Str(tp.clone()),
        );
    }
    headers
}

/// AMQP properties of a stored row (persistent, JSON, ids and headers from the row).
pub fn row_properties(row: &storage::OutboxRow) -> BasicProperties {
    row_envelope(row).to_properties()
}

/// The body of a stored row: its payload as JSON text, exactly as PostgreSQL
/// prints the `jsonb` (read as text: no parse and re-serialise per row).
pub fn row_body(row: &storage::OutboxRow) -> &[u8] {
    row.payload.as_bytes()
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
