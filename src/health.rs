//! Shared liveness/readiness state, written by the parts that know and read by
//! `/readyz`, metrics and tests.
//!
//! Owns only flags and the addresses readiness names; it never performs I/O
//! itself. A reason names what is actually down: the database (`host:port`, never
//! a URL or a password), the broker, or both; while the worker still waits for
//! the database before starting its consumers, the consumers not running is not
//! blamed on the broker (it has not been tried yet).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

/// The database has not been checked yet.
const DB_UNKNOWN: u8 = 0;
/// The last database check succeeded.
const DB_OK: u8 = 1;
/// The last database check failed.
const DB_DOWN: u8 = 2;

/// What the worker knows about its own readiness.
#[derive(Debug)]
pub struct Health {
    /// When the process started (for `/info`).
    pub(crate) started_at: SystemTime,
    started_instant: Instant,
    consuming: watch::Sender<bool>,
    database: AtomicU8,
    draining: AtomicBool,
    waiting_for_database: AtomicBool,
    database_address: OnceLock<String>,
    broker_address: OnceLock<String>,
    /// Why the kill switch stopped consuming (`None` while closed or half-open).
    stopped_by_guard: Mutex<Option<String>>,
    /// Job kinds paused fleet-wide, as this worker last read them.
    paused_kinds: Mutex<Vec<String>>,
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
            database: AtomicU8::new(DB_UNKNOWN),
            draining: AtomicBool::new(false),
            waiting_for_database: AtomicBool::new(false),
            database_address: OnceLock::new(),
            broker_address: OnceLock::new(),
            stopped_by_guard: Mutex::new(None),
            paused_kinds: Mutex::new(Vec::new()),
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
    /// Record the outcome of the last database check.
    pub fn set_database_ok(&self, ok: bool) {
        let state = if ok { DB_OK } else { DB_DOWN };
        self.database.store(state, Ordering::Relaxed);
    }
    /// The last database check succeeded.
    pub fn database_ok(&self) -> bool {
        self.database.load(Ordering::Relaxed) == DB_OK
    }
    /// The worker has not started its consumers yet because it waits for the
    /// database (start-up: reachable, created, migrated). Meanwhile not consuming
    /// is the database's doing, not the broker's.
    pub(crate) fn set_waiting_for_database(&self, on: bool) {
        self.waiting_for_database.store(on, Ordering::Relaxed);
    }
    /// Whether start-up still waits for the database.
    pub(crate) fn waiting_for_database(&self) -> bool {
        self.waiting_for_database.load(Ordering::Relaxed)
    }
    /// The database's `host:port`, named in readiness reasons. Must not carry a
    /// password (pass `host:port`, not a URL). The first call wins.
    pub(crate) fn set_database_address(&self, address: impl Into<String>) {
        let _ = self.database_address.set(address.into());
    }
    /// The broker's `host:port` (comma-separated for a cluster), named in
    /// readiness reasons. Must not carry a password. The first call wins.
    pub(crate) fn set_broker_address(&self, address: impl Into<String>) {
        let _ = self.broker_address.set(address.into());
    }
    /// The worker is draining for shutdown.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    /// Whether draining began.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    /// The kill switch opened (`Some(reason)`: not ready, consumers cancelled on
    /// purpose) or let consuming resume (`None`).
    pub(crate) fn set_stopped_by_guard(&self, reason: Option<String>) {
        if let Ok(mut g) = self.stopped_by_guard.lock() {
            *g = reason;
        }
    }
    /// Why the kill switch holds consuming, if it does.
    pub(crate) fn stopped_by_guard(&self) -> Option<String> {
        self.stopped_by_guard.lock().ok().and_then(|g| g.clone())
    }
    /// The job kinds paused fleet-wide (operator intent: readiness ignores it).
    pub(crate) fn set_paused_kinds(&self, kinds: Vec<String>) {
        if let Ok(mut g) = self.paused_kinds.lock() {
            *g = kinds;
        }
    }
    /// The job kinds paused fleet-wide, as last read.
    pub fn paused_kinds(&self) -> Vec<String> {
        self.paused_kinds
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }
    /// Time since start.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started_instant.elapsed()
    }
    /// Ready = consuming, database answering, not draining; else the reason,
    /// naming every dependency known to be down (`; `-separated).
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining() {
            return Err("draining".to_string());
        }
        let mut reasons: Vec<String> = Vec::with_capacity(2);
        let database = self.database.load(Ordering::Relaxed);
        let at = |address: &OnceLock<String>, what: &str| match address.get() {
            Some(a) => format!(" ({what} at {a})"),
            None => String::new(),
        };
        match database {
            DB_OK => {}
            DB_DOWN => reasons.push(format!(
                "database not answering{}",
                at(&self.database_address, "PostgreSQL")
            )),
            _ => reasons.push(format!(
                "database not checked yet{}",
                at(&self.database_address, "PostgreSQL")
            )),
        }
        let guard = self.stopped_by_guard();
        if let Some(why) = &guard {
            reasons.push(format!("kill switch open: {why}"));
        }
        if !self.consuming() && guard.is_none() {
            if self.waiting_for_database() {
                // The broker has not been tried: consumers start after the database.
                reasons.push(if database == DB_OK {
                    "consumers not started yet: database start-up checks (migrations) not finished"
                        .to_string()
                } else {
                    "consumers start once it answers".to_string()
                });
            } else {
                reasons.push(format!(
                    "not consuming: broker{} not connected or topology not declared",
                    match self.broker_address.get() {
                        Some(a) => format!(" (RabbitMQ at {a})"),
                        None => " (RabbitMQ)".to_string(),
                    }
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_database_while_waiting_for_it_not_the_broker() {
        let h = Health::new();
        h.set_database_address("db.example:5432");
        h.set_broker_address("mq.example:5672");
        h.set_waiting_for_database(true);
        h.set_database_ok(false);
        let r = h.readiness().unwrap_err();
        assert!(
            r.contains("database not answering (PostgreSQL at db.example:5432)"),
            "{r}"
        );
        assert!(!r.contains("broker") && !r.contains("RabbitMQ"), "{r}");
    }

    #[test]
    fn names_both_when_both_are_down() {
        let h = Health::new();
        h.set_database_address("db.example:5432");
        h.set_broker_address("mq.example:5672");
        h.set_database_ok(false);
        let r = h.readiness().unwrap_err();
        assert!(
            r.contains("database not answering (PostgreSQL at db.example:5432)"),
            "{r}"
        );
        assert!(
            r.contains("not consuming: broker (RabbitMQ at mq.example:5672)"),
            "{r}"
        );
        h.set_database_ok(true);
        let r = h.readiness().unwrap_err();
        assert!(!r.contains("database"), "{r}");
        h.set_consuming(true);
        assert_eq!(h.readiness(), Ok(()));
        h.set_draining();
        assert_eq!(h.readiness(), Err("draining".to_string()));
    }

    #[test]
    fn kill_switch_names_its_reason_not_the_broker() {
        let h = Health::new();
        h.set_database_ok(true);
        h.set_stopped_by_guard(Some("database not answering".into()));
        let r = h.readiness().unwrap_err();
        assert_eq!(r, "kill switch open: database not answering");
        h.set_stopped_by_guard(None);
        h.set_consuming(true);
        h.set_paused_kinds(vec!["push".into()]);
        assert_eq!(h.readiness(), Ok(()), "paused kinds are operator intent");
    }
}
