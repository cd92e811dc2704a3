//! The outbox page: status and failing rows (as `outbox status`), unpark, and
//! replay by the CLI's filters: a dry run first (count and sample), then the
//! replay in the background with its progress on the page.
//!
//! One replay at a time per process, held in memory: if it stops (broker,
//! database, restart) the page offers to resume from the id the replay
//! reports, as `outbox replay --from-id` does.

use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json, body::Bytes};
use tokio_util::sync::CancellationToken;

use super::ConsoleState;
use super::auth::{Who, csrf_token};
use super::page::{self, Form, esc, q};
use crate::amqp::topology::Names;
use crate::outbox::replay::{self, Progress, ReplayError, ReplayRequest};
use crate::outbox::status;

/// Filter fields of the replay form, as the CLI's flags.
const FIELDS: [(&str, &str); 6] = [
    ("from_id", "From id"),
    ("to_id", "To id"),
    ("since", "Since (RFC 3339)"),
    ("until", "Until (RFC 3339)"),
    ("event_type", "Event type (git.push, git.*)"),
    ("correlation_id", "Correlation id"),
];

/// How a background replay ended: events published, or the error and the
/// outbox id to resume from.
type Outcome = Result<u64, (String, Option<i64>)>;

/// A background replay and what it has done.
#[derive(Debug)]
pub struct ReplayJob {
    /// Position = published, length = selected.
    bar: indicatif::ProgressBar,
    /// What it replays, for the page.
    summary: String,
    /// `None` while running, then the outcome.
    outcome: Arc<Mutex<Option<Outcome>>>,
    /// The replay's filters as a query string without `from_id`, for the
    /// resume link.
    filters: String,
}

/// Progress as `/console/api/replay` reports it.
#[derive(serde::Serialize)]
pub struct ReplayProgress {
    /// `none`, `running`, `done` or `failed`.
    state: &'static str,
    done: u64,
    total: u64,
    summary: String,
    /// The error, when failed.
    error: Option<String>,
    /// Outbox id to resume from, when failed.
    resume_from: Option<i64>,
    /// The outbox page with the replay form filled to resume, when failed.
    resume_href: Option<String>,
}

fn request_of(state: &ConsoleState, form: &Form) -> ReplayRequest {
    let include_jobs = form.get("include_jobs").is_some();
    ReplayRequest {
        from_id: form.num("from_id"),
        to_id: form.num("to_id"),
        since: form.get("since").map(str::to_string),
        until: form.get("until").map(str::to_string),
        event_type: form.get("event_type").map(str::to_string),
        correlation_id: form.get("correlation_id").map(str::to_string),
        rate: form.num("rate"),
        exclude_exchange: (!include_jobs)
            .then(|| Names::new(&state.console.config.amqp.prefix).jobs_exchange()),
        ..ReplayRequest::default()
    }
}

/// Progress of the current (or last) replay of this process.
fn progress_of(state: &ConsoleState) -> ReplayProgress {
    let guard = state
        .console
        .replay
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Some(job) = guard.as_ref() else {
        return ReplayProgress {
            state: "none",
            done: 0,
            total: 0,
            summary: String::new(),
            error: None,
            resume_from: None,
            resume_href: None,
        };
    };
    let outcome = job
        .outcome
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (st, error, resume_from) = match outcome {
        None => ("running", None, None),
        Some(Ok(_)) => ("done", None, None),
        Some(Err((e, r))) => ("failed", Some(e), r),
    };
    ReplayProgress {
        state: st,
        done: job.bar.position(),
        total: job.bar.length().unwrap_or(0),
        summary: job.summary.clone(),
        error,
        resume_from,
        resume_href: resume_from.map(|r| format!("/console/outbox?from_id={r}{}", job.filters)),
    }
}

/// `GET /console/api/replay`.
pub async fn progress(State(state): State<ConsoleState>) -> Json<ReplayProgress> {
    Json(progress_of(&state))
}

/// `GET /console/outbox`.
pub async fn page(State(state): State<ConsoleState>, RawQuery(query): RawQuery) -> Response {
    let form = Form::parse(query.unwrap_or_default().as_bytes());
    let csrf = csrf_token(&state);
    let mut body = match status::fetch(&state.console.pool).await {
        Ok(s) => status_html(&s, &csrf),
        Err(e) => page::error_box("cannot read the outbox", &e),
    };
    body.push_str(&replay_progress_html(&progress_of(&state)));
    body.push_str(&replay_form(&form, &csrf, "dry", "Dry run"));
    page::frame("Outbox", "/console/outbox", &csrf, form.get("flash"), &body).into_response()
}

fn status_html(s: &status::Status, csrf: &str) -> String {
    let rows: Vec<Vec<String>> = s
        .failing_rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                esc(&r.event_type),
                esc(&r.exchange),
                r.publish_attempts.to_string(),
                format!(
                    "<span class=\"reason\">{}</span>",
                    esc(r.last_error.as_deref().unwrap_or("-"))
                ),
                if r.parked_at.is_some() {
                    format!(
                        "parked <button name=\"id\" value=\"{}\" class=\"small\">Unpark</button>",
                        r.id
                    )
                } else {
                    r.next_attempt_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default()
                },
            ]
        })
        .collect();
    format!(
        "<div class=\"cards\" id=\"outbox-status\">\
         <div class=\"card\"><span>pending</span><b id=\"pending\">{}</b></div>\
         <div class=\"card\"><span>oldest pending</span><b>{:.0} s</b></div>\
         <div class=\"card\"><span>failing</span><b>{}</b></div>\
         <div class=\"card\"><span>parked</span><b>{}</b></div>\
         <div class=\"card\"><span>published last minute</span><b>{}</b></div></div>\
         <h2>Failing rows</h2><form method=\"post\" action=\"/console/outbox/replay\">{}\
         <input type=\"hidden\" name=\"mode\" value=\"unpark\">{}</form>",
        s.pending,
        s.oldest_pending_age_seconds,
        s.failing,
        s.parked,
        s.published_last_minute,
        page::csrf_field(csrf),
        page::table(
            "failing",
            &["Id", "Event", "Exchange", "Attempts", "Last error", "Next"],
            &rows
        )
    )
}

fn replay_progress_html(p: &ReplayProgress) -> String {
    if p.state == "none" {
        return "<div id=\"replay\" data-replay></div>".into();
    }
    let resume = match (p.resume_from, &p.resume_href) {
        (Some(r), Some(href)) => {
            format!(
                " <a href=\"{}\" id=\"resume\">Resume from id {r}</a>",
                esc(href)
            )
        }
        _ => String::new(),
    };
    format!(
        "<div id=\"replay\" data-replay=\"{st}\"><h2>Replay</h2><p class=\"muted\">{sum}</p>\
         <progress id=\"replay-bar\" max=\"{t}\" value=\"{d}\"></progress>\
         <p><span id=\"replay-state\">{st}</span>: <span id=\"replay-done\">{d}</span>/<span id=\"replay-total\">{t}</span> \
         <span id=\"replay-error\" class=\"error\">{err}</span>{resume}</p></div>",
        st = p.state,
        sum = esc(&p.summary),
        t = p.total,
        d = p.done,
        err = esc(p.error.as_deref().unwrap_or("")),
    )
}

/// The replay form, filled from `form`; `mode` is what its button does.
fn replay_form(form: &Form, csrf: &str, mode: &str, label: &str) -> String {
    let mut fields = String::new();
    for (name, title) in FIELDS {
        fields.push_str(&format!(
            "<label>{title} <input name=\"{name}\" id=\"r-{name}\" value=\"{}\"></label>",
            esc(form.get(name).unwrap_or(""))
        ));
    }
    let checked = if form.get("include_jobs").is_some() {
        " checked"
    } else {
        ""
    };
    let confirm = if mode == "run" {
        " data-confirm=\"Publish these events again?\""
    } else {
        ""
    };
    format!(
        "<h2>Replay</h2><form method=\"post\" action=\"/console/outbox/replay\" class=\"filters\">{}\
         {fields}<label>Rate (events/s) <input name=\"rate\" id=\"r-rate\" value=\"{}\"></label>\
         <label class=\"inline\"><input type=\"checkbox\" name=\"include_jobs\" value=\"1\"{checked}> include job rows</label>\
         <button name=\"mode\" value=\"{mode}\" id=\"replay-{mode}\"{confirm}>{label}</button></form>",
        page::csrf_field(csrf),
        esc(form.get("rate").unwrap_or("")),
    )
}

/// `POST /console/outbox/replay`: `mode=dry` counts and samples, `mode=run`
/// starts the background replay, `mode=unpark` unparks the row `id`.
pub async fn replay(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    match form.get("mode") {
        Some("unpark") => unpark(&state, &who, &form).await,
        Some("run") => start(&state, &who, &form),
        _ => dry_run(&state, &who, &form).await,
    }
}

async fn unpark(state: &ConsoleState, who: &Who, form: &Form) -> Response {
    let ids: Vec<i64> = form
        .all("id")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    let flash = if ids.is_empty() {
        "no row given".to_string()
    } else {
        match crate::outbox::storage::unpark(&state.console.pool, &ids).await {
            Ok(n) => {
                tracing::info!(user = %who.user, via = who.via, outbox.ids = ?ids, count = n, "console action: outbox unpark");
                format!("unparked {n}")
            }
            Err(e) => format!("failed: {e}"),
        }
    };
    Redirect::to(&format!("/console/outbox?flash={}", q(&flash))).into_response()
}

async fn dry_run(state: &ConsoleState, who: &Who, form: &Form) -> Response {
    let csrf = csrf_token(state);
    let req = ReplayRequest {
        dry_run: true,
        ..request_of(state, form)
    };
    let result = match replay::plan(&req) {
        Ok(plan) => {
            let never = CancellationToken::new();
            replay::run(
                &state.console.pool,
                &state.console.config.amqp,
                &plan,
                &Progress::Quiet,
                &never,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let body = match result {
        Ok(r) => {
            tracing::info!(user = %who.user, via = who.via, outbox.request = ?req, count = r.selected, "console action: outbox replay dry run");
            let rows: Vec<Vec<String>> = r
                .sample
                .iter()
                .map(|s| {
                    vec![
                        s.id.to_string(),
                        esc(&s.event_type),
                        esc(&s.exchange),
                        esc(&s.routing_key),
                        s.created_at.to_rfc3339(),
                    ]
                })
                .collect();
            format!(
                "<p id=\"dry-count\"><b>{n}</b> events match (dry run, nothing published).</p>\
                 <h2>Sample</h2>{}{}",
                page::table(
                    "sample",
                    &["Id", "Event", "Exchange", "Routing key", "Created"],
                    &rows
                ),
                if r.selected > 0 {
                    replay_form(
                        form,
                        &csrf,
                        "run",
                        &format!("Replay these {} events", r.selected),
                    )
                } else {
                    String::new()
                },
                n = r.selected,
            )
        }
        Err(e) => format!(
            "{}{}",
            page::error_box("replay", &e),
            replay_form(form, &csrf, "dry", "Dry run")
        ),
    };
    page::frame("Outbox replay", "/console/outbox", &csrf, None, &body).into_response()
}

fn start(state: &ConsoleState, who: &Who, form: &Form) -> Response {
    let req = request_of(state, form);
    let plan = match replay::plan(&req) {
        Ok(p) => p,
        Err(e) => {
            return Redirect::to(&format!("/console/outbox?flash={}", q(&e.to_string())))
                .into_response();
        }
    };
    let mut slot = state
        .console
        .replay
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let busy = slot.as_ref().is_some_and(|j| {
        j.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    });
    if busy {
        return Redirect::to(&format!(
            "/console/outbox?flash={}",
            q("a replay is already running")
        ))
        .into_response();
    }
    let bar = indicatif::ProgressBar::hidden();
    let outcome = Arc::new(Mutex::new(None));
    let summary = format!("{req:?} started by {}", who.user);
    let filters: String = FIELDS
        .iter()
        .map(|(name, _)| *name)
        .chain(["rate", "include_jobs"])
        .filter(|name| *name != "from_id")
        .filter_map(|name| form.get(name).map(|v| format!("&{name}={}", q(v))))
        .collect();
    *slot = Some(ReplayJob {
        filters,
        bar: bar.clone(),
        summary,
        outcome: outcome.clone(),
    });
    drop(slot);
    tracing::info!(user = %who.user, via = who.via, outbox.request = ?req, "console action: outbox replay started");
    let (pool, amqp, user) = (
        state.console.pool.clone(),
        state.console.config.amqp.clone(),
        who.user.clone(),
    );
    tokio::spawn(async move {
        let never = CancellationToken::new();
        let result = replay::run(&pool, &amqp, &plan, &Progress::Bar(bar), &never).await;
        let done = match result {
            Ok(r) => {
                tracing::info!(user = %user, count = r.published, "console action: outbox replay finished");
                Ok(r.published)
            }
            Err(e) => {
                let resume = match &e {
                    ReplayError::Database { resume_from, .. }
                    | ReplayError::Broker { resume_from, .. }
                    | ReplayError::Interrupted { resume_from } => Some(*resume_from),
                    _ => None,
                };
                tracing::warn!(user = %user, error = %e, "console action: outbox replay failed");
                Err((e.to_string(), resume))
            }
        };
        *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(done);
    });
    Redirect::to(&format!("/console/outbox?flash={}", q("replay started"))).into_response()
}
