//! Every SQL statement of the webhook tables (`webhook_subscriptions`,
//! `webhook_deliveries`, `webhook_attempts`).
//!
//! Owns the queries: subscription management, delivery rows written with the push
//! (folded into its statement), the handler's load, attempt recording with the failure count and
//! auto-disable (one short transaction per attempt), listing and pruning; and
//! the one read of `pushes` [`super::manage`] needs (which repositories exist, to
//! check a subscription's pattern). It never makes HTTP requests and never
//! decides policy: callers pass thresholds in.
//!
//! One file per table: `subscriptions.rs` (management, the handler's and the
//! push writer's reads, secret rotation and re-sealing), `deliveries.rs` (rows
//! written with the push, the handler's load) and `attempts.rs` (recording with
//! the failure count and auto-disable, listing, pruning). Their items are
//! re-exported here, so callers name `webhook::storage::X` whatever file holds
//! it; the read of `pushes` is below.
//!
//! Fixed statements are `sqlx::query!` and friends, checked at build time against
//! the schema (offline data in `.sqlx/`, `scripts/sqlx-prepare`), the
//! subscription reads too (their `style` column decodes through the `Decode`
//! impl of [`Style`](crate::webhook::subscription::Style) in `subscriptions.rs`).
//! Built at run time: only the delivery array insert
//! ([`DeliveryArrays`], a crate-private fragment the push statement folds in; it
//! numbers its parameters from one base).

mod attempts;
mod deliveries;
mod subscriptions;

use std::time::Duration;

use sqlx::PgPool;

pub use attempts::{
    AttemptRow, NewAttempt, REASON_FAILURES, REASON_GONE, Recorded, list_attempts, prune_batch,
    record_attempt, succeeded,
};
pub(crate) use deliveries::{DELIVERY_PARAMS, DeliveryArrays};
pub use deliveries::{DeliveryRow, NewDelivery, insert_deliveries, load_delivery};
pub use subscriptions::{
    NewSubscription, active_subscriptions, insert_subscription, list_subscriptions,
    load_subscription, load_subscription_times, remove_subscription, rotate_secret, set_active,
    set_stored_secrets, stored_secrets_for_update,
};

/// Repositories pushes have named (pushed within `within` when given), with
/// their push counts, the most recently pushed first, at most `limit`.
pub(crate) async fn pushed_repositories(
    pool: &PgPool,
    within: Option<Duration>,
    limit: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let secs = within.map(|d| d.as_secs_f64());
    let rows = sqlx::query!(
        "SELECT repository, count(*) AS \"pushes!\" FROM pushes \
         WHERE $1::float8 IS NULL OR pushed_at > now() - make_interval(secs => $1::float8) \
         GROUP BY repository ORDER BY max(pushed_at) DESC LIMIT $2",
        secs,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.repository, r.pushes)).collect())
}
