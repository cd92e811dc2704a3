//! Statements of `webhook_subscriptions`: adding, listing, enabling,
//! removing, the reads of the handler and the push writer, and secret rotation
//! and re-sealing (`hookfleet migrate`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::{PgPool, Postgres, Transaction};

use crate::webhook::subscription::{Style, Subscription};

// The three subscription reads below select the same columns, `style` through
// the `Decode` impl of [`Style`] (`"style: Style"`); `query_as!` needs the list
// spelt in each literal.

/// The `style` column is text holding [`Style::as_str`]'s names: decoding
/// parses it, so the checked subscription reads fill [`Subscription::style`]
/// directly; an unknown name fails the read as a column decode error.
impl sqlx::Type<Postgres> for Style {
    fn type_info() -> PgTypeInfo {
        <String as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <String as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Style {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let raw = <&str as sqlx::Decode<'r, Postgres>>::decode(value)?;
        Ok(Style::parse(raw)?)
    }
}

/// A new subscription, as `webhook add` gives it.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    /// Repository glob.
    pub(crate) repository_pattern: String,
    /// Checked URL.
    pub(crate) url: String,
    /// HMAC secret, in its stored form (see [`crate::webhook::secrets::Keyring::seal`]).
    pub(crate) secret: Option<String>,
    /// Event categories.
    pub(crate) events: Vec<String>,
    /// Body format.
    pub(crate) content_type: String,
    /// Body shape and signature headers.
    pub(crate) style: Style,
}

/// Inserts a subscription; returns its id.
pub async fn insert_subscription(pool: &PgPool, s: &NewSubscription) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO webhook_subscriptions (repository_pattern, url, secret, events, content_type, \
                                            style) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        s.repository_pattern,
        s.url,
        s.secret,
        s.events.as_slice(),
        s.content_type,
        s.style.as_str(),
    )
    .fetch_one(pool)
    .await
}

/// Every subscription, by id.
pub async fn list_subscriptions(pool: &PgPool) -> Result<Vec<Subscription>, sqlx::Error> {
    sqlx::query_as!(
        Subscription,
        "SELECT id, repository_pattern, url, secret, previous_secret, \
                previous_secret_expires_at, style AS \"style: Style\", events, content_type, \
                active, consecutive_failures, disabled_reason \
         FROM webhook_subscriptions ORDER BY id"
    )
    .fetch_all(pool)
    .await
}

/// Active subscriptions (the push transaction filters them by pattern and event).
pub async fn active_subscriptions(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<Subscription>, sqlx::Error> {
    sqlx::query_as!(
        Subscription,
        "SELECT id, repository_pattern, url, secret, previous_secret, \
                previous_secret_expires_at, style AS \"style: Style\", events, content_type, \
                active, consecutive_failures, disabled_reason \
         FROM webhook_subscriptions WHERE active ORDER BY id"
    )
    .fetch_all(conn)
    .await
}

/// Deletes a subscription; `false` when there was none.
pub async fn remove_subscription(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!("DELETE FROM webhook_subscriptions WHERE id = $1", id)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Enables (resetting the failure count) or disables a subscription by hand;
/// `false` when there is none.
pub async fn set_active(pool: &PgPool, id: i64, active: bool) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE webhook_subscriptions SET active = $2, consecutive_failures = 0, \
             disabled_at = CASE WHEN $2 THEN NULL ELSE now() END, \
             disabled_reason = CASE WHEN $2 THEN NULL ELSE 'disabled by hand' END, \
             updated_at = now() \
         WHERE id = $1",
        id,
        active,
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Replaces a subscription's secret with `new` (stored form): the current one
/// becomes the previous one, signing until `overlap` from now (database
/// clock, as the handler compares with its own; both are NTP-synced in
/// practice). `false` when there is no such subscription.
pub async fn rotate_secret(
    pool: &PgPool,
    id: i64,
    new: &str,
    overlap: Duration,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "UPDATE webhook_subscriptions SET previous_secret = secret, \
             previous_secret_expires_at = now() + make_interval(secs => $3), \
             secret = $2, updated_at = now() \
         WHERE id = $1",
        id,
        new,
        overlap.as_secs_f64(),
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The stored secrets of every subscription that has one, locked for update
/// in `tx` (for re-encryption by `hookfleet migrate`): `(id, secret, previous)`.
pub async fn stored_secrets_for_update(
    tx: &mut Transaction<'static, Postgres>,
) -> Result<Vec<(i64, Option<String>, Option<String>)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT id, secret, previous_secret FROM webhook_subscriptions \
         WHERE secret IS NOT NULL OR previous_secret IS NOT NULL ORDER BY id FOR UPDATE",
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.secret, r.previous_secret))
        .collect())
}

/// Writes a subscription's stored secrets (both columns, as re-sealed).
pub async fn set_stored_secrets(
    tx: &mut Transaction<'static, Postgres>,
    id: i64,
    secret: Option<&str>,
    previous: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE webhook_subscriptions SET secret = $2, previous_secret = $3 WHERE id = $1",
        id,
        secret,
        previous,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Loads a subscription.
pub async fn load_subscription(
    pool: &PgPool,
    id: i64,
) -> Result<Option<Subscription>, sqlx::Error> {
    sqlx::query_as!(
        Subscription,
        "SELECT id, repository_pattern, url, secret, previous_secret, \
                previous_secret_expires_at, style AS \"style: Style\", events, content_type, \
                active, consecutive_failures, disabled_reason \
         FROM webhook_subscriptions WHERE id = $1",
        id,
    )
    .fetch_optional(pool)
    .await
}

/// A subscription with when it was created and last changed (for a ping).
pub async fn load_subscription_times(
    pool: &PgPool,
    id: i64,
) -> Result<Option<(Subscription, DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    let Some(sub) = load_subscription(pool, id).await? else {
        return Ok(None);
    };
    let times = sqlx::query!(
        "SELECT created_at, updated_at FROM webhook_subscriptions WHERE id = $1",
        id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(times.map(|t| (sub, t.created_at, t.updated_at)))
}
