//! Coalesced acknowledgements for one channel.
//!
//! One awaited `basic.ack` per message caps throughput at a third of what the
//! broker can do; acking with `multiple: true` is the cure, but a multiple-ack
//! covers every earlier tag, so it may only be sent up to the highest tag below
//! which *all* work has finished. This task owns that bookkeeping: tasks report a
//! finished delivery tag, the acker advances the contiguous watermark and sends
//! one `multiple` ack per batch (at most `flush_every` completions or
//! `flush_interval` late). Tags finished above a gap (a slow job below them) are
//! acked one by one on the timer so a single slow job cannot exhaust the
//! channel's prefetch window.
//!
//! It never acks a tag that has not been reported finished. An ack that fails
//! because the channel died is logged; the broker redelivers and the inbox makes
//! that harmless.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;

/// What to tell the broker about a finished delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with it (handled, retried via a copy, or dead-lettered via a copy).
    Ack,
    /// Could not hand it on (the publisher is down): give it back to the queue.
    Requeue,
}

/// Ack at least this often by count.
pub const FLUSH_EVERY: u64 = 64;
/// Tags finished above a gap are acked one by one once the gap is this old.
pub const GAP_GRACE: Duration = Duration::from_millis(200);

/// Sender side: cheap to clone, one per task.
#[derive(Clone, Debug)]
pub struct AckHandle {
    tx: mpsc::UnboundedSender<(u64, Settle)>,
}

impl AckHandle {
    /// Reports a finished delivery. Never blocks.
    pub fn settle(&self, tag: u64, how: Settle) {
        if self.tx.send((tag, how)).is_err() {
            tracing::debug!(delivery_tag = tag, "acker gone; the broker will redeliver");
        }
    }
}

/// Spawns the acker for `channel` and returns its handle and task. The task ends
/// when every handle is dropped, after a final flush.
pub fn spawn(
    channel: Channel,
    flush_interval: Duration,
) -> (AckHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(channel, rx, flush_interval));
    (AckHandle { tx }, task)
}

#[derive(Default)]
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
    gap_since: Option<std::time::Instant>,
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
            self.gap_since = Some(std::time::Instant::now());
        }
    }
    fn pending(&self) -> u64 {
        self.watermark - self.acked
    }
}

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<(u64, Settle)>, interval: Duration) {
    let mut w = Window::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dead = false;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((tag, how)) => {
                    if how == Settle::Requeue {
                        nack_one(&channel, tag, &mut dead).await;
                        w.sent.insert(tag);
                    }
                    w.settle(tag);
                    // Drain whatever else is queued without waiting.
                    while let Ok((tag, how)) = rx.try_recv() {
                        if how == Settle::Requeue {
                            nack_one(&channel, tag, &mut dead).await;
                            w.sent.insert(tag);
                        }
                        w.settle(tag);
                    }
                    if w.pending() >= FLUSH_EVERY {
                        flush(&channel, &mut w, &mut dead).await;
                    }
                }
                None => {
                    flush(&channel, &mut w, &mut dead).await;
                    ack_gaps(&channel, &mut w, &mut dead, true).await;
                    return;
                }
            },
            _ = tick.tick() => {
                flush(&channel, &mut w, &mut dead).await;
                ack_gaps(&channel, &mut w, &mut dead, false).await;
            }
        }
    }
}

async fn flush(channel: &Channel, w: &mut Window, dead: &mut bool) {
    if w.pending() == 0 {
        return;
    }
    let watermark = w.watermark;
    let mut tag = watermark;
    while tag > w.acked && w.sent.contains(&tag) {
        tag -= 1;
    }
    let wire = tag > w.acked;
    w.acked = watermark;
    w.sent = w.sent.split_off(&(watermark + 1));
    if *dead || !wire {
        return;
    }
    if let Err(e) = channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
    {
        *dead = true;
        tracing::warn!(error = %e, delivery_tag = tag, "ack failed: channel closed; unacked deliveries will be redelivered");
    }
}

async fn ack_gaps(channel: &Channel, w: &mut Window, dead: &mut bool, now: bool) {
    let stuck = w.gap_since.is_some_and(|t| t.elapsed() >= GAP_GRACE);
    if w.done.is_empty() || !(now || stuck) {
        return;
    }
    let unsent: Vec<u64> = w.done.difference(&w.sent).copied().collect();
    for tag in unsent {
        w.sent.insert(tag);
        if *dead {
            continue;
        }
        if let Err(e) = channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await
        {
            *dead = true;
            tracing::warn!(error = %e, delivery_tag = tag, "ack failed: channel closed; unacked deliveries will be redelivered");
        }
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
    use super::Window;

    #[test]
    fn watermark_advances_only_over_contiguous_tags() {
        let mut w = Window::default();
        w.settle(2);
        w.settle(3);
        assert_eq!(w.watermark, 0, "tag 1 is still running");
        w.settle(1);
        assert_eq!(w.watermark, 3);
        w.settle(5);
        assert_eq!(w.watermark, 3);
        w.settle(4);
        assert_eq!(w.watermark, 5);
        assert!(w.done.is_empty());
    }

    #[test]
    fn multiple_ack_never_names_an_individually_settled_tag() {
        let mut w = Window::default();
        w.settle(2);
        w.settle(3);
        w.sent.extend([2, 3]); // gap-acked while 1 was slow
        w.settle(1);
        assert_eq!(w.watermark, 3);
        let mut tag = w.watermark;
        while tag > w.acked && w.sent.contains(&tag) {
            tag -= 1;
        }
        assert_eq!(
            tag, 1,
            "the multiple ack names tag 1, which is still outstanding"
        );
    }
}
