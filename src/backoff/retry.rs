//! The one retry-forever loop beside [`Reconnect`].
//!
//! [`retry_forever`] is the loop every part that must never give up runs: the
//! consuming supervisor (sessions), the worker's wait for its database, the outbox
//! relay (batches) and the spool flusher (flushes at a fixed interval). It owns
//! the series, the count of failures in a row and the cancellable wait; the
//! caller owns what an attempt is and the log lines ([`Event`]), so each line
//! keeps its module as target and says things in the caller's words. It never
//! logs above debug itself.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Delays, Reconnect};

/// How one attempt of a [`retry_forever`] loop ended.
#[derive(Debug)]
pub(crate) enum Attempt<T, E> {
    /// It produced the value: the loop returns it.
    Done(T),
    /// It failed: counted, reported ([`Event::Failed`]), then the next delay.
    Failed(E),
    /// Not a failure and nothing to wait for (a row refused by the broker to
    /// look for, a guard that changed what to consume): the next attempt starts
    /// at once, and the count of failures stands.
    Again,
    /// It worked, then ended (a session lost after it started): the count of
    /// failures starts over, and so does the series when it ran long enough to
    /// call the link `healthy`; the next attempt starts at once when `at_once`,
    /// else after the next delay (a link that dies young must not spin).
    Ended {
        /// The series starts over.
        healthy: bool,
        /// No delay before the next attempt.
        at_once: bool,
    },
    /// It saw the stop token: the loop returns `None`.
    Stopped,
}

impl<T, E> From<Result<T, E>> for Attempt<T, E> {
    fn from(r: Result<T, E>) -> Self {
        match r {
            Ok(v) => Attempt::Done(v),
            Err(e) => Attempt::Failed(e),
        }
    }
}

impl<T, E> Attempt<T, E> {
    /// Runs `work`, abandoned when `stop` is cancelled first (for work that is
    /// safe to drop midway; one that is not watches `stop` itself).
    pub(crate) async fn unless_stopped(
        stop: &CancellationToken,
        work: impl Future<Output = Result<T, E>>,
    ) -> Self {
        match stop.run_until_cancelled(work).await {
            Some(r) => r.into(),
            None => Attempt::Stopped,
        }
    }
}

/// What a [`retry_forever`] loop tells its caller, who logs it.
#[derive(Debug)]
pub enum Event<'a, E> {
    /// The `failures`-th failure in a row; the next attempt starts after `retry_in`.
    Failed {
        /// Why.
        error: &'a E,
        /// Failures in a row, this one included (1: an outage begins).
        failures: u64,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// An attempt produced the value after `failures` failures in a row (0: none).
    Done {
        /// Failures in a row before it.
        failures: u64,
    },
}

/// Runs `attempt` until it produces a value (`Some`) or `stop` is cancelled
/// (`None`), waiting the delays of a [`Reconnect`] series between failures.
///
/// `attempt` gets the failures in a row so far and returns the attempt to run,
/// which says how it ended ([`Attempt`]); it is never interrupted by the loop
/// (see [`Attempt::unless_stopped`]), but no attempt starts once `stop` is
/// cancelled and a wait ends with it. `report` hears of each failure and of the
/// value ([`Event`]): log an outage once, at its first failure, and its end.
/// `label` names the loop in this module's debug lines.
///
/// `attempt` is a closure returning a future rather than an async closure
/// (`AsyncFnMut`): rustc cannot yet prove the future of a loop over an async
/// closure `Send` (rust-lang/rust#139475), and every caller runs in a spawned
/// task. An attempt that needs `&mut` state takes it through a lock.
pub(crate) async fn retry_forever<T, E, F, Fut>(
    delays: Delays,
    stop: &CancellationToken,
    label: &'static str,
    mut attempt: F,
    mut report: impl FnMut(Event<'_, E>),
) -> Option<T>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let mut series = Reconnect::from(delays);
    let mut failures = 0u64;
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let delay = match attempt(failures).await {
            Attempt::Done(value) => {
                report(Event::Done { failures });
                return Some(value);
            }
            Attempt::Stopped => return None,
            Attempt::Again => continue,
            Attempt::Failed(error) => {
                failures += 1;
                let retry_in = series.next_delay();
                report(Event::Failed {
                    error: &error,
                    failures,
                    retry_in,
                });
                retry_in
            }
            Attempt::Ended { healthy, at_once } => {
                failures = 0;
                if healthy {
                    series.reset();
                }
                if at_once {
                    continue;
                }
                series.next_delay()
            }
        };
        tracing::debug!(
            retry = label,
            failures,
            ?delay,
            "waiting before the next attempt"
        );
        stop.run_until_cancelled(tokio::time::sleep(delay)).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::Notify;
    use tokio::time::Instant as Clock;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn delays() -> Delays {
        Delays { min: MIN, max: MAX }
    }

    /// Failures (by count) and values the report heard of.
    fn recorder(log: &mut Vec<String>) -> impl FnMut(Event<'_, &'static str>) + '_ {
        |event| match event {
            Event::Failed {
                error, failures, ..
            } => log.push(format!("failed {failures}: {error}")),
            Event::Done { failures } => log.push(format!("done after {failures}")),
        }
    }

    /// What one scripted run of [`retry_forever`] saw.
    struct Scripted<T> {
        value: Option<T>,
        /// The failure count each attempt was given.
        counts: Vec<u64>,
        /// When each attempt started.
        at: Vec<Clock>,
        log: Vec<String>,
    }

    /// Runs [`retry_forever`] with attempts answering from `script`.
    async fn run_script<T>(script: Vec<Attempt<T, &'static str>>) -> Scripted<T> {
        let stop = CancellationToken::new();
        let mut script = script.into_iter();
        let (mut counts, mut at, mut log) = (Vec::new(), Vec::new(), Vec::new());
        let value = retry_forever(
            delays(),
            &stop,
            "test",
            |failures| {
                counts.push(failures);
                at.push(Clock::now());
                std::future::ready(script.next().unwrap())
            },
            recorder(&mut log),
        )
        .await;
        Scripted {
            value,
            counts,
            at,
            log,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn returns_the_value_backing_off_between_failures() {
        let script = vec![
            Attempt::Failed("a"),
            Attempt::Failed("b"),
            Attempt::Done(42),
        ];
        let Scripted {
            value,
            counts,
            at,
            log,
        } = run_script(script).await;
        assert_eq!(value, Some(42));
        assert_eq!(counts, [0, 1, 2], "each attempt knows the failures so far");
        assert_eq!(log, ["failed 1: a", "failed 2: b", "done after 2"]);
        for gap in at.windows(2).map(|w| w[1] - w[0]) {
            assert!(
                (MIN..=MAX).contains(&gap),
                "waited {gap:?} between failures"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_cancel_during_a_wait_and_before_an_attempt() {
        let stop = CancellationToken::new();
        let failed = Arc::new(Notify::new());
        let canceller = tokio::spawn({
            let (stop, failed) = (stop.clone(), failed.clone());
            async move {
                failed.notified().await;
                stop.cancel();
            }
        });
        let started = Clock::now();
        let mut attempts = 0;
        let hour = Delays::fixed(Duration::from_secs(3600));
        let value: Option<()> = retry_forever(
            hour,
            &stop,
            "test",
            |_| {
                attempts += 1;
                failed.notify_one();
                std::future::ready(Attempt::Failed("down"))
            },
            |_| {},
        )
        .await;
        canceller.await.unwrap();
        assert_eq!((value, attempts), (None, 1));
        assert!(
            started.elapsed() < hour.min,
            "the wait ended with the token"
        );

        let value: Option<()> = retry_forever(
            delays(),
            &stop,
            "test",
            |_| -> std::future::Ready<Attempt<(), &str>> { panic!("an attempt after stop") },
            |_| {},
        )
        .await;
        assert_eq!(value, None);
    }

    #[tokio::test(start_paused = true)]
    async fn again_and_ended_are_not_failures() {
        let script = vec![
            Attempt::Failed("a"),
            Attempt::Again,
            Attempt::Failed("b"),
            Attempt::Ended {
                healthy: true,
                at_once: true,
            },
            Attempt::Failed("c"),
            Attempt::Ended {
                healthy: false,
                at_once: false,
            },
            Attempt::Done(()),
        ];
        let Scripted {
            value,
            counts,
            at,
            log,
        } = run_script(script).await;
        assert_eq!(value, Some(()));
        assert_eq!(counts, [0, 1, 1, 2, 0, 1, 0]);
        assert_eq!(
            log,
            ["failed 1: a", "failed 2: b", "failed 1: c", "done after 0"]
        );
        assert_eq!(at[2], at[1], "again: at once");
        assert_eq!(at[4], at[3], "ended at once: no wait");
        assert!(at[6] - at[5] >= MIN, "ended young: the next delay");
    }

    #[tokio::test(start_paused = true)]
    async fn unless_stopped_abandons_the_work_on_cancel() {
        let stop = CancellationToken::new();
        let done: Attempt<u8, ()> = Attempt::unless_stopped(&stop, async { Ok(7) }).await;
        assert!(matches!(done, Attempt::Done(7)));
        stop.cancel();
        let work = std::future::pending::<Result<u8, ()>>();
        let stopped = Attempt::unless_stopped(&stop, work).await;
        assert!(matches!(stopped, Attempt::Stopped));
    }
}
