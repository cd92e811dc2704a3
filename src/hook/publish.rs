//! Publishing push jobs to `<prefix>.jobs`, confirmed: routing key `push`, or
//! `push.bulk` for a push that [`super::fairness`] sent to the bulk queue.
//!
//! Owns how a [`PushJob`] goes on the wire (mandatory, so a missing queue is a
//! failure and not a silent drop; envelope derived from the job). A bulk push
//! the broker cannot route (workers of a release without the bulk queue) is
//! published again to the push queue. Used by the
//! hook and by the spool flusher. It never decides what to do on failure: the
//! caller spools or keeps the file.

use std::time::Duration;

use lapin::Channel;
use tracing::Instrument;

use super::fairness::PushLane;
use crate::amqp::publish::{confirm_channel, publish_confirmed};
use crate::amqp::topology::Names;
use crate::amqp::{self, AmqpError};
use crate::config::AmqpConfig;
use crate::message::HeaderValue;
use crate::otel;
use crate::push_job::{PUSH_KIND, PushJob};

/// Publishes one job to `lane` on a confirm channel and waits for its confirm
/// within `timeout` (per publish).
pub async fn publish_job(
    channel: &Channel,
    prefix: &str,
    job: &PushJob,
    lane: PushLane,
    timeout: Duration,
) -> Result<(), AmqpError> {
    match publish_to(channel, prefix, job, lane, timeout).await {
        Err(AmqpError::Rejected(reason)) if lane == PushLane::Bulk => {
            tracing::warn!(%reason, "the bulk queue refused the push; publishing it to the push queue");
            publish_to(channel, prefix, job, PushLane::Push, timeout).await
        }
        r => r,
    }
}

async fn publish_to(
    channel: &Channel,
    prefix: &str,
    job: &PushJob,
    lane: PushLane,
    timeout: Duration,
) -> Result<(), AmqpError> {
    let exchange = Names::new(prefix).jobs_exchange();
    let mut envelope = job.envelope();
    let span = otel::span::publish(
        &exchange,
        PUSH_KIND,
        &envelope.message_id.to_string(),
        envelope.correlation_id.as_deref(),
    );
    // The job carries the publish span's context: the worker continues it.
    for (k, v) in otel::propagate::headers_of(&span) {
        envelope.headers.insert(k.to_string(), HeaderValue::Str(v));
    }
    publish_confirmed(
        channel,
        &exchange,
        &lane.routing_key(),
        &job.to_json(),
        envelope.to_properties(),
        true,
        timeout,
    )
    .instrument(span)
    .await
}

/// Upper bound on closing the connection after the confirm decided the outcome.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects (role `role`), publishes one job and waits for its confirm, all of it
/// within `deadline`; then closes the connection (briefly bounded, outcome unchanged).
pub(crate) async fn publish_once(
    cfg: &AmqpConfig,
    role: &str,
    job: &PushJob,
    lane: PushLane,
    deadline: Duration,
) -> Result<(), AmqpError> {
    let mut conn_slot = None;
    let mut channel_slot = None;
    let work = async {
        // Every node gets its share of the deadline before the hook spools.
        let conn = conn_slot.insert(amqp::connect_within(cfg, role, Some(deadline)).await?);
        let channel = channel_slot.insert(confirm_channel(conn).await?);
        publish_job(channel, &cfg.prefix, job, lane, deadline).await
    };
    let result = match tokio::time::timeout(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(AmqpError::Timeout {
            what: "connect + publish + confirm",
            timeout: deadline,
        }),
    };
    if let Some(conn) = &conn_slot {
        let channels: Vec<&lapin::Channel> = channel_slot.iter().collect();
        amqp::close(&channels, conn, CLOSE_TIMEOUT).await;
    }
    result
}
