//! The transactional outbox: events written in the caller's database transaction,
//! published later by the [`relay`].
//!
//! Owns the outbox side of the message contract: [`Event`] ([`event`]), [`enqueue`] /
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

pub(crate) mod event;
pub mod prune;
pub(crate) mod relay;
pub mod replay;
pub mod status;
pub mod storage;

use std::collections::BTreeMap;

use lapin::BasicProperties;
use sqlx::{Postgres, Transaction};

use crate::message::{Envelope, HeaderValue};

pub use event::{Event, headers_from_json, headers_to_json};
pub use prune::{prune_once, run_outbox_pruner};
pub use relay::run_relay;
pub(crate) use storage::NOTIFY_CHANNEL;

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

/// The envelope a stored row is published with.
pub(crate) fn row_envelope(row: &storage::OutboxRow) -> Envelope {
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
pub(crate) fn row_properties(row: &storage::OutboxRow) -> BasicProperties {
    row_envelope(row).to_properties()
}

/// The body of a stored row: its payload as JSON text, exactly as PostgreSQL
/// prints the `jsonb` (read as text: no parse and re-serialise per row).
pub(crate) fn row_body(row: &storage::OutboxRow) -> &[u8] {
    row.payload.as_bytes()
}
