//! Shared liveness/readiness state, written by the parts that know and read by
//! `/readyz`, metrics and tests.
//!
//! Owns only flags; it never performs I/O itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

/// What the worker knows about its own readiness.
#[derive(Debug)]
pub struct Health {
    /// When the process started (for `/info`).
    pub started_at: SystemTime,
    started_instant: Instant,
    consuming: watch::Sender<bool>,
    database_ok: AtomicBool,
    draining: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Fresh state: not consuming, database unknown, not draining.
    pub fn new() -> Self {
        Self {
            started_at: SystemTime::now(),
            started_instant: Instant::now(),
            consuming: watch::channel(false).0,
            database_ok: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// Connected, topology declared and consumers registered (or lost).
    pub fn set_consuming(&self, on: bool) {
        self.consuming.send_replace(on);
    }
    /// Whether the consumers are running right now.
    pub fn consuming(&self) -> bool {
        *self.consuming.borrow()
    }
    /// A receiver that sees every change of the consuming flag (tests wait on it).
    pub fn watch_consuming(&self) -> watch::Receiver<bool> {
        self.consuming.subscribe()
    }
    /// Record the outcome of the last database check.
    pub fn set_database_ok(&self, ok: bool) {
        self.database_ok.store(ok, Ordering::Relaxed);
    }
    /// The last database check succeeded.
    pub fn database_ok(&self) -> bool {
        self.database_ok.load(Ordering::Relaxed)
    }
    /// The worker is draining for shutdown.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    /// Whether draining began.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started_instant.elapsed()
    }
    /// Ready = consuming, database answering, not draining; else the reason.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining() {
            Err("draining")
        } else if !self.consuming() {
            Err("not consuming: broker disconnected or topology not declared")
        } else if !self.database_ok() {
            Err("database not answering")
        } else {
            Ok(())
        }
    }
}
