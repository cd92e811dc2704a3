//! One consumer's loop: takes a pool permit, then a delivery, and hands the
//! delivery to [`super::process`] in a task of the pool; it never pulls a
//! delivery it has no permit for. The [`super::supervisor`] starts one per
//! consumer of a session and stops them all with the session's token.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::acker::AckHandle;
use super::pool::TaskPool;
use super::process::{self, ConsumedQueue, DeliveryCtx};
use crate::guard::killswitch::State as SwitchState;

/// Pulls deliveries from one consumer into the pool.
pub(super) struct ConsumeLoop {
    /// What every delivery's processing needs.
    pub(super) ctx: Arc<DeliveryCtx>,
    /// The handler and queue the deliveries come from.
    pub(super) lane: Arc<ConsumedQueue>,
    /// The pool permits a delivery takes (the kind, or its bulk queue's routing key).
    pub(super) kind: String,
    /// The queue consumed (for messages).
    pub(super) queue: String,
    /// Limits on deliveries handled at once.
    pub(super) pool: TaskPool,
    /// Every delivery's task, so a drain can wait for them.
    pub(super) tasks: TaskTracker,
    /// Settles deliveries on this consumer's channel.
    pub(super) ack: AckHandle,
    /// Ends the loop (the session is ending).
    pub(super) stop: CancellationToken,
}

impl ConsumeLoop {
    /// Returns why it ended.
    pub(super) async fn run(self, mut consumer: lapin::Consumer) -> String {
        loop {
            // Fast paths first (a free permit, a delivery already buffered): no
            // waiter is registered on the pool, the stream or the stop token then.
            if self.stop.is_cancelled() {
                return "stopped".into();
            }
            // Half-open: only the trial jobs start (open: the session is ending).
            let switch = &self.ctx.gates.killswitch;
            if switch.state() != SwitchState::Closed {
                tokio::select! {
                    _ = self.stop.cancelled() => return "stopped".into(),
                    _ = switch.admit() => {}
                }
            }
            // A storm's job waits for the bulk pacer before it takes anything.
            if let Some(pacer) = self.lane.pacer.as_ref().filter(|_| self.lane.bulk) {
                tokio::select! {
                    _ = self.stop.cancelled() => return "stopped".into(),
                    () = pacer.wait_turn() => {}
                }
            }
            // The permit comes first: never pull a delivery we have no room for.
            let permits = match self.pool.try_acquire(&self.kind) {
                Some(p) => p,
                None => tokio::select! {
                    _ = self.stop.cancelled() => return "stopped".into(),
                    p = self.pool.acquire(&self.kind) => p,
                },
            };
            let next = match consumer.next().now_or_never() {
                Some(d) => d,
                None => tokio::select! {
                    _ = self.stop.cancelled() => return "stopped".into(),
                    d = consumer.next() => d,
                },
            };
            let delivery = match next {
                None => {
                    return format!(
                        "consumer of {} ended (queue deleted or channel closed)",
                        self.queue
                    );
                }
                Some(Err(e)) => return format!("consumer of {} failed: {e}", self.queue),
                Some(Ok(d)) => d,
            };
            let (ctx, lane, ack) = (self.ctx.clone(), self.lane.clone(), self.ack.clone());
            self.tasks.spawn(
                async move {
                    let _permits = permits;
                    let tag = delivery.delivery_tag;
                    let settle = process::handle_delivery(&ctx, &lane, delivery).await;
                    ack.settle(tag, settle);
                }
                .in_current_span(),
            );
        }
    }
}
