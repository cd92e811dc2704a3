//! The dead-letters page: list per kind with filters, open one, requeue or
//! discard one, a selection, or everything matching the filter
//! (through [`crate::dlq`], as `hookfleet dlq` does).

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, body::Bytes};

use super::auth::{Who, csrf_token};
use super::page::{self, Form, esc, q};
use super::state::ConsoleState;
use crate::dlq::{self, Action, Filter};

/// Rows shown on the page at most.
pub(crate) const LIST_LIMIT: usize = 200;
/// Error classes offered in the filter.
const CLASSES: [&str; 5] = ["permanent", "transient", "panic", "timeout", "poison"];

fn kind_of(state: &ConsoleState, form: &Form) -> String {
    let kinds = &state.console.config.worker.kinds;
    form.get("kind")
        .filter(|k| kinds.iter().any(|have| have == k))
        .map(str::to_string)
        .or_else(|| kinds.first().cloned())
        .unwrap_or_default()
}

fn filter_of(form: &Form) -> Filter {
    Filter {
        message_id: None,
        error_class: form.get("error_class").map(str::to_string),
        reason_contains: form.get("reason_contains").map(str::to_string),
    }
    .normalized()
}

/// `x-first-attempt-at` (epoch milliseconds) as a UTC time; as sent otherwise.
fn when(v: Option<&str>) -> String {
    let Some(v) = v else { return "-".into() };
    v.parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| esc(v))
}

/// Query string that brings the page back with the same kind and filter.
fn back(kind: &str, f: &Filter) -> String {
    format!(
        "/console/dlq?kind={}&error_class={}&reason_contains={}",
        q(kind),
        q(f.error_class.as_deref().unwrap_or("")),
        q(f.reason_contains.as_deref().unwrap_or(""))
    )
}

fn filter_form(state: &ConsoleState, kind: &str, f: &Filter) -> String {
    let kinds: String = state
        .console
        .config
        .worker
        .kinds
        .iter()
        .map(|k| {
            let sel = if k == kind { " selected" } else { "" };
            format!("<option{sel}>{}</option>", esc(k))
        })
        .collect();
    let classes: String = std::iter::once("")
        .chain(CLASSES)
        .map(|c| {
            let sel = if f.error_class.as_deref() == Some(c) {
                " selected"
            } else {
                ""
            };
            let label = if c.is_empty() { "any class" } else { c };
            format!("<option value=\"{c}\"{sel}>{label}</option>")
        })
        .collect();
    format!(
        "<form method=\"get\" action=\"/console/dlq\" class=\"filters\">\
         <label>Kind <select name=\"kind\" id=\"kind\">{kinds}</select></label>\
         <label>Error class <select name=\"error_class\" id=\"error_class\">{classes}</select></label>\
         <label>Reason contains <input name=\"reason_contains\" id=\"reason_contains\" value=\"{}\"></label>\
         <button id=\"apply\">Filter</button></form>",
        esc(f.reason_contains.as_deref().unwrap_or(""))
    )
}

/// `GET /console/dlq`.
pub(crate) async fn page(State(state): State<ConsoleState>, RawQuery(query): RawQuery) -> Response {
    let form = Form::parse(query.unwrap_or_default().as_bytes());
    let kind = kind_of(&state, &form);
    let filter = filter_of(&form);
    let csrf = csrf_token(&state);
    let mut body = filter_form(&state, &kind, &filter);
    match dlq::list_matching(&state.console.config, &kind, &filter, LIST_LIMIT).await {
        Ok(letters) => body.push_str(&letters_form(&kind, &filter, &letters, &csrf)),
        Err(e) => body.push_str(&page::error_box("cannot read the dead-letter queue", &e)),
    }
    page::frame(
        "Dead letters",
        "/console/dlq",
        &csrf,
        form.get("flash"),
        &body,
    )
    .into_response()
}

fn letters_form(kind: &str, f: &Filter, letters: &[dlq::DeadLetter], csrf: &str) -> String {
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            let id = d.message_id.clone().unwrap_or_default();
            vec![
                format!("<input type=\"checkbox\" name=\"id\" value=\"{}\">", esc(&id)),
                format!(
                    "<a href=\"/console/dlq/{}/{}\" class=\"mono\">{}</a>",
                    q(kind),
                    q(&id),
                    esc(&id)
                ),
                d.attempt.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                esc(d.error_class.as_deref().unwrap_or("-")),
                format!("<span class=\"reason\">{}</span>", esc(d.error.as_deref().unwrap_or("-"))),
                when(d.first_attempt_at.as_deref()),
                format!(
                    "<button name=\"do\" value=\"requeue-one:{id}\" class=\"small\">Requeue</button> \
                     <button name=\"do\" value=\"discard-one:{id}\" class=\"small danger\">Discard</button>",
                    id = esc(&id)
                ),
            ]
        })
        .collect();
    let shown = letters.len();
    format!(
        "<form method=\"post\" action=\"/console/dlq/action\" id=\"letters\">{csrf}\
         <input type=\"hidden\" name=\"kind\" value=\"{kind}\">\
         <input type=\"hidden\" name=\"error_class\" value=\"{class}\">\
         <input type=\"hidden\" name=\"reason_contains\" value=\"{reason}\">\
         <p class=\"muted\" id=\"shown\">{shown} shown (at most {LIST_LIMIT})</p>{table}\
         <div class=\"actions\">\
         <button name=\"do\" value=\"requeue-selected\" data-confirm=\"Requeue the selected dead letters?\">Requeue selected</button>\
         <button name=\"do\" value=\"discard-selected\" class=\"danger\" data-confirm=\"Discard the selected dead letters for good?\">Discard selected</button>\
         <button name=\"do\" value=\"requeue-matching\" id=\"requeue-matching\" data-confirm=\"Requeue ALL dead letters of {kind} matching this filter?\">Requeue all matching</button>\
         <button name=\"do\" value=\"discard-matching\" id=\"discard-matching\" class=\"danger\" data-confirm=\"Discard ALL dead letters of {kind} matching this filter, for good?\">Discard all matching</button>\
         </div></form>",
        csrf = page::csrf_field(csrf),
        kind = esc(kind),
        class = esc(f.error_class.as_deref().unwrap_or("")),
        reason = esc(f.reason_contains.as_deref().unwrap_or("")),
        table = page::table(
            "dead-letters",
            &[
                "<input type=\"checkbox\" id=\"all\" title=\"select all\">",
                "Message",
                "Attempt",
                "Class",
                "Reason",
                "First attempt",
                ""
            ],
            &rows
        ),
    )
}

/// `GET /console/dlq/{kind}/{id}`: headers and body of one dead letter.
pub(crate) async fn open(
    State(state): State<ConsoleState>,
    Path((kind, id)): Path<(String, String)>,
) -> Response {
    let csrf = csrf_token(&state);
    if !state.console.config.worker.kinds.contains(&kind) {
        return page::frame(
            "Dead letter",
            "/console/dlq",
            &csrf,
            Some("unknown job kind"),
            "",
        )
        .into_response();
    }
    let body = match dlq::show(&state.console.config, &kind, &id).await {
        Ok(Some(o)) => opened(&kind, &o, &csrf),
        Ok(None) => format!(
            "<p id=\"gone\">No dead letter {} in {}: requeued or discarded?</p>",
            esc(&id),
            esc(&kind)
        ),
        Err(e) => page::error_box("cannot read the dead-letter queue", &e),
    };
    page::frame("Dead letter", "/console/dlq", &csrf, None, &body).into_response()
}

fn opened(kind: &str, o: &dlq::Opened, csrf: &str) -> String {
    let rows: Vec<Vec<String>> = o
        .headers
        .iter()
        .map(|(k, v)| vec![format!("<span class=\"mono\">{}</span>", esc(k)), esc(v)])
        .collect();
    let id = esc(o.letter.message_id.as_deref().unwrap_or(""));
    let cut = if o.truncated {
        format!(
            "<p class=\"muted\">body cut at {} KiB</p>",
            dlq::BODY_CAP / 1024
        )
    } else {
        String::new()
    };
    format!(
        "<p class=\"mono\">{id} · {bytes} bytes · <a href=\"/console/dlq?kind={qk}\">back to {k}</a></p>\
         <h2>Headers</h2>{headers}<h2>Body</h2>{cut}<pre id=\"body\">{body}</pre>\
         <form method=\"post\" action=\"/console/dlq/action\" class=\"actions\">{csrf}\
         <input type=\"hidden\" name=\"kind\" value=\"{k}\">\
         <button name=\"do\" value=\"requeue-one:{id}\">Requeue</button>\
         <button name=\"do\" value=\"discard-one:{id}\" class=\"danger\" data-confirm=\"Discard this dead letter for good?\">Discard</button></form>",
        bytes = o.letter.bytes,
        qk = q(kind),
        k = esc(kind),
        headers = page::table("headers", &["Header", "Value"], &rows),
        body = esc(&o.body),
        csrf = page::csrf_field(csrf),
    )
}

/// What a button asked for.
enum Scope {
    One(String),
    Selected(Vec<String>),
    Matching,
}

fn parse_do(form: &Form) -> Option<(Action, Scope)> {
    let raw = form.get("do")?;
    let (verb, rest) = raw.split_once('-')?;
    let action = match verb {
        "requeue" => Action::Requeue,
        "discard" => Action::Discard,
        _ => return None,
    };
    let scope = match rest.split_once(':') {
        Some(("one", id)) if !id.is_empty() => Scope::One(id.to_string()),
        None if rest == "selected" => Scope::Selected(form.all("id")),
        None if rest == "matching" => Scope::Matching,
        _ => return None,
    };
    Some((action, scope))
}

/// `POST /console/dlq/action`: requeue or discard, then back to the list
/// with how many moved.
pub(crate) async fn action(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let kind = kind_of(&state, &form);
    let filter = filter_of(&form);
    let Some((action, scope)) = parse_do(&form) else {
        return Redirect::to(&format!(
            "{}&flash={}",
            back(&kind, &filter),
            q("unknown action")
        ))
        .into_response();
    };
    let cfg = &state.console.config;
    let (what, result) = match &scope {
        Scope::One(id) => (
            "one",
            dlq::apply(cfg, &kind, &Filter::message(id), 1, action).await,
        ),
        Scope::Selected(ids) => {
            let mut n = Ok(0);
            for id in ids {
                match dlq::apply(cfg, &kind, &Filter::message(id), 1, action).await {
                    Ok(k) => n = n.map(|t| t + k),
                    Err(e) => {
                        n = Err(e);
                        break;
                    }
                }
            }
            ("selected", n)
        }
        Scope::Matching => (
            "matching",
            dlq::apply(cfg, &kind, &filter, usize::MAX, action).await,
        ),
    };
    let verb = if action == Action::Requeue {
        "requeued"
    } else {
        "discarded"
    };
    let flash = match result {
        Ok(n) => {
            tracing::info!(user = %who.user, via = who.via, dlq.kind = %kind, dlq.action = verb,
                dlq.scope = what, dlq.filter = ?filter, count = n, "console action");
            format!("{verb} {n} message(s)")
        }
        Err(e) => {
            tracing::warn!(user = %who.user, dlq.kind = %kind, dlq.action = verb, error = %e,
                "console action failed");
            format!("failed: {e}")
        }
    };
    Redirect::to(&format!("{}&flash={}", back(&kind, &filter), q(&flash))).into_response()
}
