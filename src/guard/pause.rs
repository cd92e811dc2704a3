//! Pausing a job kind fleet-wide: an operator's decision, kept in PostgreSQL
//! (`paused_kinds`, migration 0009) so it reaches every worker and survives
//! their restarts.
//!
//! Owns the library calls that change and read the state ([`pause`],
//! [`resume`], [`list`]: the CLI uses them and a console can call the same) and
//! the worker's [`run_watcher`], which keeps a `watch` of the paused set current
//! through LISTEN `hookfleet_paused` (a statement trigger NOTIFYs on any change)
//! plus a poll every `guard.pause_poll_interval` in case a notification is lost
//! or the listener is down. The supervisor cancels the consumers of a paused
//! kind; its messages stay in the queue. Paused is not a fault: readiness
//! ignores it, `/info` and `hookfleet_kind_paused` show it. Its SQL is in
//! [`super::storage`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::storage;
pub(crate) use super::storage::PausedKind;
use crate::health::Health;
use crate::metrics::metrics;

/// The NOTIFY channel the `paused_kinds` trigger signals.
pub(crate) const NOTIFY_CHANNEL: &str = "hookfleet_paused";
/// Longest job kind name accepted.
const MAX_KIND_LEN: usize = 64;
/// How long one read of the table may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a pause or resume was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PauseError {
    /// Not a job kind name.
    #[error("invalid job kind {0:?}: use 1-64 characters a-z, 0-9, '_' or '-'")]
    InvalidKind(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Checks a kind name (queue names are built from it).
pub(crate) fn validate_kind(kind: &str) -> Result<(), PauseError> {
    let ok = !kind.is_empty()
        && kind.len() <= MAX_KIND_LEN
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PauseError::InvalidKind(kind.to_string()))
    }
}

/// Pauses `kind` fleet-wide. `false` if it already was (its row is kept as is).
pub(crate) async fn pause(
    pool: &PgPool,
    kind: &str,
    by: Option<&str>,
    reason: Option<&str>,
) -> Result<bool, PauseError> {
    validate_kind(kind)?;
    Ok(storage::insert_paused(pool, kind, by, reason).await?)
}

/// Resumes `kind`. `false` if it was not paused.
pub(crate) async fn resume(pool: &PgPool, kind: &str) -> Result<bool, PauseError> {
    validate_kind(kind)?;
    Ok(storage::delete_paused(pool, kind).await?)
}

/// Every paused kind, by name.
pub(crate) async fn list(pool: &PgPool) -> Result<Vec<PausedKind>, sqlx::Error> {
    storage::paused_kinds(pool).await
}

async fn read_set(pool: &PgPool) -> Result<BTreeSet<String>, String> {
    match tokio::time::timeout(READ_TIMEOUT, list(pool)).await {
        Ok(Ok(rows)) => Ok(rows.into_iter().map(|r| r.kind).collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {READ_TIMEOUT:?}")),
    }
}

/// Reads the paused kinds once into `tx` (worker start-up, before consuming).
/// On failure nothing is taken as paused; the watcher corrects it within a poll.
pub(crate) async fn load(pool: &PgPool, tx: &watch::Sender<BTreeSet<String>>, health: &Health) {
    match read_set(pool).await {
        Ok(set) => publish(tx, health, set),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read paused job kinds; assuming none until the next poll");
        }
    }
}

/// Keeps `tx` equal to the paused kinds until `stop`: LISTEN plus a poll.
pub(crate) async fn run_watcher(
    pool: PgPool,
    poll: Duration,
    tx: watch::Sender<BTreeSet<String>>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    let mut listener: Option<PgListener> = None;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.try_recv().await.map(|_| ()).map_err(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            r = notified => {
                if r.is_err() {
                    // Reconnected at the next turn; the poll covers the gap.
                    listener = None;
                }
            }
        }
        match read_set(&pool).await {
            Ok(set) => publish(&tx, &health, set),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read paused job kinds; keeping the last known")
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let connect = async {
        let mut l = PgListener::connect_with(pool).await?;
        l.listen(NOTIFY_CHANNEL).await?;
        Ok::<_, sqlx::Error>(l)
    };
    match tokio::time::timeout(READ_TIMEOUT, connect).await {
        Ok(Ok(l)) => Some(l),
        _ => None,
    }
}

/// Hands a changed set to the supervisor; logs and records each change once.
fn publish(tx: &watch::Sender<BTreeSet<String>>, health: &Health, set: BTreeSet<String>) {
    let before = tx.borrow().clone();
    let m = metrics();
    for k in before.difference(&set) {
        m.kind_paused.with_label_values(&[k.as_str()]).set(0);
        tracing::info!(kind = %k, "job kind resumed: consuming it again");
    }
    for k in set.difference(&before) {
        tracing::warn!(kind = %k, "job kind paused fleet-wide: not consuming it (messages stay queued)");
    }
    for k in &set {
        m.kind_paused.with_label_values(&[k.as_str()]).set(1);
    }
    health.set_paused_kinds(set.iter().cloned().collect());
    tx.send_if_modified(|cur| {
        if *cur == set {
            false
        } else {
            *cur = set;
            true
        }
    });
}
