//! What waits in the outbox, as `outbox status` and the console show it (pending,
//! failing and parked rows, the recent publishing rate), and the operator's one
//! write on it: unparking; and the relays' lag the bulk pacer reads. Read-mostly,
//! so apart from the relay's statements.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::NOTIFY_CHANNEL;

/// Makes parked rows due again (attempts back to 0, last error kept): those
/// named by `ids`, or every parked row when `ids` is empty. Returns how many,
/// and wakes the relays.
pub async fn unpark(pool: &PgPool, ids: &[i64]) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query!(
        "UPDATE outbox_pending SET parked_at = NULL, publish_attempts = 0, \
                                   next_attempt_at = now() \
         WHERE parked_at IS NOT NULL AND (cardinality($1::bigint[]) = 0 OR id = ANY($1))",
        ids,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query!("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Pending rows, the age in seconds of the oldest one the relay still tries
/// (parked rows wait for an operator, so they would only make the age grow
/// forever), and the parked rows.
pub async fn pending_stats(pool: &PgPool) -> Result<(i64, f64, i64), sqlx::Error> {
    let r = sqlx::query!(
        "SELECT (SELECT count(*) FROM outbox_pending) AS \"count!\", \
                (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM outbox \
                 WHERE id = (SELECT min(id) FROM outbox_pending WHERE parked_at IS NULL)) AS age, \
                (SELECT count(*) FROM outbox_pending WHERE parked_at IS NOT NULL) AS \"parked!\"",
    )
    .fetch_one(pool)
    .await?;
    Ok((r.count, r.age.unwrap_or(0.0).max(0.0), r.parked))
}

/// An unpublished row whose last publish failed.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct FailingRow {
    /// Outbox id.
    pub(crate) id: i64,
    /// Event type.
    pub(crate) event_type: String,
    /// Target exchange.
    pub exchange: String,
    /// Failed attempts.
    pub(crate) publish_attempts: i32,
    /// The last error.
    pub(crate) last_error: Option<String>,
    /// When the relay tries again; `None` when parked (stored as `infinity`,
    /// which chrono cannot hold).
    pub(crate) next_attempt_at: Option<DateTime<Utc>>,
    /// When the row was set aside; `None` while the relay still retries it.
    pub(crate) parked_at: Option<DateTime<Utc>>,
}

/// Up to `limit` failing rows, oldest first.
pub async fn failing_rows(pool: &PgPool, limit: i64) -> Result<Vec<FailingRow>, sqlx::Error> {
    sqlx::query_as!(
        FailingRow,
        "SELECT p.id AS \"id!\", o.event_type AS \"event_type!\", o.exchange AS \"exchange!\", \
                p.publish_attempts AS \"publish_attempts!\", p.last_error, \
                CASE WHEN p.parked_at IS NULL THEN p.next_attempt_at END AS next_attempt_at, \
                p.parked_at \
         FROM (SELECT * FROM outbox_pending WHERE publish_attempts > 0 \
               ORDER BY id LIMIT $1) p \
         CROSS JOIN LATERAL (SELECT event_type, exchange FROM outbox \
                             WHERE outbox.id = p.id OFFSET 0) o \
         ORDER BY p.id",
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Number of failing rows.
pub async fn failing_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT count(*) AS \"count!\" FROM outbox_pending WHERE publish_attempts > 0"
    )
    .fetch_one(pool)
    .await
}

/// Rows published within the last `window`.
pub async fn published_within(pool: &PgPool, window: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT count(*) AS \"count!\" FROM outbox_published \
         WHERE published_at >= now() - make_interval(secs => $1)",
        window.as_secs_f64(),
    )
    .fetch_one(pool)
    .await
}

/// How long the oldest outbox row due for publishing has waited (zero with
/// none): the relays' lag, whichever process runs them (the bulk pacer reads
/// it every 200 ms during a storm, so it is one row by `outbox_pending`'s
/// primary key, not a count). Rows backing off or parked are not due.
pub async fn due_lag(pool: &PgPool) -> Result<Duration, sqlx::Error> {
    let secs = sqlx::query_scalar!(
        r#"SELECT extract(epoch FROM now() - next_attempt_at)::float8 AS "lag!"
           FROM outbox_pending
           WHERE next_attempt_at <= now()
           ORDER BY id
           LIMIT 1"#
    )
    .fetch_optional(pool)
    .await?;
    Ok(Duration::from_secs_f64(
        secs.filter(|s| s.is_finite())
            .unwrap_or(0.0)
            .clamp(0.0, 86_400.0),
    ))
}
