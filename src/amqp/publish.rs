//! Publishing with publisher confirms: the one way hookfleet sends a message.
//!
//! Owns the rule that a publish counts only when the broker has confirmed it:
//! an ack with no returned message. A nack, a `mandatory` return (unroutable), a
//! closed channel or a confirm slower than the deadline are all errors, so callers
//! keep (spool, leave unpublished, or do not ack) what they tried to send.

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

/// Awaits a confirm within `timeout` and turns anything but a clean ack into an error.
pub async fn confirmed(confirm: PublisherConfirm, timeout: Duration) -> Result<(), AmqpError> {
    match tokio::time::timeout(timeout, confirm).await {
        Err(_) => Err(AmqpError::Timeout {
            what: "publisher confirm",
            timeout,
        }),
        Ok(Err(e)) => Err(AmqpError::Protocol(e)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(ret)))) | Ok(Ok(Confirmation::Nack(Some(ret)))) => {
            Err(AmqpError::Rejected(format!(
                "returned as unroutable: {} {}",
                ret.reply_code, ret.reply_text
            )))
        }
        Ok(Ok(Confirmation::Nack(None))) => Err(AmqpError::Rejected("nacked by the broker".into())),
        Ok(Ok(Confirmation::NotRequested)) => Err(AmqpError::Rejected(
            "channel is not in confirm mode (a bug)".into(),
        )),
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
