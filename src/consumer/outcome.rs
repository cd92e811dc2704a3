//! The outcome rules of a delivery, as pure decisions: how a failure is classed
//! ([`ErrorClass`]), where it goes next ([`route`]: a retry tier or the dead
//! queue), and the headers of the copy that takes it there (`x-attempt`,
//! `x-error`, `x-error-class`, `x-postponed`, ...).
//!
//! Never publishes, settles or logs: `process` does, with these answers, so the
//! rules can be read (and tested) without a broker.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::amqp::topology::{self, Names};
use crate::message;

/// Longest `x-error` header kept (the full error is in the logs).
pub(crate) const MAX_ERROR_LEN: usize = 1024;

/// Why a job failed, as it is classed in headers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
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
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) enum FailureRoute {
    /// The retry queue with this delay.
    Retry(Duration),
    /// The dead queue.
    Dead,
}

/// Picks the route for a failure on `attempt` (1-based). `retry_after` (from the
/// handler) selects the first tier at least that long, else the longest tier.
pub(crate) fn route(
    class: ErrorClass,
    attempt: u32,
    max_attempts: u32,
    tiers: &[Duration],
    retry_after: Option<Duration>,
) -> FailureRoute {
    if !class.retryable() || attempt >= max_attempts || tiers.is_empty() {
        return FailureRoute::Dead;
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
    FailureRoute::Retry(delay)
}

/// The delivery a retry or dead-letter copy is made from.
#[derive(Clone, Copy)]
pub(super) struct OriginalDelivery<'a> {
    pub(super) properties: &'a BasicProperties,
    pub(super) body: &'a [u8],
}

/// Why a delivery failed: what `process::finish_failure` routes (retry tier or
/// dead letter) and writes into the copy's `x-error` headers.
pub(super) struct Failure {
    /// Decides retry or dead letter, and `x-error-class`.
    pub(super) class: ErrorClass,
    /// `x-error` (truncated) and the log line.
    pub(super) reason: String,
    /// The handler's own "not before" (`JobError::RetryAfter`), if it gave one.
    pub(super) retry_after: Option<Duration>,
}

impl Failure {
    /// A failure with no "retry after" of its own.
    pub(super) fn new(class: ErrorClass, reason: String) -> Self {
        Self {
            class,
            reason,
            retry_after: None,
        }
    }
}

/// Where a failure on `route` is copied to: the queue, the copy's `x-attempt`,
/// and the outcome it is counted as (`retried`, `poison`, `dead`).
pub(super) fn failure_target(
    names: &Names,
    queue: &str,
    kind: &str,
    class: ErrorClass,
    attempt: u32,
    route: &FailureRoute,
) -> (String, u32, &'static str) {
    match route {
        FailureRoute::Retry(delay) => (
            topology::retry_queue_of(queue, *delay),
            attempt + 1,
            "retried",
        ),
        FailureRoute::Dead if class == ErrorClass::Poison => {
            (names.dead_queue(kind), attempt, "poison")
        }
        FailureRoute::Dead => (names.dead_queue(kind), attempt, "dead"),
    }
}

/// The properties of a failure's copy: the original's, with `x-attempt`,
/// `x-error` (already truncated), `x-error-class`, `x-origin-queue`, and
/// `x-first-attempt-at` when the original has none.
pub(super) fn failure_properties(
    original: &BasicProperties,
    next_attempt: u32,
    reason: &str,
    class: ErrorClass,
    queue: &str,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    let mut set = |k: &str, v: AMQPValue| {
        headers.insert(ShortString::from(k), v);
    };
    set(
        message::H_ATTEMPT,
        AMQPValue::LongLongInt(next_attempt.into()),
    );
    set(message::H_ERROR, AMQPValue::LongString(reason.into()));
    set(
        message::H_ERROR_CLASS,
        AMQPValue::LongString(class.as_str().into()),
    );
    set(message::H_ORIGIN_QUEUE, AMQPValue::LongString(queue.into()));
    let has_first = original
        .headers()
        .as_ref()
        .is_some_and(|h: &FieldTable| h.inner().contains_key(message::H_FIRST_ATTEMPT_AT));
    if !has_first {
        headers.insert(
            ShortString::from(message::H_FIRST_ATTEMPT_AT),
            AMQPValue::LongLongInt(now_ms()),
        );
    }
    original.clone().with_headers(headers)
}

/// Times a message was postponed so far (`x-postponed`, 0 when absent).
pub(super) fn postponements(properties: &BasicProperties) -> u32 {
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
pub(super) fn postpone_tier(tiers: &[Duration], wanted: Duration) -> Option<Duration> {
    tiers
        .iter()
        .copied()
        .find(|t| *t >= wanted)
        .or_else(|| tiers.last().copied())
}

/// The properties of a postponed copy: the original's (`x-attempt` unchanged),
/// with `x-postponed` = `count` + 1, `x-postpone-reason` and `x-origin-queue`.
pub(super) fn postpone_properties(
    original: &BasicProperties,
    count: u32,
    reason: &str,
    queue: &str,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(message::H_POSTPONED),
        AMQPValue::LongLongInt(i64::from(count) + 1),
    );
    headers.insert(
        ShortString::from(message::H_POSTPONE_REASON),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        ShortString::from(message::H_ORIGIN_QUEUE),
        AMQPValue::LongString(queue.into()),
    );
    original.clone().with_headers(headers)
}

/// The text of a caught panic's payload.
pub(super) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// `s` cut to [`MAX_ERROR_LEN`] bytes (on a character boundary, with `…`).
pub(super) fn truncate(mut s: String) -> String {
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
#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn routes_by_class_attempt_and_retry_after() {
        let tiers = [S(1), S(10), S(60)];
        assert_eq!(
            route(ErrorClass::Transient, 1, 5, &tiers, None),
            FailureRoute::Retry(S(1))
        );
        assert_eq!(
            route(ErrorClass::Timeout, 2, 5, &tiers, None),
            FailureRoute::Retry(S(10))
        );
        assert_eq!(
            route(ErrorClass::Panic, 4, 5, &tiers, None),
            FailureRoute::Retry(S(60))
        );
        assert_eq!(
            route(ErrorClass::Transient, 5, 5, &tiers, None),
            FailureRoute::Dead
        );
        assert_eq!(
            route(ErrorClass::Permanent, 1, 5, &tiers, None),
            FailureRoute::Dead
        );
        assert_eq!(
            route(ErrorClass::Poison, 1, 5, &tiers, None),
            FailureRoute::Dead
        );
        assert_eq!(postpone_tier(&tiers, S(5)), Some(S(10)));
        assert_eq!(postpone_tier(&tiers, S(3600)), Some(S(60)));
        assert_eq!(postpone_tier(&[], S(1)), None);
        assert_eq!(
            route(ErrorClass::Transient, 1, 5, &tiers, Some(S(5))),
            FailureRoute::Retry(S(10))
        );
        assert_eq!(
            route(ErrorClass::Transient, 1, 5, &tiers, Some(S(3600))),
            FailureRoute::Retry(S(60))
        );
    }
}
