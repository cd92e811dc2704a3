//! The relay's statements: claim a batch of due rows (`FOR UPDATE SKIP LOCKED`,
//! id order), read their routes, mark them published or failed, and reopen rows
//! whose message came back returned. The relay decides batch sizes and retry
//! delays; these only carry them to the tables.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::OutboxRow;

/// Starts a relay claim transaction in which the planner can only walk
/// `outbox_pending`'s primary key in id order.
///
/// Why: right after a burst (a backlog after an outage: exactly when the relay
/// must be fastest) the table's statistics are stale, the planner expects a few
/// pending rows and picks a bitmap scan that reads *every* pending row, payload
/// included, and sorts them (measured on the wide table before 0006: 30 ms and an
/// 11 MB on-disk sort per claim of 256 out of 10,000, against 0.5 ms by the index). `FOR UPDATE` keeps the
/// LIMIT from bounding that sort. The settings are `LOCAL`: they end with the
/// transaction and never leak to the pooled session. One round trip, like a
/// plain `BEGIN`.
pub async fn begin_claim(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off")
        .await
}

/// Locks up to `limit` due `outbox_pending` rows in id order, skipping rows another
/// relay holds, and reads their outbox rows. The locks last until `tx` ends, so a
/// crashed relay just rolls back.
pub async fn claim(
    tx: &mut Transaction<'static, Postgres>,
    limit: u32,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let mut rows: Vec<OutboxRow> =
        sqlx::query_file_as!(OutboxRow, "src/outbox/sql/claim.sql", i64::from(limit))
            .fetch_all(&mut **tx)
            .await?;
    if !rows.is_sorted_by_key(|r| r.id) {
        rows.sort_unstable_by_key(|r| r.id);
    }
    Ok(rows)
}

/// The claim statement ([`claim`]; `$1` is the batch size): exposed so its plan can
/// be checked with `EXPLAIN` inside [`begin_claim`]. One file for both, so the
/// statement checked is the statement run.
///
/// The outbox row is read per claimed id (a nested loop: the subquery's LIMIT
/// keeps it to the batch), never by walking the outbox in id order from its first
/// row, which a merge join would do. The nested loop keeps the claim's id order;
/// `claim` checks it rather than sorting again in SQL.
pub fn claim_sql() -> &'static str {
    include_str!("../sql/claim.sql")
}

/// Marks `ids` published (one statement): their work rows leave
/// `outbox_pending` and `outbox_published` records the time and attempts.
pub async fn mark_published(
    tx: &mut Transaction<'static, Postgres>,
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "WITH done AS (DELETE FROM outbox_pending WHERE id = ANY($1) \
                       RETURNING id, publish_attempts) \
         INSERT INTO outbox_published (id, publish_attempts) \
         SELECT id, publish_attempts + 1 FROM done ORDER BY id \
         ON CONFLICT (id) DO NOTHING",
        ids,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One failed publish: the row, why, and what happens next.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Outbox id.
    pub(crate) id: i64,
    /// What went wrong (stored in `last_error`).
    pub(crate) error: String,
    /// Delay before the next attempt, or `None` to park the row (set it aside
    /// until `outbox unpark`).
    pub(crate) retry_in: Option<Duration>,
}

/// Records failed publishes (one statement): attempts + 1, last error, and the
/// next attempt, or for a parked row `next_attempt_at = 'infinity'` (every
/// claim, of this release or the previous one, skips it) and `parked_at`.
pub async fn mark_failed(
    tx: &mut Transaction<'static, Postgres>,
    failures: &[Failure],
) -> Result<(), sqlx::Error> {
    if failures.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = failures.iter().map(|f| f.id).collect();
    let errors: Vec<String> = failures.iter().map(|f| f.error.clone()).collect();
    let delays: Vec<Option<f64>> = failures
        .iter()
        .map(|f| f.retry_in.map(|d| d.as_secs_f64()))
        .collect();
    sqlx::query!(
        "UPDATE outbox_pending o SET publish_attempts = o.publish_attempts + 1, \
                 last_error = f.error, \
                 next_attempt_at = CASE WHEN f.delay IS NULL THEN 'infinity'::timestamptz \
                                        ELSE now() + make_interval(secs => f.delay) END, \
                 parked_at = CASE WHEN f.delay IS NULL THEN now() END \
         FROM UNNEST($1::bigint[], $2::text[], $3::float8[]) AS f(id, error, delay) \
         WHERE o.id = f.id",
        ids.as_slice(),
        errors.as_slice(),
        // NULL elements (park the row) are not expressible in the checked type.
        delays as _,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Puts rows already marked published back in the work queue because their
/// message turned out to have been returned (see the relay's `ReturnLedger`):
/// the rows of `message_ids` that `outbox_published` holds leave it and are
/// queued with their attempts, `reasons` (parallel) as last error, due after
/// `retry_in`. Rows not published yet are left alone (a later batch holds
/// them). Returns the message ids put back.
pub async fn reopen_returned(
    tx: &mut Transaction<'static, Postgres>,
    message_ids: &[Uuid],
    reasons: &[String],
    retry_in: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "WITH r AS (SELECT o.id, o.message_id, f.error \
                    FROM UNNEST($1::uuid[], $2::text[]) AS f(m, error) \
                    JOIN outbox o ON o.message_id = f.m), \
              gone AS (DELETE FROM outbox_published p USING r WHERE p.id = r.id \
                       RETURNING p.id, p.publish_attempts), \
              back AS (INSERT INTO outbox_pending (id, publish_attempts, last_error, next_attempt_at) \
                       SELECT g.id, g.publish_attempts, r.error, \
                              now() + make_interval(secs => $3) \
                       FROM gone g JOIN r ON r.id = g.id \
                       ON CONFLICT (id) DO NOTHING RETURNING id) \
         SELECT r.message_id AS \"message_id!\" FROM r JOIN back ON back.id = r.id",
        message_ids,
        reasons,
        retry_in.as_secs_f64(),
    )
    .fetch_all(&mut **tx)
    .await
}

/// The exchange and routing key of the outbox rows `ids`, read in `tx` (the
/// relay's batch, whose rows it holds): `(id, exchange, routing_key)`.
pub async fn routes(
    tx: &mut Transaction<'static, Postgres>,
    ids: &[i64],
) -> Result<Vec<(i64, String, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT id, exchange, routing_key FROM outbox WHERE id = ANY($1)",
        ids
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.exchange, r.routing_key))
        .collect())
}
