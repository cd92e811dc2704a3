//! This process's relay publishing rate for the overview: samples of the
//! relay's counter turned into a rate over the last minute.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window of the relay's publishing rate.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Samples of this process's relay counter, to turn it into a rate over
/// [`RATE_WINDOW`] (kept only as long as the window needs).
#[derive(Debug, Default)]
pub(crate) struct RelayRate(Mutex<VecDeque<(Instant, u64)>>);

impl RelayRate {
    /// Adds `published` (the counter now) and returns the rate per second
    /// since the oldest sample within the window, and that span in seconds
    /// (`None` until two samples within the window are a second apart).
    pub(crate) fn sample(&self, now: Instant, published: u64) -> Option<(f64, f64)> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while q
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            q.pop_front();
        }
        q.push_back((now, published));
        let (t0, n0) = *q.front()?;
        let span = now.duration_since(t0).as_secs_f64();
        (span >= 1.0).then(|| (published.saturating_sub(n0) as f64 / span, span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_rate_covers_the_last_minute_at_most() {
        let r = RelayRate::default();
        let t0 = Instant::now();
        assert_eq!(r.sample(t0, 10), None);
        assert_eq!(
            r.sample(t0 + Duration::from_secs(10), 60),
            Some((5.0, 10.0))
        );
        assert_eq!(
            r.sample(t0 + Duration::from_secs(50), 110),
            Some((2.0, 50.0))
        );
        // Samples older than the window drop out: the rate is the last 40 s.
        assert_eq!(
            r.sample(t0 + Duration::from_secs(90), 190),
            Some((2.0, 40.0))
        );
    }
}
