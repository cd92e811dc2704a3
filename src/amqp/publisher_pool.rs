//! A shared, reconnecting publisher for the consumer side (retries, dead letters).
//!
//! Owns a connection of its own (role `publisher`), separate from the consuming
//! connection: a broker memory or disk alarm blocks publishing connections only, and
//! must not stall deliveries and acks. Confirm-mode channels are pooled with
//! `deadpool` (bounded, with wait and create timeouts); a closed channel or
//! connection is discarded on recycle and replaced on the next publish.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, PoolError, RecycleError, RecycleResult, Timeouts};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;

use super::{AmqpError, connect, publish};
use crate::config::AmqpConfig;
use crate::metrics::metrics;

/// Channels kept by the publisher pool.
pub(crate) const PUBLISHER_CHANNELS: usize = 8;

/// Creates confirm channels on one shared, lazily (re)opened connection.
pub(crate) struct ChannelManager {
    cfg: AmqpConfig,
    role: &'static str,
    conn: Mutex<Option<Arc<Connection>>>,
}

impl ChannelManager {
    async fn connection(&self) -> Result<Arc<Connection>, AmqpError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        if guard.is_some() {
            metrics()
                .amqp_reconnects_total
                .with_label_values(&[self.role])
                .inc();
        }
        metrics()
            .amqp_connection_up
            .with_label_values(&[self.role])
            .set(0);
        let conn = Arc::new(connect(&self.cfg, self.role).await?);
        metrics()
            .amqp_connection_up
            .with_label_values(&[self.role])
            .set(1);
        *guard = Some(conn.clone());
        Ok(conn)
    }
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = AmqpError;

    async fn create(&self) -> Result<Channel, AmqpError> {
        let conn = self.connection().await?;
        match publish::confirm_channel(&conn).await {
            Ok(ch) => Ok(ch),
            Err(e) => {
                // A failed channel open usually means a dead connection: drop it.
                *self.conn.lock().await = None;
                Err(e)
            }
        }
    }

    async fn recycle(&self, ch: &mut Channel, _: &Metrics) -> RecycleResult<AmqpError> {
        if ch.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel closed"))
        }
    }
}

/// Publishes with confirms through pooled channels. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Publisher {
    pool: Pool<ChannelManager>,
    timeout: Duration,
}

impl Publisher {
    /// A publisher for `cfg` whose connection is named `hookfleet-<role>`. Connects
    /// on first use.
    pub(crate) fn new(cfg: &AmqpConfig, role: &'static str) -> Result<Self, AmqpError> {
        let manager = ChannelManager {
            cfg: cfg.clone(),
            role,
            conn: Mutex::new(None),
        };
        let pool = Pool::builder(manager)
            .max_size(PUBLISHER_CHANNELS)
            .timeouts(Timeouts {
                wait: Some(cfg.publish_timeout),
                create: Some(cfg.connect_timeout),
                recycle: Some(cfg.connect_timeout),
            })
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| AmqpError::Rejected(format!("publisher pool: {e}")))?;
        Ok(Self {
            pool,
            timeout: cfg.publish_timeout,
        })
    }

    /// Publishes one message and waits for the broker's confirm.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), AmqpError> {
        let channel = self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => AmqpError::Timeout {
                what: "publisher channel",
                timeout: self.timeout,
            },
            other => AmqpError::Rejected(format!("publisher pool: {other}")),
        })?;
        let result = publish::publish_confirmed(
            &channel,
            exchange,
            routing_key,
            body,
            properties,
            mandatory,
            self.timeout,
        )
        .await;
        if result.is_err() && !channel.status().connected() {
            // Do not return a dead channel to the pool.
            let _ = managed::Object::take(channel);
        }
        result
    }

    /// Closes the pool and the connection behind it.
    pub async fn close(&self) {
        self.pool.close();
        let conn = self.pool.manager().conn.lock().await.take();
        if let Some(c) = conn {
            let _ = c.close(200, "shutdown".into()).await;
        }
    }
}
