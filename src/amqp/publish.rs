//! Publishing with publisher confirms: the one way hookfleet sends a message.
//!
//! Owns the rule that a publish counts only when the broker has confirmed it:
//! an ack with no returned message. A nack, a `mandatory` return (unroutable), a
//! closed channel or a confirm slower than the deadline are all errors, so callers
//! keep (spool, leave unpublished, or do not ack) what they tried to send.
//!
//! These are functions on a channel the caller owns; the consumer's pooled,
//! reconnecting [`Publisher`](super::publisher_pool::Publisher) calls them.

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};

use super::AmqpError;

/// Opens a channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, AmqpError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Sends one message without waiting for its confirm (pipelining: send many, then
/// await every [`PublisherConfirm`] with [`confirmed`]).
pub async fn send(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<PublisherConfirm, AmqpError> {
    Ok(channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                immediate: false,
            },
            body,
            properties,
        )
        .await?)
}

/// A `mandatory` publish the broker returned (nothing bound for it).
#[derive(Debug, Clone)]
pub(crate) struct Returned {
    /// The returned message's `message_id`: which publish it was.
    pub(crate) message_id: Option<String>,
    /// `returned as unroutable: 312 NO_ROUTE`.
    pub(crate) reason: String,
}

/// What a confirm said: acked or nacked, and a return that came with it.
///
/// lapin hands each returned message to whichever confirm completes next,
/// which under a `multiple` ack is not always the returned publish's own (its
/// pending confirms are completed in hash-map order). So the return is given
/// back as found, with the message id that says whose it is; a caller that
/// pipelines publishes matches returns by message id ([`confirmed`] does not
/// need to: it is for one publish at a time).
#[derive(Debug, Clone)]
pub(crate) struct Confirmed {
    /// The broker acked (took responsibility for) a publish.
    pub(crate) acked: bool,
    /// A returned message handed to this confirm, maybe another publish's.
    pub(crate) returned: Option<Returned>,
}

/// Awaits a confirm within `timeout`; errors are timeouts and closed channels.
pub(crate) async fn confirmation(
    confirm: PublisherConfirm,
    timeout: Duration,
) -> Result<Confirmed, AmqpError> {
    let returned = |ret: lapin::message::BasicReturnMessage| Returned {
        message_id: ret
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        reason: format!(
            "returned as unroutable: {} {}",
            ret.reply_code, ret.reply_text
        ),
    };
    match tokio::time::timeout(timeout, confirm).await {
        Err(_) => Err(AmqpError::Timeout {
            what: "publisher confirm",
            timeout,
        }),
        Ok(Err(e)) => Err(AmqpError::Protocol(e)),
        Ok(Ok(Confirmation::Ack(ret))) => Ok(Confirmed {
            acked: true,
            returned: ret.map(returned),
        }),
        Ok(Ok(Confirmation::Nack(ret))) => Ok(Confirmed {
            acked: false,
            returned: ret.map(returned),
        }),
        Ok(Ok(Confirmation::NotRequested)) => Err(AmqpError::Rejected(
            "channel is not in confirm mode (a bug)".into(),
        )),
    }
}

/// Awaits a confirm within `timeout` and turns anything but a clean ack into an error.
pub async fn confirmed(confirm: PublisherConfirm, timeout: Duration) -> Result<(), AmqpError> {
    match confirmation(confirm, timeout).await? {
        Confirmed {
            returned: Some(r), ..
        } => Err(AmqpError::Rejected(r.reason)),
        Confirmed { acked: true, .. } => Ok(()),
        Confirmed { acked: false, .. } => Err(AmqpError::Rejected("nacked by the broker".into())),
    }
}

/// Publishes one message and waits for its confirm, all within `timeout`.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
    timeout: Duration,
) -> Result<(), AmqpError> {
    let confirm = tokio::time::timeout(
        timeout,
        send(channel, exchange, routing_key, body, properties, mandatory),
    )
    .await
    .map_err(|_| AmqpError::Timeout {
        what: "publish",
        timeout,
    })??;
    confirmed(confirm, timeout).await
}
