//! Circuit breaker per webhook host: decides, before a request is made, whether
//! a delivery proceeds or is postponed.
//!
//! Owns the per-host state (keyed by the URL's `host:port`) and the per-host
//! in-flight cap. It wraps the delivery call ([`Breakers::admit`] before,
//! [`Ticket::success`] / [`Ticket::failure`] after) and knows nothing of HTTP:
//! the handler says what counts as a failure (timeouts, connection errors,
//! 408/429/5xx; an answer such as 404 means the host is up).
//!
//! - **Closed**: requests go through while fewer than
//!   `webhook.per_host_concurrency` are in flight to the host (more are
//!   postponed, `host_busy`, instead of holding a pool permit while they wait
//!   for the host's slot). `webhook.breaker_failures` consecutive failures open it.
//! - **Open**: every delivery is postponed (`breaker_open`) until
//!   `webhook.breaker_open_for` has passed since it opened; no request, no pool
//!   permit held while waiting, no attempt used.
//! - **Half-open**: `webhook.breaker_probes` requests at once probe the host
//!   (others are postponed, `breaker_probing`); a success closes it, a failure
//!   reopens it.
//!
//! So a dead host never has more than `per_host_concurrency` requests (and so
//! pool permits) in flight, and after `breaker_failures` timeouts it has at most
//! `breaker_probes` per `breaker_open_for`. State is per worker process (each
//! worker learns a host is dead from its own failures). Transitions are logged
//! once each and exported as `hookfleet_webhook_breaker_state{host}`, whose
//! hosts are those of subscriptions (bounded by their number).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::WebhookConfig;
use crate::job::Postpone;
use crate::metrics::metrics;

/// Postponement reason: the host's breaker is open.
pub(crate) const REASON_OPEN: &str = "breaker_open";
/// Postponement reason: the host's breaker is half-open and its probes are out.
pub(crate) const REASON_PROBING: &str = "breaker_probing";
/// Postponement reason: `per_host_concurrency` requests are in flight already.
pub(crate) const REASON_BUSY: &str = "host_busy";

/// A breaker's state, as the gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Requests go through.
    Closed,
    /// Probing: a few requests go through.
    HalfOpen,
    /// Every delivery is postponed until the instant.
    Open(Instant),
}

impl State {
    fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open(_) => 2,
        }
    }
    fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half-open",
            State::Open(_) => "open",
        }
    }
}

#[derive(Debug)]
struct Host {
    state: State,
    failures: u32,
    in_flight: u32,
    probes: u32,
}

#[derive(Debug)]
struct Inner {
    failures_to_open: u32,
    open_for: Duration,
    probes: u32,
    per_host: u32,
    /// Postponement while the host is merely busy or probing: short, the
    /// shortest retry tier fits it.
    busy_delay: Duration,
    hosts: Mutex<HashMap<String, Host>>,
}

/// The breakers of all hosts one handler delivers to.
#[derive(Debug, Clone)]
pub(crate) struct Breakers(Arc<Inner>);

/// Permission for one request to a host; report how it went. Dropped without
/// a report (the handler failed before the request ended) it only frees the slot.
#[derive(Debug)]
pub(crate) struct Ticket {
    inner: Arc<Inner>,
    host: String,
    probe: bool,
}

impl Breakers {
    /// Breakers for `cfg` (`breaker_failures = 0`: never open, only the
    /// per-host cap applies).
    pub(crate) fn new(cfg: &WebhookConfig) -> Self {
        Self(Arc::new(Inner {
            failures_to_open: cfg.breaker_failures,
            open_for: cfg.breaker_open_for,
            probes: cfg.breaker_probes.max(1),
            per_host: cfg.per_host_concurrency.max(1),
            busy_delay: Duration::from_secs(1),
            hosts: Mutex::new(HashMap::new()),
        }))
    }

    /// The state of `host`'s breaker (closed for a host never seen).
    #[cfg(test)]
    fn state(&self, host: &str) -> State {
        self.0.lock().get(host).map_or(State::Closed, |h| h.state)
    }

    /// Proceed (a [`Ticket`]) or postpone a request to `host`, now.
    pub(crate) fn admit(&self, host: &str) -> Result<Ticket, Postpone> {
        let inner = &self.0;
        let mut hosts = inner.lock();
        let h = hosts.entry(host.to_string()).or_insert_with(|| Host {
            state: State::Closed,
            failures: 0,
            in_flight: 0,
            probes: 0,
        });
        if let State::Open(until) = h.state {
            let now = Instant::now();
            if now < until {
                return Err(Postpone {
                    after: until - now,
                    reason: REASON_OPEN,
                });
            }
            inner.transition(host, h, State::HalfOpen);
        }
        let busy = |reason| Postpone {
            after: inner.busy_delay,
            reason,
        };
        let probe = h.state == State::HalfOpen;
        if probe && h.probes >= inner.probes {
            return Err(busy(REASON_PROBING));
        }
        if h.in_flight >= inner.per_host {
            return Err(busy(REASON_BUSY));
        }
        h.in_flight += 1;
        if probe {
            h.probes += 1;
        }
        Ok(Ticket {
            inner: inner.clone(),
            host: host.to_string(),
            probe,
        })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Host>> {
        match self.hosts.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Moves `h` to `to`, logging and exporting the change once.
    fn transition(&self, host: &str, h: &mut Host, to: State) {
        let from = h.state;
        h.state = to;
        if to == State::HalfOpen {
            h.probes = 0;
        }
        metrics()
            .webhook_breaker_state
            .with_label_values(&[host])
            .set(to.gauge());
        if from.name() == to.name() {
            return;
        }
        match to {
            State::Open(_) => tracing::warn!(
                host,
                from = from.name(),
                failures = h.failures,
                open_for = ?self.open_for,
                "webhook circuit breaker opened: deliveries to this host are postponed"
            ),
            _ => tracing::info!(
                host,
                from = from.name(),
                to = to.name(),
                "webhook circuit breaker"
            ),
        }
    }

    /// Ends one request: frees its slot and applies its result.
    fn finish(&self, host: &str, probe: bool, ok: Option<bool>) {
        let mut hosts = self.lock();
        let Some(h) = hosts.get_mut(host) else {
            return;
        };
        h.in_flight = h.in_flight.saturating_sub(1);
        if probe {
            h.probes = h.probes.saturating_sub(1);
        }
        match ok {
            None => {}
            Some(true) => {
                h.failures = 0;
                if h.state != State::Closed {
                    self.transition(host, h, State::Closed);
                }
            }
            Some(false) => {
                h.failures = h.failures.saturating_add(1);
                let trips = self.failures_to_open > 0
                    && (h.state == State::HalfOpen || h.failures >= self.failures_to_open);
                if trips && !matches!(h.state, State::Open(_)) {
                    self.transition(host, h, State::Open(Instant::now() + self.open_for));
                }
            }
        }
    }
}

impl Ticket {
    /// The host answered (any status that is not a failure).
    pub(crate) fn success(mut self) {
        self.report(Some(true));
    }
    /// A timeout, connection error or 408/429/5xx.
    pub(crate) fn failure(mut self) {
        self.report(Some(false));
    }
    fn report(&mut self, ok: Option<bool>) {
        self.inner.finish(&self.host, self.probe, ok);
        // Reported: the drop below must not free the slot again.
        self.host.clear();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.host.is_empty() {
            let host = std::mem::take(&mut self.host);
            self.inner.finish(&host, self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(failures: u32, open_for: Duration, per_host: u32) -> Breakers {
        let mut cfg = crate::config::Config::load_from(None, Vec::new())
            .unwrap()
            .webhook;
        cfg.breaker_failures = failures;
        cfg.breaker_open_for = open_for;
        cfg.breaker_probes = 1;
        cfg.per_host_concurrency = per_host;
        Breakers::new(&cfg)
    }

    #[test]
    fn opens_after_consecutive_failures_and_postpones() {
        let b = breakers(2, Duration::from_secs(60), 4);
        b.admit("h:1").unwrap().failure();
        b.admit("h:1").unwrap().success();
        b.admit("h:1").unwrap().failure();
        assert_eq!(b.state("h:1"), State::Closed, "a success resets the count");
        b.admit("h:1").unwrap().failure();
        assert!(matches!(b.state("h:1"), State::Open(_)));
        let p = b.admit("h:1").unwrap_err();
        assert_eq!(p.reason, REASON_OPEN);
        assert!(p.after <= Duration::from_secs(60));
        assert!(b.admit("other:1").is_ok(), "other hosts are not affected");
    }

    #[test]
    fn half_open_lets_one_probe_through_and_its_result_decides() {
        let b = breakers(1, Duration::ZERO, 4);
        b.admit("h:1").unwrap().failure();
        let probe = b.admit("h:1").unwrap();
        assert_eq!(b.state("h:1"), State::HalfOpen);
        assert_eq!(b.admit("h:1").unwrap_err().reason, REASON_PROBING);
        probe.failure();
        assert!(matches!(b.state("h:1"), State::Open(_)));
        b.admit("h:1").unwrap().success();
        assert_eq!(b.state("h:1"), State::Closed);
    }

    #[test]
    fn caps_requests_in_flight_per_host() {
        let b = breakers(0, Duration::from_secs(1), 2);
        let t1 = b.admit("h:1").unwrap();
        let _t2 = b.admit("h:1").unwrap();
        assert_eq!(b.admit("h:1").unwrap_err().reason, REASON_BUSY);
        drop(t1);
        let t3 = b.admit("h:1").unwrap();
        for _ in 0..10 {
            // breaker_failures = 0: failures never open it.
            t3.inner.finish("h:1", false, Some(false));
            t3.inner.lock().get_mut("h:1").unwrap().in_flight += 1;
        }
        assert_eq!(b.state("h:1"), State::Closed);
    }
}
