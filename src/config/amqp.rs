//! `[amqp]`: the broker, its queues and the reconnect series.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::check::{at_least, positive, range, url};
use super::error::ConfigError;
use super::secret::SecretUrl;
use crate::backoff::Delays;

/// Allowed range of `amqp.consumers_per_queue`.
pub const CONSUMERS_RANGE: std::ops::RangeInclusive<u64> = 1..=64;

/// Allowed range of `amqp.max_message_bytes` (RabbitMQ's own ceiling is 512 MiB).
pub const MAX_MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<u64> = 65_536..=536_870_912;

/// Queue type of the work queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated, durable, with a delivery limit (the default).
    Quorum,
    /// Classic queues, for single-node brokers or old RabbitMQ.
    Classic,
}

/// RabbitMQ settings.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// Broker URL, `amqp://` or `amqps://` (TLS via rustls), for one address (a
    /// single node, or a Service in front of a cluster).
    pub url: SecretUrl,
    /// The nodes of a cluster, tried in a shuffled order at each connect (see
    /// `amqp::connect`); when set, `url` is not used, and setting both in a file
    /// or the environment is an error. As an environment variable:
    /// `HOOKFLEET_AMQP__URLS=amqp://a:5672/%2f,amqp://b:5672/%2f`.
    #[serde(default, deserialize_with = "url_list")]
    pub urls: Vec<SecretUrl>,
    /// A PEM file of root certificates trusted for `amqps://` besides the
    /// platform's (a broker with a private CA); empty for none. Read at every
    /// connect, so a renewed file applies at the next reconnect.
    pub ca_file: String,
    /// Prefix of every exchange and queue name (`<prefix>.jobs`, `<prefix>.push`...),
    /// so several deployments or tests can share a broker.
    pub prefix: String,
    /// Upper bound on TCP + TLS + AMQP handshake.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub connect_timeout: Duration,
    /// AMQP heartbeat interval negotiated with the broker.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub heartbeat: Duration,
    /// Upper bound on waiting for a publisher confirm.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub publish_timeout: Duration,
    /// Largest AMQP frame proposed to the broker, in bytes. lapin keeps two buffers
    /// of 32 frames per connection, so this sets most of a worker's idle memory
    /// (131072, the broker default, costs 8 MiB per connection; 16384 costs 1 MiB).
    /// Bigger messages are split into several frames, which costs little.
    pub(crate) frame_max: u32,
    /// Largest message body hookfleet publishes, in bytes: keep it at or below
    /// the broker's `max_message_size` (RabbitMQ 4: 16 MiB; 3.x: 128 MiB). The
    /// relay refuses a bigger outbox row before sending it (the broker would close
    /// the channel) and parks it; event and webhook bodies are capped below it.
    pub max_message_bytes: u32,
    /// Type of the work, retry and dead-letter queues.
    pub queue_type: QueueType,
    /// Per-channel prefetch; 0 derives it from `worker.concurrency`.
    pub(crate) prefetch: u16,
    /// Consumers (each on its own channel) per work queue.
    pub consumers_per_queue: u16,
    /// Quorum queues: the broker dead-letters a message redelivered this often
    /// (a guard against crash loops that never reach our own retry logic).
    pub(crate) delivery_limit: u32,
    /// Broker-side consumer timeout for an unacked delivery (`x-consumer-timeout`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) consumer_timeout: Duration,
    /// First reconnect delay.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub reconnect_max: Duration,
    /// A connection that stayed up this long resets the backoff.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub healthy_after: Duration,
}

impl AmqpConfig {
    /// The broker addresses to try: `urls` when set, else `url`.
    pub fn endpoints(&self) -> Vec<SecretUrl> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }

    /// The reconnect series' bounds (`reconnect_min`, `reconnect_max`).
    pub(crate) fn reconnect_delays(&self) -> Delays {
        Delays {
            min: self.reconnect_min,
            max: self.reconnect_max,
        }
    }

    /// `host:port` of every endpoint, comma-separated (for messages).
    pub fn addresses(&self) -> String {
        self.endpoints()
            .iter()
            .map(SecretUrl::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `[amqp]` checks: URLs, the queue prefix, limits, timeouts, the CA file.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        url("amqp.url", &self.url, &["amqp", "amqps"])?;
        for u in &self.urls {
            url("amqp.urls", u, &["amqp", "amqps"])?;
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 100
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !prefix_ok {
            return Err(ConfigError::Invalid {
                key: "amqp.prefix".into(),
                message: format!(
                    "must be 1..=100 characters of [A-Za-z0-9._-], got {:?}",
                    self.prefix
                ),
            });
        }
        positive("amqp.connect_timeout", self.connect_timeout)?;
        range("amqp.frame_max", self.frame_max.into(), 4096..=1_048_576)?;
        positive("amqp.publish_timeout", self.publish_timeout)?;
        range(
            "amqp.max_message_bytes",
            self.max_message_bytes.into(),
            MAX_MESSAGE_BYTES_RANGE,
        )?;
        range("amqp.heartbeat", self.heartbeat.as_secs(), 0..=3600)?;
        range(
            "amqp.consumers_per_queue",
            self.consumers_per_queue.into(),
            CONSUMERS_RANGE,
        )?;
        positive("amqp.reconnect_min", self.reconnect_min)?;
        at_least(
            ("amqp.reconnect_max", self.reconnect_max),
            ("amqp.reconnect_min", self.reconnect_min),
        )?;
        crate::tls::configured_ca(&self.ca_file).map_err(|message| ConfigError::Invalid {
            key: "amqp.ca_file".into(),
            message,
        })?;
        Ok(())
    }
}

/// A list of URLs: a TOML array, or one string of comma-separated URLs (how an
/// environment variable or a Kubernetes Secret key holds a list).
fn url_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretUrl>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Csv(String),
    }
    let items = match Raw::deserialize(d)? {
        Raw::List(v) => v,
        Raw::Csv(s) => s.split(',').map(str::to_string).collect(),
    };
    Ok(items
        .into_iter()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .map(SecretUrl::new)
        .collect())
}
