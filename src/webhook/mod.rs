//! Webhook delivery: subscriptions, delivery jobs, the HTTP POST, attempts.
//!
//! # Flow
//! 1. The push writer calls [`plan_deliveries`] and writes what it returns with
//!    the push's effects, in one statement: for each
//!    active subscription whose repository pattern and event categories match, a
//!    `webhook_deliveries` row (payload stored once, delivery id = UUID v7) and a
//!    `webhook` job in the outbox (jobs exchange, routing key `webhook`), so
//!    deliveries exist if and only if the push committed.
//! 2. The [`handler`] POSTs each job's delivery, its body GitHub's exact one
//!    ([`render`], [`github`]), through the SSRF guard
//!    ([`ssrf`], [`deliver`]) and records every attempt in `webhook_attempts`,
//!    as its answer classifies it (`outcome.rs`).
//!    A circuit breaker per host ([`breaker`]) postpones deliveries to a host
//!    that keeps failing, before any request, without using an attempt.
//! 3. `hookfleet webhook ...` ([`manage`]) manages subscriptions, lists attempts,
//!    redelivers (a new job, same delivery id and body), pings (a new
//!    `webhook.ping` delivery, also made when a subscription is added) and
//!    rotates secrets.
//!
//! Each subscription has a style ([`subscription::Style`]): GitHub's
//! (`X-Hub-Signature-256`) or Standard Webhooks' (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`); [`render`] shapes and signs the
//! request accordingly. Secrets, their rotation and their encryption at rest
//! (`webhook.secret_key`) are [`secrets`]'.
//! 4. [`run_webhook_pruner`] deletes records older than `webhook.retention`.
//!
//! All SQL is in [`storage`]. This module never publishes to the broker itself:
//! jobs and events go through the outbox.

pub(crate) mod breaker;
pub mod deliver;
pub mod github;
pub(crate) mod guarded;
pub(crate) mod handler;
pub mod manage;
mod outcome;
pub(crate) mod render;
pub mod secrets;
pub mod ssrf;
pub mod storage;
pub mod subscription;

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::amqp::topology::Names;
use crate::config::WebhookConfig;
use crate::message::Envelope;
use crate::outbox::Event;
use crate::push_job::PushJob;
pub(crate) use handler::{WEBHOOK_KIND, WebhookHandler, WebhookJob};

/// The outbox event carrying one `webhook` job (fresh message id; a manual
/// redelivery gets a new one too, so the consumer never drops it as a duplicate).
pub(crate) fn job_event(names: &Names, job: &WebhookJob, correlation_id: Option<String>) -> Event {
    Event {
        envelope: Envelope::new(WEBHOOK_KIND, correlation_id),
        exchange: names.jobs_exchange(),
        routing_key: WEBHOOK_KIND.to_string(),
        // Serialising a struct of ids and strings cannot fail.
        payload: serde_json::to_value(job).unwrap_or_default(),
        trace_context: crate::otel::propagate::traceparent_of(&tracing::Span::current()),
    }
}

/// The deliveries of a push and their `webhook` jobs.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// One `webhook_deliveries` row per matching active subscription and event.
    pub rows: Vec<storage::NewDelivery>,
    /// One `webhook` job event per row, for the outbox.
    pub jobs: Vec<Event>,
}

/// Plans the deliveries of a push: reads the active subscriptions and returns a
/// row and a `webhook` job per matching subscription and event (see
/// [`plan_deliveries`]).
pub async fn deliveries_for_push(
    conn: &mut sqlx::PgConnection,
    names: &Names,
    push: &PushJob,
    events: &[Event],
) -> Result<Deliveries, sqlx::Error> {
    let subs = storage::active_subscriptions(conn).await?;
    Ok(plan_deliveries(&subs, names, push, events))
}

/// A row and a `webhook` job per subscription of `active` matching the push's
/// repository and an event's category. The caller writes both with the push's
/// effects, in the same transaction (the push handler folds them into its one
/// statement), so deliveries exist if and only if the push committed. Pure: the
/// push writer reads the subscriptions once for a whole group of pushes.
pub(crate) fn plan_deliveries(
    active: &[subscription::Subscription],
    names: &Names,
    push: &PushJob,
    events: &[Event],
) -> Deliveries {
    let subs: Vec<_> = active
        .iter()
        .filter(|s| crate::repository::matches(&s.repository_pattern, &push.repository))
        .collect();
    let mut out = Deliveries::default();
    for ev in events {
        for s in subs.iter().filter(|s| s.wants(ev.event_type())) {
            let row = storage::NewDelivery {
                delivery_id: Uuid::now_v7(),
                subscription_id: s.id,
                event_type: ev.event_type().to_string(),
                correlation_id: ev.envelope.correlation_id.clone(),
                payload: ev.payload.clone(),
            };
            let job = WebhookJob {
                delivery_id: row.delivery_id,
                subscription_id: s.id,
                event_type: row.event_type.clone(),
                redelivery: false,
            };
            out.jobs
                .push(job_event(names, &job, row.correlation_id.clone()));
            out.rows.push(row);
        }
    }
    out
}

/// Deletes delivery and attempt records older than `cfg.retention`, every
/// `cfg.prune_interval`, `cfg.prune_batch_size` deliveries a statement, until
/// `shutdown`; errors are logged and retried next interval.
pub(crate) async fn run_webhook_pruner(
    pool: PgPool,
    cfg: WebhookConfig,
    shutdown: CancellationToken,
) {
    let (interval, batch) = (cfg.prune_interval, cfg.prune_batch_size);
    loop {
        let mut total = 0u64;
        loop {
            match storage::prune_batch(&pool, cfg.retention, batch).await {
                Ok(n) => {
                    total += n;
                    if n < u64::from(batch) || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook pruning failed; retrying next interval");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(rows = total, "pruned old webhook deliveries");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval.max(Duration::from_millis(10))) => {}
        }
    }
}
