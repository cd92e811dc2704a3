//! The settler's work on one sent batch: await its confirms, match returns, mark
//! rows published or failed, commit, and count.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::LOG_TARGET;
use super::confirm::{Sent, await_confirms};
use super::policy::row_backoff;
use super::returns::{ReturnLedger, note_unroutable, unroutable_routes};
use crate::amqp::AmqpError;
use crate::metrics::metrics;
use crate::otel;
use crate::outbox::storage::{self, Failure};

/// A published batch whose rows still have to be marked and committed.
pub(super) struct PublishedBatch {
    pub(super) tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub(super) sent: Sent,
    pub(super) started: Instant,
    /// The rows' creation contexts, linked from the settle span.
    pub(super) traces: Vec<String>,
}

/// Marks the batch's confirmed rows published and its failed rows backed off
/// (or parked), commits, records metrics; returns the broken-channel error, if
/// any, with the rows it makes suspect.
pub(super) async fn settle_batch_inner(
    batch: PublishedBatch,
    ledger: &mut ReturnLedger,
) -> anyhow::Result<Option<(AmqpError, Vec<i64>)>> {
    let PublishedBatch {
        mut tx,
        sent,
        started,
        traces,
    } = batch;
    let policy = sent.policy;
    let mut outcome = await_confirms(sent).await;
    ledger.absorb(std::mem::take(&mut outcome.returns));
    ledger.claim(&mut outcome, &policy);
    reopen_late_returns(&mut tx, ledger, policy.max_backoff).await?;
    let routes = unroutable_routes(&mut tx, &outcome.failed)
        .await
        .context("relay: looking up the routes of returned rows")?;
    let settle_started = SystemTime::now();
    storage::mark_published(&mut tx, &outcome.published)
        .await
        .context("relay: marking rows published")?;
    storage::mark_failed(&mut tx, &outcome.failed)
        .await
        .context("relay: recording failed rows")?;
    tx.commit().await.context("relay: commit")?;
    otel::span::db_batch(
        "UPDATE",
        "UPDATE outbox",
        settle_started,
        traces.iter().map(String::as_str),
    );
    let m = metrics();
    m.relay_published_total
        .inc_by(outcome.published.len() as u64);
    m.relay_failed_total.inc_by(outcome.failed.len() as u64);
    m.relay_batch_duration_seconds
        .observe(started.elapsed().as_secs_f64());
    report_failures(&outcome.failed, &routes);
    let suspects = outcome.suspects().to_vec();
    Ok(outcome.broken.map(|e| (e, suspects)))
}

/// Puts rows an earlier batch marked published back in the work queue when their
/// message turned up returned (see [`ReturnLedger`]), and forgets those returns.
async fn reopen_late_returns(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    ledger: &mut ReturnLedger,
    max_backoff: Duration,
) -> anyhow::Result<()> {
    let (late, reasons) = ledger.unclaimed();
    if late.is_empty() {
        return Ok(());
    }
    let reopened = storage::reopen_returned(tx, &late, &reasons, row_backoff(1, max_backoff))
        .await
        .context("relay: queueing returned rows again")?;
    if !reopened.is_empty() {
        metrics().relay_failed_total.inc_by(reopened.len() as u64);
        tracing::warn!(
            target: LOG_TARGET,
            rows = reopened.len(),
            "relay: rows marked published were returned as unroutable; queued again"
        );
    }
    ledger.forget(&reopened);
    Ok(())
}

/// Logs a settled batch's failed rows and counts its parked ones; `routes` are
/// those of the rows the broker returned as unroutable.
fn report_failures(failed: &[Failure], routes: &HashMap<i64, (String, String)>) {
    // Returned rows are counted per route and logged once per route and
    // interval (one unbound event type can return every row of every batch);
    // every other failure, and a returned row being parked, gets its own line.
    let mut returned: HashMap<&(String, String), u64> = HashMap::new();
    for f in failed {
        let route = routes.get(&f.id);
        if let Some(route) = route {
            *returned.entry(route).or_default() += 1;
        }
        match f.retry_in {
            Some(_) if route.is_some() => {}
            Some(delay) => tracing::warn!(
                target: LOG_TARGET,
                { outbox.id = f.id, error = %f.error, retry_in = %humantime::format_duration(delay) },
                "relay: row not published"
            ),
            None => {
                metrics().relay_parked_total.inc();
                tracing::error!(
                    target: LOG_TARGET,
                    { outbox.id = f.id, error = %f.error },
                    "relay: row parked (no longer tried; fix the cause, then `hookfleet outbox unpark`)"
                );
            }
        }
    }
    for ((exchange, routing_key), rows) in returned {
        note_unroutable(exchange, routing_key, rows);
    }
}
