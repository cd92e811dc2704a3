//! The kill switch: stop consuming while a dependency every job needs is down,
//! instead of failing each job into the retry tiers until it dead-letters.
//!
//! Owns the switch's state (closed → open → half-open → closed), its failure
//! window, its PostgreSQL probe, the `hookfleet_killswitch_*` metrics and the
//! readiness reason. It opens when a probe (`SELECT 1` within
//! `guard.probe_timeout`) fails, or when `guard.failure_share` of the recent jobs
//! of `guard.failure_kinds` (at least `guard.min_samples` within `guard.window`)
//! failed transiently. The supervisor watches the state: open → cancel the
//! consumers and drain; a job that fails transiently meanwhile (in particular the
//! one that tripped it) is nack-requeued with its `x-attempt` unchanged, and the
//! prefetched rest goes back to the queue when the channels close. Probes go on
//! every `guard.probe_interval`; the first success after `probe_interval` open
//! makes it half-open: consumers come back but [`KillSwitch::admit`] lets only
//! `guard.half_open_jobs` jobs start; when they all succeed it closes, when one
//! fails transiently it opens again. Each transition is logged once.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::GuardConfig;
use crate::health::Health;
use crate::metrics::metrics;

/// How long a failed probe is reused by failing jobs (many jobs failing at
/// once share one probe instead of queueing on a dead pool).
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// The switch's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum State {
    /// Consuming normally.
    Closed = 0,
    /// Probes succeed again: a few trial jobs run.
    HalfOpen = 1,
    /// Not consuming.
    Open = 2,
}

impl State {
    /// Metric label and log value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::HalfOpen,
            2 => State::Open,
            _ => State::Closed,
        }
    }
}

/// See the module doc.
pub(crate) struct KillSwitch {
    cfg: GuardConfig,
    /// Mirror of `tx` read on the hot path (one atomic load per delivery).
    fast: AtomicU8,
    tx: watch::Sender<State>,
    inner: Mutex<Inner>,
    health: std::sync::Arc<Health>,
    pool: Option<PgPool>,
    last_probe: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

#[derive(Default)]
struct Inner {
    /// (when, failed transiently) of recent jobs of the failure kinds.
    window: VecDeque<(Instant, bool)>,
    opened_at: Option<Instant>,
    trials_started: u32,
    trials_ok: u32,
}

impl KillSwitch {
    /// A closed switch probing `pool` (`None`: no probe, the share alone trips it).
    pub(crate) fn new(
        cfg: GuardConfig,
        pool: Option<PgPool>,
        health: std::sync::Arc<Health>,
    ) -> Self {
        Self {
            cfg,
            fast: AtomicU8::new(State::Closed as u8),
            tx: watch::channel(State::Closed).0,
            inner: Mutex::new(Inner::default()),
            health,
            pool,
            last_probe: tokio::sync::Mutex::new(None),
        }
    }

    /// The state now.
    pub(crate) fn state(&self) -> State {
        State::from_u8(self.fast.load(Ordering::Acquire))
    }

    /// A receiver of every state change (the supervisor watches it).
    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }

    /// Waits until a job may start: at once while closed; while half-open for
    /// one of the `half_open_jobs` trial slots; while open until it is not.
    pub(crate) async fn admit(&self) {
        let mut rx = self.tx.subscribe();
        loop {
            match self.state() {
                State::Closed => return,
                State::HalfOpen => {
                    if let Ok(mut g) = self.inner.lock()
                        && g.trials_started < self.cfg.half_open_jobs
                    {
                        g.trials_started += 1;
                        return;
                    }
                }
                State::Open => {}
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// A job of `kind` succeeded (or was a duplicate).
    pub(crate) fn record_success(&self, kind: &str) {
        if !self.cfg.enabled {
            return;
        }
        let close = {
            let Ok(mut g) = self.inner.lock() else { return };
            if self.counts(kind) {
                Self::push(&mut g, &self.cfg, false);
            }
            if self.state() == State::HalfOpen {
                g.trials_ok += 1;
                g.trials_ok >= self.cfg.half_open_jobs
            } else {
                false
            }
        };
        if close {
            self.transition(State::Closed, "trial jobs succeeded");
        }
    }

    /// A job of `kind` failed transiently (or timed out). Returns `true` when the
    /// switch is open after it: the caller requeues the delivery with its attempt
    /// unchanged instead of scheduling a retry.
    pub(crate) async fn record_transient_failure(&self, kind: &str) -> bool {
        if !self.cfg.enabled {
            return false;
        }
        match self.state() {
            State::Open => return true,
            State::HalfOpen => {
                self.transition(State::Open, "a trial job failed transiently");
                return true;
            }
            State::Closed => {}
        }
        if let Err(e) = self.probe_after(Instant::now()).await {
            self.transition(State::Open, &format!("database not answering: {e}"));
            return true;
        }
        let share = {
            let Ok(mut g) = self.inner.lock() else {
                return false;
            };
            if !self.counts(kind) {
                return self.state() == State::Open;
            }
            Self::push(&mut g, &self.cfg, true);
            let total = g.window.len();
            let failed = g.window.iter().filter(|(_, f)| *f).count();
            (total >= self.cfg.min_samples as usize
                && failed as f64 / total as f64 >= self.cfg.failure_share)
                .then(|| format!("{failed} of the last {total} jobs failed transiently"))
        };
        if let Some(why) = share {
            self.transition(State::Open, &why);
        }
        self.state() == State::Open
    }

    /// Probes every `guard.probe_interval` until `stop`: a failed probe opens
    /// the switch, a good one after `probe_interval` open makes it half-open.
    pub async fn run(&self, stop: CancellationToken) {
        if !self.cfg.enabled {
            return;
        }
        let mut tick = tokio::time::interval(self.cfg.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let probed = self.probe_after(Instant::now()).await;
            match (self.state(), probed) {
                (State::Open, Ok(())) => {
                    let long_enough = self
                        .inner
                        .lock()
                        .ok()
                        .and_then(|g| g.opened_at)
                        .is_none_or(|t| t.elapsed() >= self.cfg.probe_interval);
                    if long_enough {
                        self.transition(State::HalfOpen, "database answers again");
                    }
                }
                (State::Open, Err(_)) => {}
                (_, Err(e)) => {
                    self.transition(State::Open, &format!("database not answering: {e}"));
                }
                (_, Ok(())) => {}
            }
        }
    }

    fn counts(&self, kind: &str) -> bool {
        self.cfg.failure_kinds.iter().any(|k| k == kind)
    }

    fn push(g: &mut Inner, cfg: &GuardConfig, failed: bool) {
        let now = Instant::now();
        g.window.push_back((now, failed));
        while let Some((t, _)) = g.window.front() {
            if now.duration_since(*t) > cfg.window || g.window.len() > 10_000 {
                g.window.pop_front();
            } else {
                break;
            }
        }
    }

    /// [`crate::db::ping`] within `guard.probe_timeout`. A probe that began after
    /// `since` is reused (jobs failing together share one), and so is a failure
    /// younger than [`PROBE_REUSE`]; a success from before `since` is not (it
    /// says nothing about what just failed).
    async fn probe_after(&self, since: Instant) -> Result<(), String> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let mut last = self.last_probe.lock().await;
        if let Some((at, r)) = last.as_ref()
            && (*at >= since || (r.is_err() && at.elapsed() < PROBE_REUSE))
        {
            return r.clone();
        }
        let began = Instant::now();
        let r = crate::db::ping(pool, self.cfg.probe_timeout)
            .await
            .map_err(|e| e.to_string());
        *last = Some((began, r.clone()));
        r
    }

    /// Enters `to` (if not already there): metrics, readiness, one log line.
    fn transition(&self, to: State, why: &str) {
        let from = {
            let Ok(mut g) = self.inner.lock() else { return };
            let from = self.state();
            if from == to {
                return;
            }
            g.trials_started = 0;
            g.trials_ok = 0;
            if to == State::Open {
                g.opened_at = Some(Instant::now());
            } else {
                g.window.clear();
            }
            self.fast.store(to as u8, Ordering::Release);
            from
        };
        self.tx.send_replace(to);
        let m = metrics();
        m.killswitch_state.set(to as i64);
        m.killswitch_transitions_total
            .with_label_values(&[to.as_str()])
            .inc();
        match to {
            State::Open => {
                self.health.set_stopped_by_guard(Some(why.to_string()));
                tracing::error!(from = from.as_str(), reason = %why, "kill switch open: consumers cancelled; failing jobs are requeued with their attempt unchanged");
            }
            State::HalfOpen => {
                self.health.set_stopped_by_guard(None);
                tracing::warn!(reason = %why, trial_jobs = self.cfg.half_open_jobs, "kill switch half-open: consuming a few trial jobs");
            }
            State::Closed => {
                self.health.set_stopped_by_guard(None);
                tracing::info!(reason = %why, "kill switch closed: consuming normally");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch() -> KillSwitch {
        let cfg = GuardConfig {
            min_samples: 4,
            failure_share: 0.5,
            half_open_jobs: 2,
            ..GuardConfig::default()
        };
        KillSwitch::new(cfg, None, std::sync::Arc::new(Health::new()))
    }

    #[tokio::test]
    async fn opens_on_failure_share_and_closes_after_trial_jobs() {
        let ks = switch();
        ks.record_success("push");
        ks.record_success("push");
        assert!(!ks.record_transient_failure("push").await);
        // Other kinds' failures do not count toward the share.
        assert!(!ks.record_transient_failure("webhook").await);
        assert_eq!(ks.state(), State::Closed);
        assert!(ks.record_transient_failure("push").await, "2 of 4 failed");
        assert_eq!(ks.state(), State::Open);
        assert!(
            ks.health
                .readiness()
                .unwrap_err()
                .contains("2 of the last 4")
        );
        ks.transition(State::HalfOpen, "test");
        ks.admit().await;
        ks.admit().await;
        // A third job must wait for the trials to succeed.
        use futures_util::FutureExt;
        assert!(
            ks.admit().now_or_never().is_none(),
            "only half_open_jobs trial jobs start"
        );
        ks.record_success("push");
        ks.record_success("push");
        assert_eq!(ks.state(), State::Closed);
        ks.admit().await;
    }

    #[tokio::test]
    async fn a_failed_trial_job_opens_it_again() {
        let ks = switch();
        ks.transition(State::HalfOpen, "test");
        assert!(ks.record_transient_failure("webhook").await);
        assert_eq!(ks.state(), State::Open);
    }
}
