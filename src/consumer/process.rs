//! One delivery, start to finish: decode, run the handler (own task, timeout,
//! panic caught), route the outcome, and say how to settle it with the broker.
//!
//! Owns the outcome rules: success → ack; transient, timeout or panic → a copy
//! to the next retry tier with `x-attempt` + 1 (confirmed) then ack, or the dead
//! queue after `retry.max_attempts`; permanent or poison (undecodable body, wrong
//! content type, missing `message_id`) → the dead queue at once with `x-error`
//! and `x-error-class`; postponed by a guard ([`JobError::Postpone`]) → a copy
//! to the retry tier that fits the wanted delay with `x-attempt` UNCHANGED and
//! `x-postponed` + 1 (confirmed) then ack, so postponing costs no attempt; past
//! `retry.max_postponements` a postponement counts as a transient failure. It
//! never nack-requeues in a loop: a requeue happens only when the copy could
//! not be published at all.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tracing::Instrument;

use super::acker::Settle;
use crate::amqp::publisher::Publisher;
use crate::amqp::topology::{self, Names};
use crate::config::Config;
use crate::guard::Gates;
use crate::guard::pacer::BulkPacer;
use crate::inflight::{InFlight, InFlightJob};
use crate::job::{Done, Handler, Job, JobError, Postpone};

use crate::message::{self, Envelope};
use crate::metrics::metrics;

/// Longest `x-error` header kept (the full error is in the logs).
pub const MAX_ERROR_LEN: usize = 1024;

/// One consumed queue: its handler and pre-resolved metric handles (label
/// lookups hash and lock; doing them once per queue keeps them off the hot path).
pub struct Lane {
    /// The handler of this queue's kind.
    pub handler: Arc<dyn Handler>,
    /// Job kind.
    pub kind: String,
    /// Work queue name.
    pub queue: String,
    /// Whether `queue` is the kind's bulk queue.
    pub bulk: bool,
    /// The kind's bulk pacer: the push queue's handler times feed it, the bulk
    /// queue's deliveries wait for it (None: the kind has no bulk queue, or
    /// `fairness.bulk_pacing` is off).
    pub pacer: Option<Arc<BulkPacer>>,
    in_flight: prometheus::IntGauge,
    duration: prometheus::Histogram,
    acked: prometheus::IntCounter,
    duplicate: prometheus::IntCounter,
    panics: prometheus::IntCounter,
}

impl Lane {
    /// A lane for `handler` consuming `queue` (`bulk`: the kind's bulk queue).
    pub fn new(handler: Arc<dyn Handler>, queue: String, bulk: bool) -> Self {
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
    pub fn with_pacer(mut self, pacer: Option<Arc<BulkPacer>>) -> Self {
        self.pacer = pacer;
        self
    }
}

/// Everything a delivery task needs, shared by all of them.
pub struct Ctx {
    /// Effective config.
    pub config: Arc<Config>,
    /// Broker names.
    pub names: Names,
    /// Publisher for retry and dead-letter copies (its own connection).
    pub publisher: Publisher,
    /// In-flight registry (`/jobs`).
    pub inflight: Arc<InFlight>,
    /// The kill switch and paused kinds.
    pub gates: Gates,
}

/// Why a job failed, as it is classed in headers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// May succeed later.
    Transient,
    /// Exceeded `worker.handler_timeout` (retried like transient).
    Timeout,
    /// The handler panicked (retried: it may be a transient bug).
    Panic,
    /// Bad input: never retried.
    Permanent,
    /// Not a valid hookfleet message at all.
    Poison,
}

impl ErrorClass {
    /// Header and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Panic => "panic",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Poison => "poison",
        }
    }
    fn retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Transient | ErrorClass::Timeout | ErrorClass::Panic
        )
    }
}

/// Where a failed message goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The retry queue with this delay.
    Retry(Duration),
    /// The dead queue.
    Dead,
}

/// Picks the route for a failure on `attempt` (1-based). `retry_after` (from the
/// handler) selects the first tier at least that long, else the longest tier.
pub fn route(
    class: ErrorClass,
    attempt: u32,
    max_attempts: u32,
    tiers: &[Duration],
    retry_after: Option<Duration>,
) -> Route {
    if !class.retryable() || attempt >= max_attempts || tiers.is_empty() {
        return Route::Dead;
    }
    let by_attempt = tiers[(attempt as usize - 1).min(tiers.len() - 1)];
    let delay = match retry_after {
        Some(wanted) => tiers
            .iter()
            .copied()
            .find(|t| *t >= wanted)
            .unwrap_or(tiers[tiers.len() - 1]),
        None => by_attempt,
    };
    Route::Retry(delay)
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Handles one delivery and returns how to settle it. The body moves into the
/// job without a copy; a retry or dead-letter copy is published from the same
/// bytes.
pub async fn handle_delivery(ctx: &Ctx, lane: &Lane, delivery: Delivery) -> Settle {
    let kind = lane.kind.as_str();
    let queue = lane.queue.as_str();
    let Delivery {
        data,
        properties,
        routing_key,
        ..
    } = delivery;
    let body = bytes::Bytes::from(data);
    let original = Original {
        properties: &properties,
        body: &body,
    };
    let envelope = match decode(&properties) {
        Ok(e) => e,
        Err(reason) => {
            let span = tracing::warn_span!("delivery", queue, "message.id" = tracing::field::Empty);
            return async {
                tracing::warn!(reason = %reason, "poison message: dead-lettering");
                Box::pin(finish_failure(
                    ctx,
                    queue,
                    kind,
                    original,
                    1,
                    Failure::new(ErrorClass::Poison, reason),
                ))
                .await
            }
            .instrument(span)
            .await;
        }
    };
    let attempt = envelope.attempt();
    // `process <queue>` per the OpenTelemetry messaging conventions, a child of
    // the context the message carries (retries and requeues carry the same).
    let span = tracing::info_span!(
        "delivery",
        "message.id" = %envelope.message_id,
        "correlation.id" = envelope.correlation_id.as_deref().unwrap_or(""),
        queue,
        attempt,
        otel.name = format!("process {queue}"),
        otel.kind = "consumer",
    );
    crate::otel::span::process_attributes(&span, &envelope, queue, routing_key.as_str());
    crate::otel::propagate::continue_from(&span, &envelope.headers);
    async {
        if let Err((class, reason)) = admit(&envelope, &body, &ctx.config.worker) {
            tracing::warn!(reason = %reason, "{} message: dead-lettering", class.as_str());
            return Box::pin(finish_failure(
                ctx,
                queue,
                kind,
                original,
                attempt,
                Failure::new(class, reason),
            ))
            .await;
        }
        let started = Instant::now();
        let _inflight = ctx.inflight.start(
            InFlightJob {
                message_id: envelope.message_id.to_string(),
                correlation_id: envelope.correlation_id.clone(),
                kind: kind.to_string(),
                attempt,
                started_at_ms: 0,
                elapsed_seconds: 0.0,
            },
            started,
        );
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
        match result {
            Ok(Ran::Postponed(p)) => {
                Box::pin(finish_postpone(ctx, queue, kind, original, attempt, p)).await
            }
            Ok(Ran::Done(Done::Handled)) => {
                ctx.gates.killswitch.record_success(kind);
                lane.acked.inc();
                tracing::debug!("handled");
                Settle::Ack
            }
            Ok(Ran::Done(Done::Duplicate)) => {
                ctx.gates.killswitch.record_success(kind);
                lane.duplicate.inc();
                Settle::Ack
            }
            Err(failure) => {
                if failure.class == ErrorClass::Panic {
                    lane.panics.inc();
                    tracing::error!(reason = %failure.reason, "handler panicked");
                }
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

/// The kill switch is open: give the delivery back to the queue as it came
/// (`x-attempt` unchanged, no retry copy). The outage, not the job, failed.
fn hold(queue: &str, class: ErrorClass, reason: &str) -> Settle {
    metrics()
        .deliveries_total
        .with_label_values(&[queue, "held"])
        .inc();
    tracing::debug!(class = class.as_str(), error = %reason, "failed while the kill switch is open; requeued with its attempt unchanged");
    Settle::Requeue
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

/// The delivery a retry or dead-letter copy is made from.
#[derive(Clone, Copy)]
struct Original<'a> {
    properties: &'a BasicProperties,
    body: &'a [u8],
}

/// Why a delivery failed: what [`finish_failure`] routes (retry tier or dead
/// letter) and writes into the copy's `x-error` headers.
struct Failure {
    /// Decides retry or dead letter, and `x-error-class`.
    class: ErrorClass,
    /// `x-error` (truncated) and the log line.
    reason: String,
    /// The handler's own "not before" (`JobError::RetryAfter`), if it gave one.
    retry_after: Option<Duration>,
}

impl Failure {
    /// A failure with no "retry after" of its own.
    fn new(class: ErrorClass, reason: String) -> Self {
        Self {
            class,
            reason,
            retry_after: None,
        }
    }
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

/// Call sites box its future: failures are rare, and its state (a confirmed
/// publish of the copy) would otherwise make every delivery task's future, which
/// is allocated and copied at each spawn, several kilobytes larger (7.2 KB
/// against 2.6 KB when measured).
async fn finish_failure(
    ctx: &Ctx,
    queue: &str,
    kind: &str,
    original: Original<'_>,
    attempt: u32,
    failure: Failure,
) -> Settle {
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
    let (target, next_attempt, outcome) = match &route {
        Route::Retry(delay) => (
            topology::retry_queue_of(queue, *delay),
            attempt + 1,
            "retried",
        ),
        Route::Dead if class == ErrorClass::Poison => {
            (ctx.names.dead_queue(kind), attempt, "poison")
        }
        Route::Dead => (ctx.names.dead_queue(kind), attempt, "dead"),
    };
    let mut headers = original.properties.headers().clone().unwrap_or_default();
    let mut set = |k: &str, v: AMQPValue| {
        headers.insert(ShortString::from(k), v);
    };
    set(
        message::H_ATTEMPT,
        AMQPValue::LongLongInt(next_attempt.into()),
    );
    set(
        message::H_ERROR,
        AMQPValue::LongString(reason.as_str().into()),
    );
    set(
        message::H_ERROR_CLASS,
        AMQPValue::LongString(class.as_str().into()),
    );
    set(message::H_ORIGIN_QUEUE, AMQPValue::LongString(queue.into()));
    let has_first = original
        .properties
        .headers()
        .as_ref()
        .is_some_and(|h: &FieldTable| h.inner().contains_key(message::H_FIRST_ATTEMPT_AT));
    if !has_first {
        headers.insert(
            ShortString::from(message::H_FIRST_ATTEMPT_AT),
            AMQPValue::LongLongInt(now_ms()),
        );
    }
    let props = original.properties.clone().with_headers(headers);

    if let Err(e) = publish_copy(ctx, &target, original.body, props).await {
        tracing::error!(error = %e, target = %target, "cannot publish the retry/dead-letter copy; requeueing the original");
        metrics()
            .deliveries_total
            .with_label_values(&[queue, "requeued"])
            .inc();
        return Settle::Requeue;
    }
    metrics()
        .deliveries_total
        .with_label_values(&[queue, outcome])
        .inc();
    match route {
        Route::Retry(delay) => tracing::info!(
            class = class.as_str(),
            error = %reason,
            next_attempt,
            delay = ?delay,
            "failed; scheduled a retry"
        ),
        Route::Dead => tracing::warn!(
            class = class.as_str(),
            error = %reason,
            dead_queue = %target,
            "dead-lettered"
        ),
    }
    Settle::Ack
}

/// Publishes a retry, postponement or dead-letter copy, confirmed; a few tries
/// ride out a publisher reconnect. The copy must be confirmed before the
/// original is acked.
async fn publish_copy(
    ctx: &Ctx,
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

/// Times a message was postponed so far (`x-postponed`, 0 when absent).
fn postponements(properties: &BasicProperties) -> u32 {
    let Some(v) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(message::H_POSTPONED).cloned())
    else {
        return 0;
    };
    let n = match v {
        AMQPValue::LongLongInt(n) => n,
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        _ => 0,
    };
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// The retry tier for a postponement: the first at least `wanted`, else the longest.
fn postpone_tier(tiers: &[Duration], wanted: Duration) -> Option<Duration> {
    tiers
        .iter()
        .copied()
        .find(|t| *t >= wanted)
        .or_else(|| tiers.last().copied())
}

/// Sends a postponed delivery to the retry tier that fits its "not before",
/// attempt counter unchanged, `x-postponed` + 1. Past `retry.max_postponements`
/// (or with no tiers) it is a transient failure instead, which uses an attempt.
async fn finish_postpone(
    ctx: &Ctx,
    queue: &str,
    kind: &str,
    original: Original<'_>,
    attempt: u32,
    p: Postpone,
) -> Settle {
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
    let mut headers = original.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(message::H_POSTPONED),
        AMQPValue::LongLongInt(i64::from(count) + 1),
    );
    headers.insert(
        ShortString::from(message::H_POSTPONE_REASON),
        AMQPValue::LongString(p.reason.into()),
    );
    headers.insert(
        ShortString::from(message::H_ORIGIN_QUEUE),
        AMQPValue::LongString(queue.into()),
    );
    let props = original.properties.clone().with_headers(headers);
    if let Err(e) = publish_copy(ctx, &target, original.body, props).await {
        tracing::error!(error = %e, target = %target, "cannot publish the postponed copy; requeueing the original");
        metrics()
            .deliveries_total
            .with_label_values(&[queue, "requeued"])
            .inc();
        return Settle::Requeue;
    }
    let m = metrics();
    m.deliveries_total
        .with_label_values(&[queue, "postponed"])
        .inc();
    m.postponed_total.with_label_values(&[kind, p.reason]).inc();
    tracing::debug!(reason = p.reason, delay = ?delay, postponed = count + 1, "postponed");
    Settle::Ack
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn routes_by_class_attempt_and_retry_after() {
        let tiers = [S(1), S(10), S(60)];
        assert_eq!(
            route(ErrorClass::Transient, 1, 5, &tiers, None),
            Route::Retry(S(1))
        );
        assert_eq!(
            route(ErrorClass::Timeout, 2, 5, &tiers, None),
            Route::Retry(S(10))
        );
        assert_eq!(
            route(ErrorClass::Panic, 4, 5, &tiers, None),
            Route::Retry(S(60))
        );
        assert_eq!(
            route(ErrorClass::Transient, 5, 5, &tiers, None),
            Route::Dead
        );
        assert_eq!(
            route(ErrorClass::Permanent, 1, 5, &tiers, None),
            Route::Dead
        );
        assert_eq!(route(ErrorClass::Poison, 1, 5, &tiers, None), Route::Dead);
        assert_eq!(postpone_tier(&tiers, S(5)), Some(S(10)));
        assert_eq!(postpone_tier(&tiers, S(3600)), Some(S(60)));
        assert_eq!(postpone_tier(&[], S(1)), None);
        assert_eq!(
            route(ErrorClass::Transient, 1, 5, &tiers, Some(S(5))),
            Route::Retry(S(10))
        );
        assert_eq!(
            route(ErrorClass::Transient, 1, 5, &tiers, Some(S(3600))),
            Route::Retry(S(60))
        );
    }
}
