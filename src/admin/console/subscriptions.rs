//! Managing webhook subscriptions from the webhooks page: add, remove and
//! rotate a secret, through [`crate::webhook::manage`] as `hookfleet webhook
//! add|remove|rotate-secret` do (same validation, same sealing, same ping
//! after add).
//!
//! Secrets are never shown, with one exception the CLI makes too: a secret
//! the server generated (add in the standard style without one, rotate without
//! one) is shown once, in the response to the POST that generated it. That
//! response is rendered directly, never a redirect (a URL would carry the
//! secret into history and access logs), and is marked `no-store`. Neither
//! secret nor URL credentials reach the log.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, body::Bytes, extract::State};

use super::auth::{Who, csrf_token};
use super::page::{self, Form, esc, q};
use super::state::ConsoleState;
use crate::amqp::topology::Names;
use crate::config::redact_url;
use crate::webhook::manage::{self, AddRequest};
use crate::webhook::subscription::Style;

/// Said when a secret was stored without `webhook.secret_key` (as the CLI warns).
const PLAINTEXT: &str = "webhook.secret_key is not set: the secret is stored in plaintext \
                         (set it and run `hookfleet migrate` to encrypt)";

/// The add form (its fields are `webhook add`'s flags).
pub(crate) fn add_form(csrf: &str) -> String {
    let styles: String = Style::NAMES
        .iter()
        .map(|s| format!("<option value=\"{s}\">{s}</option>"))
        .collect();
    format!(
        "<details id=\"add-subscription\"><summary>Add a subscription</summary>\
         <form method=\"post\" action=\"/console/webhooks/add\" class=\"filters\">{}\
         <label>Repositories (glob) <input name=\"repo\" id=\"a-repo\" required placeholder=\"org/*\"></label>\
         <label>URL <input name=\"url\" id=\"a-url\" required placeholder=\"https://…\"></label>\
         <label>Events <input name=\"events\" id=\"a-events\" value=\"push\"></label>\
         <label>Style <select name=\"style\" id=\"a-style\">{styles}</select></label>\
         <label>Secret (blank: generated for standard) \
         <input type=\"password\" name=\"secret\" id=\"a-secret\" autocomplete=\"off\"></label>\
         <button id=\"a-add\">Add</button></form></details>",
        page::csrf_field(csrf)
    )
}

/// The remove and rotate controls of subscription `id`.
pub(crate) fn manage(id: i64, csrf: &str) -> String {
    format!(
        "<details><summary id=\"sub-{id}-manage\">Manage</summary>\
         <form method=\"post\" action=\"/console/webhooks/rotate\" class=\"filters\">{c}\
         <input type=\"hidden\" name=\"id\" value=\"{id}\">\
         <label>New secret (blank: generate) <input type=\"password\" name=\"secret\" id=\"sub-{id}-secret\" autocomplete=\"off\"></label>\
         <label>Old one valid for <input name=\"overlap\" id=\"sub-{id}-overlap\" placeholder=\"webhook.secret_overlap\"></label>\
         <button id=\"sub-{id}-rotate\" class=\"small\" data-confirm=\"Rotate the secret of subscription {id}?\">Rotate secret</button></form>\
         <form method=\"post\" action=\"/console/webhooks/remove\" class=\"inline\">{c}\
         <button name=\"id\" value=\"{id}\" id=\"sub-{id}-remove\" class=\"small danger\" \
         data-confirm=\"Remove subscription {id}? Its pending deliveries will fail.\">Remove</button></form></details>",
        c = page::csrf_field(csrf)
    )
}

fn back(flash: &str) -> Response {
    Redirect::to(&format!("/console/webhooks?flash={}", q(flash))).into_response()
}

/// A page showing what an action did, with a generated secret shown this once.
fn shown_once(state: &ConsoleState, title: &str, lines: &[String], secret: &str) -> Response {
    let items: String = lines.iter().map(|l| format!("<p>{}</p>", esc(l))).collect();
    let body = format!(
        "{items}<p>The new secret, shown this once (it is not stored in the clear and \
         cannot be shown again): hand it to the receiver now.</p>\
         <pre id=\"new-secret\">{}</pre><p><a href=\"/console/webhooks\" id=\"continue\">Back to webhooks</a></p>",
        esc(secret)
    );
    let mut res =
        page::frame(title, "/console/webhooks", &csrf_token(state), None, &body).into_response();
    if let Ok(v) = "no-store".parse() {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    res
}

/// `POST /console/webhooks/add`: as `webhook add`, then the ping it sends.
pub(crate) async fn add(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let style = match Style::parse(form.get("style").unwrap_or("github")) {
        Ok(s) => s,
        Err(e) => return back(&format!("failed: invalid style: {e}")),
    };
    let r = AddRequest {
        repo: form.get("repo").unwrap_or("").to_string(),
        url: form.get("url").unwrap_or("").to_string(),
        secret: form.get("secret").map(str::to_string),
        events: form.get("events").unwrap_or("push").to_string(),
        content_type: "json".into(),
        style,
    };
    let pool = &state.console.pool;
    let added = match manage::add_checked(pool, &r, &state.console.config.webhook).await {
        Ok(a) => a,
        Err(e) => return back(&format!("failed: {e}")),
    };
    tracing::info!(user = %who.user, via = who.via, webhook.subscription = added.id,
        webhook.url = %redact_url(&r.url), count = 1, "console action: webhook add");
    let mut lines = vec![format!("added subscription {}", added.id)];
    lines.extend(added.warnings.iter().map(|w| format!("warning: {w}")));
    if added.stored_plaintext {
        lines.push(format!("warning: {PLAINTEXT}"));
    }
    // As the CLI (and GitHub when a hook is created): a ping.
    let names = Names::new(&state.console.config.amqp.prefix);
    match manage::ping(pool, &names, added.id, Some(who.user.clone())).await {
        Ok(d) => lines.push(format!("ping delivery {d} enqueued")),
        Err(e) => lines.push(format!("the ping failed: {e}")),
    }
    match &added.generated_secret {
        Some(secret) => shown_once(&state, "Subscription added", &lines, secret),
        None => back(&lines.join("; ")),
    }
}

/// `POST /console/webhooks/remove`: as `webhook remove`.
pub(crate) async fn remove(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let Some(id) = Form::parse(&body).num::<i64>("id") else {
        return back("no subscription given");
    };
    match manage::remove(&state.console.pool, id).await {
        Ok(()) => {
            tracing::info!(user = %who.user, via = who.via, webhook.subscription = id, count = 1,
                "console action: webhook remove");
            back(&format!("removed subscription {id}"))
        }
        Err(e) => back(&format!("failed: {e}")),
    }
}

/// `POST /console/webhooks/rotate`: as `webhook rotate-secret` (`secret`
/// blank generates one; `overlap` blank is `webhook.secret_overlap`).
pub(crate) async fn rotate(
    State(state): State<ConsoleState>,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let Some(id) = form.num::<i64>("id") else {
        return back("no subscription given");
    };
    let cfg = &state.console.config.webhook;
    let overlap = match form.get("overlap").map(humantime::parse_duration) {
        None => cfg.secret_overlap,
        Some(Ok(d)) => d,
        Some(Err(e)) => return back(&format!("failed: invalid overlap: {e}")),
    };
    let result = match manage::keyring(cfg) {
        Ok(keys) => {
            let secret = form.get("secret").map(str::to_string);
            manage::rotate_secret(&state.console.pool, &keys, id, secret, overlap).await
        }
        Err(e) => Err(e),
    };
    let r = match result {
        Ok(r) => r,
        Err(e) => return back(&format!("failed: {e}")),
    };
    tracing::info!(user = %who.user, via = who.via, webhook.subscription = id, count = 1,
        generated = r.generated_secret.is_some(), "console action: webhook rotate-secret");
    let mut lines = vec![format!(
        "rotated the secret of subscription {id}; the previous one stays valid for {}",
        humantime::format_duration(overlap)
    )];
    if r.stored_plaintext {
        lines.push(format!("warning: {PLAINTEXT}"));
    }
    match &r.generated_secret {
        Some(secret) => shown_once(&state, "Secret rotated", &lines, secret),
        None => back(&lines.join("; ")),
    }
}
