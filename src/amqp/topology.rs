//! Exchange and queue names, and their idempotent declaration.
//!
//! Owns the shape of the broker side (see `docs/ARCHITECTURE.md`):
//! `<prefix>.jobs` (direct) routes job kind `k` to the work queue `<prefix>.<k>`;
//! each work queue has retry tiers `<prefix>.<k>.retry.<delay>` whose messages
//! expire (`x-message-ttl`) and dead-letter back to the work queue through the
//! default exchange, and a parking queue `<prefix>.<k>.dead` that never expires.
//! A kind of [`BULK_KINDS`] also has a bulk queue `<prefix>.<k>.bulk` (routing key
//! `<k>.bulk`) with its own retry tiers, so a storm that was sent there is retried
//! and postponed there too; it shares the kind's parking queue.
//! `<prefix>.events` (topic) carries outgoing events, published only by the relay.
//!
//! Declaring is idempotent and runs on every (re)connect, so a queue deleted on the
//! broker comes back. This module never publishes or consumes.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{AmqpConfig, QueueType};

/// Kinds with a bulk queue: their publisher sends a storm there (the push hook,
/// `src/hook/fairness.rs`), and workers give it a few permits only.
pub(crate) const BULK_KINDS: &[&str] = &["push"];

/// Whether `kind` has a bulk queue.
pub(crate) fn has_bulk(kind: &str) -> bool {
    BULK_KINDS.contains(&kind)
}

/// Routing key of a kind's bulk queue.
pub(crate) fn bulk_routing_key(kind: &str) -> String {
    format!("{kind}.bulk")
}

/// Names of everything hookfleet declares, derived from the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `amqp.prefix`.
    pub prefix: String,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    /// The direct exchange jobs are published to (routing key = kind).
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    /// The topic exchange outgoing events are published to (routing key = event type).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// The work queue of a kind.
    pub fn queue(&self, kind: &str) -> String {
        format!("{}.{kind}", self.prefix)
    }
    /// The bulk queue of a kind (see [`BULK_KINDS`]).
    pub fn bulk_queue(&self, kind: &str) -> String {
        format!("{}.{kind}.bulk", self.prefix)
    }
    /// The work queues of a kind: its queue, and its bulk queue if it has one.
    pub(crate) fn work_queues(&self, kind: &str) -> Vec<String> {
        let mut v = vec![self.queue(kind)];
        if has_bulk(kind) {
            v.push(self.bulk_queue(kind));
        }
        v
    }
    /// The retry queue of a kind's work queue for a delay tier.
    pub fn retry_queue(&self, kind: &str, delay: Duration) -> String {
        retry_queue_of(&self.queue(kind), delay)
    }
}

/// The retry queue of the work queue `queue` (a kind's queue or its bulk
/// queue) for a delay tier: `<queue>.retry.<delay>`; it dead-letters back to
/// `queue`.
pub fn retry_queue_of(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}", humantime::format_duration(delay)).replace(' ', "")
}

impl Names {
    /// The parking queue of a kind.
    pub fn dead_queue(&self, kind: &str) -> String {
        format!("{}.{kind}.dead", self.prefix)
    }
}

fn s(v: &str) -> ShortString {
    v.into()
}

fn queue_args(cfg: &AmqpConfig) -> FieldTable {
    let mut t = FieldTable::default();
    match cfg.queue_type {
        QueueType::Quorum => {
            t.insert(s("x-queue-type"), AMQPValue::LongString("quorum".into()));
        }
        QueueType::Classic => {
            t.insert(s("x-queue-type"), AMQPValue::LongString("classic".into()));
        }
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares the exchanges and, for each kind, its work, retry and dead queues.
pub async fn declare(
    channel: &Channel,
    cfg: &AmqpConfig,
    tiers: &[Duration],
    kinds: &[String],
) -> Result<(), lapin::Error> {
    let names = Names::new(&cfg.prefix);
    let exchange_opts = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            s(&names.jobs_exchange()),
            ExchangeKind::Direct,
            exchange_opts,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            s(&names.events_exchange()),
            ExchangeKind::Topic,
            exchange_opts,
            FieldTable::default(),
        )
        .await?;

    for kind in kinds {
        declare_work(channel, cfg, &names, kind, &names.queue(kind), kind, tiers).await?;
        if has_bulk(kind) {
            let key = bulk_routing_key(kind);
            declare_work(
                channel,
                cfg,
                &names,
                kind,
                &names.bulk_queue(kind),
                &key,
                tiers,
            )
            .await?;
        }
        channel
            .queue_declare(s(&names.dead_queue(kind)), durable(), queue_args(cfg))
            .await?;
    }
    Ok(())
}

/// Declares the work queue `work` of `kind` (bound with `routing_key`) and its
/// retry tiers, which dead-letter back to it.
async fn declare_work(
    channel: &Channel,
    cfg: &AmqpConfig,
    names: &Names,
    kind: &str,
    work: &str,
    routing_key: &str,
    tiers: &[Duration],
) -> Result<(), lapin::Error> {
    let args = work_queue_args(cfg, names, kind);
    channel.queue_declare(s(work), durable(), args).await?;
    channel
        .queue_bind(
            s(work),
            s(&names.jobs_exchange()),
            s(routing_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for delay in tiers {
        let args = retry_queue_args(cfg, work, *delay);
        channel
            .queue_declare(s(&retry_queue_of(work, *delay)), durable(), args)
            .await?;
    }
    Ok(())
}

/// The arguments of `kind`'s work queue: on quorum queues, the broker's
/// delivery limit and where it dead-letters.
fn work_queue_args(cfg: &AmqpConfig, names: &Names, kind: &str) -> FieldTable {
    let mut args = queue_args(cfg);
    if cfg.queue_type == QueueType::Quorum {
        // A crash loop (worker dies mid-message) never reaches our retry logic;
        // the broker's delivery limit parks such a message instead of looping.
        args.insert(
            s("x-delivery-limit"),
            AMQPValue::LongLongInt(cfg.delivery_limit.into()),
        );
        args.insert(
            s("x-dead-letter-exchange"),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            s("x-dead-letter-routing-key"),
            AMQPValue::LongString(names.dead_queue(kind).as_str().into()),
        );
    }
    args
}

/// The arguments of the retry queue of `work` waiting `delay`: the wait, then
/// back to `work`.
fn retry_queue_args(cfg: &AmqpConfig, work: &str, delay: Duration) -> FieldTable {
    let mut args = queue_args(cfg);
    let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    args.insert(s("x-message-ttl"), AMQPValue::LongLongInt(ttl));
    args.insert(
        s("x-dead-letter-exchange"),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        s("x-dead-letter-routing-key"),
        AMQPValue::LongString(work.into()),
    );
    if cfg.queue_type == QueueType::Quorum {
        // Quorum dead-lettering is at-most-once unless asked otherwise; a
        // retried job must not vanish on its way back.
        args.insert(
            s("x-dead-letter-strategy"),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            s("x-overflow"),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
    args
}

/// Deletes everything [`declare`] creates (tests and `--prefix` cleanups).
pub async fn delete(
    channel: &Channel,
    prefix: &str,
    tiers: &[Duration],
    kinds: &[String],
) -> Result<(), lapin::Error> {
    let names = Names::new(prefix);
    for kind in kinds {
        let mut queues = vec![names.dead_queue(kind)];
        for work in names.work_queues(kind) {
            queues.extend(tiers.iter().map(|d| retry_queue_of(&work, *d)));
            queues.push(work);
        }
        for q in queues {
            channel
                .queue_delete(s(&q), lapin::options::QueueDeleteOptions::default())
                .await?;
        }
    }
    for ex in [names.jobs_exchange(), names.events_exchange()] {
        channel
            .exchange_delete(s(&ex), lapin::options::ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let n = Names::new("hookfleet");
        assert_eq!(n.jobs_exchange(), "hookfleet.jobs");
        assert_eq!(n.events_exchange(), "hookfleet.events");
        assert_eq!(n.queue("push"), "hookfleet.push");
        assert_eq!(n.dead_queue("push"), "hookfleet.push.dead");
        assert_eq!(
            n.retry_queue("push", Duration::from_secs(10)),
            "hookfleet.push.retry.10s"
        );
        assert_eq!(
            n.retry_queue("push", Duration::from_secs(60)),
            "hookfleet.push.retry.1m"
        );
    }
}
