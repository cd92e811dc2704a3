//! Runs a console replay in the background and keeps its `console_replays`
//! row current: the cursor after every confirmed page, a heartbeat while a
//! slow (rate-limited) page is under way, and how it ended.
//!
//! The replay stops, as `outbox replay` does on a signal, when its console
//! stops (the process's admin server stops, and waits for it up to its
//! grace period): it confirms what it sent and stores `interrupted` with the
//! exact id to resume from. A process killed
//! outright cannot say so; its row stays `running` until the heartbeat is
//! [`STALE`], when the page shows it as interrupted and offers to resume from
//! the last stored cursor (rows of the page under way then go out twice:
//! replays are at-least-once, with the original `message_id` for consumers
//! to deduplicate on).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::replay_store;
use crate::config::AmqpConfig;
use crate::outbox::replay::{self, Advance, Progress, ReplayError, ReplayPlan, ReplayReport};

/// How often a running replay says it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(3);
/// A `running` replay silent this long lost its process.
pub(crate) const STALE: Duration = Duration::from_secs(15);

/// The one replay this process runs at a time (its row id), shared with the
/// task; a watch, so a stopping process can wait until it has stored its end.
pub(crate) type Slot = Arc<tokio::sync::watch::Sender<Option<i64>>>;

/// A free slot.
pub(crate) fn slot() -> Slot {
    Arc::new(tokio::sync::watch::Sender::new(None))
}

/// The replay this process runs now, if any.
pub(crate) fn current(slot: &Slot) -> Option<i64> {
    *slot.borrow()
}

/// Whether this process runs a replay now.
pub(crate) fn busy(slot: &Slot) -> bool {
    current(slot).is_some()
}

/// Takes the slot for replay `id`; `false` when another one holds it.
pub(crate) fn take(slot: &Slot, id: i64) -> bool {
    slot.send_if_modified(|s| {
        if s.is_some() {
            return false;
        }
        *s = Some(id);
        true
    })
}

/// Frees the slot held by replay `id`.
pub(crate) fn release(slot: &Slot, id: i64) {
    slot.send_if_modified(|s| {
        if *s != Some(id) {
            return false;
        }
        *s = None;
        true
    });
}

/// Returns once no replay runs (at once when none does).
pub(crate) async fn idle(slot: &Slot) {
    let mut rx = slot.subscribe();
    let _ = rx.wait_for(Option::is_none).await;
}

/// A run of replay `id`, from the plan's `from_id`.
pub(crate) struct Run {
    /// Row id in `console_replays`.
    pub(crate) id: i64,
    /// What to publish.
    pub(crate) plan: ReplayPlan,
    /// Published by earlier runs of the same replay (a resume adds to it).
    pub(crate) published_before: i64,
    /// Who started or resumed it, for the log.
    pub(crate) user: String,
}

/// Database connections a replay uses at most (a page read and a progress write).
const REPLAY_CONNECTIONS: u32 = 2;

/// Runs `run` in a task; the slot must already be taken for it. The task has
/// a small pool of its own (same connect options as `pool`): a stopping
/// process closes its pool right after its admin server, and the replay
/// must still store where it stopped.
pub(crate) fn spawn(
    pool: &PgPool,
    amqp: AmqpConfig,
    owner: Uuid,
    slot: Slot,
    stop: CancellationToken,
    run: Run,
) {
    let own = PgPoolOptions::new()
        .max_connections(REPLAY_CONNECTIONS)
        .connect_lazy_with((*pool.connect_options()).clone());
    tokio::spawn(async move {
        let id = run.id;
        execute(&own, &amqp, owner, &stop, run).await;
        own.close().await;
        release(&slot, id);
    });
}

async fn execute(
    pool: &PgPool,
    amqp: &AmqpConfig,
    owner: Uuid,
    stop: &CancellationToken,
    run: Run,
) {
    let Run {
        id,
        plan,
        published_before: before,
        user,
    } = run;
    let start = plan.selection.from_id.unwrap_or(1).max(1);
    let (tx, mut rx) = tokio::sync::watch::channel(Advance {
        next_id: start,
        ..Advance::default()
    });
    let progress = Progress::Watch(tx);
    let replay = replay::run(pool, amqp, &plan, &progress, stop);
    let result = track(pool, id, owner, before, replay, &mut rx).await;
    let last = *rx.borrow();
    let end = End::of(&result, last, before);
    store_end(pool, id, owner, &end).await;
    log_end(&user, id, end);
}

/// The published count including earlier runs (`before`).
fn count(before: i64, n: u64) -> i64 {
    before + i64::try_from(n).unwrap_or(i64::MAX)
}

/// Drives `replay` to its end, storing its progress at each advance and a
/// heartbeat meanwhile (a failure to store either is only logged).
async fn track(
    pool: &PgPool,
    id: i64,
    owner: Uuid,
    before: i64,
    replay: impl Future<Output = Result<ReplayReport, ReplayError>>,
    rx: &mut tokio::sync::watch::Receiver<Advance>,
) -> Result<ReplayReport, ReplayError> {
    tokio::pin!(replay);
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            r = &mut replay => break r,
            changed = rx.changed() => {
                if changed.is_ok() {
                    let a = *rx.borrow_and_update();
                    let saved = replay_store::save(pool, id, owner, a.next_id, count(before, a.done), before + a.total).await;
                    if let Err(e) = saved {
                        tracing::warn!(console.replay = id, error = %e, "console replay: cannot store progress");
                    }
                }
            }
            _ = beat.tick() => {
                if let Err(e) = replay_store::heartbeat(pool, id, owner).await {
                    tracing::warn!(console.replay = id, error = %e, "console replay: cannot store heartbeat");
                }
            }
        }
    }
}

/// How a run ended, as its row stores it.
struct End {
    /// `done`, `interrupted` or `failed`.
    state: &'static str,
    /// Where to resume.
    next_id: i64,
    /// Published, including earlier runs.
    published: i64,
    /// Selected, including earlier runs.
    total: i64,
    /// Why it stopped, unless done.
    error: Option<String>,
}

impl End {
    /// The end of a run from its result and its last progress (`last`).
    fn of(result: &Result<ReplayReport, ReplayError>, last: Advance, before: i64) -> Self {
        let (state, next_id, published, total, error) = match result {
            Ok(r) => (
                "done",
                last.next_id,
                count(before, r.published),
                before + r.selected,
                None,
            ),
            Err(e) => {
                let (state, resume) = match e {
                    ReplayError::Interrupted { resume_from } => ("interrupted", *resume_from),
                    ReplayError::Database { resume_from, .. }
                    | ReplayError::Broker { resume_from, .. } => ("failed", *resume_from),
                    _ => ("failed", last.next_id),
                };
                (
                    state,
                    resume,
                    count(before, last.done),
                    before + last.total,
                    Some(e.to_string()),
                )
            }
        };
        Self {
            state,
            next_id,
            published,
            total,
            error,
        }
    }
}

/// Stores the end of the run: its cursor and counts, then its state (a
/// failure is only logged).
async fn store_end(pool: &PgPool, id: i64, owner: Uuid, end: &End) {
    let stored = async {
        replay_store::save(pool, id, owner, end.next_id, end.published, end.total).await?;
        replay_store::finish(pool, id, owner, end.state, end.error.as_deref()).await
    }
    .await;
    if let Err(e) = stored {
        tracing::warn!(console.replay = id, error = %e, "console replay: cannot store its end");
    }
}

/// Logs the end of the run for the console user who started it.
fn log_end(user: &str, id: i64, end: End) {
    let End {
        state,
        next_id,
        published,
        error,
        ..
    } = end;
    match state {
        "done" => {
            tracing::info!(user = %user, console.replay = id, count = published, "console action: outbox replay finished")
        }
        _ => {
            tracing::warn!(user = %user, console.replay = id, state, next_id, error = error.as_deref().unwrap_or(""),
                "console action: outbox replay stopped")
        }
    }
}
