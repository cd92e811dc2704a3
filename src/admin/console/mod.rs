//! The operator console: HTML pages under `/console` on the admin port.
//!
//! Owns the console's routes, its access control and its embedded assets (no
//! CDN, no build step). Every page and action needs `admin.console_token`
//! ([`auth`]); without a token configured the console is off (404). It acts
//! through the same library functions as the CLI: [`crate::dlq`] for dead
//! letters, [`crate::outbox::replay`] and [`crate::outbox::status`] for the
//! outbox, [`crate::webhook::manage`] and [`crate::webhook::storage`] for
//! webhooks, [`crate::guard::pause`] for paused kinds, so the page and
//! `hookfleet dlq|outbox|webhook|pause` cannot disagree.
//! Every action is logged with who, what and how many (`console action`).

mod auth;
mod dlq;
mod guards;
mod outbox;
mod outbox_actions;
mod overview;
mod page;
mod relay_rate;
mod replay_store;
mod replay_task;
mod state;
mod subscriptions;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::health::Health;
use crate::inflight::InFlight;
pub(crate) use state::Console;
use state::ConsoleState;

/// The console's routes, all under `/console` (full paths, so `/console` and
/// `/console/` both reach the overview): 404 everywhere when the process has
/// no console (no token configured). The routes carry their own state, so they
/// merge into the admin server's router whatever its state type `S` is.
pub(crate) fn router<S>(
    console: Option<Arc<Console>>,
    health: &Arc<Health>,
    inflight: &Arc<InFlight>,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let Some(console) = console else {
        return Router::new()
            .route("/console", get(off))
            .route("/console/{*rest}", get(off).post(off));
    };
    let state = ConsoleState {
        health: health.clone(),
        inflight: inflight.clone(),
        console,
    };
    let guarded = Router::new()
        .route("/console", get(overview::page))
        .route("/console/", get(overview::page))
        .route("/console/api/overview", get(overview::api))
        .route("/console/jobs", get(overview::jobs))
        .route("/console/dlq", get(dlq::page))
        .route("/console/dlq/{kind}/{id}", get(dlq::open))
        .route("/console/dlq/action", post(dlq::action))
        .route("/console/outbox", get(outbox::page))
        .route("/console/outbox/replay", post(outbox_actions::replay))
        .route("/console/api/replay", get(outbox::progress))
        .route("/console/webhooks", get(webhooks::page))
        .route("/console/webhooks/active", post(webhooks::set_active))
        .route("/console/webhooks/redeliver", post(webhooks::redeliver))
        .route("/console/webhooks/add", post(subscriptions::add))
        .route("/console/webhooks/remove", post(subscriptions::remove))
        .route("/console/webhooks/rotate", post(subscriptions::rotate))
        .route("/console/guards", get(guards::page))
        .route("/console/guards/pause", post(guards::set_paused))
        .route("/console/logout", post(auth::logout))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ));
    let open = Router::new()
        .route("/console/login", get(auth::login_form).post(auth::login))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js));
    guarded.merge(open).with_state(state)
}

async fn off() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "the console is off: set admin.console_token to turn it on\n",
    )
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}
