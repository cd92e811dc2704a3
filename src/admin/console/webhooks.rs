//! The webhooks page: subscriptions (enable, disable, ping; add, remove and
//! rotate a secret in [`super::subscriptions`]; secrets never shown, URLs
//! redacted) and recent delivery attempts with their request and response
//! headers and bodies (as recorded, capped), filterable by subscription,
//! status and event, each with a redeliver button (through
//! [`crate::webhook::manage`], as `hookfleet webhook` does).

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, body::Bytes};

use super::auth::{Who, csrf_token};
use super::page::{self, Form, esc, q};
use super::state::ConsoleState;
use super::subscriptions;
use crate::amqp::topology::Names;
use crate::config::redact_url;
use crate::webhook::storage::{self, AttemptRow};
use crate::webhook::{manage, subscription::Subscription};

/// Attempts read per page view (filters apply to these).
pub(crate) const ATTEMPTS_READ: i64 = 500;
/// Attempts shown at most.
pub(crate) const ATTEMPTS_SHOWN: usize = 100;

/// `GET /console/webhooks`.
pub(crate) async fn page(State(state): State<ConsoleState>, RawQuery(query): RawQuery) -> Response {
    let form = Form::parse(query.unwrap_or_default().as_bytes());
    let csrf = csrf_token(&state);
    let pool = &state.console.pool;
    let mut body = String::from("<h2>Subscriptions</h2>");
    match storage::list_subscriptions(pool).await {
        Ok(subs) => body.push_str(&subscription_table(&subs, &csrf)),
        Err(e) => body.push_str(&page::error_box("cannot read subscriptions", &e)),
    }
    body.push_str(&subscriptions::add_form(&csrf));
    body.push_str(&super::guards::breakers_section());
    body.push_str("<h2>Recent deliveries</h2>");
    body.push_str(&filters(&form));
    let sub: Option<i64> = form.num("subscription");
    let outcome = form.get("status");
    let event = form.get("event");
    match storage::list_attempts(pool, sub, outcome == Some("failed"), ATTEMPTS_READ).await {
        Ok(rows) => {
            let rows: Vec<&AttemptRow> = rows
                .iter()
                .filter(|r| outcome.is_none_or(|o| o == "failed" || r.outcome == o))
                .filter(|r| event.is_none_or(|e| r.event_type.as_deref() == Some(e)))
                .take(ATTEMPTS_SHOWN)
                .collect();
            body.push_str(&attempts(&rows, &csrf));
        }
        Err(e) => body.push_str(&page::error_box("cannot read deliveries", &e)),
    }
    page::frame(
        "Webhooks",
        "/console/webhooks",
        &csrf,
        form.get("flash"),
        &body,
    )
    .into_response()
}

fn subscription_table(subs: &[Subscription], csrf: &str) -> String {
    let rows: Vec<Vec<String>> = subs
        .iter()
        .map(|s| {
            let (label, flip) = if s.active { ("active", "false") } else { ("disabled", "true") };
            let verb = if s.active { "Disable" } else { "Enable" };
            vec![
                s.id.to_string(),
                format!(
                    "<span class=\"pill {label}\" id=\"sub-{}-state\">{label}</span>{}",
                    s.id,
                    s.disabled_reason
                        .as_deref()
                        .map(|r| format!(" <span class=\"muted\">{}</span>", esc(r)))
                        .unwrap_or_default()
                ),
                esc(&s.repository_pattern),
                format!("<span class=\"mono\">{}</span>", esc(&redact_url(&s.url))),
                esc(&s.events.join(", ")),
                if s.secret.is_some() { "yes".into() } else { "no".into() },
                s.consecutive_failures.to_string(),
                format!(
                    "<form method=\"post\" action=\"/console/webhooks/active\" class=\"inline\">{}\
                     <input type=\"hidden\" name=\"id\" value=\"{id}\">\
                     <button name=\"active\" value=\"{flip}\" id=\"sub-{id}-toggle\" class=\"small\">{verb}</button>\
                     <button name=\"active\" value=\"ping\" id=\"sub-{id}-ping\" class=\"small\">Ping</button></form>{manage}",
                    page::csrf_field(csrf),
                    id = s.id,
                    manage = subscriptions::manage(s.id, csrf),
                ),
            ]
        })
        .collect();
    page::table(
        "subscriptions",
        &[
            "Id",
            "State",
            "Repositories",
            "URL",
            "Events",
            "Secret",
            "Failures",
            "",
        ],
        &rows,
    )
}

fn filters(form: &Form) -> String {
    let statuses: String = ["", "success", "retry", "failed"]
        .iter()
        .map(|s| {
            let sel = if form.get("status") == Some(*s) {
                " selected"
            } else {
                ""
            };
            let label = if s.is_empty() { "any" } else { s };
            format!("<option value=\"{s}\"{sel}>{label}</option>")
        })
        .collect();
    format!(
        "<form method=\"get\" action=\"/console/webhooks\" class=\"filters\">\
         <label>Subscription <input name=\"subscription\" id=\"f-subscription\" value=\"{}\" inputmode=\"numeric\"></label>\
         <label>Status <select name=\"status\" id=\"f-status\">{statuses}</select></label>\
         <label>Event <input name=\"event\" id=\"f-event\" value=\"{}\"></label>\
         <button id=\"f-apply\">Filter</button></form>",
        esc(form.get("subscription").unwrap_or("")),
        esc(form.get("event").unwrap_or("")),
    )
}

fn attempts(rows: &[&AttemptRow], csrf: &str) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let headers = serde_json::to_string_pretty(&r.request_headers).unwrap_or_default();
            let response_headers = r.response_headers.as_ref().map_or_else(
                || "(none recorded)".to_string(),
                |h| serde_json::to_string_pretty(h).unwrap_or_default(),
            );
            vec![
                r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                format!(
                    "<details id=\"attempt-{id}\"><summary class=\"mono\">{d}</summary>\
                     <p class=\"mono\">{url}</p><h3>Request headers</h3><pre class=\"req-headers\">{h}</pre>\
                     <h3>Request body</h3><pre class=\"req-body\">{req}</pre>\
                     <h3>Response headers</h3><pre class=\"resp-headers\">{rh}</pre>\
                     <h3>Response body</h3><pre class=\"resp-body\">{resp}</pre></details>",
                    id = r.id,
                    d = r.delivery_id,
                    url = esc(&redact_url(&r.url)),
                    h = esc(&headers),
                    req = esc(&pretty(r.request_body.as_deref().unwrap_or("(none recorded)"))),
                    rh = esc(&response_headers),
                    resp = esc(r.response_excerpt.as_deref().unwrap_or("")),
                ),
                r.subscription_id.to_string(),
                esc(r.event_type.as_deref().unwrap_or("-")),
                r.attempt.to_string(),
                format!("<span class=\"pill {o}\">{o}</span>", o = esc(&r.outcome)),
                r.status.map_or("-".into(), |s| s.to_string()),
                format!("{} ms", r.duration_ms),
                format!("<span class=\"reason\">{}</span>", esc(r.error.as_deref().unwrap_or(""))),
                format!(
                    "<form method=\"post\" action=\"/console/webhooks/redeliver\" class=\"inline\">{}\
                     <button name=\"delivery_id\" value=\"{}\" class=\"small redeliver\">Redeliver</button></form>",
                    page::csrf_field(csrf),
                    r.delivery_id
                ),
            ]
        })
        .collect();
    page::table(
        "deliveries",
        &[
            "When", "Delivery", "Sub", "Event", "Attempt", "Outcome", "Status", "Took", "Error", "",
        ],
        &rows,
    )
}

/// `text` re-indented when it is JSON (bodies are), as it came otherwise
/// (including a body cut at its cap, which no longer parses).
fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

fn back(flash: &str) -> Response {
    Redirect::to(&format!("/console/webhooks?flash={}", q(flash))).into_response()
}

/// `POST /console/webhooks/active`: `active=true|false` enables or disables
/// subscription `id`; `active=ping` sends it a ping.
pub async fn set_active(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let Some(id) = form.num::<i64>("id") else {
        return back("no subscription given");
    };
    let pool = &state.console.pool;
    let names = Names::new(&state.console.config.amqp.prefix);
    let (what, result) = match form.get("active") {
        Some("ping") => (
            "ping",
            manage::ping(pool, &names, id, Some(who.user.clone()))
                .await
                .map(|d| format!("ping {d} enqueued")),
        ),
        Some("true") => (
            "enable",
            manage::set_active(pool, id, true)
                .await
                .map(|()| format!("enabled subscription {id}")),
        ),
        _ => (
            "disable",
            manage::set_active(pool, id, false)
                .await
                .map(|()| format!("disabled subscription {id}")),
        ),
    };
    match result {
        Ok(m) => {
            tracing::info!(user = %who.user, via = who.via, webhook.subscription = id, action = what, count = 1, "console action: webhook");
            back(&m)
        }
        Err(e) => back(&format!("failed: {e}")),
    }
}

/// `POST /console/webhooks/redeliver`: enqueues delivery `delivery_id` again.
pub(crate) async fn redeliver(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let Some(id) = form
        .get("delivery_id")
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
    else {
        return back("no delivery given");
    };
    let names = Names::new(&state.console.config.amqp.prefix);
    match manage::redeliver(&state.console.pool, &names, id).await {
        Ok(job) => {
            tracing::info!(user = %who.user, via = who.via, webhook.delivery = %id, count = 1, "console action: webhook redeliver");
            back(&format!("redelivery of {id} enqueued (job {job})"))
        }
        Err(e) => back(&format!("failed: {e}")),
    }
}
