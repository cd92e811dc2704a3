//! The metric families, registered one area at a time: each area's struct holds
//! what [`super::Metrics`] exposes for it (the fields keep their names there),
//! and its `register` defines names, help texts, labels and buckets.
//!
//! Owns every definition; adding a metric means a field here, its
//! registration below, and the field of `Metrics` it moves into.
//! `scripts/helm_check.py` finds registrations by the helpers' names
//! (`field: counter_vec(...)`, ...): register through them, or through `reg`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

type Result<T> = std::result::Result<T, prometheus::Error>;

/// Handler time and database waits: 1 ms to 1 minute.
const SECONDS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Registers `c` in `r` and hands it back.
fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    reg(r, IntCounter::new(name, help)?)
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    reg(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    reg(r, IntGauge::new(name, help)?)
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    reg(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    reg(r, Histogram::with_opts(opts)?)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    reg(r, HistogramVec::new(opts, labels)?)
}

/// Consuming: deliveries, handler runs, the task pool, postponements.
pub(super) struct Jobs {
    pub(super) deliveries_total: IntCounterVec,
    pub(super) handler_duration_seconds: HistogramVec,
    pub(super) in_flight: IntGaugeVec,
    pub(super) bulk_rate: prometheus::GaugeVec,
    pub(super) bulk_slowdowns_total: IntCounterVec,
    pub(super) pool_permits_available: IntGaugeVec,
    pub(super) handler_panics_total: IntCounterVec,
    pub(super) postponed_total: IntCounterVec,
}

impl Jobs {
    pub(super) fn register(r: &Registry) -> Result<Self> {
        Ok(Self {
            deliveries_total: counter_vec(
                r,
                "hookfleet_deliveries_total",
                "Deliveries finished, by queue and outcome.",
                &["queue", "outcome"],
            )?,
            handler_duration_seconds: histogram_vec(
                r,
                "hookfleet_handler_duration_seconds",
                "Handler run time.",
                &SECONDS,
                &["kind"],
            )?,
            in_flight: gauge_vec(
                r,
                "hookfleet_in_flight",
                "Deliveries being handled now.",
                &["kind"],
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
            bulk_slowdowns_total: counter_vec(
                r,
                "hookfleet_bulk_slowdowns_total",
                "Times the bulk pacer halved a kind's bulk rate, by the signal that showed congestion (handler_time: push jobs slowed; outbox_lag: events waiting in the outbox).",
                &["kind", "signal"],
            )?,
            pool_permits_available: gauge_vec(
                r,
                "hookfleet_pool_permits_available",
                "Free task-pool permits (kind=all is the global limit).",
                &["kind"],
            )?,
            handler_panics_total: counter_vec(
                r,
                "hookfleet_handler_panics_total",
                "Handler panics caught.",
                &["kind"],
            )?,
            postponed_total: counter_vec(
                r,
                "hookfleet_postponed_total",
                "Deliveries postponed by a guard before their handler did any work (attempt counter unchanged).",
                &["kind", "reason"],
            )?,
        })
    }
}

/// The broker: connections and sampled queue depths.
pub(super) struct Broker {
    pub(super) amqp_connection_up: IntGaugeVec,
    pub(super) amqp_reconnects_total: IntCounterVec,
    pub(super) queue_messages: IntGaugeVec,
    pub(super) queue_consumers: IntGaugeVec,
}

impl Broker {
    pub(super) fn register(r: &Registry) -> Result<Self> {
        Ok(Self {
            amqp_connection_up: gauge_vec(
                r,
                "hookfleet_amqp_connection_up",
                "1 while the broker connection is up.",
                &["role"],
            )?,
            amqp_reconnects_total: counter_vec(
                r,
                "hookfleet_amqp_reconnects_total",
                "Broker reconnect attempts.",
                &["role"],
            )?,
            queue_messages: gauge_vec(
                r,
                "hookfleet_queue_messages",
                "Messages in a kind's queues (queue: work, retry across tiers, dead), \
                 sampled every admin.queue_depth_interval.",
                &["kind", "queue"],
            )?,
            queue_consumers: gauge_vec(
                r,
                "hookfleet_queue_consumers",
                "Consumers on a kind's work queue (all workers), \
                 sampled every admin.queue_depth_interval.",
                &["kind"],
            )?,
        })
    }
}

/// The outbox and its relay.
pub(super) struct Outbox {
    pub(super) outbox_pending: IntGauge,
    pub(super) outbox_oldest_pending_age_seconds: prometheus::Gauge,
    pub(super) outbox_parked: IntGauge,
    pub(super) relay_published_total: IntCounter,
    pub(super) relay_failed_total: IntCounter,
    pub(super) relay_parked_total: IntCounter,
    pub(super) relay_unroutable_total: IntCounterVec,
    pub(super) relay_batch_duration_seconds: Histogram,
}

impl Outbox {
    pub(super) fn register(r: &Registry) -> Result<Self> {
        Ok(Self {
            outbox_pending: gauge(r, "hookfleet_outbox_pending", "Unpublished outbox rows.")?,
            outbox_oldest_pending_age_seconds: reg(
                r,
                prometheus::Gauge::new(
                    "hookfleet_outbox_oldest_pending_age_seconds",
                    "Age of the oldest unpublished outbox row.",
                )?,
            )?,
            outbox_parked: gauge(
                r,
                "hookfleet_outbox_parked",
                "Parked outbox rows waiting for `hookfleet outbox unpark`.",
            )?,
            relay_published_total: counter(
                r,
                "hookfleet_relay_published_total",
                "Outbox rows published.",
            )?,
            relay_failed_total: counter(
                r,
                "hookfleet_relay_failed_total",
                "Outbox rows that failed to publish (nacked, returned, errored).",
            )?,
            relay_parked_total: counter(
                r,
                "hookfleet_relay_parked_total",
                "Outbox rows set aside after repeated refusals (see outbox status).",
            )?,
            relay_unroutable_total: counter_vec(
                r,
                "hookfleet_relay_unroutable_total",
                "Outbox rows returned by the broker as unroutable (nothing bound for their routing key).",
                &["exchange", "routing_key"],
            )?,
            relay_batch_duration_seconds: histogram(
                r,
                "hookfleet_relay_batch_duration_seconds",
                "Relay batch time from claim to commit.",
                &SECONDS,
            )?,
        })
    }
}

/// The database pool, and the push path: group commit, git, the hook's spool.
pub(super) struct Storage {
    pub(super) db_pool_connections: IntGaugeVec,
    pub(super) db_acquire_wait_seconds: Histogram,
    pub(super) push_group_size: Histogram,
    pub(super) git_repository_opens_total: IntCounter,
    pub(super) spool_files_pending: IntGauge,
}

impl Storage {
    pub(super) fn register(r: &Registry) -> Result<Self> {
        Ok(Self {
            db_pool_connections: gauge_vec(
                r,
                "hookfleet_db_pool_connections",
                "Database pool connections by state.",
                &["state"],
            )?,
            db_acquire_wait_seconds: histogram(
                r,
                "hookfleet_db_acquire_wait_seconds",
                "Time to get a pooled database connection for a handler's writes (including BEGIN for transactional handlers).",
                &SECONDS,
            )?,
            push_group_size: histogram(
                r,
                "hookfleet_push_group_size",
                "Pushes written by one statement of the push handler's group commit.",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            )?,
            git_repository_opens_total: counter(
                r,
                "hookfleet_git_repository_opens_total",
                "Repositories opened by the push handler (reads through a repository kept open do not count).",
            )?,
            spool_files_pending: gauge(
                r,
                "hookfleet_spool_files_pending",
                "Jobs waiting in the hook spool.",
            )?,
        })
    }
}

/// Webhook deliveries and the circuit breakers of their hosts.
pub(super) struct Webhooks {
    pub(super) webhook_deliveries_total: IntCounterVec,
    pub(super) webhook_breaker_state: IntGaugeVec,
    pub(super) webhook_delivery_duration_seconds: HistogramVec,
}

impl Webhooks {
    pub(super) fn register(r: &Registry) -> Result<Self> {
        Ok(Self {
            webhook_deliveries_total: counter_vec(
                r,
                "hookfleet_webhook_deliveries_total",
                "Webhook delivery attempts by outcome.",
                &["outcome"],
            )?,
            webhook_breaker_state: gauge_vec(
                r,
                "hookfleet_webhook_breaker_state",
                "Circuit breaker per webhook host: 0 closed, 1 half-open, 2 open (hosts of subscriptions only).",
                &["host"],
            )?,
            webhook_delivery_duration_seconds: histogram_vec(
                r,
                "hookfleet_webhook_delivery_duration_seconds",
                "Webhook attempt duration, request to response or failure, by outcome.",
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
                &["outcome"],
            )?,
        })
    }
}

/// The guards: the kill switch and paused kinds.
pub(super) struct Guards {
    pub(super) killswitch_state: IntGauge,
    pub(super) killswitch_transitions_total: IntCounterVec,
    pub(super) kind_paused: IntGaugeVec,
}

impl Guards {
    pub(super) fn register(r: &Registry) -> Result<Self> {
        Ok(Self {
            killswitch_state: gauge(
                r,
                "hookfleet_killswitch_state",
                "Kill switch: 0 closed (consuming), 1 half-open (trial jobs), 2 open (not consuming).",
            )?,
            killswitch_transitions_total: counter_vec(
                r,
                "hookfleet_killswitch_transitions_total",
                "Kill switch transitions, by the state entered.",
                &["to"],
            )?,
            kind_paused: gauge_vec(
                r,
                "hookfleet_kind_paused",
                "1 while a job kind is paused fleet-wide (hookfleet pause <kind>).",
                &["kind"],
            )?,
        })
    }
}

/// The process itself: its build and its trace export.
pub(super) struct Process {
    pub(super) trace_spans_dropped_total: IntCounter,
    pub(super) build_info: IntGaugeVec,
}

impl Process {
    pub(super) fn register(r: &Registry) -> Result<Self> {
        Ok(Self {
            trace_spans_dropped_total: counter(
                r,
                "hookfleet_trace_spans_dropped_total",
                "Spans dropped because the trace export queue was full.",
            )?,
            build_info: gauge_vec(
                r,
                "hookfleet_build_info",
                "Build information (constant 1).",
                &["version", "git_sha"],
            )?,
        })
    }
}
