//! One delivery, start to finish: decode, run the handler (own task, timeout,
//! panic caught), route the outcome, and say how to settle it with the broker.
//!
//! Applies the outcome rules (decided in [`super::outcome`]): success → ack;
//! transient, timeout or panic → a copy to the next retry tier with
//! `x-attempt` + 1 (confirmed) then ack, or the dead queue after
//! `retry.max_attempts`; permanent or poison (undecodable body, wrong content
//! type, missing `message_id`) → the dead queue at once with `x-error` and
//! `x-error-class`; postponed by a guard ([`JobError::Postpone`]) → a copy to
//! the retry tier that fits the wanted delay with `x-attempt` UNCHANGED and
//! `x-postponed` + 1 (confirmed) then ack, so postponing costs no attempt; past
//! `retry.max_postponements` a postponement counts as a transient failure. It
//! never nack-requeues in a loop: a requeue happens only when the copy could
//! not be published at all.
//!
//! # Why one file
//! Its length is one path, read top to bottom: a delivery decoded, admitted, run,
//! and its outcome routed to an ack, a retry or dead-letter copy, or a hold. The
//! rules it applies are [`super::outcome`]'s; what stays here is their order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use tracing::Instrument;

use super::acker::AckSettle;
use super::outcome::{
    ErrorClass, Failure, FailureRoute, OriginalDelivery, failure_properties, failure_target,
    panic_message, postpone_properties, postpone_tier, postponements, route, truncate,
};
use crate::amqp::publisher_pool::Publisher;
use crate::amqp::topology::{self, Names};
use crate::config::Config;
use crate::guard::Gates;
use crate::guard::pacer::BulkPacer;
use crate::inflight::{InFlight, InFlightJob};
use crate::job::{Done, Handler, Job, JobError, Postpone};

use crate::message::{self, Envelope};
use crate::metrics::metrics;

/// One consumed queue: its handler and pre-resolved metric handles (label
/// lookups hash and lock; doing them once per queue keeps them off the hot path).
pub(crate) struct ConsumedQueue {
    /// The handler of this queue's kind.
    pub(crate) handler: Arc<dyn Handler>,
    /// Job kind.
    pub(crate) kind: String,
    /// Work queue name.
    pub(crate) queue: String,
    /// Whether `queue` is the kind's bulk queue.
    pub(crate) bulk: bool,
    /// The kind's bulk pacer: the push queue's handler times feed it, the bulk
    /// queue's deliveries wait for it (None: the kind has no bulk queue, or
    /// `fairness.bulk_pacing` is off).
    pub(crate) pacer: Option<Arc<BulkPacer>>,
    in_flight: prometheus::IntGauge,
    duration: prometheus::Histogram,
    acked: prometheus::IntCounter,
    duplicate: prometheus::IntCounter,
    panics: prometheus::IntCounter,
}

impl ConsumedQueue {
    /// A lane for `handler` consuming `queue` (`bulk`: the kind's bulk queue).
    pub(crate) fn new(handler: Arc<dyn Handler>, queue: String, bulk: bool) -> Self {
        let kind = handler.kind().to_string();
        let m = metrics();
        Self {
            in_flight: m.in_flight.with_label_values(&[kind.as_str()]),
            duration: m
                .handler_duration_seconds
                .with_label_values(&[kind.as_str()]),
            acked: m
                .deliveries_total
                .with_label_values(&[queue.as_str(), "acked"]),
            duplicate: m
                .deliveries_total
                .with_label_values(&[queue.as_str(), "duplicate"]),
            panics: m.handler_panics_total.with_label_values(&[kind.as_str()]),
            handler,
            kind,
            queue,
            bulk,
            pacer: None,
        }
    }

    /// The lane with the kind's bulk pacer.
    pub(crate) fn with_pacer(mut self, pacer: Option<Arc<BulkPacer>>) -> Self {
        self.pacer = pacer;
        self
    }
}

/// Everything a delivery task needs, shared by all of them.
pub(crate) struct DeliveryCtx {
    /// Effective config.
    pub(crate) config: Arc<Config>,
    /// Broker names.
    pub(crate) names: Names,
    /// Publisher for retry and dead-letter copies (its own connection).
    pub(crate) publisher: Publisher,
    /// In-flight registry (`/jobs`).
    pub(crate) inflight: Arc<InFlight>,
    /// The kill switch and paused kinds.
    pub(crate) gates: Gates,
}

/// Handles one delivery and returns how to settle it. The body moves into the
/// job without a copy; a retry or dead-letter copy is published from the same
/// bytes.
pub(crate) async fn handle_delivery(
    ctx: &DeliveryCtx,
    lane: &ConsumedQueue,
    delivery: Delivery,
) -> AckSettle {
    let (kind, queue) = (lane.kind.as_str(), lane.queue.as_str());
    let Delivery {
        data,
        properties,
        routing_key,
        ..
    } = delivery;
    let body = bytes::Bytes::from(data);
    let original = OriginalDelivery {
        properties: &properties,
        body: &body,
    };
    let envelope = match decode(&properties) {
        Ok(e) => e,
        Err(reason) => {
            return Box::pin(dead_letter_undecodable(ctx, queue, kind, original, reason)).await;
        }
    };
    let attempt = envelope.attempt();
    let span = delivery_span(&envelope, queue, attempt, routing_key.as_str());
    async {
        if let Err((class, reason)) = admit(&envelope, &body, &ctx.config.worker) {
            return Box::pin(refuse(ctx, queue, kind, original, attempt, class, reason)).await;
        }
        let started = Instant::now();
        let _inflight = ctx
            .inflight
            .start(in_flight_job(&envelope, kind, attempt), started);
        let result = run_job(ctx, lane, envelope, &body, started).await;
        match result {
            Ok(Ran::Postponed(p)) => {
                Box::pin(finish_postpone(ctx, queue, kind, original, attempt, p)).await
            }
            Ok(Ran::Done(done)) => handled(ctx, lane, done),
            Err(failure) => {
                count_failure(lane, &failure);
                if matches!(failure.class, ErrorClass::Transient | ErrorClass::Timeout)
                    && ctx.gates.killswitch.record_transient_failure(kind).await
                {
                    return hold(queue, failure.class, &failure.reason);
                }
                Box::pin(finish_failure(ctx, queue, kind, original, attempt, failure)).await
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs the handler on an admitted delivery's job (`started` then), timed into
/// the queue's duration histogram and, for a kind's own queue, its bulk pacer.
async fn run_job(
    ctx: &DeliveryCtx,
    lane: &ConsumedQueue,
    envelope: Envelope,
    body: &bytes::Bytes,
    started: Instant,
) -> Result<Ran, Failure> {
    let (kind, attempt) = (lane.kind.as_str(), envelope.attempt());
    let job = Job {
        kind: kind.to_string(),
        attempt,
        raw: body.clone(),
        parsed: std::sync::OnceLock::new(),
        envelope,
        bulk: lane.bulk,
    };
    lane.in_flight.inc();
    let result = run_handler(&lane.handler, job, ctx.config.worker.handler_timeout).await;
    lane.in_flight.dec();
    let took = started.elapsed();
    lane.duration.observe(took.as_secs_f64());
    if let Some(pacer) = lane.pacer.as_ref().filter(|_| !lane.bulk) {
        pacer.observe(took, Instant::now());
    }
    result
}

/// A delivery whose properties do not decode (wrong content type, no
/// `message_id`): poison, dead-lettered at once under a span of its own.
async fn dead_letter_undecodable(
    ctx: &DeliveryCtx,
    queue: &str,
    kind: &str,
    original: OriginalDelivery<'_>,
    reason: String,
) -> AckSettle {
    let span = tracing::warn_span!("delivery", queue, "message.id" = tracing::field::Empty);
    refuse(ctx, queue, kind, original, 1, ErrorClass::Poison, reason)
        .instrument(span)
        .await
}

/// Dead-letters a delivery refused before any handler runs (`class`: poison or
/// permanent, see [`admit`]). Its callers box its future, as [`finish_failure`]'s
/// are.
async fn refuse(
    ctx: &DeliveryCtx,
    queue: &str,
    kind: &str,
    original: OriginalDelivery<'_>,
    attempt: u32,
    class: ErrorClass,
    reason: String,
) -> AckSettle {
    tracing::warn!(reason = %reason, "{} message: dead-lettering", class.as_str());
    let failure = Failure::new(class, reason);
    finish_failure(ctx, queue, kind, original, attempt, failure).await
}

/// The span a delivery is handled in: `process <queue>` per the OpenTelemetry
/// messaging conventions, a child of the context the message carries (retries
/// and requeues carry the same).
fn delivery_span(
    envelope: &Envelope,
    queue: &str,
    attempt: u32,
    routing_key: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        "delivery",
        "message.id" = %envelope.message_id,
        "correlation.id" = envelope.correlation_id.as_deref().unwrap_or(""),
        queue,
        attempt,
        otel.name = format!("process {queue}"),
        otel.kind = "consumer",
    );
    crate::otel::span::process_attributes(&span, envelope, queue, routing_key);
    crate::otel::propagate::continue_from(&span, &envelope.headers);
    span
}

/// The delivery's entry in the in-flight registry (`/jobs`).
fn in_flight_job(envelope: &Envelope, kind: &str, attempt: u32) -> InFlightJob {
    InFlightJob {
        message_id: envelope.message_id.to_string(),
        correlation_id: envelope.correlation_id.clone(),
        kind: kind.to_string(),
        attempt,
        started_at_ms: 0,
        elapsed_seconds: 0.0,
    }
}

/// The handler succeeded (or found the job already done): counted, then acked.
fn handled(ctx: &DeliveryCtx, lane: &ConsumedQueue, done: Done) -> AckSettle {
    ctx.gates.killswitch.record_success(&lane.kind);
    match done {
        Done::Handled => {
            lane.acked.inc();
            tracing::debug!("handled");
        }
        Done::Duplicate => lane.duplicate.inc(),
    }
    AckSettle::Ack
}

/// A failed handler run's own signal: a panic is counted and logged (routing
/// the failure is the caller's).
fn count_failure(lane: &ConsumedQueue, failure: &Failure) {
    if failure.class == ErrorClass::Panic {
        lane.panics.inc();
        tracing::error!(reason = %failure.reason, "handler panicked");
    }
}

/// The kill switch is open: give the delivery back to the queue as it came
/// (`x-attempt` unchanged, no retry copy). The outage, not the job, failed.
fn hold(queue: &str, class: ErrorClass, reason: &str) -> AckSettle {
    metrics()
        .deliveries_total
        .with_label_values(&[queue, "held"])
        .inc();
    tracing::debug!(class = class.as_str(), error = %reason, "failed while the kill switch is open; requeued with its attempt unchanged");
    AckSettle::Requeue
}

/// Decides, before any handler runs, whether a delivery can be handled at all:
/// a body over `worker.max_job_bytes` is poison without being parsed (a 10 MB
/// junk body costs a length check, not a parse); a schema version this worker
/// does not read is permanent (a newer producer: dead-lettered, not guessed
/// at); a body that is not JSON is poison (validated without building a value:
/// handlers decode straight from the bytes).
fn admit(
    envelope: &Envelope,
    body: &[u8],
    cfg: &crate::config::WorkerConfig,
) -> Result<(), (ErrorClass, String)> {
    let max = usize::try_from(cfg.max_job_bytes).unwrap_or(usize::MAX);
    if body.len() > max {
        return Err((
            ErrorClass::Poison,
            format!(
                "body of {} bytes exceeds worker.max_job_bytes ({max})",
                body.len()
            ),
        ));
    }
    match envelope.headers.get(message::H_SCHEMA_VERSION) {
        None => {}
        Some(message::HeaderValue::Int(v)) if *v == message::SCHEMA_VERSION => {}
        Some(v) => {
            let shown = match v {
                message::HeaderValue::Int(n) => n.to_string(),
                message::HeaderValue::Str(s) => format!("{s:?}"),
            };
            return Err((
                ErrorClass::Permanent,
                format!(
                    "{} {shown} is not supported (this worker reads {})",
                    message::H_SCHEMA_VERSION,
                    message::SCHEMA_VERSION
                ),
            ));
        }
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        return Err((ErrorClass::Poison, format!("body is not valid JSON: {e}")));
    }
    Ok(())
}

fn decode(properties: &BasicProperties) -> Result<Envelope, String> {
    if let Some(ct) = properties.content_type().as_ref() {
        let ct = ct.as_str();
        if !ct.eq_ignore_ascii_case(message::CONTENT_TYPE_JSON)
            && !ct.to_ascii_lowercase().starts_with("application/json;")
        {
            return Err(format!(
                "content type {ct:?} is not {}",
                message::CONTENT_TYPE_JSON
            ));
        }
    }
    Envelope::from_properties(properties)
}

/// How a handler that did not fail ended.
enum Ran {
    Done(Done),
    Postponed(Postpone),
}

/// Runs the handler bounded by `timeout` (dropping it on expiry) with panics
/// caught. The delivery already runs in its own spawned task; catching the unwind
/// here (rather than spawning a second task and reading its `JoinError`) gives the
/// same isolation with one task per delivery instead of two.
async fn run_handler(
    handler: &Arc<dyn Handler>,
    job: Job,
    timeout: Duration,
) -> Result<Ran, Failure> {
    let fut = std::panic::AssertUnwindSafe(handler.handle(job)).catch_unwind();
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(Failure::new(
            ErrorClass::Timeout,
            format!("handler timed out after {timeout:?}"),
        )),
        Ok(Err(panic)) => Err(Failure::new(
            ErrorClass::Panic,
            format!("panic: {}", panic_message(panic)),
        )),
        Ok(Ok(Ok(done))) => Ok(Ran::Done(done)),
        Ok(Ok(Err(JobError::Postpone(p)))) => Ok(Ran::Postponed(p)),
        Ok(Ok(Err(JobError::Transient(e)))) => {
            Err(Failure::new(ErrorClass::Transient, format!("{e:#}")))
        }
        Ok(Ok(Err(JobError::RetryAfter(d, e)))) => Err(Failure {
            retry_after: Some(d),
            ..Failure::new(ErrorClass::Transient, format!("{e:#}"))
        }),
        Ok(Ok(Err(JobError::Permanent(e)))) => {
            Err(Failure::new(ErrorClass::Permanent, format!("{e:#}")))
        }
    }
}

/// Call sites box its future (or, for [`refuse`], the future that awaits it):
/// failures are rare, and its state (a confirmed
/// publish of the copy) would otherwise make every delivery task's future, which
/// is allocated and copied at each spawn, several kilobytes larger (7.2 KB
/// against 2.6 KB when measured).
async fn finish_failure(
    ctx: &DeliveryCtx,
    queue: &str,
    kind: &str,
    original: OriginalDelivery<'_>,
    attempt: u32,
    failure: Failure,
) -> AckSettle {
    let Failure {
        class,
        reason,
        retry_after,
    } = failure;
    let cfg = &ctx.config;
    let route = route(
        class,
        attempt,
        cfg.retry.max_attempts,
        &cfg.retry.tiers,
        retry_after,
    );
    let reason = truncate(reason);
    let (target, next_attempt, outcome) =
        failure_target(&ctx.names, queue, kind, class, attempt, &route);
    let props = failure_properties(original.properties, next_attempt, &reason, class, queue);

    if let Err(e) = publish_copy(ctx, &target, original.body, props).await {
        tracing::error!(error = %e, target = %target, "cannot publish the retry/dead-letter copy; requeueing the original");
        metrics()
            .deliveries_total
            .with_label_values(&[queue, "requeued"])
            .inc();
        return AckSettle::Requeue;
    }
    metrics()
        .deliveries_total
        .with_label_values(&[queue, outcome])
        .inc();
    match route {
        FailureRoute::Retry(delay) => tracing::info!(
            class = class.as_str(),
            error = %reason,
            next_attempt,
            delay = ?delay,
            "failed; scheduled a retry"
        ),
        FailureRoute::Dead => tracing::warn!(
            class = class.as_str(),
            error = %reason,
            dead_queue = %target,
            "dead-lettered"
        ),
    }
    AckSettle::Ack
}

/// Publishes a retry, postponement or dead-letter copy, confirmed; a few tries
/// ride out a publisher reconnect. The copy must be confirmed before the
/// original is acked.
async fn publish_copy(
    ctx: &DeliveryCtx,
    target: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), crate::amqp::AmqpError> {
    let mut last_err = None;
    for try_no in 0..3u32 {
        match ctx
            .publisher
            .publish("", target, body, props.clone(), true)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                last_err = Some(e);
                tokio::time::sleep(ctx.config.amqp.reconnect_min * 2u32.pow(try_no)).await;
            }
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Sends a postponed delivery to the retry tier that fits its "not before",
/// attempt counter unchanged, `x-postponed` + 1. Past `retry.max_postponements`
/// (or with no tiers) it is a transient failure instead, which uses an attempt.
async fn finish_postpone(
    ctx: &DeliveryCtx,
    queue: &str,
    kind: &str,
    original: OriginalDelivery<'_>,
    attempt: u32,
    p: Postpone,
) -> AckSettle {
    let count = postponements(original.properties);
    let tier = postpone_tier(&ctx.config.retry.tiers, p.after);
    let Some(delay) = tier.filter(|_| count < ctx.config.retry.max_postponements) else {
        let reason = format!(
            "postponed {count} times ({}); counted as a failed attempt (retry.max_postponements)",
            p.reason
        );
        tracing::warn!(reason = p.reason, count, "{reason}");
        let failure = Failure {
            retry_after: Some(p.after),
            ..Failure::new(ErrorClass::Transient, reason)
        };
        return Box::pin(finish_failure(ctx, queue, kind, original, attempt, failure)).await;
    };
    let target = topology::retry_queue_of(queue, delay);
    let props = postpone_properties(original.properties, count, p.reason, queue);
    if let Err(e) = publish_copy(ctx, &target, original.body, props).await {
        tracing::error!(error = %e, target = %target, "cannot publish the postponed copy; requeueing the original");
        metrics()
            .deliveries_total
            .with_label_values(&[queue, "requeued"])
            .inc();
        return AckSettle::Requeue;
    }
    let m = metrics();
    m.deliveries_total
        .with_label_values(&[queue, "postponed"])
        .inc();
    m.postponed_total.with_label_values(&[kind, p.reason]).inc();
    tracing::debug!(reason = p.reason, delay = ?delay, postponed = count + 1, "postponed");
    AckSettle::Ack
}
