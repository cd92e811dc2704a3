//! Refusal and parking: when a failed row is tried again ([`row_backoff`], a
//! [`RowPolicy`]), and how a broker's refusal of one message is told from an outage.

use std::time::Duration;

use crate::amqp::AmqpError;
use crate::config::{AmqpConfig, OutboxConfig};
use crate::outbox::storage::Failure;

/// First delay before a failed row is retried; doubles per attempt.
pub(crate) const ROW_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Delay before a row that failed `attempts` times (after this failure) is due again.
pub(crate) fn row_backoff(attempts: i32, max: Duration) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    ROW_BACKOFF_BASE
        .saturating_mul(2u32.saturating_pow(exp))
        .min(max)
}

/// Suspects remembered at most; past that the set is cleared (a refusal then
/// costs one more closed channel to find its row again, never a stall).
pub(crate) const MAX_SUSPECTS: usize = 100_000;

/// What decides a failed row's next attempt.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowPolicy {
    pub(super) max_backoff: Duration,
    pub(super) park_after: u32,
    pub(super) max_message_bytes: usize,
}

impl RowPolicy {
    pub(super) fn new(amqp: &AmqpConfig, outbox: &OutboxConfig) -> Self {
        RowPolicy {
            max_backoff: outbox.max_backoff,
            park_after: outbox.park_after_attempts,
            max_message_bytes: usize::try_from(amqp.max_message_bytes).unwrap_or(usize::MAX),
        }
    }

    /// The failure of a row that had `attempts` failed attempts before this one:
    /// backed off, or parked once it reaches `park_after`.
    pub(super) fn failure(&self, id: i64, attempts: i32, error: String) -> Failure {
        let attempts = attempts.saturating_add(1);
        let park = u32::try_from(attempts).unwrap_or(0) >= self.park_after;
        Failure {
            id,
            error,
            retry_in: (!park).then(|| row_backoff(attempts, self.max_backoff)),
        }
    }
}

/// Whether a publish error means the broker closed the channel because of a
/// message (a soft AMQP error such as 406 PRECONDITION_FAILED for a message over
/// its `max_message_size`), as opposed to the connection going away. Only then
/// can a row be to blame.
pub(super) fn refused_by_broker(e: &AmqpError) -> Option<String> {
    let AmqpError::Protocol(err) = e else {
        return None;
    };
    match err.kind() {
        lapin::ErrorKind::ProtocolError(p)
            if matches!(p.kind(), lapin::protocol::AMQPErrorKind::Soft(_)) =>
        {
            Some(format!(
                "channel closed by the broker: {} {}",
                p.get_id(),
                p.get_message()
            ))
        }
        _ => None,
    }
}

/// Marks a drain that ended because the broker closed the channel over a
/// message: the relay goes on at once instead of backing off.
#[derive(Debug, thiserror::Error)]
#[error("the broker refused a message")]
pub(super) struct Refused;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_backoff_doubles_and_is_capped() {
        let max = Duration::from_secs(60);
        assert_eq!(row_backoff(1, max), Duration::from_secs(1));
        assert_eq!(row_backoff(2, max), Duration::from_secs(2));
        assert_eq!(row_backoff(4, max), Duration::from_secs(8));
        assert_eq!(row_backoff(30, max), max);
        assert_eq!(row_backoff(i32::MAX, max), max);
    }
}
