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
//! Fixed statements are `sqlx::query!` and friends, checked at build time against
//! the schema (offline data in `.sqlx/`, `scripts/sqlx-prepare`), the
//! subscription reads too ([`Subscription::style`] decodes through its `Decode`
//! impl below). Built at run time: only the delivery array insert
//! ([`DeliveryArrays`], a crate-private fragment the push statement folds in; it
//! numbers its parameters from one base).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::subscription::{Style, Subscription};
use crate::outbox::storage::Owned;

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
    pub repository_pattern: String,
    /// Checked URL.
    pub url: String,
    /// HMAC secret, in its stored form (see [`super::secrets::Keyring::seal`]).
    pub secret: Option<String>,
    /// Event categories.
    pub events: Vec<String>,
    /// Body format.
    pub content_type: String,
    /// Body shape and signature headers.
    pub style: Style,
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

/// One delivery to create in the push transaction.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Stable across retries and redeliveries.
    pub delivery_id: Uuid,
    /// Target subscription.
    pub subscription_id: i64,
    /// hookfleet event type (`git.push`...).
    pub event_type: String,
    /// The push id.
    pub correlation_id: Option<String>,
    /// The body to POST.
    pub payload: serde_json::Value,
}

/// The parameter arrays of a delivery insert, so the insert can run alone
/// ([`insert_deliveries`]) or be folded into the push handler's one statement
/// ([`crate::push::record`]). One definition of the SQL either way.
#[derive(Default)]
pub(crate) struct DeliveryArrays {
    ids: Vec<Uuid>,
    subs: Vec<i64>,
    types: Vec<String>,
    corr: Vec<Option<String>>,
    payloads: Vec<serde_json::Value>,
}

/// How many parameters [`DeliveryArrays::insert_sql`] uses.
pub(crate) const DELIVERY_PARAMS: usize = 5;

impl DeliveryArrays {
    /// The arrays of `rows`.
    pub(crate) fn new(rows: &[NewDelivery]) -> Self {
        let mut a = DeliveryArrays::default();
        a.extend(rows);
        a
    }

    /// Appends `rows`.
    pub(crate) fn extend(&mut self, rows: &[NewDelivery]) {
        for r in rows {
            self.ids.push(r.delivery_id);
            self.subs.push(r.subscription_id);
            self.types.push(r.event_type.clone());
            self.corr.push(r.correlation_id.clone());
            self.payloads.push(r.payload.clone());
        }
    }

    /// The INSERT reading the arrays from parameters `$first` to
    /// `$first + DELIVERY_PARAMS - 1`, every row, or with `owned` only the rows
    /// of some owners (see [`Owned`]); `join` (e.g. `"lock, "`) is put in front
    /// of the UNNEST in the FROM list, so rows are produced only after it.
    pub(crate) fn insert_sql(first: usize, join: &str, owned: Option<Owned<'_>>) -> String {
        let [i, s, t, c, p] = std::array::from_fn::<usize, DELIVERY_PARAMS, _>(|k| first + k);
        let (owner_col, owner_alias, filter) = Owned::parts(owned);
        format!(
            "INSERT INTO webhook_deliveries (delivery_id, subscription_id, event_type, \
                                             correlation_id, payload) \
             SELECT d.i, d.s, d.t, d.c, d.p \
             FROM {join}UNNEST(${i}::uuid[], ${s}::bigint[], ${t}::text[], ${c}::text[], \
                         ${p}::jsonb[]{owner_col}) AS d(i, s, t, c, p{owner_alias}) \
             {filter}"
        )
    }

    /// Binds the arrays (in [`Self::insert_sql`]'s parameter order) to `q`.
    pub(crate) fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.ids)
            .bind(self.subs)
            .bind(self.types)
            .bind(self.corr)
            .bind(self.payloads)
    }
}

/// Inserts delivery rows with one statement.
pub async fn insert_deliveries(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[NewDelivery],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| DeliveryArrays::insert_sql(1, "", None));
    DeliveryArrays::new(rows)
        .bind(sqlx::query(&SQL))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A delivery with its subscription, as the handler needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    /// Delivery id.
    pub delivery_id: Uuid,
    /// Subscription id.
    pub subscription_id: i64,
    /// hookfleet event type.
    pub event_type: String,
    /// Push id.
    pub correlation_id: Option<String>,
    /// Body.
    pub payload: serde_json::Value,
    /// When the delivery was written: in the push's transaction, so the time
    /// of the event (the Standard Webhooks payload's `timestamp`).
    pub created_at: DateTime<Utc>,
}

/// Loads a delivery.
pub async fn load_delivery(pool: &PgPool, id: Uuid) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as!(
        DeliveryRow,
        "SELECT delivery_id, subscription_id, event_type, correlation_id, payload, created_at \
         FROM webhook_deliveries WHERE delivery_id = $1",
        id,
    )
    .fetch_optional(pool)
    .await
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

/// Whether a successful attempt exists for the delivery (any message, or only
/// this `message_id` when given: a manual redelivery dedupes on its own job).
pub async fn succeeded(
    pool: &PgPool,
    delivery_id: Uuid,
    message_id: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM webhook_attempts \
                        WHERE delivery_id = $1 AND outcome = 'success' \
                          AND ($2::uuid IS NULL OR message_id = $2)) AS \"succeeded!\"",
        delivery_id,
        message_id,
    )
    .fetch_one(pool)
    .await
}

/// One attempt to record.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    /// Delivery id.
    pub delivery_id: Uuid,
    /// Subscription id.
    pub subscription_id: i64,
    /// The job's message id.
    pub message_id: Uuid,
    /// Target URL.
    pub url: String,
    /// Headers sent (no secret: the signature only).
    pub request_headers: serde_json::Value,
    /// `success`, `retry` or `failed`.
    pub outcome: &'static str,
    /// HTTP status, when a response came.
    pub status: Option<i32>,
    /// Attempt duration.
    pub duration: Duration,
    /// The start of the response body.
    pub response_excerpt: Option<String>,
    /// The start of the request body (`None`: no request was made).
    pub request_body: Option<String>,
    /// The response headers as a JSON object, when a response came.
    pub response_headers: Option<serde_json::Value>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What recording an attempt did to the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Failed attempts in a row after this one.
    pub consecutive_failures: i32,
    /// This attempt disabled the subscription.
    pub disabled_now: bool,
}

/// Why a subscription is disabled after too many failures in a row.
pub const REASON_FAILURES: &str = "too many consecutive failures";
/// Why a subscription is disabled after a 410 (Standard Webhooks' rule).
pub const REASON_GONE: &str = "receiver answered 410 Gone";

/// Records an attempt in `tx`: the attempt row, the delivery's state, and (when
/// `counts` says the attempt counts for the subscription's health) the failure
/// count, disabling the subscription when it reaches `disable_after`, or at
/// once with `disable_now` as the reason (the receiver answered 410 Gone).
pub async fn record_attempt(
    tx: &mut Transaction<'static, Postgres>,
    a: &NewAttempt,
    counts: bool,
    disable_after: u32,
    disable_now: Option<&str>,
) -> Result<Recorded, sqlx::Error> {
    let state = match a.outcome {
        "success" => "succeeded",
        "failed" => "failed",
        _ => "retrying",
    };
    sqlx::query!(
        "WITH d AS ( \
             UPDATE webhook_deliveries SET attempts = attempts + 1, state = $11, updated_at = now() \
             WHERE delivery_id = $1 RETURNING attempts) \
         INSERT INTO webhook_attempts (delivery_id, subscription_id, message_id, attempt, url, \
             request_headers, outcome, status, duration_ms, response_excerpt, error, \
             request_body, response_headers) \
         VALUES ($1, $2, $3, COALESCE((SELECT attempts FROM d), 1), $4, $5, $6, $7, $8, $9, $10, \
             $12, $13)",
        a.delivery_id,
        a.subscription_id,
        a.message_id,
        a.url,
        a.request_headers,
        a.outcome,
        a.status,
        i32::try_from(a.duration.as_millis()).unwrap_or(i32::MAX),
        a.response_excerpt,
        a.error,
        state,
        a.request_body,
        a.response_headers,
    )
    .execute(&mut **tx)
    .await?;
    if !counts {
        return Ok(Recorded {
            consecutive_failures: 0,
            disabled_now: false,
        });
    }
    let success = a.outcome == "success";
    // $4 (a reason) disables at once; otherwise the count reaching $3 does.
    let row = sqlx::query!(
        "UPDATE webhook_subscriptions s SET \
             consecutive_failures = CASE WHEN $2 THEN 0 ELSE s.consecutive_failures + 1 END, \
             active = CASE WHEN $4::text IS NOT NULL \
                             OR (NOT $2 AND s.consecutive_failures + 1 >= $3) THEN false \
                           ELSE s.active END, \
             disabled_at = CASE WHEN s.active AND ($4::text IS NOT NULL \
                                  OR (NOT $2 AND s.consecutive_failures + 1 >= $3)) \
                                THEN now() ELSE s.disabled_at END, \
             disabled_reason = CASE WHEN s.active AND $4::text IS NOT NULL THEN $4 \
                                    WHEN s.active AND NOT $2 AND s.consecutive_failures + 1 >= $3 \
                                    THEN $5 \
                                    ELSE s.disabled_reason END, \
             updated_at = now() \
         FROM (SELECT id, active AS was_active FROM webhook_subscriptions \
               WHERE id = $1 FOR UPDATE) old \
         WHERE s.id = old.id \
         RETURNING s.consecutive_failures, \
                   (old.was_active AND NOT s.active) AS \"disabled_now!\"",
        a.subscription_id,
        success,
        i32::try_from(disable_after).unwrap_or(i32::MAX),
        disable_now,
        REASON_FAILURES,
    )
    .fetch_optional(&mut **tx)
    .await?;
    let (consecutive_failures, disabled_now) = row
        .map(|r| (r.consecutive_failures, r.disabled_now))
        .unwrap_or((0, false));
    Ok(Recorded {
        consecutive_failures,
        disabled_now,
    })
}

/// One attempt as `webhook deliveries` lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    /// Row id.
    pub id: i64,
    /// Delivery id.
    pub delivery_id: Uuid,
    /// Subscription id.
    pub subscription_id: i64,
    /// hookfleet event type.
    pub event_type: Option<String>,
    /// Job message id.
    pub message_id: Uuid,
    /// 1-based attempt of this delivery.
    pub attempt: i32,
    /// Target URL.
    pub url: String,
    /// Headers sent.
    pub request_headers: serde_json::Value,
    /// `success`, `retry` or `failed`.
    pub outcome: String,
    /// HTTP status.
    pub status: Option<i32>,
    /// Duration in ms.
    pub duration_ms: i32,
    /// Response start.
    pub response_excerpt: Option<String>,
    /// Request body start (NULL for attempts recorded before migration 0011).
    pub request_body: Option<String>,
    /// Response headers (NULL without a response, or before migration 0011).
    pub response_headers: Option<serde_json::Value>,
    /// Error.
    pub error: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Recent attempts, newest first; optionally one subscription's, or failures only.
pub async fn list_attempts(
    pool: &PgPool,
    subscription: Option<i64>,
    failed_only: bool,
    limit: i64,
) -> Result<Vec<AttemptRow>, sqlx::Error> {
    sqlx::query_as!(
        AttemptRow,
        "SELECT a.id, a.delivery_id, a.subscription_id, d.event_type, a.message_id, a.attempt, \
                a.url, a.request_headers, a.outcome, a.status, a.duration_ms, \
                a.response_excerpt, a.request_body, a.response_headers, a.error, a.created_at \
         FROM webhook_attempts a LEFT JOIN webhook_deliveries d USING (delivery_id) \
         WHERE ($1::bigint IS NULL OR a.subscription_id = $1) \
           AND (NOT $2 OR a.outcome <> 'success') \
         ORDER BY a.id DESC LIMIT $3",
        subscription,
        failed_only,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Deletes attempts and deliveries older than `retention`, up to `batch` rows
/// of each; returns rows deleted.
pub async fn prune_batch(
    pool: &PgPool,
    retention: Duration,
    batch: u32,
) -> Result<u64, sqlx::Error> {
    let secs = retention.as_secs_f64();
    let a = sqlx::query!(
        "DELETE FROM webhook_attempts WHERE id IN ( \
             SELECT id FROM webhook_attempts \
             WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
        secs,
        i64::from(batch),
    )
    .execute(pool)
    .await?;
    let d = sqlx::query!(
        "DELETE FROM webhook_deliveries WHERE delivery_id IN ( \
             SELECT delivery_id FROM webhook_deliveries \
             WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
        secs,
        i64::from(batch),
    )
    .execute(pool)
    .await?;
    Ok(a.rows_affected() + d.rows_affected())
}

/// Repositories pushes have named (pushed within `within` when given), with
/// their push counts, the most recently pushed first, at most `limit`.
pub async fn pushed_repositories(
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
