//! Helpers shared by the outbox tests: a test queue bound to `<prefix>.events`,
//! receiving deliveries with a deadline, and writing outbox rows.

use std::time::Duration;

use futures_util::StreamExt;
use hookfleet::amqp::{self, topology};
use hookfleet::config::Config;
use hookfleet::outbox::{self, Event};
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use sqlx::PgPool;

/// A queue bound with `#` to the events exchange of one test's prefix.
pub struct EventsQueue {
    pub conn: Connection,
    pub channel: Channel,
    pub queue: String,
    pub prefix: String,
}

impl EventsQueue {
    /// Declares the topology (events exchange) and binds a fresh queue with `#`.
    pub async fn bind(cfg: &Config) -> EventsQueue {
        let conn = amqp::connect(&cfg.amqp, "test").await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        topology::declare(&channel, &cfg.amqp, &[], &[])
            .await
            .unwrap();
        let queue = format!("{}.test-events", cfg.amqp.prefix);
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                topology::Names::new(&cfg.amqp.prefix)
                    .events_exchange()
                    .as_str()
                    .into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        EventsQueue {
            conn,
            channel,
            queue,
            prefix: cfg.amqp.prefix.clone(),
        }
    }

    /// Messages waiting in the queue now (passive declare).
    pub async fn ready(&self) -> u32 {
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Receives deliveries (auto-ack) until every id of `want` came at least
    /// once, and returns the distinct ids received. The relay publishes at
    /// least once: rows whose confirm a closed channel lost come again, so a
    /// duplicate is allowed here; an id outside `want` shows in the result.
    pub async fn receive_ids(
        &self,
        want: &std::collections::HashSet<uuid::Uuid>,
        timeout: Duration,
    ) -> std::collections::HashSet<uuid::Uuid> {
        let mut consumer = self.consumer().await;
        let mut got = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while !want.is_subset(&got) {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    got.insert(message_id(&d));
                }
                Ok(other) => panic!("consumer ended: {other:?}"),
                Err(_) => panic!(
                    "timed out after {timeout:?}: received {} of {} ids",
                    got.intersection(want).count(),
                    want.len()
                ),
            }
        }
        let _ = self
            .channel
            .basic_cancel(consumer.tag(), Default::default())
            .await;
        got
    }

    async fn consumer(&self) -> lapin::Consumer {
        self.channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("recv-{}", uuid::Uuid::now_v7()).as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    /// Receives exactly `n` deliveries (auto-ack), panicking after `timeout`.
    pub async fn receive(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let mut consumer = self.consumer().await;
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => out.push(d),
                Ok(other) => panic!("consumer ended: {other:?}"),
                Err(_) => panic!(
                    "timed out after {timeout:?}: received {} of {n} messages",
                    out.len()
                ),
            }
        }
        let _ = self
            .channel
            .basic_cancel(consumer.tag(), Default::default())
            .await;
        out
    }

    /// Deletes the queue and the exchanges.
    pub async fn cleanup(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let names = topology::Names::new(&self.prefix);
        for ex in [names.events_exchange(), names.jobs_exchange()] {
            let _ = self
                .channel
                .exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "test done".into()).await;
    }
}

/// The message id of a delivery.
pub fn message_id(d: &Delivery) -> uuid::Uuid {
    d.properties
        .message_id()
        .as_ref()
        .unwrap()
        .as_str()
        .parse()
        .unwrap()
}

/// A header of a delivery as an integer.
pub fn int_header(d: &Delivery, key: &str) -> Option<i64> {
    let h = hookfleet::message::table_to_headers(d.properties.headers().as_ref()?);
    match h.get(key)? {
        hookfleet::message::HeaderValue::Int(n) => Some(*n),
        hookfleet::message::HeaderValue::Str(s) => s.parse().ok(),
    }
}

/// Commits `events` in one transaction.
pub async fn commit_events(pool: &PgPool, events: &[Event]) {
    let mut tx = pool.begin().await.unwrap();
    outbox::enqueue_many(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

/// `n` events of type `git.push` with payload `{"seq": i}`.
pub fn events(cfg: &Config, n: usize, correlation: &str) -> Vec<Event> {
    let names = topology::Names::new(&cfg.amqp.prefix);
    (0..n)
        .map(|i| {
            Event::new(
                &names,
                "git.push",
                Some(correlation.to_string()),
                serde_json::json!({ "seq": i }),
            )
        })
        .collect()
}

/// Unpublished rows left.
pub async fn pending(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Marks the outbox rows `from..=to` published `age` ago with `attempts` attempts,
/// as the relay would have (their work rows leave `outbox_pending`).
pub async fn mark_published(pool: &PgPool, from: i64, to: i64, age: Duration, attempts: i32) {
    sqlx::query(
        "WITH done AS (DELETE FROM outbox_pending WHERE id BETWEEN $1 AND $2 RETURNING id) \
         INSERT INTO outbox_published (id, published_at, publish_attempts) \
         SELECT id, now() - make_interval(secs => $3), $4 FROM done",
    )
    .bind(from)
    .bind(to)
    .bind(age.as_secs_f64())
    .bind(attempts)
    .execute(pool)
    .await
    .unwrap();
}
