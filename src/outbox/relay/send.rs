//! Publishing one claimed batch: rows pipelined on the confirm channel, suspects
//! alone, rows that would close the channel failed before they are sent.

use std::collections::HashSet;
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::broker::{Broker, missing_exchanges};
use super::confirm::{Outcome, Sent};
use super::policy::{RowPolicy, refused_by_broker};
use lapin::PublisherConfirm;

use crate::amqp::{AmqpError, publish};
use crate::otel;
use crate::outbox::storage::{Failure, OutboxRow};

/// Sends `rows` in id order on the broker's channel without waiting for their
/// confirms (see [`await_confirms`](super::confirm::await_confirms)), except
/// suspects, each sent alone and confirmed before the next row goes (see the
/// [relay's module doc](super)). Rows aimed at an
/// exchange that does not exist, or bigger than the broker takes, are failed
/// here, before they could close the channel.
pub(super) async fn send_rows(
    broker: &mut Broker,
    rows: &[OutboxRow],
    timeout: Duration,
    policy: RowPolicy,
    suspects: &mut HashSet<i64>,
) -> Sent {
    let mut sent = Sent {
        pending: Vec::with_capacity(rows.len()),
        outcome: Outcome::default(),
        deadline: tokio::time::Instant::now() + timeout,
        policy,
        timeout,
    };
    let missing = match missing_exchanges(broker, rows, timeout).await {
        Ok(m) => m,
        Err(e) => {
            sent.outcome.broken = Some(e);
            return sent;
        }
    };
    for row in rows {
        let body = crate::outbox::row_body(row);
        if let Some(failure) = refusal(row, body.len(), &missing, policy) {
            sent.outcome.failed.push(failure);
            continue;
        }
        if suspects.contains(&row.id) {
            // Everything sent before it must be settled first, so that a closed
            // channel can only be this row's doing.
            sent.settle_pending().await;
            if sent.outcome.broken.is_some() {
                break;
            }
            if let Err(e) = send_suspect(broker, row, &mut sent, suspects).await {
                sent.outcome.broken = Some(e);
                break;
            }
            continue;
        }
        match send_pipelined(broker, row, body, sent.deadline, timeout).await {
            Ok(confirm) => {
                sent.pending
                    .push((row.id, row.publish_attempts, row.message_id, confirm));
            }
            Err(e) => {
                sent.outcome.broken = Some(e);
                break;
            }
        }
    }
    sent
}

/// The failure of a row that must not be sent: aimed at an exchange in
/// `missing`, or with a body of `body_len` bytes, more than the broker takes
/// (parked at once: retrying cannot help until the limit is raised). Either
/// would close the channel for every row behind it.
fn refusal(
    row: &OutboxRow,
    body_len: usize,
    missing: &HashSet<String>,
    policy: RowPolicy,
) -> Option<Failure> {
    if missing.contains(&row.exchange) {
        let error = format!("exchange {:?} does not exist", row.exchange);
        return Some(policy.failure(row.id, row.publish_attempts, error));
    }
    if body_len > policy.max_message_bytes {
        return Some(Failure {
            id: row.id,
            error: format!(
                "body of {} bytes exceeds amqp.max_message_bytes ({})",
                body_len, policy.max_message_bytes
            ),
            retry_in: None,
        });
    }
    None
}

/// Sends one row without awaiting its confirm (within the batch's `deadline`),
/// in the row's trace when it was written in one.
async fn send_pipelined(
    broker: &Broker,
    row: &OutboxRow,
    body: &[u8],
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<PublisherConfirm, AmqpError> {
    let send = tokio::time::timeout_at(
        deadline,
        publish::send(
            &broker.channel,
            &row.exchange,
            &row.routing_key,
            body,
            crate::outbox::row_properties(row),
            true,
        ),
    );
    let result = match send_span(row) {
        Some(span) => send.instrument(span).await,
        None => send.await,
    };
    match result {
        Ok(sent) => sent,
        Err(_) => Err(AmqpError::Timeout {
            what: "publish",
            timeout,
        }),
    }
}

/// `publish <exchange>` for a row written in a trace: a child of the row's
/// creation context, which the message carries on to its consumer. `None` for
/// rows written with tracing off (no span, no cost).
pub(super) fn send_span(row: &OutboxRow) -> Option<tracing::Span> {
    let sc = otel::propagate::span_context(row.trace_context.as_deref()?, None)?;
    let span = otel::span::publish(
        &row.exchange,
        &row.routing_key,
        &row.message_id.to_string(),
        row.correlation_id.as_deref(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    Some(span)
}

/// Publishes a suspect alone and awaits its confirm. If the broker closes the
/// channel over it, it is the culprit: failed with the broker's reason, and a
/// new channel is opened for the rows behind it. Errs only when the connection
/// (not the row) failed.
pub(super) async fn send_suspect(
    broker: &mut Broker,
    row: &OutboxRow,
    sent: &mut Sent,
    suspects: &mut HashSet<i64>,
) -> Result<(), AmqpError> {
    let result = publish::publish_confirmed(
        &broker.channel,
        &row.exchange,
        &row.routing_key,
        crate::outbox::row_body(row),
        crate::outbox::row_properties(row),
        true,
        sent.timeout,
    )
    .await;
    let policy = sent.policy;
    match result {
        Ok(()) => {
            suspects.remove(&row.id);
            sent.outcome.published.push(row.id);
        }
        Err(AmqpError::Rejected(why)) => {
            suspects.remove(&row.id);
            sent.outcome
                .failed
                .push(policy.failure(row.id, row.publish_attempts, why));
        }
        Err(e) => {
            let Some(why) = refused_by_broker(&e) else {
                return Err(e);
            };
            // Stays a suspect: its next attempt is made alone again.
            let failure = policy.failure(row.id, row.publish_attempts, why);
            if failure.retry_in.is_none() {
                suspects.remove(&row.id);
            }
            sent.outcome.failed.push(failure);
            broker.channel =
                tokio::time::timeout(sent.timeout, publish::confirm_channel(&broker.conn))
                    .await
                    .map_err(|_| AmqpError::Timeout {
                        what: "reopening the relay channel",
                        timeout: sent.timeout,
                    })??;
        }
    }
    Ok(())
}
