//! The outbox page: status and failing rows (as `outbox status`, each parked
//! row with its unpark button), the latest replays with their progress, and
//! the replay form; `/console/api/replay` for the live refresh. What the page's
//! buttons do is [`super::outbox_actions`]'.
//!
//! Replays are rows of `console_replays` ([`super::replay_store`]), run by
//! [`super::replay_task`]: progress survives the process, so a replay stopped
//! by a restart (or a broker or database failure) is listed as interrupted
//! or failed and resumed from the page where it stopped (its cursor, an
//! outbox id, as `outbox replay --from-id` would). One replay runs at a time
//! per process.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};

use super::auth::csrf_token;
use super::outbox_actions::replay_form;
use super::page::{self, Form, esc};
use super::replay_store::{self, ReplayRow};
use super::replay_task;
use super::state::ConsoleState;
use crate::outbox::status;

/// Replays listed on the page.
const REPLAYS_SHOWN: i64 = 5;

/// Progress as `/console/api/replay` reports it: the latest replay.
#[derive(serde::Serialize)]
pub(crate) struct ReplayProgress {
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
pub(crate) async fn progress(State(state): State<ConsoleState>) -> Response {
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
pub(crate) async fn page(State(state): State<ConsoleState>, RawQuery(query): RawQuery) -> Response {
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
