//! The overview (per kind: queue depths, in flight, handled/failed counters
//! the page turns into per-second rates; outbox; readiness; version and
//! uptime), its JSON for the live refresh, and the in-flight jobs page.
//!
//! Figures come from this process's metrics registry (queue depths and
//! consumer counts as sampled every `admin.queue_depth_interval` by one
//! passive declare per queue) and one outbox status query, so the overview
//! costs the broker nothing. AMQP does not tell unacknowledged counts (only
//! RabbitMQ's management API does, which hookfleet does not use): the page
//! shows this process's in-flight jobs per kind instead, and says so. The
//! relay's publishing rate is this process's relay counter over the last
//! minute (the samples are taken when the overview is read).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::auth::csrf_token;
use super::page::{self, esc};
use super::state::ConsoleState;
use crate::amqp::topology::Names;
use crate::{build_info, metrics};

/// A job at or past this share of `worker.handler_timeout` is highlighted.
pub(crate) const NEAR_TIMEOUT: f64 = 0.8;

/// One job kind's figures.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct KindFigures {
    kind: String,
    /// Ready messages in the work queue.
    work: i64,
    /// Consumers on the work queue (all workers).
    consumers: i64,
    retry: i64,
    dead: i64,
    in_flight: i64,
    /// Deliveries acked (or duplicates) since start; the page derives the rate.
    handled_total: f64,
    /// Deliveries retried or dead-lettered since start.
    failed_total: f64,
}

/// What `/console/api/overview` returns.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Overview {
    ready: bool,
    reason: Option<String>,
    version: &'static str,
    git_sha: &'static str,
    uptime: String,
    kinds: Vec<KindFigures>,
    outbox_pending: Option<i64>,
    outbox_oldest_pending_age_seconds: Option<f64>,
    outbox_failing: Option<i64>,
    outbox_published_last_minute: Option<i64>,
    /// Whether this process runs the outbox relay.
    relay_here: bool,
    /// This process's relay: events published per second, over
    /// `relay_rate_window_seconds` (at most a minute; `None` until measured).
    relay_rate: Option<f64>,
    relay_rate_window_seconds: Option<f64>,
    in_flight: usize,
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
        .unwrap_or("")
}

/// Per-kind figures from the metrics registry.
fn kinds(state: &ConsoleState) -> Vec<KindFigures> {
    let cfg = &state.console.config;
    let names = Names::new(&cfg.amqp.prefix);
    let mut by = empty_figures(&cfg.worker.kinds);
    let queue_kind: BTreeMap<String, String> = cfg
        .worker
        .kinds
        .iter()
        .map(|k| (names.queue(k), k.clone()))
        .collect();
    for mf in metrics::metrics().registry.gather() {
        for m in mf.get_metric() {
            add_metric(&mut by, &queue_kind, mf.name(), m);
        }
    }
    by.into_values().collect()
}

/// Zero figures for each kind, by kind.
fn empty_figures(kinds: &[String]) -> BTreeMap<String, KindFigures> {
    kinds
        .iter()
        .map(|k| {
            (
                k.clone(),
                KindFigures {
                    kind: k.clone(),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Adds one sample of metric `name` to its kind's figures (samples of other
/// metrics, or of kinds this process does not serve, are skipped).
fn add_metric(
    by: &mut BTreeMap<String, KindFigures>,
    queue_kind: &BTreeMap<String, String>,
    name: &str,
    m: &prometheus::proto::Metric,
) {
    match name {
        "hookfleet_queue_messages" => {
            let Some(f) = by.get_mut(label(m, "kind")) else {
                return;
            };
            let v = m.get_gauge().get_value() as i64;
            match label(m, "queue") {
                "work" => f.work = v,
                "retry" => f.retry = v,
                "dead" => f.dead = v,
                _ => {}
            }
        }
        "hookfleet_queue_consumers" => {
            if let Some(f) = by.get_mut(label(m, "kind")) {
                f.consumers = m.get_gauge().get_value() as i64;
            }
        }
        "hookfleet_in_flight" => {
            if let Some(f) = by.get_mut(label(m, "kind")) {
                f.in_flight = m.get_gauge().get_value() as i64;
            }
        }
        "hookfleet_deliveries_total" => {
            let Some(f) = queue_kind
                .get(label(m, "queue"))
                .and_then(|k| by.get_mut(k))
            else {
                return;
            };
            let v = m.get_counter().get_value();
            match label(m, "outcome") {
                "acked" | "duplicate" => f.handled_total += v,
                _ => f.failed_total += v,
            }
        }
        _ => {}
    }
}

async fn overview(state: &ConsoleState) -> Overview {
    let health = &state.health;
    let readiness = health.readiness();
    let status = crate::outbox::status::fetch(&state.console.pool).await.ok();
    let relay_here = state.console.config.outbox.relay;
    let rate = if relay_here {
        let published = metrics::metrics().relay_published_total.get();
        state.console.relay_rate.sample(Instant::now(), published)
    } else {
        None
    };
    Overview {
        ready: readiness.is_ok(),
        reason: readiness.err(),
        version: build_info::VERSION,
        git_sha: build_info::GIT_SHA,
        uptime: humantime::format_duration(std::time::Duration::from_secs(
            health.uptime().as_secs(),
        ))
        .to_string(),
        kinds: kinds(state),
        outbox_pending: status.as_ref().map(|s| s.pending),
        outbox_oldest_pending_age_seconds: status.as_ref().map(|s| s.oldest_pending_age_seconds),
        outbox_failing: status.as_ref().map(|s| s.failing),
        outbox_published_last_minute: status.as_ref().map(|s| s.published_last_minute),
        relay_here,
        relay_rate: rate.map(|(r, _)| r),
        relay_rate_window_seconds: rate.map(|(_, w)| w),
        in_flight: state.inflight.list().len(),
    }
}

/// The relay rate as the page shows it (`console.js` writes the same).
fn relay_text(o: &Overview) -> String {
    match (o.relay_here, o.relay_rate) {
        (false, _) => "not running here".into(),
        (true, None) => "measuring…".into(),
        (true, Some(r)) => format!("{r:.1}/s"),
    }
}

fn window_text(o: &Overview) -> String {
    o.relay_rate_window_seconds
        .map(|w| format!("over the last {w:.0} s"))
        .unwrap_or_default()
}

/// `GET /console/api/overview`.
pub(crate) async fn api(State(state): State<ConsoleState>) -> Json<Overview> {
    Json(overview(&state).await)
}

/// `GET /console`: the first render; `console.js` refreshes it from the API.
pub(crate) async fn page(State(state): State<ConsoleState>) -> Response {
    let o = overview(&state).await;
    let csrf = csrf_token(&state);
    let rows = kind_rows(&o);
    let opt = |v: Option<i64>| v.map_or("?".to_string(), |n| n.to_string());
    let body = format!(
        "<div class=\"cards\" data-live=\"/console/api/overview\">\
         <div class=\"card\"><span>readiness</span><b data-f=\"ready\">{ready}</b><small data-f=\"reason\">{reason}</small></div>\
         <div class=\"card\"><span>outbox pending</span><b data-f=\"outbox_pending\">{pending}</b></div>\
         <div class=\"card\"><span>oldest pending</span><b data-f=\"outbox_oldest_pending_age_seconds\">{age}</b></div>\
         <div class=\"card\"><span>published last minute</span><b data-f=\"outbox_published_last_minute\">{pubd}</b><small>all relays</small></div>\
         <div class=\"card\"><span>relay rate (this process)</span><b data-f=\"relay_rate\">{relay}</b><small data-f=\"relay_window\">{window}</small></div>\
         <div class=\"card\"><span>in flight</span><b data-f=\"in_flight\">{inflight}</b></div>\
         <div class=\"card\"><span>version</span><b>{version}</b><small>up <span data-f=\"uptime\">{uptime}</span></small></div></div>\
         <h2>Job kinds</h2>{table}\
         <h2>Handled / failed per second</h2><svg id=\"chart\" viewBox=\"0 0 300 60\" preserveAspectRatio=\"none\">\
         <polyline id=\"chart-handled\" points=\"\"/><polyline id=\"chart-failed\" points=\"\"/></svg>\
         <p class=\"muted\">Ready and consumers: every worker's, from the broker (sampled every \
         admin.queue_depth_interval). Unacknowledged counts are not available over AMQP: \
         In flight here is this process's jobs being handled.</p>\
         <p class=\"muted\">Refreshes every 2 s; the chart covers the last minutes this page has been open. \
         <span class=\"legend handled\">handled</span> <span class=\"legend failed\">failed</span></p>",
        ready = if o.ready { "ready" } else { "not ready" },
        reason = esc(o.reason.as_deref().unwrap_or("")),
        pending = opt(o.outbox_pending),
        age = o
            .outbox_oldest_pending_age_seconds
            .map_or("?".into(), |a| format!("{a:.0} s")),
        pubd = opt(o.outbox_published_last_minute),
        relay = relay_text(&o),
        window = window_text(&o),
        inflight = o.in_flight,
        version = esc(o.version),
        uptime = esc(&o.uptime),
        table = page::table(
            "kinds",
            &[
                "Kind",
                "Ready",
                "Consumers",
                "Retrying",
                "Dead",
                "In flight here",
                "Handled/s",
                "Failed/s"
            ],
            &rows
        ),
    );
    page::frame("Overview", "/console", &csrf, None, &body).into_response()
}

/// The job kinds table's rows; `console.js` refreshes the `data-k` cells.
fn kind_rows(o: &Overview) -> Vec<Vec<String>> {
    o.kinds
        .iter()
        .map(|k| {
            let cell = |field: &str, v: String| {
                format!("<span data-k=\"{}.{field}\">{v}</span>", esc(&k.kind))
            };
            vec![
                format!(
                    "<a href=\"/console/dlq?kind={}\">{}</a>",
                    page::q(&k.kind),
                    esc(&k.kind)
                ),
                cell("work", k.work.to_string()),
                cell("consumers", k.consumers.to_string()),
                cell("retry", k.retry.to_string()),
                cell("dead", k.dead.to_string()),
                cell("in_flight", k.in_flight.to_string()),
                cell("handled_rate", "–".into()),
                cell("failed_rate", "–".into()),
            ]
        })
        .collect()
}

/// `GET /console/jobs`: in-flight jobs, oldest first, those near the handler
/// timeout highlighted.
pub(crate) async fn jobs(State(state): State<ConsoleState>) -> Response {
    let mut jobs = state.inflight.list();
    jobs.sort_by(|a, b| b.elapsed_seconds.total_cmp(&a.elapsed_seconds));
    let timeout = state.console.config.worker.handler_timeout.as_secs_f64();
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let near = timeout > 0.0 && j.elapsed_seconds >= NEAR_TIMEOUT * timeout;
            let age = format!("{:.1} s", j.elapsed_seconds);
            vec![
                format!("<span class=\"mono\">{}</span>", esc(&j.message_id)),
                esc(j.correlation_id.as_deref().unwrap_or("-")),
                esc(&j.kind),
                j.attempt.to_string(),
                if near { format!("<span class=\"pill failed\" title=\"near the handler timeout\">{age}</span>") } else { age },
            ]
        })
        .collect();
    let body = format!(
        "<p class=\"muted\">Oldest first; highlighted at {:.0}% of worker.handler_timeout ({}).</p>{}",
        NEAR_TIMEOUT * 100.0,
        humantime::format_duration(state.console.config.worker.handler_timeout),
        page::table(
            "jobs",
            &["Message", "Correlation", "Kind", "Attempt", "Age"],
            &rows
        )
    );
    page::frame(
        "In-flight jobs",
        "/console/jobs",
        &csrf_token(&state),
        None,
        &body,
    )
    .into_response()
}
