//! The task pool: a global semaphore plus optional per-kind semaphores.
//!
//! Owns the concurrency limits. A consumer loop takes both permits *before* it
//! pulls the next delivery, so in-flight work never exceeds either limit; the
//! permits travel with the spawned task and are released when it ends, however
//! it ends (success, error, panic, abort). Gauges of free permits are sampled
//! ([`TaskPool::sample_metrics`]) rather than updated per delivery, to keep the hot
//! path free of metric lookups.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::metrics;

/// Label of the global semaphore in `hookfleet_pool_permits_available`.
pub(crate) const GLOBAL: &str = "all";

/// Global and per-kind limits.
#[derive(Debug, Clone)]
pub(crate) struct TaskPool {
    global: Arc<Semaphore>,
    per_kind: BTreeMap<String, Arc<Semaphore>>,
}

/// Permits held by one running task.
#[derive(Debug)]
pub(crate) struct Permits {
    _global: OwnedSemaphorePermit,
    _kind: Option<OwnedSemaphorePermit>,
}

impl TaskPool {
    /// A pool with `global` permits and the given per-kind limits.
    pub(crate) fn new(global: u32, per_kind: &BTreeMap<String, u32>) -> Self {
        let pool = Self {
            global: Arc::new(Semaphore::new(global as usize)),
            per_kind: per_kind
                .iter()
                .map(|(k, n)| (k.clone(), Arc::new(Semaphore::new(*n as usize))))
                .collect(),
        };
        pool.sample_metrics();
        pool
    }

    /// Waits for a per-kind permit (if the kind has a limit), then a global one.
    /// Taking the scarcer per-kind permit first keeps a saturated heavy kind from
    /// sitting on global permits that other kinds could use.
    pub(crate) async fn acquire(&self, kind: &str) -> Permits {
        let kind_permit = match self.per_kind.get(kind) {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        let global = match self.global.clone().acquire_owned().await {
            Ok(p) => p,
            // The semaphores are never closed; this arm is unreachable in practice.
            Err(_) => unreachable_closed(),
        };
        Permits {
            _global: global,
            _kind: kind_permit,
        }
    }

    /// Both permits if they are free right now (the consume loop's fast path: no
    /// waiter is registered when the pool has room, which is the common case).
    pub(crate) fn try_acquire(&self, kind: &str) -> Option<Permits> {
        let kind_permit = match self.per_kind.get(kind) {
            Some(s) => Some(s.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let global = self.global.clone().try_acquire_owned().ok()?;
        Some(Permits {
            _global: global,
            _kind: kind_permit,
        })
    }

    /// Publishes the free permits of every semaphore to the metrics.
    pub(crate) fn sample_metrics(&self) {
        let m = metrics();
        m.pool_permits_available
            .with_label_values(&[GLOBAL])
            .set(self.global.available_permits() as i64);
        for (k, s) in &self.per_kind {
            m.pool_permits_available
                .with_label_values(&[k.as_str()])
                .set(s.available_permits() as i64);
        }
    }
}

fn unreachable_closed() -> ! {
    panic!("task pool semaphore closed (never happens: hookfleet does not close it)")
}
