//! Coalesced acknowledgements for one channel.
//!
//! One awaited `basic.ack` per message caps throughput at a third of what the
//! broker can do; acking with `multiple: true` is the cure, but a multiple-ack
//! covers every earlier tag, so it may only be sent up to the highest tag below
//! which *all* work has finished. This module owns that bookkeeping: tasks record
//! a finished delivery tag in a shared window (a short lock, no wake-up), and the
//! acker task sends one `multiple` ack per batch (woken after [`flush_every`]
//! completions, or by its `flush_interval` timer). Tags finished above a gap (a
//! slow job below them) are acked one by one after [`GAP_GRACE`] so a single slow
//! job cannot exhaust the channel's prefetch window. A requeue is sent before any
//! ack can cover its tag: the tag counts as finished only once its nack is out.
//!
//! It never acks a tag that has not been reported finished. An ack that fails
//! because the channel died is logged once; the broker redelivers and the inbox
//! makes that harmless.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::Notify;

/// What to tell the broker about a finished delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckSettle {
    /// Done with it (handled, retried via a copy, or dead-lettered via a copy).
    Ack,
    /// Could not hand it on (the publisher is down): give it back to the queue.
    Requeue,
}

/// How many finished deliveries wake the acker: a sixteenth of the channel's
/// prefetch window (at least 1, at most 64).
///
/// Why relative to the window: the broker sends nothing more once `prefetch`
/// deliveries are unacked, and a quorum queue hands credit back only after the
/// ack went through its log. A delivery spends longer between arriving and
/// being settled here than in a bare consume loop (a task of its own, then the
/// acker), and an ack is only sent once the previous one is written, so acks
/// already cover more than this count under load. A fixed count near the
/// window would hold back all credit until the whole window had finished (with
/// the default window of 64, a fixed 64 leaves the broker idle for a round trip
/// per window); a fraction of the window keeps credit flowing at any size.
/// BENCHMARKS.md has the measurement.
pub(crate) fn flush_every(prefetch: u16) -> u64 {
    (u64::from(prefetch) / 16).clamp(1, 64)
}
/// Tags finished above a gap are acked one by one once the gap is this old.
pub(crate) const GAP_GRACE: Duration = Duration::from_millis(200);

/// Sender side: cheap to clone, one per task. The acker task ends (after a final
/// flush) once every handle is gone.
#[derive(Clone, Debug)]
pub(crate) struct AckHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    /// [`flush_every`] of the channel's prefetch.
    flush_every: u64,
}

#[derive(Debug, Default)]
struct State {
    window: Window,
    /// Tags to nack-requeue, not yet sent (and not yet in the window).
    requeue: Vec<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the window inconsistent
        // (every update is a single call), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AckHandle {
    /// Reports a finished delivery. Never blocks on I/O.
    pub(crate) fn settle(&self, tag: u64, how: AckSettle) {
        let wake = {
            let mut s = self.shared.lock();
            match how {
                AckSettle::Ack => {
                    s.window.settle(tag);
                    s.window.pending() >= self.shared.flush_every
                }
                AckSettle::Requeue => {
                    s.requeue.push(tag);
                    true
                }
            }
        };
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

/// Spawns the acker for `channel` (consuming with window `prefetch`) and
/// returns its handle and task.
pub(crate) fn spawn(
    channel: Channel,
    prefetch: u16,
    flush_interval: Duration,
) -> (AckHandle, tokio::task::JoinHandle<()>) {
    let shared = Arc::new(Shared {
        state: Mutex::default(),
        wake: Notify::new(),
        flush_every: flush_every(prefetch),
    });
    let task = tokio::spawn(run(channel, shared.clone(), flush_interval));
    (AckHandle { shared }, task)
}

#[derive(Debug, Default)]
struct Window {
    /// Every tag ≤ this is settled (delivery tags start at 1 on each channel).
    watermark: u64,
    /// Settled tags above the watermark.
    done: BTreeSet<u64>,
    /// Tags above `acked` already settled on the wire one by one (gap acks and
    /// requeues). A multiple-ack must not name one of them: RabbitMQ rejects a
    /// tag it no longer holds with PRECONDITION_FAILED and closes the channel.
    sent: BTreeSet<u64>,
    /// Highest watermark already acked on the wire.
    acked: u64,
    /// Since when tags have waited above a gap (reset whenever the watermark moves).
    gap_since: Option<Instant>,
}

impl Window {
    fn settle(&mut self, tag: u64) {
        if tag > self.watermark {
            self.done.insert(tag);
        }
        let before = self.watermark;
        while self.done.remove(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        if self.done.is_empty() {
            self.gap_since = None;
        } else if self.watermark != before || self.gap_since.is_none() {
            self.gap_since = Some(Instant::now());
        }
    }

    fn pending(&self) -> u64 {
        self.watermark - self.acked
    }

    /// The tag to multiple-ack now, if any: the highest settled tag not already
    /// settled on the wire. Marks everything up to the watermark as acked.
    fn take_flush(&mut self) -> Option<u64> {
        if self.pending() == 0 {
            return None;
        }
        let watermark = self.watermark;
        let mut tag = watermark;
        while tag > self.acked && self.sent.contains(&tag) {
            tag -= 1;
        }
        let wire = tag > self.acked;
        self.acked = watermark;
        self.sent = self.sent.split_off(&(watermark + 1));
        wire.then_some(tag)
    }

    /// Tags above a gap to ack one by one (all of them when `now`, else only once
    /// the gap is older than [`GAP_GRACE`]); marks them sent.
    fn take_gaps(&mut self, now: bool) -> Vec<u64> {
        let stuck = self.gap_since.is_some_and(|t| t.elapsed() >= GAP_GRACE);
        if self.done.is_empty() || !(now || stuck) {
            return Vec::new();
        }
        let unsent: Vec<u64> = self.done.difference(&self.sent).copied().collect();
        self.sent.extend(unsent.iter().copied());
        unsent
    }
}

async fn run(channel: Channel, shared: Arc<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dead = false;
    loop {
        let ticked = tokio::select! {
            _ = shared.wake.notified() => false,
            _ = tick.tick() => true,
        };
        // Only this task holds the Arc once every handle is dropped.
        let last = Arc::strong_count(&shared) == 1;

        let requeue = std::mem::take(&mut shared.lock().requeue);
        for tag in &requeue {
            nack_one(&channel, *tag, &mut dead).await;
        }
        let (flush, gaps) = {
            let mut s = shared.lock();
            for tag in requeue {
                s.window.sent.insert(tag);
                s.window.settle(tag);
            }
            let flush = if ticked || last || s.window.pending() >= shared.flush_every {
                s.window.take_flush()
            } else {
                None
            };
            let gaps = if ticked || last {
                s.window.take_gaps(last)
            } else {
                Vec::new()
            };
            (flush, gaps)
        };
        if let Some(tag) = flush {
            ack(&channel, tag, true, &mut dead).await;
        }
        for tag in gaps {
            ack(&channel, tag, false, &mut dead).await;
        }
        if last {
            return;
        }
    }
}

async fn ack(channel: &Channel, tag: u64, multiple: bool, dead: &mut bool) {
    if *dead {
        return;
    }
    if let Err(e) = channel.basic_ack(tag, BasicAckOptions { multiple }).await {
        *dead = true;
        tracing::warn!(error = %e, delivery_tag = tag, "ack failed: channel closed; unacked deliveries will be redelivered");
    }
}

async fn nack_one(channel: &Channel, tag: u64, dead: &mut bool) {
    if *dead {
        return;
    }
    let opts = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    if let Err(e) = channel.basic_nack(tag, opts).await {
        *dead = true;
        tracing::warn!(error = %e, delivery_tag = tag, "nack failed: channel closed; the broker will redeliver");
    }
}

#[cfg(test)]
mod tests {
    use super::{Window, flush_every};

    #[test]
    fn acks_are_flushed_every_sixteenth_of_the_window() {
        assert_eq!(flush_every(256), 16);
        assert_eq!(flush_every(64), 4);
        assert_eq!(flush_every(10), 1, "a small window is acked at once");
        assert_eq!(flush_every(0), 1, "prefetch 0 (unlimited) still acks");
        assert_eq!(flush_every(u16::MAX), 64, "at most every 64");
    }

    #[test]
    fn watermark_advances_only_over_contiguous_tags() {
        let mut w = Window::default();
        w.settle(2);
        w.settle(3);
        assert_eq!(w.watermark, 0, "tag 1 is still running");
        assert_eq!(w.take_flush(), None);
        w.settle(1);
        assert_eq!(w.watermark, 3);
        w.settle(5);
        assert_eq!(w.watermark, 3);
        w.settle(4);
        assert_eq!(w.watermark, 5);
        assert!(w.done.is_empty());
        assert_eq!(w.take_flush(), Some(5));
        assert_eq!(w.take_flush(), None, "nothing new to ack");
    }

    #[test]
    fn multiple_ack_never_names_an_individually_settled_tag() {
        let mut w = Window::default();
        w.settle(2);
        w.settle(3);
        assert_eq!(w.take_gaps(true), vec![2, 3], "gap-acked while 1 was slow");
        assert!(w.take_gaps(true).is_empty(), "each gap tag is sent once");
        w.settle(1);
        assert_eq!(w.watermark, 3);
        assert_eq!(
            w.take_flush(),
            Some(1),
            "the multiple ack names tag 1, still outstanding"
        );
        assert!(w.sent.is_empty());
    }

    #[test]
    fn a_window_of_only_individually_settled_tags_sends_no_multiple_ack() {
        let mut w = Window::default();
        w.settle(1);
        w.sent.insert(1); // requeued
        assert_eq!(w.take_flush(), None);
        assert_eq!(w.acked, 1);
    }
}
