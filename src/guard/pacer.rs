//! The bulk pacer: a kind's bulk queue yields to its push queue.
//!
//! Fairness (`crate::hook::fairness`) keeps a storm out of the push queue, and
//! `fairness.bulk_concurrency` keeps it from holding the pool's permits. Neither
//! stops the storm's jobs from taking the machine's CPU and the database's time
//! from the other repositories' pushes: a few permits, busy without pause, keep
//! PostgreSQL, the broker and the relay as loaded as many would. The pacer
//! decides how many bulk deliveries a second may *start*, from how the push
//! queue's own jobs are faring, as a congestion controller does (additive
//! increase and multiplicative decrease, in TCP's manner, with the push queue's
//! handler time in the role of the round-trip time):
//!
//! - The push queue's handler times set the **baseline**: their mean over
//!   intervals in which no bulk delivery started (until one such interval was
//!   seen, the lowest interval mean). It is what a push costs with no storm.
//! - Every [`INTERVAL`], if more than one in [`SLOW_SHARE`] of the push queue's
//!   jobs took longer than `fairness.bulk_tolerance` × baseline while bulk jobs
//!   ran, the bulk rate halves (never below `fairness.bulk_min_rate`, so a storm
//!   always drains); if bulk deliveries had to wait for the rate and the push
//!   queue was not slowed, it grows by a quarter.
//! - With the push queue idle there is nothing to slow, so the bulk queue runs
//!   as fast as its permits allow.
//!
//! Waiting here costs a storm's job nothing: it is not yet taken from the queue
//! (the bulk consumer asks before it takes a permit and a delivery).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::metrics;

/// How often the rate is reconsidered.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);
/// Share of slowed push-queue jobs (1 in this many) that counts as congestion.
pub(crate) const SLOW_SHARE: u32 = 10;
/// The rate a pacer starts at (bulk starts per second), before it has learnt.
const INITIAL_RATE: f64 = 50.0;
/// The highest rate it grows to: beyond this the permits are the limit anyway.
const MAX_RATE: f64 = 100_000.0;
/// Growth per interval without congestion.
const GROWTH: f64 = 1.25;
/// Weight of a new quiet interval in the baseline.
const BASELINE_WEIGHT: f64 = 0.2;

/// Settings of one pacer (`[fairness]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacerSettings {
    /// A push-queue job slower than this multiple of the baseline is slowed.
    pub(crate) tolerance: f64,
    /// Bulk starts per second the pacer never goes below.
    pub(crate) min_rate: f64,
}

/// Paces one kind's bulk queue by its push queue's handler times.
pub(crate) struct BulkPacer {
    settings: PacerSettings,
    state: Mutex<State>,
    rate_gauge: prometheus::Gauge,
}

#[derive(Debug)]
struct State {
    /// Bulk starts per second allowed now.
    rate: f64,
    /// Starts available now (a token bucket of one second's rate at most).
    tokens: f64,
    refilled: Instant,
    interval_start: Instant,
    /// The push queue's jobs in this interval: count, total seconds, and how
    /// many were slower than tolerance × reference.
    samples: u32,
    total: f64,
    slow: u32,
    /// Bulk deliveries started in this interval.
    started: u32,
    /// A bulk delivery waited for the rate in this interval.
    starved: bool,
    /// Mean push-queue handler time with no bulk job starting (seconds).
    baseline: Option<f64>,
    /// Lowest interval mean seen, until a baseline exists.
    floor: Option<f64>,
}

/// What [`BulkPacer::try_start`] says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Start {
    /// Start the bulk delivery now.
    Go,
    /// Ask again after this long.
    Wait(Duration),
}

impl BulkPacer {
    /// A pacer for `kind` (the label of its rate gauge).
    pub(crate) fn new(kind: &str, settings: PacerSettings, now: Instant) -> Self {
        let rate = INITIAL_RATE.max(settings.min_rate);
        let rate_gauge = metrics().bulk_rate.with_label_values(&[kind]);
        rate_gauge.set(rate);
        Self {
            settings,
            state: Mutex::new(State {
                rate,
                tokens: 1.0,
                refilled: now,
                interval_start: now,
                samples: 0,
                total: 0.0,
                slow: 0,
                started: 0,
                starved: false,
                baseline: None,
                floor: None,
            }),
            rate_gauge,
        }
    }

    /// Records one push-queue job's handler time.
    pub(crate) fn observe(&self, took: Duration, now: Instant) {
        let mut s = self.lock();
        self.roll(&mut s, now);
        let took = took.as_secs_f64();
        s.samples += 1;
        s.total += took;
        if s.reference()
            .is_some_and(|r| took > self.settings.tolerance * r)
        {
            s.slow += 1;
        }
    }

    /// Whether a bulk delivery may start now; if so, it is counted.
    pub(crate) fn try_start(&self, now: Instant) -> Start {
        let mut s = self.lock();
        self.roll(&mut s, now);
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.rate).min(s.rate.max(1.0));
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            s.started += 1;
            Start::Go
        } else {
            s.starved = true;
            Start::Wait(Duration::from_secs_f64((1.0 - s.tokens) / s.rate))
        }
    }

    /// Waits until a bulk delivery may start (cancel by dropping the future).
    pub(crate) async fn wait_turn(&self) {
        while let Start::Wait(d) = self.try_start(Instant::now()) {
            tokio::time::sleep(d.min(INTERVAL)).await;
        }
    }

    /// Bulk starts per second allowed now (production reads the gauge).
    #[cfg(test)]
    fn rate(&self) -> f64 {
        self.lock().rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few numbers, valid after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the intervals that ended before `now`, adjusting the rate.
    fn roll(&self, s: &mut State, now: Instant) {
        if now.saturating_duration_since(s.interval_start) < INTERVAL {
            return;
        }
        let mean = (s.samples > 0).then(|| s.total / f64::from(s.samples));
        if let Some(m) = mean {
            if s.started == 0 {
                s.baseline = Some(match s.baseline {
                    Some(b) => b + BASELINE_WEIGHT * (m - b),
                    None => m,
                });
            }
            s.floor = Some(s.floor.map_or(m, |f| f.min(m)));
        }
        let congested = s.started > 0 && s.slow > 0 && s.slow * SLOW_SHARE > s.samples;
        if congested {
            s.rate = (s.rate / 2.0).max(self.settings.min_rate);
            s.tokens = s.tokens.min(1.0);
        } else if s.starved {
            s.rate = (s.rate * GROWTH).min(MAX_RATE);
        }
        self.rate_gauge.set(s.rate);
        s.interval_start = now;
        s.samples = 0;
        s.total = 0.0;
        s.slow = 0;
        s.started = 0;
        s.starved = false;
    }
}

impl State {
    fn reference(&self) -> Option<f64> {
        self.baseline.or(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn pacer(now: Instant) -> BulkPacer {
        BulkPacer::new(
            "test",
            PacerSettings {
                tolerance: 2.0,
                min_rate: 10.0,
            },
            now,
        )
    }

    /// Starts as many bulk deliveries as the pacer lets through in `span`,
    /// asking every millisecond, while push-queue jobs of `push_ms` arrive
    /// every `every` (none: the push queue is idle). Returns the instant after.
    fn run(p: &BulkPacer, mut t: Instant, span: Duration, push: Option<(u32, u64)>) -> Instant {
        let end = t + span;
        let mut n = 0u64;
        while t < end {
            let _ = p.try_start(t);
            if let Some((push_ms, every)) = push
                && n.is_multiple_of(every)
            {
                p.observe(push_ms * MS, t);
            }
            n += 1;
            t += MS;
        }
        t
    }

    /// A second of push-queue jobs of `push_ms`, one every 2 ms, with no bulk
    /// delivery asking to start. Returns the instant after.
    fn push_only(p: &BulkPacer, mut t: Instant, push_ms: u32) -> Instant {
        for i in 0..1000u32 {
            if i % 2 == 0 {
                p.observe(push_ms * MS, t);
            }
            t += MS;
        }
        t
    }

    #[test]
    fn grows_while_the_push_queue_is_idle() {
        let t0 = Instant::now();
        let p = pacer(t0);
        let before = p.rate();
        run(&p, t0, 2 * INTERVAL * 10, None);
        assert!(p.rate() > before * 10.0, "rate {} from {before}", p.rate());
    }

    #[test]
    fn halves_when_push_jobs_slow_down_while_bulk_runs_and_keeps_the_floor() {
        let t0 = Instant::now();
        let p = pacer(t0);
        // A quiet second: push jobs of 5 ms, no bulk asked for: the baseline.
        let t = push_only(&p, t0, 5);
        // Bulk runs as fast as allowed and the push jobs take 30 ms (> 2 × 5).
        run(&p, t, INTERVAL * 10, Some((30, 2)));
        assert_eq!(p.rate(), 10.0, "halved down to bulk_min_rate");
    }

    #[test]
    fn push_jobs_within_tolerance_let_the_rate_grow() {
        let t0 = Instant::now();
        let p = pacer(t0);
        let t = push_only(&p, t0, 5);
        let before = p.rate();
        run(&p, t, INTERVAL * 10, Some((8, 2)));
        assert!(p.rate() > before * 5.0, "rate {} from {before}", p.rate());
    }

    #[test]
    fn the_rate_limits_starts_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let p = pacer(t0);
        // The initial bucket holds one start; the next waits about 1/rate.
        assert_eq!(p.try_start(t0), Start::Go);
        match p.try_start(t0) {
            Start::Wait(d) => {
                assert!(
                    d <= Duration::from_secs_f64(1.0 / INITIAL_RATE) + MS,
                    "{d:?}"
                );
                assert!(d > Duration::ZERO);
            }
            Start::Go => panic!("a second start at once went through"),
        }
        let later = t0 + Duration::from_secs_f64(1.0 / INITIAL_RATE) + MS;
        assert_eq!(p.try_start(later), Start::Go);
    }

    #[test]
    fn slowness_without_bulk_jobs_is_not_the_storm_and_keeps_the_rate() {
        let t0 = Instant::now();
        let p = pacer(t0);
        let t = push_only(&p, t0, 5);
        let before = p.rate();
        // Push jobs slow down, but no bulk delivery asks to start.
        push_only(&p, t, 50);
        assert_eq!(p.rate(), before);
    }
}
