//! Opening a broker connection with a deadline, heartbeats and a clear error, to
//! whichever node of a cluster answers.
//!
//! Every connection hookfleet makes goes through [`connect`]: consumers, publishers,
//! the relay, the hook, `spool flush`, `dlq` and `outbox replay`. With several
//! nodes (`amqp.urls`) each attempt tries them all once, in a shuffled order (so a
//! fleet spreads over the cluster) with nodes that failed in the last
//! [`FAILED_RECENTLY`] put last, and moves on to the next node at once when one
//! refuses, times out or fails the handshake; callers back off between whole
//! rounds, never between nodes. It never logs a URL, only `host:port`, and
//! remembers which node each role is connected to ([`nodes_in_use`], for `/info`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, uri::AMQPUri};

use crate::config::{AmqpConfig, SecretUrl};

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
    /// Every node of `amqp.urls` failed in one round.
    #[error("cannot connect to any of {count} RabbitMQ nodes: {errors}")]
    AllNodes {
        /// Nodes tried.
        count: usize,
        /// Each node's error, `; `-separated.
        errors: String,
    },
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

/// A node that failed this recently is tried after the others.
pub(crate) const FAILED_RECENTLY: Duration = Duration::from_secs(30);

/// When each node (`host:port`) last failed to connect or dropped.
static FAILED_AT: LazyLock<Mutex<HashMap<String, Instant>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
/// The node each role is connected to now.
static IN_USE: LazyLock<Mutex<BTreeMap<String, String>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Records that `address` failed (a refused connect, or a connection that
/// dropped), so the next rounds try it last for a while.
pub fn node_failed(address: &str) {
    if let Ok(mut m) = FAILED_AT.lock() {
        m.insert(address.to_string(), Instant::now());
    }
}

/// The node (`host:port`) each connection role last connected to.
pub fn nodes_in_use() -> BTreeMap<String, String> {
    IN_USE.lock().map(|m| m.clone()).unwrap_or_default()
}

/// The node `role` last connected to, if any.
pub fn node_in_use(role: &str) -> Option<String> {
    IN_USE.lock().ok().and_then(|m| m.get(role).cloned())
}

/// The order in which one round tries `urls`: shuffled, recently failed ones last.
fn round_order(urls: &[SecretUrl]) -> Vec<&SecretUrl> {
    let mut order: Vec<&SecretUrl> = urls.iter().collect();
    fastrand::shuffle(&mut order);
    let failed = FAILED_AT.lock().map(|m| m.clone()).unwrap_or_default();
    order.sort_by_key(|u| {
        failed
            .get(&u.address())
            .is_some_and(|t| t.elapsed() < FAILED_RECENTLY)
    });
    order
}

/// Connects to a node of `cfg.endpoints()`, each within `cfg.connect_timeout`,
/// naming the connection `hookfleet-<role>` so it is recognisable in the
/// management UI. One round: every node at most once.
///
/// lapin's own auto-recovery stays off: the supervisor owns reconnecting (see
/// `supervisor`'s module doc for why).
pub async fn connect(cfg: &AmqpConfig, role: &str) -> Result<Connection, AmqpError> {
    connect_within(cfg, role, None).await
}

/// As [`connect`], the whole round within `budget` when given: each node gets at
/// most its share of what is left, so every node is tried (the hook's
/// `hook.timeout`).
pub async fn connect_within(
    cfg: &AmqpConfig,
    role: &str,
    budget: Option<Duration>,
) -> Result<Connection, AmqpError> {
    let urls = cfg.endpoints();
    let order = round_order(&urls);
    let deadline = budget.map(|b| Instant::now() + b);
    let mut errors: Vec<AmqpError> = Vec::new();
    for (i, url) in order.iter().enumerate() {
        let timeout = match deadline {
            None => cfg.connect_timeout,
            Some(d) => {
                let share = d.saturating_duration_since(Instant::now())
                    / u32::try_from(order.len() - i).unwrap_or(1);
                share.min(cfg.connect_timeout)
            }
        };
        if timeout.is_zero() {
            break;
        }
        match connect_node(cfg, url, role, timeout).await {
            Ok(conn) => {
                let address = url.address();
                if urls.len() > 1 {
                    tracing::debug!(role, node = %address, "connected to RabbitMQ node");
                }
                if let Ok(mut m) = IN_USE.lock() {
                    m.insert(role.to_string(), address);
                }
                return Ok(conn);
            }
            Err(e) => {
                node_failed(&url.address());
                errors.push(e);
            }
        }
    }
    // One node: its own error, as before there were several.
    if urls.len() == 1
        && let Some(e) = errors.pop()
    {
        return Err(e);
    }
    Err(AmqpError::AllNodes {
        count: urls.len(),
        errors: if errors.is_empty() {
            "no time left to try them".to_string()
        } else {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        },
    })
}

/// Connects to one node within `timeout`.
async fn connect_node(
    cfg: &AmqpConfig,
    url: &SecretUrl,
    role: &str,
    timeout: Duration,
) -> Result<Connection, AmqpError> {
    let mut uri: AMQPUri = url.expose().parse().map_err(|message| AmqpError::Url {
        url: url.redacted(),
        message,
    })?;
    uri.query.frame_max = Some(cfg.frame_max);
    uri.query.heartbeat = Some(u16::try_from(cfg.heartbeat.as_secs()).unwrap_or(u16::MAX));
    uri.query.connection_timeout = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    let props =
        ConnectionProperties::default().with_connection_name(format!("hookfleet-{role}").into());
    let address = url.address();
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
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(AmqpError::Connect { address, source }),
        Err(_) => Err(AmqpError::ConnectTimeout { address, timeout }),
    }
}

/// Closes `channels`, then `conn`, each within `timeout`, ignoring the
/// outcome (the end of a command: nothing is left to do on failure). The
/// order matters: a channel still open when its connection closes makes
/// lapin report an "invalid channel state" error after a command that
/// succeeded.
pub async fn close(channels: &[&lapin::Channel], conn: &Connection, timeout: Duration) {
    for ch in channels {
        let _ = tokio::time::timeout(timeout, ch.close(200, "done".into())).await;
    }
    let _ = tokio::time::timeout(timeout, conn.close(200, "bye".into())).await;
}
