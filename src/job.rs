//! The handler API: what a job kind implements and what it returns.
//!
//! A [`Handler`] declares its kind (which names its queue) and handles one decoded
//! [`Job`]. Its `Result` says what happens next: `Ok` acks; [`JobError::Transient`]
//! and [`JobError::RetryAfter`] go through the retry tiers; [`JobError::Permanent`]
//! dead-letters at once; [`JobError::Postpone`] delays the job without using
//! an attempt. A handler that writes to PostgreSQL claims the message id in the
//! inbox inside its transaction and runs the writes to completion (`inbox` says
//! how; the push handler folds the claim into its one statement, `push::record`
//! says why).

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::message::Envelope;

/// One delivery, decoded.
#[derive(Debug, Clone)]
pub struct Job {
    /// Message metadata (id, correlation id, headers).
    pub envelope: Envelope,
    /// The job kind (the queue's kind).
    pub kind: String,
    /// 1-based attempt.
    pub attempt: u32,
    /// The raw JSON body (already checked to be valid JSON); shared with the
    /// delivery, not copied.
    pub raw: bytes::Bytes,
    /// The body as a JSON value, parsed on first use.
    pub parsed: std::sync::OnceLock<serde_json::Value>,
    /// Delivered from the kind's bulk queue (a storm the hook set apart,
    /// `crate::hook::fairness`): a handler keeps such work apart from the rest
    /// where they would share something (the push handler's group commit).
    pub bulk: bool,
}

impl Job {
    /// Decodes the body into `T`; a mismatch is a permanent error (bad input never
    /// gets better by retrying).
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_slice(&self.raw).map_err(|e| {
            JobError::permanent(format!("body does not match the {} job: {e}", self.kind))
        })
    }
    /// The body as a JSON value (parsed once, on first use; handlers that know
    /// their type should use [`Job::decode`], which skips the intermediate value).
    pub fn body(&self) -> &serde_json::Value {
        self.parsed
            .get_or_init(|| serde_json::from_slice(&self.raw).unwrap_or(serde_json::Value::Null))
    }
}

/// Why a job failed, and so what happens next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// May succeed later: retry through the tiers, then dead-letter.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// Like `Transient`, but the handler knows how long to wait (e.g. HTTP
    /// `Retry-After`); the first tier at least this long is used.
    #[error("{1:#} (retry after {0:?})")]
    RetryAfter(Duration, anyhow::Error),
    /// Will never succeed (bad input, missing object): dead-letter at once.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// Not now, and not the job's fault: a guard (an open circuit breaker, a
    /// rate limit) decided before any work was done. The message goes to the
    /// retry tier that fits the delay with its attempt counter unchanged.
    #[error("postponed ({})", .0.reason)]
    Postpone(Postpone),
}

/// A guard's "not before": how long to wait, and why (a metric label, so one of
/// a few fixed words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Postpone {
    /// Wanted delay; the first retry tier at least this long is used.
    pub(crate) after: Duration,
    /// Bounded reason: `breaker_open`, `breaker_probing`, `host_busy`, ...
    pub(crate) reason: &'static str,
}

impl JobError {
    /// A transient error from anything printable.
    pub fn transient(e: impl Into<anyhow::Error>) -> Self {
        JobError::Transient(e.into())
    }
    /// A permanent error from a message.
    pub fn permanent(msg: impl std::fmt::Display) -> Self {
        JobError::Permanent(anyhow::anyhow!("{msg}"))
    }
}

impl From<sqlx::Error> for JobError {
    /// Database errors are transient unless they say the input is wrong
    /// (SQLSTATE class 22: data exception, 23: integrity violation).
    fn from(e: sqlx::Error) -> Self {
        db_error(is_bad_input(&e), e.into())
    }
}

impl JobError {
    /// The error of one of several jobs that shared a failed database call (the
    /// error itself goes to one of them): classed as [`From<sqlx::Error>`]
    /// classes it, with its message.
    pub(crate) fn shared_db(e: &sqlx::Error) -> Self {
        db_error(is_bad_input(e), anyhow::anyhow!("{e}"))
    }
}

fn db_error(bad_input: bool, e: anyhow::Error) -> JobError {
    if bad_input {
        JobError::Permanent(e)
    } else {
        JobError::Transient(e)
    }
}

/// SQLSTATE class 22 (data exception) or 23 (integrity violation).
fn is_bad_input(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
}

/// How a job that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// The handler ran and its effects are committed.
    Handled,
    /// The inbox already had this message id: skipped, effects not repeated.
    Duplicate,
}

/// A job kind as the consumer core runs it. Work with no transactional effects
/// (a no-op, a benchmark, webhook attempts) implements it plainly; a kind that
/// writes to the database claims the inbox in its transaction, as the push
/// handler does (`push::record`, `inbox::run_to_completion`).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The kind, which names the queue (`<prefix>.<kind>`).
    fn kind(&self) -> &str;
    /// Handles one job.
    async fn handle(&self, job: Job) -> Result<Done, JobError>;
}
