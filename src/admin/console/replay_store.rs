//! The console's SQL for `console_replays` (migration 0011): one row per
//! outbox replay started from the page, with its filters, its cursor (the
//! first outbox id not yet confirmed) and its counts.
//!
//! The row outlives the process that ran it, which is the point: a replay
//! stopped by a restart is still on the page and resumes from its cursor.
//! Every write after the insert names the owner (the console instance that
//! claimed the row), so a process that lost its claim cannot overwrite the
//! progress of the one that resumed it.
//!
//! The console's only SQL. Statements are `sqlx::query!` and friends, checked at
//! build time against the schema (offline data in `.sqlx/`, `scripts/sqlx-prepare`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// One replay as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ReplayRow {
    /// Row id.
    pub(crate) id: i64,
    /// The form's filters (field name to value).
    pub(crate) request: serde_json::Value,
    /// Who started it (the console user).
    pub(crate) started_by: String,
    /// `running`, `done`, `failed` or `interrupted`.
    pub(crate) state: String,
    /// The console instance running (or last running) it.
    pub(crate) owner: Option<Uuid>,
    /// The first outbox id not yet confirmed.
    pub(crate) next_id: i64,
    /// Rows published and confirmed, over every run of it.
    pub(crate) published: i64,
    /// Rows selected: published plus what the latest run selected.
    pub(crate) total: i64,
    /// Why it stopped, when it failed or was interrupted.
    pub(crate) error: Option<String>,
    /// Last sign of life of its runner.
    pub(crate) heartbeat_at: DateTime<Utc>,
    /// When it was started.
    pub(crate) created_at: DateTime<Utc>,
}

/// Records a replay `owner` starts now from outbox id `next_id`.
pub(crate) async fn insert(
    pool: &PgPool,
    request: &serde_json::Value,
    started_by: &str,
    owner: Uuid,
    next_id: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "INSERT INTO console_replays (request, started_by, owner, next_id) \
         VALUES ($1, $2, $3, $4) RETURNING id",
        request,
        started_by,
        owner,
        next_id,
    )
    .fetch_one(pool)
    .await
}

/// Claims replay `id` for `owner` to resume it: only a failed or interrupted
/// one, or one still marked running whose runner has been silent for `stale`
/// (its process died without a word). `None` when it is not resumable.
pub async fn claim(
    pool: &PgPool,
    id: i64,
    owner: Uuid,
    stale: Duration,
) -> Result<Option<ReplayRow>, sqlx::Error> {
    sqlx::query_as!(
        ReplayRow,
        "UPDATE console_replays SET state = 'running', owner = $2, error = NULL, \
             heartbeat_at = now(), updated_at = now() \
         WHERE id = $1 AND (state IN ('failed', 'interrupted') \
             OR (state = 'running' AND heartbeat_at < now() - make_interval(secs => $3))) \
         RETURNING id, request, started_by, state, owner, next_id, published, total, \
                   error, heartbeat_at, created_at",
        id,
        owner,
        stale.as_secs_f64(),
    )
    .fetch_optional(pool)
    .await
}

/// Stores the cursor and counts of a running replay (and that it is alive).
pub(crate) async fn save(
    pool: &PgPool,
    id: i64,
    owner: Uuid,
    next_id: i64,
    published: i64,
    total: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE console_replays SET next_id = $3, published = $4, total = $5, \
             heartbeat_at = now(), updated_at = now() \
         WHERE id = $1 AND owner = $2",
        id,
        owner,
        next_id,
        published,
        total,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Says the runner is alive (a rate-limited page can take minutes).
pub(crate) async fn heartbeat(pool: &PgPool, id: i64, owner: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE console_replays SET heartbeat_at = now() \
         WHERE id = $1 AND owner = $2 AND state = 'running'",
        id,
        owner,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Ends a run: `state` (`done`, `failed`, `interrupted`), with its error.
pub(crate) async fn finish(
    pool: &PgPool,
    id: i64,
    owner: Uuid,
    state: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE console_replays SET state = $3, error = $4, updated_at = now() \
         WHERE id = $1 AND owner = $2",
        id,
        owner,
        state,
        error,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// The latest `limit` replays, newest first.
pub(crate) async fn recent(pool: &PgPool, limit: i64) -> Result<Vec<ReplayRow>, sqlx::Error> {
    sqlx::query_as!(
        ReplayRow,
        "SELECT id, request, started_by, state, owner, next_id, published, total, \
                error, heartbeat_at, created_at \
         FROM console_replays ORDER BY id DESC LIMIT $1",
        limit,
    )
    .fetch_all(pool)
    .await
}
