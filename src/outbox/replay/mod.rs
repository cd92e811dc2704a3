//! `hookfleet outbox replay`: publishes already published outbox events again.
//!
//! Owns validating the selection (ids, RFC 3339 times, event-type patterns), the
//! dry run, and re-publishing in id order with confirms, at an optional rate, with
//! progress, keeping each row's `message_id` and adding `x-replayed-from` (the
//! outbox id) so consumers can tell a replay from the original. A bad filter is
//! rejected before anything is published. On failure or interruption it reports
//! the `--from-id` to resume from (the first row not confirmed). It never changes
//! outbox rows and only ever reads published ones.
//!
//! Files: `plan.rs` validates a request into a [`ReplayPlan`] (nothing read
//! yet), `run.rs` reads and publishes it, `progress.rs` shows where it stands.
//! The types both ends share ([`ReplayError`], [`ReplayReport`]) are here.

mod plan;
mod progress;
mod run;

use super::storage::OutboxRow;
use crate::amqp::AmqpError;

pub use plan::{ReplayPlan, ReplayRequest, plan};
pub use progress::{Advance, Progress};
pub use run::run;

/// Rows read and published per page (confirms are awaited per page).
pub(crate) const PAGE_SIZE: i64 = 256;
/// Rows shown by a dry run.
pub(crate) const SAMPLE_SIZE: i64 = 5;

/// Replay failures; [`ReplayError::BadFilter`] means nothing was published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The selection is invalid (exit 2).
    #[error("invalid replay filter: {0}")]
    BadFilter(String),
    /// Reading the outbox failed.
    #[error("reading the outbox failed: {source}; resume with --from-id {resume_from}")]
    Database {
        /// Driver error.
        source: sqlx::Error,
        /// Where to resume.
        resume_from: i64,
    },
    /// Connecting or publishing failed.
    #[error("publishing failed: {source}; resume with --from-id {resume_from}")]
    Broker {
        /// Broker error.
        source: AmqpError,
        /// The first row not confirmed.
        resume_from: i64,
    },
    /// Shutdown was requested.
    #[error("replay interrupted; resume with --from-id {resume_from}")]
    Interrupted {
        /// The first row not published.
        resume_from: i64,
    },
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Rows matching the selection.
    pub selected: i64,
    /// Rows published and confirmed (0 for a dry run).
    pub published: u64,
    /// First rows of the selection (dry run only).
    pub sample: Vec<OutboxRow>,
}
