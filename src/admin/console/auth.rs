//! Console access: the token as a bearer header or, after the login form, as
//! a session cookie; a CSRF token on every mutating request.
//!
//! Stateless on purpose (any replica accepts a session, nothing to store):
//! the session cookie is HMAC-SHA256(token, "session") and the CSRF token
//! HMAC-SHA256(token, "csrf"), so neither reveals the token and changing the
//! token ends every session. The cookie is HttpOnly and SameSite=Strict; the
//! CSRF token is also required with a bearer header, so one rule covers all
//! POSTs. "Who" is the name given at login (or `X-Console-User`), for the log:
//! the token is shared, so this is attribution, not authentication.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::page::{self, Form};
use super::state::ConsoleState;

/// Session cookie name.
pub(crate) const SESSION_COOKIE: &str = "hookfleet_console";
/// Cookie with the name given at login, for the action log.
pub(crate) const USER_COOKIE: &str = "hookfleet_console_user";
/// Header carrying the CSRF token (forms send the `csrf` field instead).
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// Header naming the operator when the bearer token is used.
pub(crate) const USER_HEADER: &str = "x-console-user";
/// Form bodies larger than this are refused (they are a few fields).
pub(crate) const MAX_FORM_BYTES: usize = 64 * 1024;
/// Longest operator name kept for the log.
const MAX_USER_LEN: usize = 40;

/// Who made a request, for the action log.
#[derive(Clone, Debug)]
pub(crate) struct Who {
    /// The name given at login or in `X-Console-User` (`anonymous` when none).
    pub(crate) user: String,
    /// `cookie` or `bearer`.
    pub(crate) via: &'static str,
}

fn mac(token: &str, purpose: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(purpose.as_bytes());
    m
}

fn derived(token: &str, purpose: &str) -> String {
    hex::encode(mac(token, purpose).finalize().into_bytes())
}

/// Constant-time check of `given` (hex) against HMAC(token, purpose).
fn verify(token: &str, purpose: &str, given: &str) -> bool {
    hex::decode(given.trim()).is_ok_and(|b| mac(token, purpose).verify_slice(&b).is_ok())
}

/// Constant-time comparison of a presented token with the configured one.
fn token_ok(token: &str, given: &str) -> bool {
    // Compare MACs of both, so the time does not depend on where they differ.
    let want = mac(token, "token").finalize().into_bytes();
    mac(given, "token").verify_slice(&want).is_ok() && !given.is_empty()
}

/// The CSRF token pages embed in their forms.
pub(crate) fn csrf_token(state: &ConsoleState) -> String {
    derived(state.console.token.expose(), "csrf")
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn clean_user(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        .take(MAX_USER_LEN)
        .collect();
    if s.is_empty() { "anonymous".into() } else { s }
}

/// Who presents valid credentials, if anyone.
fn authenticate(state: &ConsoleState, headers: &HeaderMap) -> Option<Who> {
    let token = state.console.token.expose();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(b) = bearer {
        return token_ok(token, b.trim()).then(|| Who {
            user: clean_user(
                headers
                    .get(USER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            ),
            via: "bearer",
        });
    }
    let session = cookie(headers, SESSION_COOKIE)?;
    verify(token, "session", session).then(|| Who {
        user: clean_user(cookie(headers, USER_COOKIE).unwrap_or("")),
        via: "cookie",
    })
}

/// Middleware on every console route but login and assets: 401 without valid
/// credentials, 403 for a POST without the CSRF token. Puts [`Who`] in the
/// request's extensions.
pub(crate) async fn require(
    State(state): State<ConsoleState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(who) = authenticate(&state, req.headers()) else {
        tracing::info!(path = %req.uri().path(), "console: request without valid credentials refused");
        return (StatusCode::UNAUTHORIZED, page::unauthorized()).into_response();
    };
    let mut req = if req.method() == Method::POST {
        let (parts, body) = req.into_parts();
        let Ok(bytes) = to_bytes(body, MAX_FORM_BYTES).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "form too large\n").into_response();
        };
        let token = state.console.token.expose();
        let from_header = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let given = from_header.or_else(|| Form::parse(&bytes).get("csrf").map(str::to_string));
        if !given.is_some_and(|g| verify(token, "csrf", &g)) {
            tracing::warn!(user = %who.user, via = who.via, path = %parts.uri.path(),
                "console: POST without a valid CSRF token refused");
            return (StatusCode::FORBIDDEN, page::forbidden()).into_response();
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        req
    };
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// `GET /console/login`.
pub(crate) async fn login_form() -> Response {
    page::login(None).into_response()
}

/// `POST /console/login`: checks the token, sets the session cookie.
pub(crate) async fn login(State(state): State<ConsoleState>, body: axum::body::Bytes) -> Response {
    let form = Form::parse(&body);
    let token = state.console.token.expose();
    if !token_ok(token, form.get("token").unwrap_or("")) {
        tracing::warn!("console: login with a wrong token refused");
        return (StatusCode::UNAUTHORIZED, page::login(Some("wrong token"))).into_response();
    }
    let user = clean_user(form.get("user").unwrap_or(""));
    tracing::info!(user = %user, "console: login");
    let attrs = "Path=/console; HttpOnly; SameSite=Strict";
    let mut res = Redirect::to("/console/").into_response();
    let session = format!("{SESSION_COOKIE}={}; {attrs}", derived(token, "session"));
    let who = format!("{USER_COOKIE}={user}; {attrs}");
    for c in [session, who] {
        if let Ok(v) = c.parse() {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

/// `POST /console/logout`: clears the cookies.
pub(crate) async fn logout() -> Response {
    let mut res = Redirect::to("/console/login").into_response();
    for name in [SESSION_COOKIE, USER_COOKIE] {
        let c = format!("{name}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
        if let Ok(v) = c.parse() {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_tokens_verify_and_differ_by_purpose() {
        let s = derived("t0ken", "session");
        assert!(verify("t0ken", "session", &s));
        assert!(!verify("t0ken", "csrf", &s));
        assert!(!verify("other", "session", &s));
        assert!(!verify("t0ken", "session", "zz"));
    }

    #[test]
    fn token_check_refuses_empty_and_wrong() {
        assert!(token_ok("abc", "abc"));
        assert!(!token_ok("abc", "abd"));
        assert!(!token_ok("abc", ""));
    }

    #[test]
    fn user_names_are_cleaned_for_the_log() {
        assert_eq!(clean_user("ana\n<b>"), "anab");
        assert_eq!(clean_user(""), "anonymous");
    }
}
