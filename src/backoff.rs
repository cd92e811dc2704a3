//! Reconnect delays: exponential with full jitter, unlimited, resettable.
//!
//! `backon` computes the capped exponential series; we draw the actual delay
//! uniformly from `[min, that]` ("full jitter"), so a fleet that lost the broker
//! at the same moment does not reconnect in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// An endless series of reconnect delays.
pub struct Reconnect {
    builder: ExponentialBuilder,
    series: ExponentialBackoff,
    min: Duration,
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
        }
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.series.next().unwrap_or(self.min).max(self.min);
        let span = cap.saturating_sub(self.min);
        self.min + span.mul_f64(fastrand::f64())
    }

    /// Starts the series over (after a healthy period).
    pub fn reset(&mut self) {
        self.series = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds_and_grow() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut r = Reconnect::new(min, max);
        let delays: Vec<_> = (0..50).map(|_| r.next_delay()).collect();
        assert!(delays.iter().all(|d| *d >= min && *d <= max));
        assert!(delays[20..].iter().any(|d| *d > Duration::from_secs(1)));
        r.reset();
        assert!(r.next_delay() <= Duration::from_millis(200));
    }
}
