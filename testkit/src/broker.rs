//! The test's side of the broker: a client that declares the topology, publishes
//! jobs and inspects queues ([`Broker`]), and a sink queue that collects every
//! event published under a test's prefix ([`EventSink`]).

use std::time::{Duration, Instant};

use hookfleet::config::{Config, SecretUrl};

use crate::{AMQP_URL, eventually};

/// Messages ready in `queue`, over a connection of its own: for the bench and
/// soak programs, which hold a `Config` rather than a [`Broker`].
pub async fn queue_depth(cfg: &Config, queue: &str) -> anyhow::Result<u32> {
    let conn = hookfleet::amqp::connect(&cfg.amqp, "hookfleet-bench").await?;
    let ch = conn.create_channel().await?;
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(q.message_count())
}

/// A test-side broker client: publishes jobs and inspects queues.
pub struct Broker {
    /// Connection.
    pub conn: lapin::Connection,
    /// A confirm-mode channel.
    pub ch: lapin::Channel,
    /// Names under the test's prefix.
    pub names: hookfleet::amqp::topology::Names,
}

impl Broker {
    /// Connects to the local broker and declares the topology for `kinds`.
    pub async fn new(config: &Config) -> Broker {
        let mut direct = config.amqp.clone();
        direct.url = SecretUrl::new(AMQP_URL);
        let conn = hookfleet::amqp::connect(&direct, "test")
            .await
            .expect("test broker connection");
        let ch = hookfleet::amqp::publish::confirm_channel(&conn)
            .await
            .unwrap();
        hookfleet::amqp::topology::declare(
            &ch,
            &config.amqp,
            &config.retry.tiers,
            &config.worker.kinds,
        )
        .await
        .unwrap();
        Broker {
            conn,
            ch,
            names: hookfleet::amqp::topology::Names::new(&config.amqp.prefix),
        }
    }

    /// Publishes a job of `kind` with a fresh message id; returns the id.
    pub async fn publish_job(&self, kind: &str, body: &serde_json::Value) -> uuid::Uuid {
        let env = hookfleet::message::Envelope::new(kind, Some("corr-test".into()));
        let id = env.message_id;
        self.publish_raw(
            kind,
            &serde_json::to_vec(body).unwrap(),
            env.to_properties(),
        )
        .await;
        id
    }

    /// Publishes raw bytes with the given properties to the jobs exchange.
    pub async fn publish_raw(&self, kind: &str, body: &[u8], props: lapin::BasicProperties) {
        hookfleet::amqp::publish::publish_confirmed(
            &self.ch,
            &self.names.jobs_exchange(),
            kind,
            body,
            props,
            true,
            Duration::from_secs(10),
        )
        .await
        .expect("publish test job");
    }

    /// Messages ready in `queue` (passive declare).
    pub async fn depth(&self, queue: &str) -> u32 {
        self.declare_passive(queue).await.message_count()
    }

    /// Consumers registered on `queue` (passive declare).
    pub async fn consumers(&self, queue: &str) -> u32 {
        self.declare_passive(queue).await.consumer_count()
    }

    /// `queue` as the broker sees it now, on a channel of its own.
    async fn declare_passive(&self, queue: &str) -> lapin::Queue {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let _ = ch.close(200, "ok".into()).await;
        q
    }

    /// Takes every message now in `queue` (acked).
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push(m);
        }
        out
    }

    /// Deletes the topology of `config`.
    pub async fn cleanup(&self, config: &Config) {
        let ch = self.conn.create_channel().await.unwrap();
        let _ = hookfleet::amqp::topology::delete(
            &ch,
            &config.amqp.prefix,
            &config.retry.tiers,
            &config.worker.kinds,
        )
        .await;
    }
}

/// A header of a fetched message as a string.
pub fn header(props: &lapin::BasicProperties, key: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    hookfleet::message::table_to_headers(h)
        .get(key)
        .map(|v| match v {
            hookfleet::message::HeaderValue::Int(n) => n.to_string(),
            hookfleet::message::HeaderValue::Str(s) => s.clone(),
        })
}

/// A queue bound to `<prefix>.events` with `#`, collecting every event.
pub struct EventSink {
    /// Queue name.
    pub queue: String,
    ch: lapin::Channel,
}

impl EventSink {
    /// Declares and binds the sink (the events exchange must exist).
    pub async fn new(broker: &Broker) -> EventSink {
        let ch = broker.conn.create_channel().await.unwrap();
        let queue = format!("{}.sink", broker.names.prefix);
        ch.queue_declare(
            queue.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            broker.names.events_exchange().as_str().into(),
            "#".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
        EventSink { queue, ch }
    }

    /// Takes what is in the queue now: (type, correlation id, message id, JSON body).
    pub async fn take(&self) -> Vec<SinkEvent> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(
                self.queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let p = &m.delivery.properties;
            out.push(SinkEvent {
                event_type: p.kind().as_ref().map(|s| s.to_string()).unwrap_or_default(),
                correlation_id: p.correlation_id().as_ref().map(|s| s.to_string()),
                message_id: p
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&m.delivery.data).unwrap_or(serde_json::Value::Null),
            });
        }
        out
    }

    /// Waits (up to `timeout`) for an event that `matches`, taking and dropping
    /// the others that come before it.
    pub async fn wait_for_match(
        &self,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&SinkEvent) -> bool,
    ) -> SinkEvent {
        let matches = &matches;
        eventually(timeout, what, || async move {
            self.take().await.into_iter().find(|e| matches(e))
        })
        .await
    }

    /// Waits until `n` events have arrived in total (plus any already in `got`).
    pub async fn wait_for(&self, got: &mut Vec<SinkEvent>, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < n {
            got.extend(self.take().await);
            if got.len() >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: have {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One event taken from an [`EventSink`].
#[derive(Debug, Clone)]
pub struct SinkEvent {
    /// AMQP `type`.
    pub event_type: String,
    /// AMQP `correlation_id`.
    pub correlation_id: Option<String>,
    /// AMQP `message_id`.
    pub message_id: String,
    /// JSON body.
    pub body: serde_json::Value,
}
