//! Opening a broker connection with a deadline, heartbeats and a clear error.
//!
//! Every connection hookfleet makes goes through [`connect`]: consumers, publishers,
//! the relay and the hook. It never logs the URL itself, only `host:port`.

use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, uri::AMQPUri};

use crate::config::AmqpConfig;

/// Errors at the broker boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpError {
    /// `amqp.url` does not parse.
    #[error("amqp.url is invalid ({url}): {message}")]
    Url {
        /// Redacted URL.
        url: String,
        /// Parser message.
        message: String,
    },
    /// No connection within the deadline.
    #[error("cannot connect to RabbitMQ at {address} within {timeout:?}")]
    ConnectTimeout {
        /// host:port.
        address: String,
        /// Deadline.
        timeout: Duration,
    },
    /// Refused, reset, TLS or authentication failure.
    #[error("cannot connect to RabbitMQ at {address}: {source}")]
    Connect {
        /// host:port.
        address: String,
        /// Client error.
        source: lapin::Error,
    },
    /// `amqp.ca_file` could not be used.
    #[error("cannot connect to RabbitMQ at {address}: amqp.ca_file: {message}")]
    CaFile {
        /// host:port.
        address: String,
        /// What is wrong with the file.
        message: String,
    },
    /// A channel operation failed.
    #[error("RabbitMQ: {0}")]
    Protocol(#[from] lapin::Error),
    /// A broker operation exceeded its deadline.
    #[error("RabbitMQ: {what} timed out after {timeout:?}")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// Deadline.
        timeout: Duration,
    },
    /// The broker negatively acknowledged or returned a publish.
    #[error("RabbitMQ rejected the publish: {0}")]
    Rejected(String),
}

/// Connects to `cfg.url` within `cfg.connect_timeout`, naming the connection
/// `hookfleet-<role>` so it is recognisable in the management UI.
///
/// lapin's own auto-recovery stays off: the supervisor owns reconnecting (see
/// `supervisor`'s module doc for why).
pub async fn connect(cfg: &AmqpConfig, role: &str) -> Result<Connection, AmqpError> {
    let mut uri: AMQPUri = cfg.url.expose().parse().map_err(|message| AmqpError::Url {
        url: cfg.url.redacted(),
        message,
    })?;
    uri.query.frame_max = Some(cfg.frame_max);
    uri.query.heartbeat = Some(u16::try_from(cfg.heartbeat.as_secs()).unwrap_or(u16::MAX));
    uri.query.connection_timeout =
        Some(u64::try_from(cfg.connect_timeout.as_millis()).unwrap_or(u64::MAX));
    let props =
        ConnectionProperties::default().with_connection_name(format!("hookfleet-{role}").into());
    let address = cfg.url.address();
    // Checked when the config loaded; read again here so that a renewed file
    // applies at the next reconnect.
    let ca = crate::tls::configured_ca(&cfg.ca_file).map_err(|message| AmqpError::CaFile {
        address: address.clone(),
        message,
    })?;
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: ca.map(|ca| ca.pem),
    };
    let connecting =
        Connection::connect_uri_with_config(uri, props, tls, async_rs::Runtime::tokio_current());
    match tokio::time::timeout(cfg.connect_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(AmqpError::Connect { address, source }),
        Err(_) => Err(AmqpError::ConnectTimeout {
            address,
            timeout: cfg.connect_timeout,
        }),
    }
}
