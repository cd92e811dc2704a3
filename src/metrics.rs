//! Prometheus metrics: every metric hookfleet exports, defined once.
//!
//! Owns names, help texts and label sets. Labels are bounded (queue, kind, outcome,
//! role), never message ids. Parts of the program record through [`metrics()`];
//! the admin server renders [`render`].

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics. Fields are public so callers record with `metrics().x.inc()`.
pub struct Metrics {
    /// Registry holding everything below (and process metrics).
    pub registry: Registry,
    /// Deliveries finished, by queue and outcome (acked, retried, dead, duplicate, poison).
    pub deliveries_total: IntCounterVec,
    /// Handler run time, by kind.
    pub handler_duration_seconds: HistogramVec,
    /// Deliveries being handled now, by kind.
    pub in_flight: IntGaugeVec,
    /// Bulk deliveries per second a kind's bulk pacer lets start.
    pub bulk_rate: prometheus::GaugeVec,
    /// Free permits of the pool, by kind (`all` = the global semaphore).
    pub pool_permits_available: IntGaugeVec,
    /// Handler panics, by kind.
    pub handler_panics_total: IntCounterVec,
    /// 1 while the connection of a role (consumer, publisher, relay) is up.
    pub amqp_connection_up: IntGaugeVec,
    /// Reconnect attempts, by role.
    pub amqp_reconnects_total: IntCounterVec,
    /// Unpublished outbox rows (sampled).
    pub outbox_pending: IntGauge,
    /// Age of the oldest unpublished outbox row (sampled).
    pub outbox_oldest_pending_age_seconds: prometheus::Gauge,
    /// Outbox rows published by the relay.
    pub relay_published_total: IntCounter,
    /// Outbox rows that failed to publish (nack, return, error).
    pub relay_failed_total: IntCounter,
    /// Outbox rows set aside after failing `outbox.park_after_attempts` times
    /// (or refused by size before any attempt).
    pub relay_parked_total: IntCounter,
    /// Spans dropped because the export queue (`tracing.max_queue_size`) was full:
    /// the collector is slow or unreachable; jobs never wait for it.
    pub trace_spans_dropped_total: IntCounter,
    /// Outbox rows the broker returned as unroutable (mandatory publish, nothing
    /// bound), by exchange and routing key (bounded: event types).
    pub relay_unroutable_total: IntCounterVec,
    /// Parked outbox rows waiting for an operator (sampled).
    pub outbox_parked: IntGauge,
    /// Relay batch time (claim → publish → confirm → commit).
    pub relay_batch_duration_seconds: Histogram,
    /// Database pool connections by state (idle, used).
    pub db_pool_connections: IntGaugeVec,
    /// Time to get a pooled connection for a handler's writes (including BEGIN
    /// for transactional handlers).
    pub db_acquire_wait_seconds: Histogram,
    /// Pushes written per statement by the push handler's group commit.
    pub push_group_size: Histogram,
    /// Webhook deliveries by outcome.
    pub webhook_deliveries_total: IntCounterVec,
    /// Deliveries postponed by a guard (attempt unchanged), by kind and reason.
    pub postponed_total: IntCounterVec,
    /// Circuit breaker state per webhook host (`host:port`): 0 closed, 1
    /// half-open, 2 open. Hosts are those of subscriptions, so the label is
    /// bounded by the number of subscriptions.
    pub webhook_breaker_state: IntGaugeVec,
    /// How long a webhook attempt took, request to response (or failure).
    pub webhook_delivery_duration_seconds: HistogramVec,
    /// Messages in each kind's work, retry (all tiers) and dead-letter queues,
    /// sampled by [`crate::amqp::depths`].
    pub queue_messages: IntGaugeVec,
    /// Consumers on each kind's main work queue (every worker's), sampled with
    /// [`Self::queue_messages`]: 0 while messages wait means nobody consumes.
    pub queue_consumers: IntGaugeVec,
    /// Files waiting in the hook spool.
    pub spool_files_pending: IntGauge,
    /// Repositories opened by the push handler (a read through a repository kept
    /// open does not count): grows with pushes when `push.open_repositories` is too small.
    pub git_repository_opens_total: IntCounter,
    /// Kill switch state: 0 closed (consuming), 1 half-open (trial jobs), 2 open.
    pub killswitch_state: IntGauge,
    /// Kill switch transitions, by the state entered (closed, half_open, open).
    pub killswitch_transitions_total: IntCounterVec,
    /// 1 for each job kind paused fleet-wide (`hookfleet pause`), by kind
    /// (bounded: the configured kinds plus the paused ones).
    pub kind_paused: IntGaugeVec,
    /// Constant 1 with version and git SHA labels.
    pub build_info: IntGaugeVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let r = &registry;
    fn reg<C: prometheus::core::Collector + Clone + 'static>(
        r: &Registry,
        c: C,
    ) -> Result<C, prometheus::Error> {
        r.register(Box::new(c.clone()))?;
        Ok(c)
    }
    let secs = vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let m = Metrics {
        deliveries_total: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "hookfleet_deliveries_total",
                    "Deliveries finished, by queue and outcome.",
                ),
                &["queue", "outcome"],
            )?,
        )?,
        handler_duration_seconds: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new("hookfleet_handler_duration_seconds", "Handler run time.")
                    .buckets(secs.clone()),
                &["kind"],
            )?,
        )?,
        in_flight: reg(
            r,
            IntGaugeVec::new(
                Opts::new("hookfleet_in_flight", "Deliveries being handled now."),
                &["kind"],
            )?,
        )?,
        bulk_rate: reg(
            r,
            prometheus::GaugeVec::new(
                Opts::new(
                    "hookfleet_bulk_rate",
                    "Bulk-queue deliveries per second the bulk pacer lets start.",
                ),
                &["kind"],
            )?,
        )?,
        pool_permits_available: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "hookfleet_pool_permits_available",
                    "Free task-pool permits (kind=all is the global limit).",
                ),
                &["kind"],
            )?,
        )?,
        handler_panics_total: reg(
            r,
            IntCounterVec::new(
                Opts::new("hookfleet_handler_panics_total", "Handler panics caught."),
                &["kind"],
            )?,
        )?,
        amqp_connection_up: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "hookfleet_amqp_connection_up",
                    "1 while the broker connection is up.",
                ),
                &["role"],
            )?,
        )?,
        amqp_reconnects_total: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "hookfleet_amqp_reconnects_total",
                    "Broker reconnect attempts.",
                ),
                &["role"],
            )?,
        )?,
        outbox_pending: reg(
            r,
            IntGauge::new("hookfleet_outbox_pending", "Unpublished outbox rows.")?,
        )?,
        outbox_oldest_pending_age_seconds: reg(
            r,
            prometheus::Gauge::new(
                "hookfleet_outbox_oldest_pending_age_seconds",
                "Age of the oldest unpublished outbox row.",
            )?,
        )?,
        relay_published_total: reg(
            r,
            IntCounter::new("hookfleet_relay_published_total", "Outbox rows published.")?,
        )?,
        relay_failed_total: reg(
            r,
            IntCounter::new(
                "hookfleet_relay_failed_total",
                "Outbox rows that failed to publish (nacked, returned, errored).",
            )?,
        )?,
        relay_parked_total: reg(
            r,
            IntCounter::new(
                "hookfleet_relay_parked_total",
                "Outbox rows set aside after repeated refusals (see outbox status).",
            )?,
        )?,
        trace_spans_dropped_total: reg(
            r,
            IntCounter::new(
                "hookfleet_trace_spans_dropped_total",
                "Spans dropped because the trace export queue was full.",
            )?,
        )?,
        relay_unroutable_total: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "hookfleet_relay_unroutable_total",
                    "Outbox rows returned by the broker as unroutable (nothing bound for their routing key).",
                ),
                &["exchange", "routing_key"],
            )?,
        )?,
        outbox_parked: reg(
            r,
            IntGauge::new(
                "hookfleet_outbox_parked",
                "Parked outbox rows waiting for `hookfleet outbox unpark`.",
            )?,
        )?,
        relay_batch_duration_seconds: reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "hookfleet_relay_batch_duration_seconds",
                    "Relay batch time from claim to commit.",
                )
                .buckets(secs.clone()),
            )?,
        )?,
        db_pool_connections: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "hookfleet_db_pool_connections",
                    "Database pool connections by state.",
                ),
                &["state"],
            )?,
        )?,
        db_acquire_wait_seconds: reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "hookfleet_db_acquire_wait_seconds",
                    "Time to get a pooled database connection for a handler's writes (including BEGIN for transactional handlers).",
                )
                .buckets(secs),
            )?,
        )?,
        push_group_size: reg(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "hookfleet_push_group_size",
                    "Pushes written by one statement of the push handler's group commit.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )?,
        )?,
        postponed_total: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "hookfleet_postponed_total",
                    "Deliveries postponed by a guard before their handler did any work (attempt counter unchanged).",
                ),
                &["kind", "reason"],
            )?,
        )?,
        webhook_breaker_state: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "hookfleet_webhook_breaker_state",
                    "Circuit breaker per webhook host: 0 closed, 1 half-open, 2 open (hosts of subscriptions only).",
                ),
                &["host"],
            )?,
        )?,
        webhook_deliveries_total: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "hookfleet_webhook_deliveries_total",
                    "Webhook delivery attempts by outcome.",
                ),
                &["outcome"],
            )?,
        )?,
        webhook_delivery_duration_seconds: reg(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "hookfleet_webhook_delivery_duration_seconds",
                    "Webhook attempt duration, request to response or failure, by outcome.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["outcome"],
            )?,
        )?,
        queue_messages: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "hookfleet_queue_messages",
                    "Messages in a kind's queues (queue: work, retry across tiers, dead), \
                     sampled every admin.queue_depth_interval.",
                ),
                &["kind", "queue"],
            )?,
        )?,
        queue_consumers: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "hookfleet_queue_consumers",
                    "Consumers on a kind's work queue (all workers), \
                     sampled every admin.queue_depth_interval.",
                ),
                &["kind"],
            )?,
        )?,
        spool_files_pending: reg(
            r,
            IntGauge::new(
                "hookfleet_spool_files_pending",
                "Jobs waiting in the hook spool.",
            )?,
        )?,
        git_repository_opens_total: reg(
            r,
            IntCounter::new(
                "hookfleet_git_repository_opens_total",
                "Repositories opened by the push handler (reads through a repository kept open do not count).",
            )?,
        )?,
        killswitch_state: reg(
            r,
            IntGauge::new(
                "hookfleet_killswitch_state",
                "Kill switch: 0 closed (consuming), 1 half-open (trial jobs), 2 open (not consuming).",
            )?,
        )?,
        killswitch_transitions_total: reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "hookfleet_killswitch_transitions_total",
                    "Kill switch transitions, by the state entered.",
                ),
                &["to"],
            )?,
        )?,
        kind_paused: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "hookfleet_kind_paused",
                    "1 while a job kind is paused fleet-wide (hookfleet pause <kind>).",
                ),
                &["kind"],
            )?,
        )?,
        build_info: reg(
            r,
            IntGaugeVec::new(
                Opts::new("hookfleet_build_info", "Build information (constant 1)."),
                &["version", "git_sha"],
            )?,
        )?,
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
