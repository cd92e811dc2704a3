//! The registry of deliveries being handled now, for `/jobs` and drain logs.
//!
//! Owns only an in-memory map keyed by a local sequence number (message ids may
//! repeat on redelivery); the pool inserts on start and removes on finish.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One in-flight delivery as `/jobs` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InFlightJob {
    /// Message id.
    pub message_id: String,
    /// Correlation id (push id), if any.
    pub correlation_id: Option<String>,
    /// Job kind.
    pub kind: String,
    /// 1-based attempt.
    pub attempt: u32,
    /// Start time, epoch milliseconds (filled when listed).
    pub started_at_ms: u64,
    /// Seconds since start (filled when listed).
    pub elapsed_seconds: f64,
}

#[derive(Debug)]
struct Entry {
    job: InFlightJob,
    started: Instant,
}

/// In-flight registry.
#[derive(Debug, Default)]
pub struct InFlight {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Entry>>,
}

/// Removes its entry when dropped, so a panicking or cancelled task cannot leak one.
pub struct InFlightGuard<'a> {
    registry: &'a InFlight,
    key: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.map.lock() {
            m.remove(&self.key);
        }
    }
}

impl InFlight {
    /// Records a job started at `started` until the guard drops. The caller's
    /// own start time is taken, not a fresh reading: one clock read per delivery
    /// serves the registry and the duration metric; wall-clock start times are
    /// worked out when listed.
    pub fn start(&self, job: InFlightJob, started: Instant) -> InFlightGuard<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.map.lock() {
            m.insert(key, Entry { job, started });
        }
        InFlightGuard {
            registry: self,
            key,
        }
    }

    /// Snapshot, oldest first.
    pub(crate) fn list(&self) -> Vec<InFlightJob> {
        let Ok(m) = self.map.lock() else {
            return Vec::new();
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut out: Vec<InFlightJob> = m
            .values()
            .map(|e| {
                let elapsed = e.started.elapsed();
                let mut j = e.job.clone();
                j.elapsed_seconds = elapsed.as_secs_f64();
                j.started_at_ms = now_ms.saturating_sub(elapsed.as_millis() as u64);
                j
            })
            .collect();
        out.sort_by_key(|j| j.started_at_ms);
        out
    }

    /// Number in flight.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
