//! The guards page: the kill switch and webhook circuit breakers of this
//! process, and the fleet-wide paused job kinds with pause and resume (through
//! [`crate::guard::pause`], as `hookfleet pause|resume` does).
//!
//! Switch and breakers are per process (each worker decides for itself), so
//! they are read from this process's gauges; paused kinds live in the
//! database and are the same on every worker's page.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use prometheus::core::Collector;

use super::auth::{Who, csrf_token};
use super::page::{self, Form, esc, q};
use super::state::ConsoleState;
use crate::guard::pause;
use crate::metrics::metrics;

/// A gauge value of the switch or a breaker as shown (0, 1, 2).
fn state_label(v: i64) -> &'static str {
    match v {
        0 => "closed",
        1 => "half-open",
        _ => "open",
    }
}

/// Each webhook host with a breaker in this process, and its state.
fn breakers() -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = metrics()
        .webhook_breaker_state
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter_map(|m| {
            let host = m
                .get_label()
                .iter()
                .find(|l| l.name() == "host")?
                .value()
                .to_string();
            Some((host, m.get_gauge().get_value() as i64))
        })
        .collect();
    out.sort();
    out
}

/// The "Webhook circuit breakers" heading and table (also on the webhooks page).
pub(crate) fn breakers_section() -> String {
    let rows: Vec<Vec<String>> = breakers()
        .into_iter()
        .map(|(host, v)| {
            let l = state_label(v);
            vec![
                format!("<span class=\"mono\">{}</span>", esc(&host)),
                format!("<span class=\"pill {l}\">{l}</span>"),
            ]
        })
        .collect();
    format!(
        "<h2>Webhook circuit breakers (this process)</h2>{}",
        page::table("breakers", &["Host", "State"], &rows)
    )
}

/// `GET /console/guards`.
pub(crate) async fn page(State(state): State<ConsoleState>, RawQuery(query): RawQuery) -> Response {
    let form = Form::parse(query.unwrap_or_default().as_bytes());
    let csrf = csrf_token(&state);
    let switch = metrics().killswitch_state.get();
    let mut body = format!(
        "<h2>Kill switch (this process)</h2><p>State: <span class=\"pill {l}\" \
         id=\"killswitch\">{l}</span> <span class=\"muted\">open: PostgreSQL down or most \
         recent jobs failing transiently; nothing is consumed and no attempt is used</span></p>",
        l = state_label(switch)
    );
    body.push_str("<h2>Paused job kinds (fleet-wide)</h2>");
    match pause::list(&state.console.pool).await {
        Ok(paused) => {
            let mut rows = Vec::new();
            for kind in &state.console.config.worker.kinds {
                let p = paused.iter().find(|p| &p.kind == kind);
                let (label, verb, action) = if p.is_some() {
                    ("paused", "Resume", "resume")
                } else {
                    ("consuming", "Pause", "pause")
                };
                rows.push(vec![
                    esc(kind),
                    format!("<span class=\"pill {label}\" id=\"kind-{k}-state\">{label}</span>", k = esc(kind)),
                    p.map(|p| {
                        format!(
                            "{}{}{}",
                            p.paused_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            p.paused_by.as_deref().map(|b| format!(" by {}", esc(b))).unwrap_or_default(),
                            p.reason.as_deref().map(|r| format!(": {}", esc(r))).unwrap_or_default()
                        )
                    })
                    .unwrap_or_default(),
                    format!(
                        "<form method=\"post\" action=\"/console/guards/pause\" class=\"inline\">{}\
                         <input type=\"hidden\" name=\"kind\" value=\"{k}\">\
                         <input name=\"reason\" placeholder=\"reason\" id=\"kind-{k}-reason\">\
                         <button name=\"action\" value=\"{action}\" id=\"kind-{k}-{action}\" class=\"small\">{verb}</button></form>",
                        page::csrf_field(&csrf),
                        k = esc(kind)
                    ),
                ]);
            }
            body.push_str(&page::table(
                "paused",
                &["Kind", "State", "Since", ""],
                &rows,
            ));
        }
        Err(e) => body.push_str(&page::error_box("cannot read paused kinds", &e)),
    }
    body.push_str(&breakers_section());
    page::frame("Guards", "/console/guards", &csrf, form.get("flash"), &body).into_response()
}

fn back(flash: &str) -> Response {
    Redirect::to(&format!("/console/guards?flash={}", q(flash))).into_response()
}

/// `POST /console/guards/pause`: `action=pause|resume` for `kind` (with an
/// optional `reason`), fleet-wide.
pub(crate) async fn set_paused(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let Some(kind) = form.get("kind") else {
        return back("no job kind given");
    };
    let pool = &state.console.pool;
    let (what, result) = match form.get("action") {
        Some("resume") => (
            "resume",
            pause::resume(pool, kind).await.map(|was| {
                if was {
                    format!("resumed {kind} on every worker")
                } else {
                    format!("{kind} was not paused")
                }
            }),
        ),
        _ => (
            "pause",
            pause::pause(pool, kind, Some(&who.user), form.get("reason"))
                .await
                .map(|new| {
                    if new {
                        format!("paused {kind} on every worker")
                    } else {
                        format!("{kind} was already paused")
                    }
                }),
        ),
    };
    match result {
        Ok(m) => {
            tracing::info!(user = %who.user, via = who.via, kind, action = what, count = 1, "console action: guards");
            back(&m)
        }
        Err(e) => back(&format!("failed: {e}")),
    }
}
