//! The inbox: effectively-once handling, owned here.
//!
//! A job kind that writes to PostgreSQL claims its message id in `inbox` inside
//! the transaction of its writes ([`claim`]: `INSERT ... ON CONFLICT DO NOTHING`;
//! a concurrent redelivery waits on the first one's row lock and then sees it),
//! so a redelivery never repeats effects or events. The push handler folds the
//! claim's INSERT into its one statement (`push::record`); the test kit's
//! `Transactional` shows the same parts as a prepare/BEGIN/claim/handle/COMMIT
//! wrapper.
//!
//! The writes run to completion in a task of their own ([`run_to_completion`],
//! tracked by [`commits`]): the consumer core may abandon a job on timeout or
//! shutdown, but a started transaction still finishes (a cancelled sqlx
//! `begin`/`commit` future can leave a connection mid-transaction). A job whose
//! read before the writes failed is skipped, not failed, when the inbox already
//! has it ([`skip_if_handled`]).
//!
//! The inbox's SQL lives with the outbox's, in [`crate::outbox::storage`].

use std::future::Future;
use std::sync::OnceLock;

use sqlx::PgPool;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::job::{Done, JobError};
use crate::outbox::storage;

/// Transactions in progress; shutdown waits for them after draining.
pub(crate) fn commits() -> &'static TaskTracker {
    static T: OnceLock<TaskTracker> = OnceLock::new();
    T.get_or_init(TaskTracker::new)
}

/// Waits until no transaction started by [`run_to_completion`] is still running.
pub(crate) async fn wait_for_commits() {
    let t = commits();
    t.close();
    t.wait().await;
    t.reopen();
}

/// Claims `message_id` for `queue`; `false` when it was handled before.
pub async fn claim(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    message_id: Uuid,
    queue: &str,
) -> Result<bool, sqlx::Error> {
    storage::claim_message(tx, message_id, queue).await
}

/// What a job whose `prepare` step failed with `err` comes to: a redelivery of
/// a job handled before is skipped, not failed (its input may be gone now,
/// e.g. the repository deleted since, though the job succeeded).
pub async fn skip_if_handled(
    pool: &PgPool,
    message_id: Uuid,
    err: JobError,
) -> Result<Done, JobError> {
    match storage::message_handled(pool, message_id).await {
        Ok(true) => Ok(duplicate()),
        _ => Err(err),
    }
}

/// A delivery the inbox already had: logged (in the delivery's span) and skipped.
pub fn duplicate() -> Done {
    tracing::info!("duplicate delivery skipped (already in the inbox)");
    Done::Duplicate
}

/// Awaits `acquire` (a pooled connection, or a transaction's BEGIN) and records
/// how long it took in `hookfleet_db_acquire_wait_seconds`.
pub async fn timed_acquire<T>(acquire: impl Future<Output = T>) -> T {
    let waited = std::time::Instant::now();
    let acquired = acquire.await;
    crate::metrics::metrics()
        .db_acquire_wait_seconds
        .observe(waited.elapsed().as_secs_f64());
    acquired
}

/// Runs a job's database writes to completion in a task tracked by
/// [`commits`], in the current span: the caller may be abandoned (timeout,
/// shutdown), the writes are not (a dropped sqlx future can leave a connection
/// mid-transaction). A panic in `writes` is re-raised in the caller, where the
/// consumer core counts it.
pub async fn run_to_completion<F>(writes: F) -> Result<Done, JobError>
where
    F: Future<Output = Result<Done, JobError>> + Send + 'static,
{
    let task = commits().spawn(tracing::Instrument::instrument(
        writes,
        tracing::Span::current(),
    ));
    match task.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(JobError::Transient(anyhow::anyhow!(
            "transaction task failed: {e}"
        ))),
    }
}
