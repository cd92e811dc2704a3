//! Cluster mode's sampler: the processed count every 100 ms, and from it how
//! long consumption paused after a node loss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

/// The processed count (rows in `pushes`) and the publisher's confirmed count
/// at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) t: Instant,
    pub(crate) processed: i64,
    /// Outbox rows published (rows in `outbox_published`).
    pub(crate) published: i64,
    pub(crate) confirmed: u64,
}

pub(crate) type Samples = Arc<Mutex<Vec<Sample>>>;

pub(crate) fn samples_of(s: &Samples) -> Vec<Sample> {
    s.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Every 100 ms until `stop`: the rows in `pushes` and `outbox_published` on its own
/// connection (made again after a failure, e.g. across the database restart;
/// no sample while it is down) and the publisher's confirmed count.
pub(crate) async fn sample(
    db_url: String,
    confirmed: Arc<AtomicU64>,
    out: Samples,
    stop: CancellationToken,
) {
    let mut conn: Option<PgConnection> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if conn.is_none() {
            let c =
                tokio::time::timeout(Duration::from_secs(1), PgConnection::connect(&db_url)).await;
            conn = c.ok().and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else { continue };
        let t = Instant::now();
        let q = sqlx::query_as::<_, (i64, i64)>(
            "SELECT (SELECT count(*) FROM pushes), (SELECT count(*) FROM outbox_published)",
        )
        .fetch_one(&mut *c);
        match tokio::time::timeout(Duration::from_secs(1), q).await {
            Ok(Ok((processed, published))) => {
                let confirmed = confirmed.load(Ordering::Relaxed);
                out.lock().unwrap_or_else(|e| e.into_inner()).push(Sample {
                    t,
                    processed,
                    published,
                    confirmed,
                });
            }
            _ => conn = None,
        }
    }
}

/// From `from` until `key` first rose after `after`: the longest stretch
/// without a rise (`from` counting as one). `None` when it did not rise after
/// `after` within the samples.
pub(crate) fn pause(
    samples: &[Sample],
    from: Instant,
    after: Instant,
    key: impl Fn(&Sample) -> u64,
) -> Option<Duration> {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for w in samples.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.t <= from || key(b) <= key(a) {
            continue;
        }
        longest = longest.max(b.t - last);
        last = b.t;
        if b.t > after {
            return Some(longest);
        }
    }
    None
}

/// Waits (up to `limit`) until the processed count rises after `after`, or
/// every job is processed. False on timeout.
pub(crate) async fn wait_flow(
    samples: &Samples,
    after: Instant,
    limit: Duration,
    jobs: usize,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        {
            let s = samples.lock().unwrap_or_else(|e| e.into_inner());
            let base = s.iter().rev().find(|x| x.t <= after).or(s.first());
            if let Some(base) = base
                && (base.processed as usize >= jobs
                    || s.iter()
                        .any(|x| x.t > after && x.processed > base.processed))
            {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
