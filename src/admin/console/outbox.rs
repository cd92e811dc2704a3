//! The outbox page: status and failing rows (as `outbox status`), unpark, and
//! replay by every filter of `outbox replay` (ids, times, event type,
//! correlation id, `--to-exchange`, `--routing-key`, rate, include jobs): a
//! dry run first (count and sample), then the replay in the background with
//! its progress on the page.
//!
//! Replays are rows of `console_replays` ([`super::replay_store`]), run by
//! [`super::replay_task`]: progress survives the process, so a replay stopped
//! by a restart (or a broker or database failure) is listed as interrupted
//! or failed and resumed from the page where it stopped (its cursor, an
//! outbox id, as `outbox replay --from-id` would). One replay runs at a time
//! per process.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json, body::Bytes};
use tokio_util::sync::CancellationToken;

use super::auth::{Who, csrf_token};
use super::page::{self, Form, esc, q};
use super::replay_store::{self, ReplayRow};
use super::replay_task::{self, Run};
use super::state::ConsoleState;
use crate::amqp::topology::Names;
use crate::outbox::replay::{self, Progress, ReplayRequest};
use crate::outbox::status;

/// Filter fields of the replay form, as the CLI's flags.
const FIELDS: [(&str, &str); 8] = [
    ("from_id", "From id"),
    ("to_id", "To id"),
    ("since", "Since (RFC 3339)"),
    ("until", "Until (RFC 3339)"),
    ("event_type", "Event type (git.push, git.*)"),
    ("correlation_id", "Correlation id"),
    ("to_exchange", "To exchange (instead of the row's)"),
    ("routing_key", "Routing key (instead of the row's)"),
];
/// The other fields a replay keeps: the rate and the job-rows switch.
const OPTIONS: [&str; 2] = ["rate", "include_jobs"];
/// Replays listed on the page.
const REPLAYS_SHOWN: i64 = 5;

/// Progress as `/console/api/replay` reports it: the latest replay.
#[derive(serde::Serialize)]
pub struct ReplayProgress {
    /// Row id (0 when there is none).
    id: i64,
    /// `none`, `running`, `done`, `failed` or `interrupted` (a running row
    /// whose runner is gone).
    state: &'static str,
    done: i64,
    total: i64,
    summary: String,
    /// The error, when failed or interrupted.
    error: Option<String>,
    /// Outbox id it resumes from, when failed or interrupted.
    resume_from: Option<i64>,
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
        to_exchange: form.get("to_exchange").map(str::to_string),
        routing_key: form.get("routing_key").map(str::to_string),
        rate: form.num("rate"),
        exclude_exchange: (!include_jobs)
            .then(|| Names::new(&state.console.config.amqp.prefix).jobs_exchange()),
        dry_run: false,
    }
}

/// The form's replay fields as stored with the replay (to resume it later).
fn stored_request(form: &Form) -> serde_json::Value {
    FIELDS
        .iter()
        .map(|(name, _)| *name)
        .chain(OPTIONS)
        .filter_map(|name| form.get(name).map(|v| (name.to_string(), v.into())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A stored request back as a form (unknown or non-text values left out).
fn form_of(request: &serde_json::Value) -> Form {
    let pairs: Vec<(String, String)> = request
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Form::parse(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
            .as_bytes(),
    )
}

/// The state shown for `row`: a `running` row is interrupted when its runner
/// is gone (this process, not running it; another, silent past the stale time).
fn shown_state(state: &ConsoleState, row: &ReplayRow) -> &'static str {
    let c = &state.console;
    match row.state.as_str() {
        "running" => {
            let mine = row.owner == Some(c.instance);
            let here = replay_task::current(&c.running) == Some(row.id);
            let silent = chrono::Utc::now() - row.heartbeat_at
                > chrono::Duration::from_std(replay_task::STALE).unwrap_or_default();
            if here || (!mine && !silent) {
                "running"
            } else {
                "interrupted"
            }
        }
        "done" => "done",
        "interrupted" => "interrupted",
        _ => "failed",
    }
}

fn summary(row: &ReplayRow) -> String {
    let filters: Vec<String> = row
        .request
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "replay {} by {} at {}: {}",
        row.id,
        row.started_by,
        row.created_at.format("%Y-%m-%d %H:%M:%S"),
        if filters.is_empty() {
            "all events".into()
        } else {
            filters.join(" ")
        }
    )
}

fn progress_of(state: &ConsoleState, row: Option<&ReplayRow>) -> ReplayProgress {
    let Some(row) = row else {
        return ReplayProgress {
            id: 0,
            state: "none",
            done: 0,
            total: 0,
            summary: String::new(),
            error: None,
            resume_from: None,
        };
    };
    let st = shown_state(state, row);
    let stopped = matches!(st, "failed" | "interrupted");
    ReplayProgress {
        id: row.id,
        state: st,
        done: row.published,
        total: row.total,
        summary: summary(row),
        error: row.error.clone().or_else(|| {
            (st == "interrupted").then(|| "its process stopped while it ran".to_string())
        }),
        resume_from: stopped.then_some(row.next_id),
    }
}

/// `GET /console/api/replay`: the latest replay.
pub async fn progress(State(state): State<ConsoleState>) -> Response {
    match replay_store::recent(&state.console.pool, 1).await {
        Ok(rows) => Json(progress_of(&state, rows.first())).into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read replays: {e}\n"),
        )
            .into_response(),
    }
}

/// `GET /console/outbox`.
pub async fn page(State(state): State<ConsoleState>, RawQuery(query): RawQuery) -> Response {
    let form = Form::parse(query.unwrap_or_default().as_bytes());
    let csrf = csrf_token(&state);
    let mut body = match status::fetch(&state.console.pool).await {
        Ok(s) => status_html(&s, &csrf),
        Err(e) => page::error_box("cannot read the outbox", &e),
    };
    match replay_store::recent(&state.console.pool, REPLAYS_SHOWN).await {
        Ok(rows) => {
            body.push_str(&replay_progress_html(&progress_of(&state, rows.first())));
            body.push_str(&replays_html(&state, &rows, &csrf));
        }
        Err(e) => body.push_str(&page::error_box("cannot read replays", &e)),
    }
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
         <input type=\"hidden\" name=\"mode\" value=\"unpark\">{}{}</form>",
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
        ),
        // As `outbox unpark --all`: every parked row, listed here or not.
        if s.parked > 0 {
            format!(
                "<p class=\"actions\"><button name=\"all\" value=\"1\" id=\"unpark-all\" \
                 data-confirm=\"Unpark all {} parked rows?\">Unpark all parked</button></p>",
                s.parked
            )
        } else {
            String::new()
        }
    )
}

fn replay_progress_html(p: &ReplayProgress) -> String {
    if p.state == "none" {
        return "<div id=\"replay\" data-replay></div>".into();
    }
    format!(
        "<div id=\"replay\" data-replay=\"{st}\"><h2>Latest replay</h2><p class=\"muted\">{sum}</p>\
         <progress id=\"replay-bar\" max=\"{t}\" value=\"{d}\"></progress>\
         <p><span id=\"replay-state\">{st}</span>: <span id=\"replay-done\">{d}</span>/<span id=\"replay-total\">{t}</span> \
         <span id=\"replay-error\" class=\"error\">{err}</span></p></div>",
        st = p.state,
        sum = esc(&p.summary),
        t = p.total,
        d = p.done,
        err = esc(p.error.as_deref().unwrap_or("")),
    )
}

/// The latest replays, with a resume button on those that stopped.
fn replays_html(state: &ConsoleState, rows: &[ReplayRow], csrf: &str) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let st = shown_state(state, r);
            let resume = if matches!(st, "failed" | "interrupted") {
                format!(
                    "<form method=\"post\" action=\"/console/outbox/replay\" class=\"inline\">{}\
                     <input type=\"hidden\" name=\"mode\" value=\"resume\">\
                     <button name=\"id\" value=\"{id}\" id=\"resume-{id}\" class=\"small\" \
                     data-confirm=\"Resume replay {id} from outbox id {n}?\">Resume from id {n}</button></form>",
                    page::csrf_field(csrf),
                    id = r.id,
                    n = r.next_id
                )
            } else {
                String::new()
            };
            vec![
                r.id.to_string(),
                format!("<span class=\"pill {st}\" id=\"replay-{}-state\">{st}</span>", r.id),
                format!("<span id=\"replay-{}-published\">{}</span>/{}", r.id, r.published, r.total),
                r.next_id.to_string(),
                esc(&r.started_by),
                format!("<span class=\"reason\">{}</span>", esc(&summary(r))),
                format!("<span class=\"reason\">{}</span>", esc(r.error.as_deref().unwrap_or(""))),
                resume,
            ]
        })
        .collect();
    format!(
        "<h2>Replays</h2>{}",
        page::table(
            "replays",
            &[
                "Id",
                "State",
                "Published",
                "Next id",
                "By",
                "What",
                "Error",
                ""
            ],
            &rows
        )
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
         <label class=\"inline\"><input type=\"checkbox\" name=\"include_jobs\" id=\"r-include_jobs\" value=\"1\"{checked}> include job rows</label>\
         <button name=\"mode\" value=\"{mode}\" id=\"replay-{mode}\"{confirm}>{label}</button></form>",
        page::csrf_field(csrf),
        esc(form.get("rate").unwrap_or("")),
    )
}

/// `POST /console/outbox/replay`: `mode=dry` counts and samples, `mode=run`
/// starts the background replay, `mode=resume` resumes replay `id` from its
/// cursor, `mode=unpark` unparks the row `id`.
pub async fn replay(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    match form.get("mode") {
        Some("unpark") => unpark(&state, &who, &form).await,
        Some("run") => start(&state, &who, &form).await,
        Some("resume") => resume(&state, &who, &form).await,
        _ => dry_run(&state, &who, &form).await,
    }
}

async fn unpark(state: &ConsoleState, who: &Who, form: &Form) -> Response {
    let ids: Vec<i64> = form
        .all("id")
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    // `all` is `outbox unpark --all`: no ids means every parked row.
    let all = form.get("all").is_some();
    let flash = if ids.is_empty() && !all {
        "no row given".to_string()
    } else {
        match crate::outbox::storage::unpark(&state.console.pool, &ids).await {
            Ok(n) => {
                tracing::info!(user = %who.user, via = who.via, outbox.ids = ?ids, all, count = n, "console action: outbox unpark");
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

fn back(flash: &str) -> Response {
    Redirect::to(&format!("/console/outbox?flash={}", q(flash))).into_response()
}

/// Starts a replay of `form`'s selection in the background.
async fn start(state: &ConsoleState, who: &Who, form: &Form) -> Response {
    let req = request_of(state, form);
    let plan = match replay::plan(&req) {
        Ok(p) => p,
        Err(e) => return back(&e.to_string()),
    };
    let c = &state.console;
    if replay_task::busy(&c.running) {
        return back("a replay is already running");
    }
    let from = plan.selection.from_id.unwrap_or(1).max(1);
    let id = match replay_store::insert(&c.pool, &stored_request(form), &who.user, c.instance, from)
        .await
    {
        Ok(id) => id,
        Err(e) => return back(&format!("failed: cannot record the replay: {e}")),
    };
    if !replay_task::take(&c.running, id) {
        let _ = replay_store::finish(
            &c.pool,
            id,
            c.instance,
            "failed",
            Some("another replay started first"),
        )
        .await;
        return back("a replay is already running");
    }
    tracing::info!(user = %who.user, via = who.via, console.replay = id, outbox.request = ?req, "console action: outbox replay started");
    c.spawn_replay(Run {
        id,
        plan,
        published_before: 0,
        user: who.user.clone(),
    });
    back(&format!("replay {id} started"))
}

/// Resumes replay `id` (failed, or interrupted by a restart) from its cursor.
async fn resume(state: &ConsoleState, who: &Who, form: &Form) -> Response {
    let Some(id) = form.num::<i64>("id") else {
        return back("no replay given");
    };
    let c = &state.console;
    if !replay_task::take(&c.running, id) {
        return back("a replay is already running");
    }
    let row = match replay_store::claim(&c.pool, id, c.instance, replay_task::STALE).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            replay_task::release(&c.running, id);
            return back(&format!(
                "replay {id} is not resumable (running, done or unknown)"
            ));
        }
        Err(e) => {
            replay_task::release(&c.running, id);
            return back(&format!("failed: {e}"));
        }
    };
    let req = ReplayRequest {
        from_id: Some(row.next_id),
        ..request_of(state, &form_of(&row.request))
    };
    let plan = match replay::plan(&req) {
        Ok(p) => p,
        Err(e) => {
            let _ =
                replay_store::finish(&c.pool, id, c.instance, "failed", Some(&e.to_string())).await;
            replay_task::release(&c.running, id);
            return back(&e.to_string());
        }
    };
    tracing::info!(user = %who.user, via = who.via, console.replay = id, outbox.from_id = row.next_id,
        count = row.published, "console action: outbox replay resumed");
    c.spawn_replay(Run {
        id,
        plan,
        published_before: row.published,
        user: who.user.clone(),
    });
    back(&format!("replay {id} resumed from id {}", row.next_id))
}
