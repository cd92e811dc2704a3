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
//! - The outbox's lag is the second signal: a push's events leave through the
//!   same outbox and relay as the storm's, so a storm can slow the others'
//!   events after their handlers ran, where handler times do not see it.
//!   [`run_lag_sampler`] reads the age of the oldest outbox row due for
//!   publishing (one indexed row, fleet-wide: every relay's backlog) every
//!   [`INTERVAL`] while bulk jobs run, once a second otherwise. A lag above
//!   `fairness.bulk_tolerance` × its reference (the lowest lag lately: it falls
//!   to any lower sample at once and rises slowly, as TCP BBR's minimum
//!   round-trip time does) and above [`LAG_FLOOR`], in an interval in which
//!   bulk jobs started and push-queue jobs ran, is congestion too.
//! - With the push queue idle there is nothing to slow, so the bulk queue runs
//!   as fast as its permits allow.
//! - A storm after [`IDLE_RESTART`] without bulk starts begins again at the
//!   initial rate, not at the last storm's.
//!
//! Waiting here costs a storm's job nothing: it is not yet taken from the queue
//! (the bulk consumer asks before it takes a permit and a delivery).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

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
/// An outbox lag at or below this (seconds) is never congestion: a relay's
/// ordinary batching and a database round trip take about as long.
pub(crate) const LAG_FLOOR: f64 = 0.025;
/// Share of the gap a higher lag sample raises the lag reference by.
const LAG_RISE: f64 = 0.02;
/// A bulk start this long after the previous one begins again at the initial
/// rate.
const IDLE_RESTART: Duration = Duration::from_secs(10);
/// How long after its last bulk start a pacer still samples the lag often.
const ACTIVE_FOR: Duration = Duration::from_secs(2);
/// How long one lag sample may take.
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Halvings because push jobs slowed, and because the outbox lagged.
    slowed_by_handlers: prometheus::IntCounter,
    slowed_by_lag: prometheus::IntCounter,
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
    /// The highest outbox lag sampled in this interval (seconds).
    lag: Option<f64>,
    /// The lowest outbox lag lately (seconds): see the module's doc.
    lag_reference: Option<f64>,
    /// When a bulk delivery last started.
    last_start: Option<Instant>,
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
        let slowdowns = |signal: &str| {
            metrics()
                .bulk_slowdowns_total
                .with_label_values(&[kind, signal])
        };
        Self {
            slowed_by_handlers: slowdowns("handler_time"),
            slowed_by_lag: slowdowns("outbox_lag"),
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
                lag: None,
                lag_reference: None,
                last_start: None,
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

    /// Records one sample of the outbox's lag (see the module's doc).
    pub(crate) fn observe_lag(&self, lag: Duration, now: Instant) {
        let mut s = self.lock();
        self.roll(&mut s, now);
        let lag = lag.as_secs_f64();
        s.lag = Some(s.lag.map_or(lag, |l| l.max(lag)));
        s.lag_reference = Some(match s.lag_reference {
            Some(r) if lag > r => r + LAG_RISE * (lag - r),
            _ => lag,
        });
    }

    /// Whether bulk deliveries started lately (the lag is then sampled often).
    pub(crate) fn is_active(&self, now: Instant) -> bool {
        self.lock()
            .last_start
            .is_some_and(|t| now.saturating_duration_since(t) < ACTIVE_FOR)
    }

    /// Whether a bulk delivery may start now; if so, it is counted.
    pub(crate) fn try_start(&self, now: Instant) -> Start {
        let mut s = self.lock();
        self.roll(&mut s, now);
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * s.rate).min(s.rate.max(1.0));
        s.refilled = now;
        // A storm after a quiet spell starts over from the initial rate, as TCP
        // restarts its window after idle (RFC 2861): what the last storm was
        // allowed says little of what the fleet can take now.
        if s.last_start
            .is_some_and(|t| now.saturating_duration_since(t) >= IDLE_RESTART)
        {
            s.rate = INITIAL_RATE.max(self.settings.min_rate);
            s.tokens = s.tokens.min(1.0);
            self.rate_gauge.set(s.rate);
        }
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            s.started += 1;
            s.last_start = Some(now);
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
        let slowed = s.slow > 0 && s.slow * SLOW_SHARE > s.samples;
        let lagging = s.samples > 0
            && s.lag
                .zip(s.lag_reference)
                .is_some_and(|(lag, r)| lag > LAG_FLOOR.max(self.settings.tolerance * r));
        let congested = s.started > 0 && (slowed || lagging);
        if congested {
            if slowed {
                self.slowed_by_handlers.inc();
            }
            if lagging {
                self.slowed_by_lag.inc();
            }
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
        s.lag = None;
    }
}

/// Feeds every pacer the outbox's lag ([`storage::due_lag`]) until `stop`:
/// every [`INTERVAL`] while one of them is active, once a second otherwise (so
/// the reference is known before a storm). A failed sample is skipped: the
/// kill switch and readiness report the database.
///
/// [`storage::due_lag`]: crate::outbox::storage::due_lag
pub(crate) async fn run_lag_sampler(
    pool: PgPool,
    pacers: Vec<Arc<BulkPacer>>,
    stop: CancellationToken,
) {
    if pacers.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_every = (Duration::from_secs(1).as_millis() / INTERVAL.as_millis()).max(1) as u64;
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let now = Instant::now();
        if !pacers.iter().any(|p| p.is_active(now)) && !n.is_multiple_of(idle_every) {
            continue;
        }
        let lag = tokio::time::timeout(LAG_TIMEOUT, crate::outbox::storage::due_lag(&pool)).await;
        match lag {
            Ok(Ok(lag)) => {
                let now = Instant::now();
                for p in &pacers {
                    p.observe_lag(lag, now);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "outbox lag not sampled"),
            Err(_) => tracing::debug!("outbox lag not sampled: timed out"),
        }
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
    fn push_only(p: &BulkPacer, t: Instant, push_ms: u32) -> Instant {
        push_only_for(p, t, Duration::from_secs(1), push_ms)
    }

    /// As [`run`], with an outbox lag of `lag_ms` sampled every interval.
    fn run_lagging(
        p: &BulkPacer,
        mut t: Instant,
        span: Duration,
        push: Option<(u32, u64)>,
        lag_ms: u32,
    ) -> Instant {
        let end = t + span;
        while t < end {
            p.observe_lag(lag_ms * MS, t);
            t = run(p, t, INTERVAL, push);
        }
        t
    }

    /// A second of push-queue jobs of 5 ms and an outbox lag of `lag_ms`, no
    /// bulk delivery asking to start: the baselines.
    fn quiet_second(p: &BulkPacer, t: Instant, lag_ms: u32) -> Instant {
        let mut t = t;
        for _ in 0..5 {
            p.observe_lag(lag_ms * MS, t);
            t = push_only_for(p, t, INTERVAL, 5);
        }
        t
    }

    /// Push-queue jobs of `push_ms`, one every 2 ms, for `span`.
    fn push_only_for(p: &BulkPacer, mut t: Instant, span: Duration, push_ms: u32) -> Instant {
        let end = t + span;
        let mut i = 0u32;
        while t < end {
            if i.is_multiple_of(2) {
                p.observe(push_ms * MS, t);
            }
            i += 1;
            t += MS;
        }
        t
    }

    #[test]
    fn halves_when_the_outbox_lags_while_bulk_runs_though_handlers_are_fast() {
        let t0 = Instant::now();
        let p = pacer(t0);
        let t = quiet_second(&p, t0, 8);
        // Push handlers stay at 5 ms, but events wait 100 ms in the outbox.
        run_lagging(&p, t, INTERVAL * 10, Some((5, 2)), 100);
        assert_eq!(p.rate(), 10.0, "halved down to bulk_min_rate");
    }

    #[test]
    fn an_outbox_lag_within_tolerance_lets_the_rate_grow() {
        let t0 = Instant::now();
        let p = pacer(t0);
        let t = quiet_second(&p, t0, 20);
        let before = p.rate();
        // 35 ms: above the floor, within 2 × the reference of 20 ms.
        run_lagging(&p, t, INTERVAL * 10, Some((5, 2)), 35);
        assert!(p.rate() > before * 5.0, "rate {} from {before}", p.rate());
    }

    #[test]
    fn an_outbox_lag_under_the_floor_is_not_congestion() {
        let t0 = Instant::now();
        let p = pacer(t0);
        let t = quiet_second(&p, t0, 1);
        let before = p.rate();
        // 10 × the reference, still below LAG_FLOOR.
        let lag = (LAG_FLOOR * 1000.0) as u32 - 5;
        run_lagging(&p, t, INTERVAL * 10, Some((5, 2)), lag);
        assert!(p.rate() > before * 5.0, "rate {} from {before}", p.rate());
    }

    #[test]
    fn an_outbox_lag_with_the_push_queue_idle_slows_nothing() {
        let t0 = Instant::now();
        let p = pacer(t0);
        let t = quiet_second(&p, t0, 8);
        let before = p.rate();
        // Only the storm's own events wait: no other push to protect.
        run_lagging(&p, t, INTERVAL * 10, None, 200);
        assert!(p.rate() > before * 5.0, "rate {} from {before}", p.rate());
    }

    #[test]
    fn the_lag_reference_falls_at_once_and_rises_slowly() {
        let t0 = Instant::now();
        let p = pacer(t0);
        p.observe_lag(40 * MS, t0);
        p.observe_lag(10 * MS, t0);
        let after_fall = p.lock().lag_reference;
        p.observe_lag(500 * MS, t0);
        let after_rise = p.lock().lag_reference;
        assert_eq!(after_fall, Some(0.010));
        let r = after_rise.unwrap_or_default();
        assert!(r > 0.010 && r < 0.030, "reference {r}");
    }

    #[test]
    fn active_only_for_a_while_after_a_bulk_start() {
        let t0 = Instant::now();
        let p = pacer(t0);
        assert!(!p.is_active(t0), "no bulk start yet");
        assert_eq!(p.try_start(t0), Start::Go);
        assert!(p.is_active(t0 + ACTIVE_FOR / 2));
        assert!(!p.is_active(t0 + ACTIVE_FOR));
    }

    #[test]
    fn a_storm_after_a_quiet_spell_starts_again_at_the_initial_rate() {
        let t0 = Instant::now();
        let p = pacer(t0);
        let t = run(&p, t0, INTERVAL * 20, None);
        let grown = p.rate();
        assert!(grown > INITIAL_RATE * 10.0, "rate {grown}");
        // A pause shorter than IDLE_RESTART keeps what was learnt.
        let t = t + IDLE_RESTART / 2;
        assert_eq!(p.try_start(t), Start::Go);
        assert!(p.rate() >= grown, "rate {} after a short pause", p.rate());
        // A longer one starts over.
        let t = t + IDLE_RESTART;
        assert_eq!(p.try_start(t), Start::Go);
        assert_eq!(p.rate(), INITIAL_RATE);
        assert!(
            matches!(p.try_start(t), Start::Wait(_)),
            "no burst of the old rate's tokens"
        );
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
