//! Prometheus metrics: every metric hookfleet exports, defined once.
//!
//! Owns names, help texts and label sets. Labels are bounded (queue, kind, outcome,
//! role), never message ids. Parts of the program record through [`metrics()`];
//! the admin server renders [`render`]. The definitions (names, help texts,
//! labels, buckets) are in `families`, one area at a time.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

mod families;

/// All metrics. Fields are public so callers record with `metrics().x.inc()`.
pub struct Metrics {
    /// Registry holding everything below (and process metrics).
    pub(crate) registry: Registry,
    /// Deliveries finished, by queue and outcome (acked, retried, dead, duplicate, poison).
    pub deliveries_total: IntCounterVec,
    /// Handler run time, by kind.
    pub(crate) handler_duration_seconds: HistogramVec,
    /// Deliveries being handled now, by kind.
    pub(crate) in_flight: IntGaugeVec,
    /// Bulk deliveries per second a kind's bulk pacer lets start.
    pub(crate) bulk_rate: prometheus::GaugeVec,
    /// Times a kind's bulk pacer halved the rate, by signal.
    pub(crate) bulk_slowdowns_total: IntCounterVec,
    /// Free permits of the pool, by kind (`all` = the global semaphore).
    pub(crate) pool_permits_available: IntGaugeVec,
    /// Handler panics, by kind.
    pub handler_panics_total: IntCounterVec,
    /// 1 while the connection of a role (consumer, publisher, relay) is up.
    pub(crate) amqp_connection_up: IntGaugeVec,
    /// Reconnect attempts, by role.
    pub(crate) amqp_reconnects_total: IntCounterVec,
    /// Unpublished outbox rows (sampled).
    pub(crate) outbox_pending: IntGauge,
    /// Age of the oldest unpublished outbox row (sampled).
    pub(crate) outbox_oldest_pending_age_seconds: prometheus::Gauge,
    /// Outbox rows published by the relay.
    pub relay_published_total: IntCounter,
    /// Outbox rows that failed to publish (nack, return, error).
    pub relay_failed_total: IntCounter,
    /// Outbox rows set aside after failing `outbox.park_after_attempts` times
    /// (or refused by size before any attempt).
    pub(crate) relay_parked_total: IntCounter,
    /// Spans dropped because the export queue (`tracing.max_queue_size`) was full:
    /// the collector is slow or unreachable; jobs never wait for it.
    pub(crate) trace_spans_dropped_total: IntCounter,
    /// Outbox rows the broker returned as unroutable (mandatory publish, nothing
    /// bound), by exchange and routing key (bounded: event types).
    pub relay_unroutable_total: IntCounterVec,
    /// Parked outbox rows waiting for an operator (sampled).
    pub(crate) outbox_parked: IntGauge,
    /// Relay batch time (claim → publish → confirm → commit).
    pub(crate) relay_batch_duration_seconds: Histogram,
    /// Database pool connections by state (idle, used).
    pub(crate) db_pool_connections: IntGaugeVec,
    /// Time to get a pooled connection for a handler's writes (including BEGIN
    /// for transactional handlers).
    pub(crate) db_acquire_wait_seconds: Histogram,
    /// Pushes written per statement by the push handler's group commit.
    pub(crate) push_group_size: Histogram,
    /// Webhook deliveries by outcome.
    pub(crate) webhook_deliveries_total: IntCounterVec,
    /// Deliveries postponed by a guard (attempt unchanged), by kind and reason.
    pub postponed_total: IntCounterVec,
    /// Circuit breaker state per webhook host (`host:port`): 0 closed, 1
    /// half-open, 2 open. Hosts are those of subscriptions, so the label is
    /// bounded by the number of subscriptions.
    pub webhook_breaker_state: IntGaugeVec,
    /// How long a webhook attempt took, request to response (or failure).
    pub(crate) webhook_delivery_duration_seconds: HistogramVec,
    /// Messages in each kind's work, retry (all tiers) and dead-letter queues,
    /// sampled by [`crate::amqp::depths`].
    pub(crate) queue_messages: IntGaugeVec,
    /// Consumers on each kind's main work queue (every worker's), sampled with
    /// [`Self::queue_messages`]: 0 while messages wait means nobody consumes.
    pub(crate) queue_consumers: IntGaugeVec,
    /// Files waiting in the hook spool.
    pub spool_files_pending: IntGauge,
    /// Repositories opened by the push handler (a read through a repository kept
    /// open does not count): grows with pushes when `push.open_repositories` is too small.
    pub(crate) git_repository_opens_total: IntCounter,
    /// Kill switch state: 0 closed (consuming), 1 half-open (trial jobs), 2 open.
    pub killswitch_state: IntGauge,
    /// Kill switch transitions, by the state entered (closed, half_open, open).
    pub killswitch_transitions_total: IntCounterVec,
    /// 1 for each job kind paused fleet-wide (`hookfleet pause`), by kind
    /// (bounded: the configured kinds plus the paused ones).
    pub(crate) kind_paused: IntGaugeVec,
    /// Constant 1 with version and git SHA labels.
    pub(crate) build_info: IntGaugeVec,
}

/// Registers every area's families (see [`families`]), then the process
/// collector, and sets `build_info`.
fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let jobs = families::Jobs::register(&registry)?;
    let broker = families::Broker::register(&registry)?;
    let outbox = families::Outbox::register(&registry)?;
    let storage = families::Storage::register(&registry)?;
    let webhooks = families::Webhooks::register(&registry)?;
    let guards = families::Guards::register(&registry)?;
    let process = families::Process::register(&registry)?;
    let m = Metrics {
        deliveries_total: jobs.deliveries_total,
        handler_duration_seconds: jobs.handler_duration_seconds,
        in_flight: jobs.in_flight,
        bulk_rate: jobs.bulk_rate,
        bulk_slowdowns_total: jobs.bulk_slowdowns_total,
        pool_permits_available: jobs.pool_permits_available,
        handler_panics_total: jobs.handler_panics_total,
        postponed_total: jobs.postponed_total,
        amqp_connection_up: broker.amqp_connection_up,
        amqp_reconnects_total: broker.amqp_reconnects_total,
        queue_messages: broker.queue_messages,
        queue_consumers: broker.queue_consumers,
        outbox_pending: outbox.outbox_pending,
        outbox_oldest_pending_age_seconds: outbox.outbox_oldest_pending_age_seconds,
        outbox_parked: outbox.outbox_parked,
        relay_published_total: outbox.relay_published_total,
        relay_failed_total: outbox.relay_failed_total,
        relay_parked_total: outbox.relay_parked_total,
        relay_unroutable_total: outbox.relay_unroutable_total,
        relay_batch_duration_seconds: outbox.relay_batch_duration_seconds,
        db_pool_connections: storage.db_pool_connections,
        db_acquire_wait_seconds: storage.db_acquire_wait_seconds,
        push_group_size: storage.push_group_size,
        git_repository_opens_total: storage.git_repository_opens_total,
        spool_files_pending: storage.spool_files_pending,
        webhook_deliveries_total: webhooks.webhook_deliveries_total,
        webhook_breaker_state: webhooks.webhook_breaker_state,
        webhook_delivery_duration_seconds: webhooks.webhook_delivery_duration_seconds,
        killswitch_state: guards.killswitch_state,
        killswitch_transitions_total: guards.killswitch_transitions_total,
        kind_paused: guards.kind_paused,
        trace_spans_dropped_total: process.trace_spans_dropped_total,
        build_info: process.build_info,
        registry,
    };
    #[cfg(target_os = "linux")]
    m.registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    m.build_info
        .with_label_values(&[crate::build_info::VERSION, crate::build_info::GIT_SHA])
        .set(1);
    Ok(m)
}

/// The process-wide metrics. Definitions are static, so building cannot fail at
/// run time except by a programming error caught in the first test that runs.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| match build() {
        Ok(m) => m,
        Err(e) => panic!("metric definitions are invalid (a bug): {e}"),
    })
}

/// Prometheus text exposition of every metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&metrics().registry.gather(), &mut buf) {
        return format!("# encoding failed: {e}\n");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_build_info() {
        assert!(super::render().contains("hookfleet_build_info{"));
    }
}
