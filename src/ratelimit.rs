//! Token buckets per key (a repository, a webhook subscription): optional rate
//! limits that postpone the excess instead of dropping it.
//!
//! Owns the buckets and the choice of rate per key: `[rate_limit]`'s default,
//! or the override of the longest repository pattern that matches (`owner/*`,
//! `owner/name`). A job over its rate gets a [`Postpone`] for as long as the
//! next token takes; postponing takes no token, so a postponed job competes
//! again when it comes back. Buckets are per worker process: the fleet-wide
//! rate is the configured rate times the number of workers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::job::Postpone;

/// Postponement reason of a job over its rate.
pub(crate) const REASON: &str = "rate_limit";
/// Buckets kept before idle, full ones are dropped (they hold no state a new
/// bucket would not have).
const MAX_BUCKETS: usize = 10_000;

/// A rate: `per_second` tokens, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// Tokens added per second; 0 or less: no limit.
    pub(crate) per_second: f64,
    /// Bucket size (at least 1).
    pub(crate) burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets for one kind of key.
#[derive(Debug)]
pub(crate) struct RateLimits {
    default: Option<Rate>,
    /// Repository pattern overrides, longest pattern first.
    overrides: Vec<(String, Rate)>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// Limits with `default` (per second; 0 = none) and `burst` (0 = one
    /// second's worth), and per-pattern rates (0 = no limit for those).
    pub(crate) fn new(default: f64, burst: u32, overrides: &[(String, f64)]) -> Self {
        let rate = |per_second: f64| {
            (per_second > 0.0).then(|| Rate {
                per_second,
                burst: if burst == 0 {
                    per_second.ceil().max(1.0)
                } else {
                    f64::from(burst)
                },
            })
        };
        let mut overrides: Vec<(String, Option<Rate>)> = overrides
            .iter()
            .map(|(p, r)| (p.clone(), rate(*r)))
            .collect();
        overrides.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Self {
            default: rate(default),
            overrides: overrides
                .into_iter()
                .map(|(p, r)| (p, r.unwrap_or(UNLIMITED)))
                .collect(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any limit is configured (so callers can skip decoding keys).
    pub(crate) fn enabled(&self) -> bool {
        self.default.is_some() || self.overrides.iter().any(|(_, r)| r.per_second > 0.0)
    }

    /// The rate for `repository`: the longest matching pattern's, else the default.
    pub(crate) fn rate_for(&self, repository: &str) -> Option<Rate> {
        let found = self
            .overrides
            .iter()
            .find(|(p, _)| crate::repository::matches(p, repository));
        match found {
            Some((_, r)) if r.per_second > 0.0 => Some(*r),
            Some(_) => None,
            None => self.default,
        }
    }

    /// Takes a token for `key` at `rate`, or says how long until one is there.
    pub(crate) fn take(&self, key: &str, rate: Option<Rate>) -> Result<(), Postpone> {
        let Some(rate) = rate else { return Ok(()) };
        let now = Instant::now();
        let mut buckets = match self.buckets.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            buckets.retain(|_, b| refill(*b, rate, now).tokens < rate.burst);
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        *b = refill(*b, rate, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Postpone {
            after: Duration::from_secs_f64((1.0 - b.tokens) / rate.per_second),
            reason: REASON,
        })
    }
}

/// An override of 0: no limit for the repositories it matches.
const UNLIMITED: Rate = Rate {
    per_second: 0.0,
    burst: 0.0,
};

fn refill(b: Bucket, rate: Rate, now: Instant) -> Bucket {
    let gained = now.saturating_duration_since(b.at).as_secs_f64() * rate.per_second;
    Bucket {
        tokens: (b.tokens + gained).min(rate.burst),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_pattern_wins_and_zero_means_unlimited() {
        let l = RateLimits::new(1.0, 0, &[("org/*".into(), 5.0), ("org/mirror".into(), 0.0)]);
        assert_eq!(l.rate_for("org/app").map(|r| r.per_second), Some(5.0));
        assert_eq!(l.rate_for("org/mirror"), None);
        assert_eq!(l.rate_for("other/x").map(|r| r.per_second), Some(1.0));
        assert!(RateLimits::new(0.0, 0, &[]).rate_for("a/b").is_none());
        assert!(!RateLimits::new(0.0, 0, &[]).enabled());
    }

    #[test]
    fn the_burst_passes_then_the_excess_is_postponed() {
        let l = RateLimits::new(0.5, 2, &[]);
        let rate = l.rate_for("a/b");
        assert!(l.take("a/b", rate).is_ok());
        assert!(l.take("a/b", rate).is_ok());
        let p = l.take("a/b", rate).unwrap_err();
        assert_eq!(p.reason, REASON);
        assert!(p.after > Duration::from_secs(1) && p.after <= Duration::from_secs(2));
        assert!(l.take("c/d", rate).is_ok(), "buckets are per key");
    }
}
