//! Retention: deleting published outbox events and handled inbox rows once they
//! are old, in bounded batches (the pruner decides ages, batch sizes and pace).

use std::time::Duration;

use sqlx::PgPool;

/// Deletes up to `limit` events published more than `older_than` ago (their
/// `outbox_published` and `outbox` rows); returns how many. Unpublished rows are
/// never touched: only what `outbox_published` names is deleted.
pub(crate) async fn prune_outbox_batch(
    pool: &PgPool,
    older_than: Duration,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar!(
        "WITH gone AS ( \
             DELETE FROM outbox_published WHERE id IN ( \
                 SELECT id FROM outbox_published \
                 WHERE published_at < now() - make_interval(secs => $1) \
                 ORDER BY published_at LIMIT $2) \
             RETURNING id), \
         rows AS (DELETE FROM outbox WHERE id IN (SELECT id FROM gone)) \
         SELECT count(*) AS \"count!\" FROM gone",
        older_than.as_secs_f64(),
        i64::from(limit),
    )
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Deletes up to `limit` inbox rows processed more than `older_than` ago.
pub(crate) async fn prune_inbox_batch(
    pool: &PgPool,
    older_than: Duration,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query!(
        "DELETE FROM inbox WHERE message_id IN ( \
             SELECT message_id FROM inbox \
             WHERE processed_at < now() - make_interval(secs => $1) \
             ORDER BY processed_at LIMIT $2)",
        older_than.as_secs_f64(),
        i64::from(limit),
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}
