//! The inbox and the handler transaction: effectively-once handling.
//!
//! Two ways to use it, one set of parts: [`Transactional`] (a transaction the
//! inbox opens, claims in and commits) for any [`TxHandler`]; or, for a handler
//! whose whole write is one statement (the push handler), the claim's INSERT
//! folded into that statement (`push::record`), run through [`run_to_completion`]
//! with [`skip_if_handled`] for a failed read.
//!
//! [`Transactional`] turns a [`TxHandler`] into a [`Handler`]. For each job it
//! runs the handler's `prepare` (no connection held), then opens a transaction,
//! claims the message id in `inbox`
//! (`INSERT ... ON CONFLICT DO NOTHING`; a concurrent redelivery waits on the
//! first one's row lock and then sees it), runs the handler, and commits. A
//! message already in the inbox is skipped, so a redelivery never repeats effects
//! or events.
//!
//! The whole transaction runs in a task of its own, tracked by [`commits`]: the
//! consumer core may abandon a job on timeout or shutdown, but a started
//! transaction still finishes (a cancelled sqlx `begin`/`commit` future can leave a
//! connection mid-transaction). Inside it only the handler body is bounded by the
//! timeout; when it expires the transaction rolls back. `prepare` runs before, in
//! the delivery's own task (bounded by the consumer's handler timeout, with
//! nothing to roll back when it is abandoned).
//!
//! The inbox's SQL lives with the outbox's, in [`crate::outbox::storage`].

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::job::{Done, Handler, Job, JobError, TxHandler};
use crate::outbox::storage;

/// Transactions in progress; shutdown waits for them after draining.
pub fn commits() -> &'static TaskTracker {
    static T: OnceLock<TaskTracker> = OnceLock::new();
    T.get_or_init(TaskTracker::new)
}

/// Waits until no transaction started by [`Transactional`] is still running.
pub async fn wait_for_commits() {
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

/// A [`TxHandler`] run inside the inbox transaction.
pub struct Transactional<H> {
    inner: Arc<H>,
    pool: PgPool,
    queue: String,
    timeout: Duration,
}

impl<H: TxHandler> Transactional<H> {
    /// Wraps `inner`; `queue` is recorded in the inbox, `timeout` bounds the handler body.
    pub fn new(inner: H, pool: PgPool, queue: impl Into<String>, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(inner),
            pool,
            queue: queue.into(),
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl<H: TxHandler> Handler for Transactional<H> {
    fn kind(&self) -> &str {
        self.inner.kind()
    }

    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        // Outside the tracked task: an abandoned job (timeout, shutdown) just stops
        // here, with nothing started in the database.
        let prepared = match self.inner.prepare(&job).await {
            Ok(p) => p,
            Err(e) => return skip_if_handled(&self.pool, job.envelope.message_id, e).await,
        };
        let inner = self.inner.clone();
        let pool = self.pool.clone();
        let queue = self.queue.clone();
        let timeout = self.timeout;
        run_to_completion(async move {
            let mut tx = timed_acquire(pool.begin()).await?;
            if !claim(&mut tx, job.envelope.message_id, &queue).await? {
                tx.rollback().await?;
                return Ok(duplicate());
            }
            match tokio::time::timeout(timeout, inner.handle(&mut tx, &job, prepared)).await {
                Err(_) => {
                    // Dropping `tx` rolls back.
                    return Err(JobError::Transient(anyhow::anyhow!(
                        "handler timed out after {timeout:?}"
                    )));
                }
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) => {}
            }
            tx.commit().await?;
            Ok(Done::Handled)
        })
        .await
    }
}
