//! `hookfleet outbox replay`: publishes already published outbox events again.
//!
//! Owns validating the selection (ids, RFC 3339 times, event-type patterns), the
//! dry run, and re-publishing in id order with confirms, at an optional rate, with
//! progress, keeping each row's `message_id` and adding `x-replayed-from` (the
//! outbox id) so consumers can tell a replay from the original. A bad filter is
//! rejected before anything is published. On failure or interruption it reports
//! the `--from-id` to resume from (the first row not confirmed). It never changes
//! outbox rows and only ever reads published ones.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::storage::{self, OutboxRow, Selection};
use crate::amqp::{self, AmqpError, publish};
use crate::config::AmqpConfig;
use crate::message::{H_REPLAYED_FROM, HeaderValue};

/// Rows read and published per page (confirms are awaited per page).
pub const PAGE_SIZE: i64 = 256;
/// Rows shown by a dry run.
pub const SAMPLE_SIZE: i64 = 5;

/// Replay failures; [`ReplayError::BadFilter`] means nothing was published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The selection is invalid (exit 2).
    #[error("invalid replay filter: {0}")]
    BadFilter(String),
    /// Reading the outbox failed.
    #[error("reading the outbox failed: {source}; resume with --from-id {resume_from}")]
    Database {
        /// Driver error.
        source: sqlx::Error,
        /// Where to resume.
        resume_from: i64,
    },
    /// Connecting or publishing failed.
    #[error("publishing failed: {source}; resume with --from-id {resume_from}")]
    Broker {
        /// Broker error.
        source: AmqpError,
        /// The first row not confirmed.
        resume_from: i64,
    },
    /// Shutdown was requested.
    #[error("replay interrupted; resume with --from-id {resume_from}")]
    Interrupted {
        /// The first row not published.
        resume_from: i64,
    },
}

/// The selection as given on the command line, before validation.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    /// Smallest outbox id (inclusive).
    pub from_id: Option<i64>,
    /// Largest outbox id (inclusive).
    pub to_id: Option<i64>,
    /// Earliest creation time, RFC 3339.
    pub since: Option<String>,
    /// Latest creation time, RFC 3339.
    pub until: Option<String>,
    /// Event type or topic pattern (`git.push`, `git.*`, `git.#`).
    pub event_type: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Publish to this exchange instead of the row's.
    pub to_exchange: Option<String>,
    /// Publish with this routing key instead of the row's.
    pub routing_key: Option<String>,
    /// Count and sample only.
    pub dry_run: bool,
    /// Events per second at most.
    pub rate: Option<u32>,
    /// Leave out rows published to this exchange (the CLI passes the jobs
    /// exchange unless `--include-jobs`); `None` selects every row.
    pub exclude_exchange: Option<String>,
}

/// A validated replay.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// Rows to replay.
    pub selection: Selection,
    /// Exchange override.
    pub to_exchange: Option<String>,
    /// Routing key override.
    pub routing_key: Option<String>,
    /// Count and sample only.
    pub dry_run: bool,
    /// Events per second at most.
    pub rate: Option<u32>,
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Rows matching the selection.
    pub selected: i64,
    /// Rows published and confirmed (0 for a dry run).
    pub published: u64,
    /// First rows of the selection (dry run only).
    pub sample: Vec<OutboxRow>,
}

/// How progress is shown.
pub enum Progress {
    /// No output (tests, `--quiet`).
    Quiet,
    /// A progress bar (stderr is a terminal).
    Bar(indicatif::ProgressBar),
    /// A plain line per page on stderr.
    Lines,
    /// The latest [`Advance`], for a caller that keeps the cursor (the console
    /// stores it, so a replay stopped by a restart resumes where it stopped).
    Watch(tokio::sync::watch::Sender<Advance>),
}

/// Where a replay stands, after each confirmed page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advance {
    /// Rows published and confirmed so far.
    pub done: u64,
    /// Rows selected.
    pub total: i64,
    /// The first outbox id not yet confirmed: the `--from-id` to resume from.
    pub next_id: i64,
}

impl Progress {
    /// A bar on a terminal, plain lines otherwise.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Progress::bar(indicatif::ProgressDrawTarget::stderr())
        } else {
            Progress::Lines
        }
    }

    /// A bar drawn to `target` showing count, rate and time left.
    pub fn bar(target: indicatif::ProgressDrawTarget) -> Self {
        let style = indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} events  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        Progress::Bar(indicatif::ProgressBar::with_draw_target(Some(0), target).with_style(style))
    }
    fn start(&self, total: i64) {
        match self {
            Progress::Bar(b) => b.set_length(u64::try_from(total).unwrap_or(0)),
            Progress::Watch(w) => w.send_modify(|a| a.total = total),
            Progress::Quiet | Progress::Lines => {}
        }
    }
    fn advance(&self, done: u64, total: i64, last_id: i64) {
        match self {
            Progress::Quiet => {}
            Progress::Bar(b) => b.set_position(done),
            Progress::Lines => eprintln!("replayed {done}/{total} (through outbox id {last_id})"),
            Progress::Watch(w) => {
                w.send_replace(Advance {
                    done,
                    total,
                    next_id: last_id + 1,
                });
            }
        }
    }
    /// Clears the bar, so that the summary printed next starts a line of its own
    /// (it states the count and rate the bar showed).
    fn finish(&self) {
        if let Progress::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}

/// Validates an event-type filter and returns `(exact, regex)`: an exact type, or
/// for a topic pattern the PostgreSQL regex `event_type || '.'` must match.
fn type_filter(pattern: &str) -> Result<(Option<String>, Option<String>), ReplayError> {
    let bad = |why: &str| {
        ReplayError::BadFilter(format!(
            "--type {pattern:?} {why} (expected lowercase dotted segments like git.push, \
             with * for one segment or # for any number)"
        ))
    };
    if pattern.is_empty() {
        return Err(bad("is empty"));
    }
    let mut regex = String::from("^");
    let mut wildcard = false;
    for seg in pattern.split('.') {
        match seg {
            "*" => {
                wildcard = true;
                regex.push_str("[^.]+\\.");
            }
            "#" => {
                wildcard = true;
                regex.push_str("([^.]+\\.)*");
            }
            "" => return Err(bad("has an empty segment")),
            s if s
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') =>
            {
                regex.push_str(s);
                regex.push_str("\\.");
            }
            _ => return Err(bad("is not a valid event type")),
        }
    }
    regex.push('$');
    Ok(if wildcard {
        (None, Some(regex))
    } else {
        (Some(pattern.to_string()), None)
    })
}

fn parse_time(flag: &str, v: &str) -> Result<DateTime<Utc>, ReplayError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ReplayError::BadFilter(format!(
                "{flag} {v:?} is not an RFC 3339 time (like 2024-05-01T12:00:00Z): {e}"
            ))
        })
}

/// Validates a request; nothing is read or published yet.
pub fn plan(req: &ReplayRequest) -> Result<ReplayPlan, ReplayError> {
    let since = req
        .since
        .as_deref()
        .map(|v| parse_time("--since", v))
        .transpose()?;
    let until = req
        .until
        .as_deref()
        .map(|v| parse_time("--until", v))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && u < s
    {
        return Err(ReplayError::BadFilter(format!(
            "--until {} is before --since {}",
            u.to_rfc3339(),
            s.to_rfc3339()
        )));
    }
    if let (Some(f), Some(t)) = (req.from_id, req.to_id)
        && t < f
    {
        return Err(ReplayError::BadFilter(format!(
            "--to-id {t} is below --from-id {f}"
        )));
    }
    if req.rate == Some(0) {
        return Err(ReplayError::BadFilter("--rate must be at least 1".into()));
    }
    let (event_type, event_type_regex) = match req.event_type.as_deref() {
        Some(p) => type_filter(p)?,
        None => (None, None),
    };
    Ok(ReplayPlan {
        selection: Selection {
            from_id: req.from_id,
            to_id: req.to_id,
            since,
            until,
            event_type,
            event_type_regex,
            correlation_id: req.correlation_id.clone(),
            exclude_exchange: req.exclude_exchange.clone(),
        },
        to_exchange: req.to_exchange.clone(),
        routing_key: req.routing_key.clone(),
        dry_run: req.dry_run,
        rate: req.rate,
    })
}

/// Runs a validated replay (or its dry run).
pub async fn run(
    pool: &PgPool,
    amqp_cfg: &AmqpConfig,
    plan: &ReplayPlan,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<ReplayReport, ReplayError> {
    let start_id = plan.selection.from_id.unwrap_or(1).max(1);
    let db_err = |resume_from: i64| {
        move |source| ReplayError::Database {
            source,
            resume_from,
        }
    };
    let selected = storage::count_selected(pool, &plan.selection)
        .await
        .map_err(db_err(start_id))?;
    if plan.dry_run {
        let sample = storage::select_page(pool, &plan.selection, 0, SAMPLE_SIZE)
            .await
            .map_err(db_err(start_id))?;
        return Ok(ReplayReport {
            selected,
            published: 0,
            sample,
        });
    }
    let broker_err = |resume_from: i64| {
        move |source| ReplayError::Broker {
            source,
            resume_from,
        }
    };
    let conn = amqp::connect(amqp_cfg, "replay")
        .await
        .map_err(broker_err(start_id))?;
    let channel = match publish::confirm_channel(&conn).await {
        Ok(c) => c,
        Err(source) => {
            amqp::close(&[], &conn, amqp_cfg.connect_timeout).await;
            return Err(broker_err(plan.selection.from_id.unwrap_or(1).max(1))(
                source,
            ));
        }
    };
    let result = publish_all(pool, amqp_cfg, &channel, plan, selected, progress, shutdown).await;
    amqp::close(&[&channel], &conn, amqp_cfg.connect_timeout).await;
    progress.finish();
    result.map(|published| ReplayReport {
        selected,
        published,
        sample: Vec::new(),
    })
}

async fn publish_all(
    pool: &PgPool,
    amqp_cfg: &AmqpConfig,
    channel: &lapin::Channel,
    plan: &ReplayPlan,
    selected: i64,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<u64, ReplayError> {
    let timeout = amqp_cfg.publish_timeout;
    let mut next_id = plan.selection.from_id.unwrap_or(1).max(1);
    let gap = plan
        .rate
        .map(|r| Duration::from_secs_f64(1.0 / f64::from(r)));
    let mut next_send = Instant::now();
    let mut done = 0u64;
    progress.start(selected);
    loop {
        if shutdown.is_cancelled() {
            return Err(ReplayError::Interrupted {
                resume_from: next_id,
            });
        }
        let rows = storage::select_page(pool, &plan.selection, next_id - 1, PAGE_SIZE)
            .await
            .map_err(|source| ReplayError::Database {
                source,
                resume_from: next_id,
            })?;
        let Some(first) = rows.first() else {
            return Ok(done);
        };
        let page_start = first.id;
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(gap) = gap {
                let stop = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tokio::time::sleep_until(next_send.into()) => false,
                };
                if stop {
                    // Confirm what was sent, then report the first row not confirmed.
                    let resume_from =
                        match confirm_in_order(pending, timeout, &mut next_id, &mut done).await {
                            Ok(()) => row.id,
                            Err((id, _)) => id,
                        };
                    progress.advance(done, selected, resume_from - 1);
                    return Err(ReplayError::Interrupted { resume_from });
                }
                next_send = Instant::now().max(next_send) + gap;
            }
            let mut envelope = super::row_envelope(row);
            envelope
                .headers
                .insert(H_REPLAYED_FROM.to_string(), HeaderValue::Int(row.id));
            let exchange = plan.to_exchange.as_deref().unwrap_or(&row.exchange);
            let key = plan.routing_key.as_deref().unwrap_or(&row.routing_key);
            let body = super::row_body(row);
            let span = replay_span(row, exchange, key);
            let replay_headers = crate::otel::propagate::headers_of(&span);
            if !replay_headers.is_empty() {
                // The replay is a trace of its own, linked to the original.
                for (k, v) in replay_headers {
                    envelope.headers.insert(k.to_string(), HeaderValue::Str(v));
                }
            }
            let sent = tokio::time::timeout(
                timeout,
                publish::send(channel, exchange, key, body, envelope.to_properties(), true),
            )
            .instrument(span)
            .await
            .unwrap_or(Err(AmqpError::Timeout {
                what: "publish",
                timeout,
            }));
            match sent {
                Ok(confirm) => pending.push((row.id, confirm)),
                Err(source) => {
                    // Confirm what was sent so the resume point is as late as possible.
                    let resume_from = confirm_in_order(pending, timeout, &mut next_id, &mut done)
                        .await
                        .err()
                        .map_or(row.id, |(id, _)| id);
                    return Err(ReplayError::Broker {
                        source,
                        resume_from,
                    });
                }
            }
        }
        next_id = page_start;
        if let Err((resume_from, source)) =
            confirm_in_order(pending, timeout, &mut next_id, &mut done).await
        {
            return Err(ReplayError::Broker {
                source,
                resume_from,
            });
        }
        progress.advance(done, selected, next_id - 1);
    }
}

/// `publish <exchange>` of one replayed row: a new trace (whatever the replay
/// runs in), linked to the row's creation context. With tracing on in the
/// replaying process, the message carries it instead of the original context;
/// with tracing off there, the message keeps the original (the consumer then
/// continues the original trace).
fn replay_span(row: &super::storage::OutboxRow, exchange: &str, key: &str) -> tracing::Span {
    let span = crate::otel::span::publish(
        exchange,
        key,
        &row.message_id.to_string(),
        row.correlation_id.as_deref(),
    );
    span.record("hookfleet.replayed_from", row.id);
    let _ = span.set_parent(opentelemetry::Context::new());
    if let Some(sc) = row
        .trace_context
        .as_deref()
        .and_then(|tp| crate::otel::propagate::span_context(tp, None))
    {
        span.add_link(sc);
    }
    span
}

/// Awaits confirms in id order; advances `next_id` past each confirmed row and
/// stops at the first failure, returning that row's id.
async fn confirm_in_order(
    pending: Vec<(i64, lapin::PublisherConfirm)>,
    timeout: Duration,
    next_id: &mut i64,
    done: &mut u64,
) -> Result<(), (i64, AmqpError)> {
    let deadline = Instant::now() + timeout;
    for (id, confirm) in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        publish::confirmed(confirm, left)
            .await
            .map_err(|e| (id, e))?;
        *next_id = id + 1;
        *done += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_rate_and_eta_and_is_cleared_at_the_end() {
        let term = indicatif::InMemoryTerm::new(4, 100);
        let p = Progress::bar(indicatif::ProgressDrawTarget::term_like(Box::new(
            term.clone(),
        )));
        p.start(1000);
        p.advance(250, 1000, 250);
        if let Progress::Bar(b) = &p {
            b.tick();
        }
        let shown = term.contents();
        assert!(shown.contains("250/1000 events"), "{shown:?}");
        assert!(shown.contains("/s") && shown.contains("ETA"), "{shown:?}");
        p.finish();
        assert!(
            term.contents().trim().is_empty(),
            "the summary line must not land on the bar: {:?}",
            term.contents()
        );
    }

    #[test]
    fn exact_types_and_patterns() {
        assert_eq!(
            type_filter("git.push").unwrap(),
            (Some("git.push".into()), None)
        );
        let (_, re) = type_filter("git.*").unwrap();
        assert_eq!(re.unwrap(), "^git\\.[^.]+\\.$");
        let (_, re) = type_filter("git.#").unwrap();
        assert_eq!(re.unwrap(), "^git\\.([^.]+\\.)*$");
        for bad in ["", "Git.Push", "git..push", "git push", "git.push!"] {
            assert!(
                matches!(type_filter(bad), Err(ReplayError::BadFilter(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn plan_rejects_inverted_ranges() {
        let r = ReplayRequest {
            since: Some("2024-05-02T00:00:00Z".into()),
            until: Some("2024-05-01T00:00:00Z".into()),
            ..ReplayRequest::default()
        };
        assert!(matches!(plan(&r), Err(ReplayError::BadFilter(_))));
        let r = ReplayRequest {
            since: Some("yesterday".into()),
            ..ReplayRequest::default()
        };
        assert!(matches!(plan(&r), Err(ReplayError::BadFilter(_))));
        let r = ReplayRequest {
            from_id: Some(5),
            to_id: Some(4),
            ..ReplayRequest::default()
        };
        assert!(matches!(plan(&r), Err(ReplayError::BadFilter(_))));
    }
}
