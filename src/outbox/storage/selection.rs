//! Replay selection: which published rows `outbox replay` (and the console's
//! replay) publishes again, counted for the dry run and read page by page.
//! Only published rows: a replay never competes with the relay.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::OutboxRow;

/// Replay selection; all bounds inclusive, all optional.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection {
    /// Smallest id.
    pub(crate) from_id: Option<i64>,
    /// Largest id.
    pub(crate) to_id: Option<i64>,
    /// Earliest `created_at`.
    pub(crate) since: Option<DateTime<Utc>>,
    /// Latest `created_at`.
    pub(crate) until: Option<DateTime<Utc>>,
    /// Exact event type.
    pub(crate) event_type: Option<String>,
    /// PostgreSQL regex the event type (with a trailing `.`) must match (wildcards).
    pub(crate) event_type_regex: Option<String>,
    /// Correlation id.
    pub(crate) correlation_id: Option<String>,
    /// Rows published to this exchange are left out (`outbox replay` passes the
    /// jobs exchange unless `--include-jobs`: re-sending a `webhook` job
    /// re-delivers to receivers, which a replay of events must not do unasked).
    pub(crate) exclude_exchange: Option<String>,
}

// The published rows a [`Selection`] matches: `outbox o` joined with
// `outbox_published p`, `$1`-`$8` the selection's fields in declaration order (both
// statements below spell the same FROM and WHERE; `query!` needs literals). The id
// bounds are put on both sides so that whichever join the planner picks starts at
// `$1`, not at either table's first row.

/// Number of published rows the selection matches.
pub(crate) async fn count_selected(pool: &PgPool, s: &Selection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT count(*) AS \"count!\" \
         FROM outbox o JOIN outbox_published p ON p.id = o.id \
         WHERE ($1::bigint IS NULL OR (o.id >= $1 AND p.id >= $1)) \
         AND ($2::bigint IS NULL OR (o.id <= $2 AND p.id <= $2)) \
         AND ($3::timestamptz IS NULL OR o.created_at >= $3) \
         AND ($4::timestamptz IS NULL OR o.created_at <= $4) \
         AND ($5::text IS NULL OR o.event_type = $5) \
         AND ($6::text IS NULL OR (o.event_type || '.') ~ $6) \
         AND ($7::text IS NULL OR o.correlation_id = $7) \
         AND ($8::text IS NULL OR o.exchange <> $8)",
        s.from_id,
        s.to_id,
        s.since,
        s.until,
        s.event_type,
        s.event_type_regex,
        s.correlation_id,
        s.exclude_exchange,
    )
    .fetch_one(pool)
    .await
}

/// The next page of selected published rows with `id > after`, in id order.
pub(crate) async fn select_page(
    pool: &PgPool,
    s: &Selection,
    after: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as!(
        OutboxRow,
        "SELECT o.id, o.message_id, o.exchange, o.routing_key, o.event_type, \
                o.correlation_id, o.headers, o.payload::text AS \"payload!\", \
                o.trace_context, o.created_at, p.publish_attempts \
         FROM outbox o JOIN outbox_published p ON p.id = o.id \
         WHERE ($1::bigint IS NULL OR (o.id >= $1 AND p.id >= $1)) \
         AND ($2::bigint IS NULL OR (o.id <= $2 AND p.id <= $2)) \
         AND ($3::timestamptz IS NULL OR o.created_at >= $3) \
         AND ($4::timestamptz IS NULL OR o.created_at <= $4) \
         AND ($5::text IS NULL OR o.event_type = $5) \
         AND ($6::text IS NULL OR (o.event_type || '.') ~ $6) \
         AND ($7::text IS NULL OR o.correlation_id = $7) \
         AND ($8::text IS NULL OR o.exchange <> $8) \
         AND o.id > $9 AND p.id > $9 ORDER BY o.id LIMIT $10",
        s.from_id,
        s.to_id,
        s.since,
        s.until,
        s.event_type,
        s.event_type_regex,
        s.correlation_id,
        s.exclude_exchange,
        after,
        limit,
    )
    .fetch_all(pool)
    .await
}
