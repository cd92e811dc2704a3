//! Running a validated replay: the dry run (count and sample), or re-publishing
//! the selected rows in id order, page by page, with confirms, at an optional
//! rate, each in a trace of its own linked to the original; on failure or
//! interruption, the first row not confirmed to resume from.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::progress::Progress;
use super::{PAGE_SIZE, ReplayError, ReplayPlan, ReplayReport, SAMPLE_SIZE};
use crate::amqp::{self, AmqpError, publish};
use crate::config::AmqpConfig;
use crate::message::{H_REPLAYED_FROM, HeaderValue};
use crate::outbox::storage::{self, OutboxRow};
use crate::outbox::{row_body, row_envelope};

/// Runs a validated replay (or its dry run).
pub async fn run(
    pool: &PgPool,
    amqp_cfg: &AmqpConfig,
    plan: &ReplayPlan,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<ReplayReport, ReplayError> {
    let start_id = plan.selection.from_id.unwrap_or(1).max(1);
    let db_err = |resume_from: i64| {
        move |source| ReplayError::Database {
            source,
            resume_from,
        }
    };
    let selected = storage::count_selected(pool, &plan.selection)
        .await
        .map_err(db_err(start_id))?;
    if plan.dry_run {
        let sample = storage::select_page(pool, &plan.selection, 0, SAMPLE_SIZE)
            .await
            .map_err(db_err(start_id))?;
        return Ok(ReplayReport {
            selected,
            published: 0,
            sample,
        });
    }
    let broker_err = |resume_from: i64| {
        move |source| ReplayError::Broker {
            source,
            resume_from,
        }
    };
    let conn = amqp::connect(amqp_cfg, "replay")
        .await
        .map_err(broker_err(start_id))?;
    let channel = match publish::confirm_channel(&conn).await {
        Ok(c) => c,
        Err(source) => {
            amqp::close(&[], &conn, amqp_cfg.connect_timeout).await;
            return Err(broker_err(plan.selection.from_id.unwrap_or(1).max(1))(
                source,
            ));
        }
    };
    let result = publish_all(pool, amqp_cfg, &channel, plan, selected, progress, shutdown).await;
    amqp::close(&[&channel], &conn, amqp_cfg.connect_timeout).await;
    progress.finish();
    result.map(|published| ReplayReport {
        selected,
        published,
        sample: Vec::new(),
    })
}

async fn publish_all(
    pool: &PgPool,
    amqp_cfg: &AmqpConfig,
    channel: &lapin::Channel,
    plan: &ReplayPlan,
    selected: i64,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<u64, ReplayError> {
    let timeout = amqp_cfg.publish_timeout;
    let mut next_id = plan.selection.from_id.unwrap_or(1).max(1);
    let gap = plan
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    let mut next_send = Instant::now();
    let mut done = 0u64;
    progress.start(selected);
    loop {
        if shutdown.is_cancelled() {
            return Err(ReplayError::Interrupted {
                resume_from: next_id,
            });
        }
        let rows = fetch_page(pool, plan, next_id).await?;
        let Some(first) = rows.first() else {
            return Ok(done);
        };
        let page_start = first.id;
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            if wait_turn(shutdown, &mut next_send, gap).await {
                let resume_from =
                    resume_point(pending, timeout, &mut next_id, &mut done, row.id).await;
                progress.advance(done, selected, resume_from - 1);
                return Err(ReplayError::Interrupted { resume_from });
            }
            match send_row(channel, plan, row, timeout).await {
                Ok(confirm) => pending.push((row.id, confirm)),
                Err(source) => {
                    let resume_from =
                        resume_point(pending, timeout, &mut next_id, &mut done, row.id).await;
                    return Err(ReplayError::Broker {
                        source,
                        resume_from,
                    });
                }
            }
        }
        next_id = page_start;
        if let Err((resume_from, source)) =
            confirm_in_order(pending, timeout, &mut next_id, &mut done).await
        {
            return Err(ReplayError::Broker {
                source,
                resume_from,
            });
        }
        progress.advance(done, selected, next_id - 1);
    }
}

/// The next page of selected rows from `next_id` on (a failure resumes there).
async fn fetch_page(
    pool: &PgPool,
    plan: &ReplayPlan,
    next_id: i64,
) -> Result<Vec<OutboxRow>, ReplayError> {
    storage::select_page(pool, &plan.selection, next_id - 1, PAGE_SIZE)
        .await
        .map_err(|source| ReplayError::Database {
            source,
            resume_from: next_id,
        })
}

/// Paces publishing at `gap` (no wait without a rate): sleeps until
/// `next_send`, then moves it on by `gap`. Returns `true`, without moving it,
/// when `shutdown` comes first.
async fn wait_turn(
    shutdown: &CancellationToken,
    next_send: &mut Instant,
    gap: Option<Duration>,
) -> bool {
    let Some(gap) = gap else {
        return false;
    };
    let stop = tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep_until((*next_send).into()) => false,
    };
    if !stop {
        *next_send = Instant::now().max(*next_send) + gap;
    }
    stop
}

/// Where to resume after stopping before row `stopped_at`: confirms what was
/// sent first, so the resume point is as late as possible, then reports the
/// first row not confirmed (`stopped_at` if all were).
async fn resume_point(
    pending: Vec<(i64, lapin::PublisherConfirm)>,
    timeout: Duration,
    next_id: &mut i64,
    done: &mut u64,
    stopped_at: i64,
) -> i64 {
    match confirm_in_order(pending, timeout, next_id, done).await {
        Ok(()) => stopped_at,
        Err((id, _)) => id,
    }
}

/// Publishes one replayed row, marked with its original id, to the plan's
/// exchange and routing key (or the row's own), in a trace of its own (see
/// [`replay_span`]); returns its confirm, or the error (a timeout is one).
async fn send_row(
    channel: &lapin::Channel,
    plan: &ReplayPlan,
    row: &OutboxRow,
    timeout: Duration,
) -> Result<lapin::PublisherConfirm, AmqpError> {
    let mut envelope = row_envelope(row);
    envelope
        .headers
        .insert(H_REPLAYED_FROM.to_string(), HeaderValue::Int(row.id));
    let exchange = plan.to_exchange.as_deref().unwrap_or(&row.exchange);
    let key = plan.routing_key.as_deref().unwrap_or(&row.routing_key);
    let body = row_body(row);
    let span = replay_span(row, exchange, key);
    let replay_headers = crate::otel::propagate::headers_of(&span);
    if !replay_headers.is_empty() {
        // The replay is a trace of its own, linked to the original.
        for (k, v) in replay_headers {
            envelope.headers.insert(k.to_string(), HeaderValue::Str(v));
        }
    }
    tokio::time::timeout(
        timeout,
        publish::send(channel, exchange, key, body, envelope.to_properties(), true),
    )
    .instrument(span)
    .await
    .unwrap_or(Err(AmqpError::Timeout {
        what: "publish",
        timeout,
    }))
}

/// `publish <exchange>` of one replayed row: a new trace (whatever the replay
/// runs in), linked to the row's creation context. With tracing on in the
/// replaying process, the message carries it instead of the original context;
/// with tracing off there, the message keeps the original (the consumer then
/// continues the original trace).
fn replay_span(row: &OutboxRow, exchange: &str, key: &str) -> tracing::Span {
    let span = crate::otel::span::publish(
        exchange,
        key,
        &row.message_id.to_string(),
        row.correlation_id.as_deref(),
    );
    span.record("hookfleet.replayed_from", row.id);
    let _ = span.set_parent(opentelemetry::Context::new());
    if let Some(sc) = row
        .trace_context
        .as_deref()
        .and_then(|tp| crate::otel::propagate::span_context(tp, None))
    {
        span.add_link(sc);
    }
    span
}

/// Awaits confirms in id order; advances `next_id` past each confirmed row and
/// stops at the first failure, returning that row's id.
async fn confirm_in_order(
    pending: Vec<(i64, lapin::PublisherConfirm)>,
    timeout: Duration,
    next_id: &mut i64,
    done: &mut u64,
) -> Result<(), (i64, AmqpError)> {
    let deadline = Instant::now() + timeout;
    for (id, confirm) in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        publish::confirmed(confirm, left)
            .await
            .map_err(|e| (id, e))?;
        *next_id = id + 1;
        *done += 1;
    }
    Ok(())
}
