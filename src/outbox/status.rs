//! `hookfleet outbox status`: what the relay has left to do.
//!
//! Owns gathering and rendering the status (pending rows, oldest pending age,
//! failing rows with their last error, parked rows, rows published in the last
//! minute). Read
//! only: it never changes a row.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use super::storage::{self, FailingRow};

/// Failing rows listed at most.
pub(crate) const FAILING_SHOWN: i64 = 20;

/// A snapshot of the outbox.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Unpublished rows.
    pub pending: i64,
    /// Age of the oldest unpublished row, seconds (0 when none).
    pub oldest_pending_age_seconds: f64,
    /// Unpublished rows with at least one failed attempt (parked ones included).
    pub failing: i64,
    /// Rows set aside after repeated refusals, waiting for `outbox unpark`.
    pub parked: i64,
    /// Up to [`FAILING_SHOWN`] of them, oldest first.
    pub failing_rows: Vec<FailingRow>,
    /// Rows published in the last minute.
    pub published_last_minute: i64,
}

/// Reads the snapshot.
pub async fn fetch(pool: &PgPool) -> Result<Status, sqlx::Error> {
    let (pending, age, parked) = storage::pending_stats(pool).await?;
    Ok(Status {
        pending,
        oldest_pending_age_seconds: age,
        failing: storage::failing_count(pool).await?,
        parked,
        failing_rows: storage::failing_rows(pool, FAILING_SHOWN).await?,
        published_last_minute: storage::published_within(pool, Duration::from_secs(60)).await?,
    })
}

impl Status {
    /// Human-readable rendering.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let age =
            humantime::format_duration(Duration::from_secs(self.oldest_pending_age_seconds as u64));
        let _ = writeln!(s, "pending:               {}", self.pending);
        let _ = writeln!(s, "oldest pending age:    {age}");
        let _ = writeln!(s, "published last minute: {}", self.published_last_minute);
        let _ = writeln!(s, "failing:               {}", self.failing);
        let _ = writeln!(s, "parked:                {}", self.parked);
        for r in &self.failing_rows {
            let next = match (r.parked_at, r.next_attempt_at) {
                (Some(at), _) => format!("PARKED since {}", at.to_rfc3339()),
                (None, Some(next)) => format!("next {}", next.to_rfc3339()),
                (None, None) => "next -".to_string(),
            };
            let _ = writeln!(
                s,
                "  id {} {} -> {} attempts {} {next}: {}",
                r.id,
                r.event_type,
                r.exchange,
                r.publish_attempts,
                r.last_error.as_deref().unwrap_or("-"),
            );
        }
        if self.failing > self.failing_rows.len() as i64 {
            let _ = writeln!(
                s,
                "  ... and {} more",
                self.failing - self.failing_rows.len() as i64
            );
        }
        if self.parked > 0 {
            let _ = writeln!(
                s,
                "parked rows are not retried: fix the cause, then `hookfleet outbox unpark`"
            );
        }
        s
    }
}
