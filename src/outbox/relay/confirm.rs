//! Confirm handling: what one batch's publish achieved ([`Outcome`]) and the
//! confirms still to await ([`Sent`]).

use std::time::Duration;

use lapin::PublisherConfirm;
use uuid::Uuid;

use super::policy::{RowPolicy, refused_by_broker};
use crate::amqp::{AmqpError, publish};
use crate::outbox::storage::Failure;

/// What one batch's publish achieved.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) published: Vec<i64>,
    pub(super) failed: Vec<Failure>,
    /// The channel or connection broke: unconfirmed rows were left alone.
    pub(super) broken: Option<AmqpError>,
    /// Rows sent whose confirm failed because the channel broke.
    pub(super) unconfirmed: Vec<i64>,
    /// Of `published`, those acked through a pipelined confirm: message id,
    /// outbox id, attempts (a return for them may still turn up, see
    /// [`ReturnLedger`](super::returns::ReturnLedger)).
    pub(super) acked: Vec<(Uuid, i64, i32)>,
    /// Returned messages handed to this batch's confirms (maybe others').
    pub(super) returns: Vec<publish::Returned>,
}

impl Outcome {
    /// The rows to publish one by one next time: the unconfirmed ones, when the
    /// broker closed the channel over a message (see the [relay's module doc](super)).
    pub(super) fn suspects(&self) -> &[i64] {
        match &self.broken {
            Some(e) if refused_by_broker(e).is_some() => &self.unconfirmed,
            _ => &[],
        }
    }
}

/// A batch sent to the broker whose confirms may still be outstanding.
pub(super) struct Sent {
    /// Outbox id, attempts so far, message id, and the confirm to await.
    pub(super) pending: Vec<(i64, i32, Uuid, PublisherConfirm)>,
    /// Rows already settled (confirmed one by one, or failed before sending),
    /// and a broken channel met while sending.
    pub(super) outcome: Outcome,
    pub(super) deadline: tokio::time::Instant,
    pub(super) policy: RowPolicy,
    pub(super) timeout: Duration,
}

impl Sent {
    /// Awaits every outstanding confirm (against the batch's deadline) into the
    /// outcome. A row confirmed before the channel broke still counts as
    /// published; of the errors, a broker's refusal is the one kept (it says
    /// why the channel closed; the later ones only that it was closed).
    pub(super) async fn settle_pending(&mut self) {
        for (id, attempts, message_id, confirm) in std::mem::take(&mut self.pending) {
            // A batch sent just before a slow settle still gets its full window.
            let left = self
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(self.timeout / 2);
            match publish::confirmation(confirm, left).await {
                Ok(c) => {
                    // Whose return this is, the ledger decides (see ReturnLedger).
                    self.outcome.returns.extend(c.returned);
                    if c.acked {
                        self.outcome.published.push(id);
                        self.outcome.acked.push((message_id, id, attempts));
                    } else {
                        let why = "nacked by the broker".to_string();
                        self.outcome
                            .failed
                            .push(self.policy.failure(id, attempts, why));
                    }
                }
                Err(e) => {
                    self.outcome.unconfirmed.push(id);
                    let keep = match &self.outcome.broken {
                        None => true,
                        Some(old) => {
                            refused_by_broker(old).is_none() && refused_by_broker(&e).is_some()
                        }
                    };
                    if keep {
                        self.outcome.broken = Some(e);
                    }
                }
            }
        }
    }
}

/// Awaits every confirm of a sent batch (against the batch's deadline).
pub(super) async fn await_confirms(mut sent: Sent) -> Outcome {
    sent.settle_pending().await;
    sent.outcome
}
