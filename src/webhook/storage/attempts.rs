//! Statements of `webhook_attempts` (and the delivery and subscription state
//! an attempt moves): recording an attempt with the failure count and
//! auto-disable in one short transaction, whether a delivery succeeded,
//! listing, and pruning old attempts and deliveries. Thresholds come from the
//! caller.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

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
    pub(crate) delivery_id: Uuid,
    /// Subscription id.
    pub(crate) subscription_id: i64,
    /// The job's message id.
    pub(crate) message_id: Uuid,
    /// Target URL.
    pub(crate) url: String,
    /// Headers sent (no secret: the signature only).
    pub(crate) request_headers: serde_json::Value,
    /// `success`, `retry` or `failed`.
    pub(crate) outcome: &'static str,
    /// HTTP status, when a response came.
    pub(crate) status: Option<i32>,
    /// Attempt duration.
    pub(crate) duration: Duration,
    /// The start of the response body.
    pub(crate) response_excerpt: Option<String>,
    /// The start of the request body (`None`: no request was made).
    pub(crate) request_body: Option<String>,
    /// The response headers as a JSON object, when a response came.
    pub(crate) response_headers: Option<serde_json::Value>,
    /// Why it failed.
    pub(crate) error: Option<String>,
}

/// What recording an attempt did to the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Failed attempts in a row after this one.
    pub(crate) consecutive_failures: i32,
    /// This attempt disabled the subscription.
    pub(crate) disabled_now: bool,
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
    insert_attempt(tx, a).await?;
    if !counts {
        return Ok(Recorded {
            consecutive_failures: 0,
            disabled_now: false,
        });
    }
    count_health(tx, a, disable_after, disable_now).await
}

/// Inserts the attempt row and moves its delivery (attempt count and state)
/// in one statement; one SQL statement, so kept whole.
async fn insert_attempt(
    tx: &mut Transaction<'static, Postgres>,
    a: &NewAttempt,
) -> Result<(), sqlx::Error> {
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
    Ok(())
}

/// Counts the attempt for the subscription's health: resets or bumps its
/// failure count, and disables it at `disable_after` failures in a row, or at
/// once with `disable_now` as the reason. Kept whole: one SQL statement.
async fn count_health(
    tx: &mut Transaction<'static, Postgres>,
    a: &NewAttempt,
    disable_after: u32,
    disable_now: Option<&str>,
) -> Result<Recorded, sqlx::Error> {
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
    pub(crate) id: i64,
    /// Delivery id.
    pub(crate) delivery_id: Uuid,
    /// Subscription id.
    pub(crate) subscription_id: i64,
    /// hookfleet event type.
    pub(crate) event_type: Option<String>,
    /// Job message id.
    pub(crate) message_id: Uuid,
    /// 1-based attempt of this delivery.
    pub(crate) attempt: i32,
    /// Target URL.
    pub(crate) url: String,
    /// Headers sent.
    pub(crate) request_headers: serde_json::Value,
    /// `success`, `retry` or `failed`.
    pub(crate) outcome: String,
    /// HTTP status.
    pub(crate) status: Option<i32>,
    /// Duration in ms.
    pub(crate) duration_ms: i32,
    /// Response start.
    pub(crate) response_excerpt: Option<String>,
    /// Request body start (NULL for attempts recorded before migration 0011).
    pub(crate) request_body: Option<String>,
    /// Response headers (NULL without a response, or before migration 0011).
    pub(crate) response_headers: Option<serde_json::Value>,
    /// Error.
    pub(crate) error: Option<String>,
    /// When.
    pub(crate) created_at: DateTime<Utc>,
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
