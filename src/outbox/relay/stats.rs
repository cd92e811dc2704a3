//! The pending statistics the relay samples between claims (`outbox_pending`,
//! the oldest row's age, parked rows).

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::LOG_TARGET;
use crate::metrics::metrics;
use crate::outbox::storage;

/// How often pending statistics (`outbox_pending`, oldest age) are sampled.
pub(crate) const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// Samples pending statistics (`outbox_pending`, oldest age, parked) at most every
/// [`STATS_INTERVAL`].
#[derive(Default)]
pub(super) struct PendingStats {
    last: Option<Instant>,
}

impl PendingStats {
    pub(super) async fn sample(&mut self, pool: &PgPool) {
        if self.last.is_some_and(|t| t.elapsed() < STATS_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        match storage::pending_stats(pool).await {
            Ok((count, age, parked)) => {
                metrics().outbox_pending.set(count);
                metrics().outbox_oldest_pending_age_seconds.set(age);
                metrics().outbox_parked.set(parked);
            }
            Err(e) => {
                tracing::debug!(
                    target: LOG_TARGET,
                    error = %e,
                    "relay: sampling pending stats failed"
                )
            }
        }
    }
}
