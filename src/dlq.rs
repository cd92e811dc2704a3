//! Dead letters: list what is parked in `<prefix>.<kind>.dead`, and requeue it.
//!
//! Owns the operator's view of the dead queues. Listing takes messages without
//! acknowledging them and closes the channel, so the broker puts every one back
//! (they are marked redelivered; nothing is lost). Requeueing publishes a copy to
//! the work queue with `x-attempt` reset to 1 (confirmed) and only then acks the
//! dead copy, so a crash in between duplicates at worst, which the inbox absorbs.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, ShortString};

use crate::amqp::topology::Names;
use crate::amqp::{self, AmqpError, publish};
use crate::config::Config;
use crate::message::{self, HeaderValue};

/// One parked message as `dlq list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Message id, if it had one.
    pub message_id: Option<String>,
    /// Correlation id, if any.
    pub correlation_id: Option<String>,
    /// Attempts made.
    pub attempt: Option<i64>,
    /// Error class (`permanent`, `transient`, `panic`, `timeout`, `poison`).
    pub error_class: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// Body size in bytes.
    pub bytes: usize,
}

fn describe(m: &BasicGetMessage) -> DeadLetter {
    let p = &m.delivery.properties;
    let h = p
        .headers()
        .as_ref()
        .map(message::table_to_headers)
        .unwrap_or_default();
    let s = |k: &str| match h.get(k) {
        Some(HeaderValue::Str(v)) => Some(v.clone()),
        Some(HeaderValue::Int(n)) => Some(n.to_string()),
        None => None,
    };
    DeadLetter {
        message_id: p.message_id().as_ref().map(|v| v.to_string()),
        correlation_id: p.correlation_id().as_ref().map(|v| v.to_string()),
        attempt: match h.get(message::H_ATTEMPT) {
            Some(HeaderValue::Int(n)) => Some(*n),
            _ => None,
        },
        error_class: s(message::H_ERROR_CLASS),
        error: s(message::H_ERROR),
        bytes: m.delivery.data.len(),
    }
}

/// Lists up to `limit` dead letters of `kind` without removing them.
pub async fn list(config: &Config, kind: &str, limit: usize) -> Result<Vec<DeadLetter>, AmqpError> {
    let queue = Names::new(&config.amqp.prefix).dead_queue(kind);
    let conn = amqp::connect(&config.amqp, "dlq").await?;
    let ch = conn.create_channel().await?;
    let mut out = Vec::new();
    while out.len() < limit {
        match ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(m) => out.push(describe(&m)),
            None => break,
        }
    }
    // Closing without acking returns every message to the queue.
    amqp::close(&[&ch], &conn, Duration::from_secs(5)).await;
    Ok(out)
}

/// Moves up to `limit` dead letters of `kind` (only `message_id` when given) back
/// to the work queue; returns how many.
pub async fn requeue(
    config: &Config,
    kind: &str,
    limit: usize,
    message_id: Option<&str>,
) -> Result<usize, AmqpError> {
    let names = Names::new(&config.amqp.prefix);
    let queue = names.dead_queue(kind);
    let conn = amqp::connect(&config.amqp, "dlq").await?;
    let get = conn.create_channel().await?;
    let publisher = publish::confirm_channel(&conn).await?;
    let timeout = config.amqp.publish_timeout;
    let mut moved = 0;
    let mut scanned = 0;
    while moved < limit {
        let Some(m) = get
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        scanned += 1;
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|v| v.to_string());
        if message_id.is_some_and(|want| id.as_deref() != Some(want)) {
            if scanned > 100_000 {
                break;
            }
            continue;
        }
        let mut headers = m.delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(message::H_ATTEMPT),
            AMQPValue::LongLongInt(1),
        );
        headers.insert(
            ShortString::from("x-requeued-from"),
            AMQPValue::LongString(queue.as_str().into()),
        );
        let props = m.delivery.properties.clone().with_headers(headers);
        publish::publish_confirmed(
            &publisher,
            &names.jobs_exchange(),
            kind,
            &m.delivery.data,
            props,
            true,
            timeout,
        )
        .await?;
        get.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        moved += 1;
    }
    // Messages skipped by the filter go back when the channel closes.
    amqp::close(&[&get, &publisher], &conn, Duration::from_secs(5)).await;
    Ok(moved)
}
