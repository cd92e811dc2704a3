//! The relay's broker connection: its confirm channel, the exchanges known to
//! exist on it, and the passive check of the ones not known yet.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};

use crate::amqp::AmqpError;
use crate::metrics::metrics;
use crate::outbox::storage::OutboxRow;

/// The connection role the relay reports in logs and metrics.
pub(crate) const ROLE: &str = "relay";

/// The broker side of the relay: connection, confirm channel, and exchanges known
/// to exist on this connection.
pub(super) struct Broker {
    pub(super) conn: Connection,
    pub(super) channel: Channel,
    pub(super) known_exchanges: HashSet<String>,
}

impl Broker {
    pub(super) fn is_open(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }
}

/// Forgets a broken broker connection (the next drain reconnects).
pub(super) fn drop_broker(broker: &mut Option<Broker>) {
    if broker.take().is_some() {
        metrics()
            .amqp_connection_up
            .with_label_values(&[ROLE])
            .set(0);
    }
}

/// Checks that `exchange` exists with a passive declare on a throwaway channel
/// (a failed passive declare closes its channel, not ours).
pub(super) async fn exchange_exists(
    conn: &Connection,
    exchange: &str,
    timeout: Duration,
) -> Result<bool, AmqpError> {
    let work = async {
        let ch = conn.create_channel().await?;
        let r = ch
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match r {
            Ok(()) => {
                let _ = ch.close(200, "ok".into()).await;
                Ok(true)
            }
            Err(e) => match e.kind() {
                lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404 => Ok(false),
                _ => Err(AmqpError::Protocol(e)),
            },
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AmqpError::Timeout {
            what: "checking an exchange",
            timeout,
        })?
}

/// The exchanges `rows` aim at that do not exist (checked once per connection).
pub(super) async fn missing_exchanges(
    broker: &mut Broker,
    rows: &[OutboxRow],
    timeout: Duration,
) -> Result<HashSet<String>, AmqpError> {
    let mut missing: HashSet<String> = HashSet::new();
    for row in rows {
        if broker.known_exchanges.contains(&row.exchange) || missing.contains(&row.exchange) {
            continue;
        }
        if exchange_exists(&broker.conn, &row.exchange, timeout).await? {
            broker.known_exchanges.insert(row.exchange.clone());
        } else {
            missing.insert(row.exchange.clone());
        }
    }
    Ok(missing)
}
