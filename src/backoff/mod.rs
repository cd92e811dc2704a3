//! Reconnect delays: exponential with full jitter, unlimited, resettable, and
//! never longer than half the outage so far; and [`retry_forever`] (`retry.rs`),
//! the one loop that waits them, run by every part that must never give up.
//!
//! `backon` computes the capped exponential series; we draw the actual delay
//! uniformly from `[min, cap]` ("full jitter"), so a fleet that lost the broker
//! at the same moment does not reconnect in lockstep.
//!
//! # Why not backon's own jitter
//!
//! `ExponentialBuilder::with_jitter` adds a random part *on top of* the step:
//! a delay is drawn from `[d, 2d)`. At the top of the series that is up to twice
//! `max` (the configured reconnect ceiling would no longer be one), and clamping
//! it to `max` or to the outage bound below makes every process of a fleet wait
//! exactly the clamp — lockstep, what jitter is there to prevent. Both are shown
//! by the unit test `backons_jitter_exceeds_max_and_collapses_when_clamped`.
//! Full jitter below the cap keeps both properties, so we keep it (one line).
//!
//! # Why the outage bound earns its place
//!
//! The cap is also bounded by [`OUTAGE_FRACTION`] of the time since the first
//! delay of this series (the outage so far). Without it a short outage costs more
//! than itself: the doubling series (plain, or with backon's jitter) can put the
//! next attempt up to twice the outage's length after it began, so a 1 s broker
//! restart may cost 2 s (and a 150 ms blip 300 ms). Bounded by the outage's own
//! length, the wait after an outage of `T` is at most `T / 2`, so reconnecting
//! takes at most `1.5 T` (or `T + min`); the attempt rate still falls
//! geometrically (attempt times grow by at most 1.5× each), and the series' `max`
//! still caps long outages. The unit test
//! `the_outage_bound_caps_what_a_short_outage_costs` measures both schedules on
//! the same outages: ours stays within `1.5 T`, backon's jittered series does not.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

mod retry;
pub(crate) use retry::{Attempt, Event, retry_forever};

/// A delay is never longer than this fraction of the outage so far.
pub(crate) const OUTAGE_FRACTION: f64 = 0.5;

/// The bounds of a reconnect series: a config section's `reconnect_min` and
/// `reconnect_max` (equal: a fixed interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delays {
    /// The first delay.
    pub(crate) min: Duration,
    /// The largest delay.
    pub(crate) max: Duration,
}

impl Delays {
    /// The same delay every time (`min == max`: no growth, no jitter).
    pub(crate) fn fixed(every: Duration) -> Self {
        Self {
            min: every,
            max: every,
        }
    }
}

/// An endless series of reconnect delays.
pub(crate) struct Reconnect {
    builder: ExponentialBuilder,
    series: ExponentialBackoff,
    min: Duration,
    /// When the first delay of this series was asked for.
    outage_started: Option<Instant>,
}

impl Reconnect {
    /// Delays from `min` doubling up to `max`, never giving up.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_factor(2.0)
            .without_max_times();
        Self {
            series: builder.build(),
            builder,
            min,
            outage_started: None,
        }
    }

    /// The next delay to wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_at(Instant::now())
    }

    /// The next delay to wait, `now` being the current time.
    pub(crate) fn next_delay_at(&mut self, now: Instant) -> Duration {
        let started = *self.outage_started.get_or_insert(now);
        let outage = now.saturating_duration_since(started);
        let cap = self
            .series
            .next()
            .unwrap_or(self.min)
            .min(outage.mul_f64(OUTAGE_FRACTION))
            .max(self.min);
        let span = cap.saturating_sub(self.min);
        self.min + span.mul_f64(fastrand::f64())
    }

    /// Starts the series over (after a healthy period).
    pub(crate) fn reset(&mut self) {
        self.series = self.builder.build();
        self.outage_started = None;
    }
}

impl From<Delays> for Reconnect {
    fn from(d: Delays) -> Self {
        Self::new(d.min, d.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delays of a series driven by a simulated clock that advances by each delay.
    fn simulate(r: &mut Reconnect, start: Instant, n: usize) -> Vec<(Duration, Duration)> {
        let mut now = start;
        (0..n)
            .map(|_| {
                let d = r.next_delay_at(now);
                let at = now - start;
                now += d;
                (at, d)
            })
            .collect()
    }

    #[test]
    fn delays_stay_within_bounds_and_grow() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut r = Reconnect::new(min, max);
        let delays = simulate(&mut r, Instant::now(), 60);
        assert!(delays.iter().all(|(_, d)| *d >= min && *d <= max));
        assert!(
            delays[30..]
                .iter()
                .any(|(_, d)| *d > Duration::from_secs(1))
        );
        r.reset();
        assert_eq!(r.next_delay(), min, "a new series starts at min");
    }

    /// When the first attempt at or after `outage` happens, for a series of
    /// delays (attempts at 0 and after each delay).
    fn reconnected_at(outage: Duration, mut delays: impl FnMut(Duration) -> Duration) -> Duration {
        let mut at = Duration::ZERO;
        while at < outage {
            at += delays(at);
        }
        at
    }

    #[test]
    fn the_outage_bound_caps_what_a_short_outage_costs() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut worst_ours = 0.0_f64;
        let mut worst_backon = 0.0_f64;
        for seed in 0..200u64 {
            for outage_ms in [150u64, 400, 1_000, 3_000, 7_000] {
                let outage = Duration::from_millis(outage_ms);
                let start = Instant::now();
                let mut ours = Reconnect::new(min, max);
                let at = reconnected_at(outage, |at| ours.next_delay_at(start + at));
                let bound = outage.mul_f64(1.0 + OUTAGE_FRACTION).max(outage + min);
                assert!(at <= bound, "{outage:?} outage: reconnected at {at:?}");
                worst_ours = worst_ours.max(at.as_secs_f64() / outage.as_secs_f64());

                let mut jittered = ExponentialBuilder::new()
                    .with_min_delay(min)
                    .with_max_delay(max)
                    .with_jitter()
                    .with_jitter_seed(seed)
                    .without_max_times()
                    .build();
                let at = reconnected_at(outage, |_| jittered.next().unwrap_or(max));
                worst_backon = worst_backon.max(at.as_secs_f64() / outage.as_secs_f64());
            }
        }
        assert!(worst_ours <= 1.5 + 1e-9, "ours: {worst_ours}");
        assert!(
            worst_backon > 1.5,
            "backon's jittered series costs more than 1.5x an outage: {worst_backon}"
        );
    }

    #[test]
    fn backons_jitter_exceeds_max_and_collapses_when_clamped() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .with_jitter_seed(7)
            .without_max_times()
            .build()
            .take(40)
            .collect();
        assert!(delays.iter().any(|d| *d > max), "above max: {delays:?}");
        // Clamped to max, the tail is one value for every process: lockstep.
        let tail: Vec<Duration> = delays[10..].iter().map(|d| (*d).min(max)).collect();
        assert!(tail.iter().all(|d| *d == max), "{tail:?}");
        // Ours keeps spreading the tail below the cap.
        let mut r = Reconnect::new(min, max);
        let start = Instant::now();
        let ours: Vec<Duration> = (0..40)
            .map(|i| r.next_delay_at(start + Duration::from_secs(60 + i)))
            .collect();
        assert!(ours.iter().all(|d| *d <= max));
        assert!(ours[10..].iter().any(|d| *d < max.mul_f64(0.9)), "{ours:?}");
    }

    #[test]
    fn a_delay_is_never_longer_than_half_the_outage_so_far() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..200 {
            let mut r = Reconnect::new(min, max);
            for (at, d) in simulate(&mut r, Instant::now(), 40) {
                assert!(
                    d <= at.mul_f64(OUTAGE_FRACTION).max(min),
                    "waited {d:?} {at:?} into an outage"
                );
            }
        }
    }
}
