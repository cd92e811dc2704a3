//! Group commit of push writes: the pushes that are ready while a write is in
//! progress are written together by the next one, in one statement
//! ([`super::record`]), instead of one statement each.
//!
//! Why: a push's database work is small, and most of what it costs is fixed per
//! statement: the round trip, starting a large statement, the commit's WAL flush
//! and NOTIFY, and, for pushes to one repository, holding its lock through all of
//! that one push at a time. Measured end to end, the database and the worker's
//! wake-ups around each statement cost more CPU than the writes themselves.
//!
//! How (leader and followers, no task of its own): a push joins the waiting
//! queue, then either gets its result (another push wrote it) or one of
//! `writers` slots; with a slot it takes up to `max_group` waiting pushes,
//! itself included unless someone took it already, and writes them. Nothing
//! waits to fill a group: a push that finds a free slot and an empty queue is
//! written alone at once, so at low load every push is written on its own with
//! no added latency, and groups form only while writes are in progress.
//!
//! Each push keeps its own outcome: a duplicate (the inbox had it) is skipped
//! alone; if a group's statement fails, its pushes are written again one by one
//! on the same connection, so one bad push fails only itself. A group's write
//! runs in a task tracked by [`inbox::commits`]: a push abandoned by its caller
//! (timeout, shutdown) does not cancel a statement that has begun.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::PgPool;
use tokio::sync::{Semaphore, oneshot};
use uuid::Uuid;

use super::record::{PushWrite, record};
use crate::amqp::topology::Names;
use crate::inbox;
use crate::job::JobError;
use crate::outbox::Event;
use crate::push_job::PushJob;
use crate::webhook::{plan_deliveries, storage::active_subscriptions};

/// What became of one push's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Recorded, with this many webhook deliveries.
    Recorded {
        /// Webhook deliveries enqueued for the push.
        webhooks: usize,
    },
    /// The inbox already had the message: nothing written.
    Duplicate,
}

impl Written {
    /// The outcome of `w`, which the statement `claimed` or found in the inbox.
    fn of(w: &PushWrite, claimed: bool) -> Self {
        if claimed {
            Written::Recorded {
                webhooks: w.deliveries.len(),
            }
        } else {
            Written::Duplicate
        }
    }
}

type Reply = oneshot::Sender<Result<Written, JobError>>;

/// A push waiting to be written.
struct Waiting {
    ticket: u64,
    message_id: Uuid,
    push: PushJob,
    events: Vec<Event>,
    reply: Reply,
}

/// Writes pushes in groups; shared by every push delivery of a worker.
pub struct GroupCommit {
    pool: PgPool,
    names: Names,
    queue: String,
    max_group: usize,
    waiting: Mutex<VecDeque<Waiting>>,
    tickets: AtomicU64,
    writers: Arc<Semaphore>,
}

/// Takes a push out of the waiting queue if its caller stops waiting (timeout,
/// shutdown) before a group took it: nobody would ack it, so it is not written.
struct Withdraw<'a> {
    group: &'a GroupCommit,
    ticket: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.group.waiting().retain(|w| w.ticket != self.ticket);
    }
}

impl GroupCommit {
    /// Writes through `pool` into the inbox of `queue`, at most `writers`
    /// statements at once (each holds a pooled connection), at most `max_group`
    /// pushes each (both at least 1).
    pub fn new(
        pool: PgPool,
        names: Names,
        queue: String,
        writers: usize,
        max_group: usize,
    ) -> Self {
        Self {
            pool,
            names,
            queue,
            max_group: max_group.max(1),
            waiting: Mutex::new(VecDeque::new()),
            tickets: AtomicU64::new(0),
            writers: Arc::new(Semaphore::new(writers.max(1))),
        }
    }

    /// Pushes waiting for a writer now.
    pub fn waiting_len(&self) -> usize {
        self.waiting().len()
    }

    fn waiting(&self) -> MutexGuard<'_, VecDeque<Waiting>> {
        // Every update is one call on the queue: a poisoned lock is still consistent.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one push (message `message_id` of the push queue, its `events`,
    /// and the webhook deliveries its subscriptions call for), together with
    /// the pushes waiting beside it. Returns once the push's statement has
    /// committed, or with its error.
    pub async fn write(
        self: &Arc<Self>,
        message_id: Uuid,
        push: PushJob,
        events: Vec<Event>,
    ) -> Result<Written, JobError> {
        let (reply, mut result) = oneshot::channel();
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let _withdraw = Withdraw {
            group: self,
            ticket,
        };
        self.waiting().push_back(Waiting {
            ticket,
            message_id,
            push,
            events,
            reply,
        });
        loop {
            let permit = tokio::select! {
                biased;
                r = &mut result => return flatten(r),
                permit = self.writers.clone().acquire_owned() => permit,
            };
            let Ok(permit) = permit else {
                // The semaphore is never closed.
                return Err(JobError::transient(anyhow::anyhow!("push writers closed")));
            };
            let group = self.take_group();
            if group.is_empty() {
                // Another writer took this push: its result is on the way.
                drop(permit);
                return flatten(result.await);
            }
            let this = self.clone();
            let task = inbox::commits().spawn(tracing::Instrument::instrument(
                async move {
                    let _slot = permit;
                    this.write_group(group).await;
                },
                tracing::Span::current(),
            ));
            if let Err(e) = task.await
                && e.is_panic()
            {
                // Counted by the consumer core as this delivery's panic; the
                // group's other pushes see their reply dropped.
                std::panic::resume_unwind(e.into_panic());
            }
            // This push was in that group (its result is ready) or behind it.
        }
    }

    /// Up to `max_group` waiting pushes, oldest first, one per message id (a
    /// second delivery of a message waits for the next group).
    fn take_group(&self) -> Vec<Waiting> {
        let mut q = self.waiting();
        let mut group: Vec<Waiting> = Vec::new();
        let mut skipped = VecDeque::new();
        while group.len() < self.max_group {
            let Some(w) = q.pop_front() else { break };
            if group.iter().any(|g| g.message_id == w.message_id) {
                skipped.push_back(w);
            } else {
                group.push(w);
            }
        }
        while let Some(w) = skipped.pop_back() {
            q.push_front(w);
        }
        group
    }

    /// Writes `group` and sends every push its outcome.
    async fn write_group(&self, group: Vec<Waiting>) {
        crate::metrics::metrics()
            .push_group_size
            .observe(group.len() as f64);
        let mut conn = match inbox::timed_acquire(self.pool.acquire()).await {
            Ok(c) => c,
            Err(e) => return fail_all(group, &e),
        };
        // Subscriptions need no lock: read before the statement, once per group.
        let subscriptions = match active_subscriptions(&mut conn).await {
            Ok(s) => s,
            Err(e) => return fail_all(group, &e),
        };
        let mut writes = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        for w in group {
            let deliveries = plan_deliveries(&subscriptions, &self.names, &w.push, &w.events);
            writes.push(PushWrite::new(w.message_id, w.push, w.events, deliveries));
            replies.push(w.reply);
        }
        match record(&mut *conn, &self.queue, &writes).await {
            Ok(claimed) => {
                for (w, reply) in writes.iter().zip(replies) {
                    let _ = reply.send(Ok(Written::of(w, claimed.contains(&w.message_id))));
                }
            }
            Err(e) if writes.len() == 1 => {
                if let Some(reply) = replies.pop() {
                    let _ = reply.send(Err(e.into()));
                }
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    pushes = writes.len(),
                    "a group of pushes failed to write; writing them one by one"
                );
                for (w, reply) in writes.iter().zip(replies) {
                    let one = record(&mut *conn, &self.queue, std::slice::from_ref(w)).await;
                    let _ = reply.send(match one {
                        Ok(claimed) => Ok(Written::of(w, !claimed.is_empty())),
                        Err(e) => Err(e.into()),
                    });
                }
            }
        }
    }
}

/// Sends every push of `group` the error `e` that stopped its write.
fn fail_all(group: Vec<Waiting>, e: &sqlx::Error) {
    for w in group {
        let _ = w.reply.send(Err(JobError::shared_db(e)));
    }
}

fn flatten(
    r: Result<Result<Written, JobError>, oneshot::error::RecvError>,
) -> Result<Written, JobError> {
    r.unwrap_or_else(|_| {
        Err(JobError::transient(anyhow::anyhow!(
            "the write of this push's group stopped before it finished"
        )))
    })
}
