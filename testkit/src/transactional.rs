//! A two-step transactional handler: the pattern a job kind that writes to
//! PostgreSQL follows, as a wrapper the pipeline tests drive.
//!
//! [`Transactional`] turns a [`TxHandler`] into a [`Handler`]. For each job it
//! runs the handler's `prepare` (no connection held), then opens a transaction,
//! claims the message id in the inbox (`hookfleet::inbox::claim`: a concurrent
//! redelivery waits on the first one's row lock and then sees it), runs the
//! handler, and commits. A message already in the inbox is skipped, so a
//! redelivery never repeats effects or events. The whole transaction runs through
//! `hookfleet::inbox::run_to_completion`, so a job the consumer abandons (timeout,
//! shutdown) still finishes or rolls back cleanly; inside it only the handler body
//! is bounded by the timeout.
//!
//! It lives in the test kit, not the product, because no shipped kind needs it:
//! the push handler folds the inbox claim into its one statement
//! (`hookfleet::push::record`) and webhook attempts must survive a failed attempt.
//! A new kind that writes in a transaction builds on the same inbox parts; this
//! file shows how, and `tests/pipeline.rs` checks the parts together.

use std::sync::Arc;
use std::time::Duration;

use hookfleet::inbox::{claim, duplicate, run_to_completion, skip_if_handled, timed_acquire};
use hookfleet::job::{Done, Handler, Job, JobError};
use sqlx::PgPool;

/// A job kind whose effects and outgoing events go into one PostgreSQL
/// transaction; hookfleet claims the inbox first and commits after.
///
/// Work in two steps: [`TxHandler::prepare`] reads what the job needs from
/// outside the database (a repository, say) before any connection is taken, then
/// [`TxHandler::handle`] writes inside the transaction. Why: a slow read inside
/// the transaction would hold a pooled connection and an open transaction for its
/// whole length, and a few slow jobs would starve every other user of the pool
/// (the relay included) and hold back vacuum.
#[async_trait::async_trait]
pub trait TxHandler: Send + Sync + 'static {
    /// What `prepare` hands to `handle`.
    type Prepared: Send + 'static;
    /// The kind, which names the queue.
    fn kind(&self) -> &str;
    /// Decodes the job and reads what it needs, holding no database connection.
    /// It must have no effects: it also runs for a redelivery that the inbox
    /// then skips.
    async fn prepare(&self, job: &Job) -> Result<Self::Prepared, JobError>;
    /// Handles one job inside `tx`. Do not commit or roll back: the caller does.
    async fn handle(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        job: &Job,
        prepared: Self::Prepared,
    ) -> Result<(), JobError>;
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
