//! What the outbox page's buttons do (`POST /console/outbox/replay`): replay
//! by every filter of `outbox replay` (ids, times, event type, correlation id,
//! `--to-exchange`, `--routing-key`, rate, include jobs), a dry run first (count
//! and sample), then the replay in the background ([`super::replay_task`]),
//! resuming a stopped one from its cursor, and unparking rows; with the replay
//! form they fill, whose fields are stored with a replay to resume it.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, body::Bytes};
use tokio_util::sync::CancellationToken;

use super::auth::{Who, csrf_token};
use super::page::{self, Form, esc, q};
use super::replay_store;
use super::replay_task::{self, Run};
use super::state::ConsoleState;
use crate::amqp::topology::Names;
use crate::outbox::replay::{self, Progress, ReplayReport, ReplayRequest};

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

/// The replay form, filled from `form`; `mode` is what its button does.
pub(super) fn replay_form(form: &Form, csrf: &str, mode: &str, label: &str) -> String {
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
pub(crate) async fn replay(
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
            let rows = sample_rows(&r);
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

/// The dry run's sample as table rows.
fn sample_rows(r: &ReplayReport) -> Vec<Vec<String>> {
    r.sample
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
        .collect()
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
