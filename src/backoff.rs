//! Reconnect delays: exponential with full jitter, unlimited, resettable, and
//! never longer than half the outage so far.
//!
//! `backon` computes the capped exponential series; we draw the actual delay
//! uniformly from `[min, cap]` ("full jitter"), so a fleet that lost the broker
//! at the same moment does not reconnect in lockstep.
//!
//! The cap is also bounded by [`OUTAGE_FRACTION`] of the time since the first
//! delay of this series (the outage so far). Why: with the plain series, a
//! 1-second outage could be followed by a wait of up to 1.6 s (100 ms doubling:
//! the 1.6 s step is often drawn before the second is over), so a short outage
//! cost more than itself. Bounded by the outage's own length, the wait after an
//! outage of `T` is at most `T / 2`; the attempt rate still falls geometrically
//! (attempt times grow by at most 1.5× each), and the series' `max` still caps long
//! outages.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A delay is never longer than this fraction of the outage so far.
pub const OUTAGE_FRACTION: f64 = 0.5;

/// An endless series of reconnect delays.
pub struct Reconnect {
    builder: ExponentialBuilder,
    series: ExponentialBackoff,
    min: Duration,
    /// When the first delay of this series was asked for.
    outage_started: Option<Instant>,
}

impl Reconnect {
    /// Delays from `min` doubling up to `max`, never giving up.
    pub fn new(min: Duration, max: Duration) -> Self {
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
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_at(Instant::now())
    }

    /// The next delay to wait, `now` being the current time.
    pub fn next_delay_at(&mut self, now: Instant) -> Duration {
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
    pub fn reset(&mut self) {
        self.series = self.builder.build();
        self.outage_started = None;
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
