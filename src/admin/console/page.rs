//! HTML building blocks of the console: escaping, the page frame with its
//! navigation, small tables, and the form-body parser.
//!
//! Pages are rendered on the server as plain HTML (forms post and redirect),
//! so every action works without JavaScript; `console.js` only adds the live
//! overview, confirmations and select-all.

use std::fmt::Write as _;

use axum::response::Html;

/// Escapes text for HTML element content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string value.
pub(crate) fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A parsed `application/x-www-form-urlencoded` body or query (repeated keys kept).
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    /// Parses `bytes`.
    pub(crate) fn parse(bytes: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(bytes).into_owned().collect())
    }
    /// The first value of `key`, if present and not blank.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.trim().is_empty())
            .map(|(_, v)| v.trim())
    }
    /// Every non-blank value of `key`.
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, v)| k == key && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
    /// `key` parsed as a number, if present.
    pub(crate) fn num<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.parse().ok())
    }
}

/// The navigation entries: path and label.
const NAV: [(&str, &str); 6] = [
    ("/console", "Overview"),
    ("/console/dlq", "Dead letters"),
    ("/console/outbox", "Outbox"),
    ("/console/webhooks", "Webhooks"),
    ("/console/guards", "Guards"),
    ("/console/jobs", "In flight"),
];

/// A full page: head, navigation (with `active` marked), an optional flash
/// message, then `body`. `csrf` goes into a meta tag for the script.
pub(crate) fn frame(
    title: &str,
    active: &str,
    csrf: &str,
    flash: Option<&str>,
    body: &str,
) -> Html<String> {
    let mut nav = String::new();
    for (href, label) in NAV {
        let cls = if href == active { " class=\"on\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{cls}>{label}</a>");
    }
    let flash = flash
        .map(|f| format!("<p class=\"flash\" id=\"flash\">{}</p>", esc(f)))
        .unwrap_or_default();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf\" content=\"{csrf}\">\
         <title>{t} · hookfleet</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         </head><body><header><strong>hookfleet</strong><nav>{nav}</nav>\
         <form method=\"post\" action=\"/console/logout\" class=\"logout\">{hidden}\
         <button>Sign out</button></form></header><main><h1>{t}</h1>{flash}{body}</main>\
         <script src=\"/console/assets/console.js\"></script></body></html>",
        t = esc(title),
        hidden = csrf_field(csrf),
    ))
}

/// The hidden CSRF field every form carries.
pub(crate) fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">")
}

/// A bare page (login, errors): no navigation.
fn bare(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · hookfleet</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         </head><body><main class=\"narrow\"><h1>{t}</h1>{body}</main></body></html>",
        t = esc(title)
    ))
}

/// The login form, with an error when the last try failed.
pub(crate) fn login(error: Option<&str>) -> Html<String> {
    let err = error
        .map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    bare(
        "Sign in",
        &format!(
            "{err}<form method=\"post\" action=\"/console/login\" class=\"stack\">\
             <label>Console token <input type=\"password\" name=\"token\" id=\"token\" \
             autocomplete=\"current-password\" required></label>\
             <label>Your name (for the action log) <input name=\"user\" id=\"user\"></label>\
             <button id=\"signin\">Sign in</button></form>"
        ),
    )
}

/// 401 body.
pub(crate) fn unauthorized() -> Html<String> {
    bare(
        "Sign in required",
        "<p id=\"denied\">This page needs the console token.</p>\
         <p><a href=\"/console/login\">Sign in</a></p>",
    )
}

/// 403 body.
pub(crate) fn forbidden() -> Html<String> {
    bare(
        "Refused",
        "<p id=\"denied\">This action needs a valid CSRF token: reload the page and try again.</p>",
    )
}

/// A table from a header row and rows of already-escaped cells.
pub(crate) fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("<div class=\"scroll\"><table id=\"{id}\"><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{h}</th>");
    }
    s.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            s,
            "<tr><td colspan=\"{}\" class=\"muted\">nothing here</td></tr>",
            head.len()
        );
    }
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            let _ = write!(s, "<td>{c}</td>");
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table></div>");
    s
}

/// An error box for a failed backend call (broker or database), text escaped.
pub(crate) fn error_box(what: &str, e: &dyn std::fmt::Display) -> String {
    format!(
        "<p class=\"error\">{}: {}</p>",
        esc(what),
        esc(&e.to_string())
    )
}
