//! Every SQL statement of the guards: the `paused_kinds` table (migration 0009).
//!
//! Owns the queries only; [`super::pause`] validates kind names, decides what a
//! change means and keeps the workers' view current. Statements are
//! `sqlx::query!`, checked at build time against the schema (offline data in
//! `.sqlx/`, `scripts/sqlx-prepare`).

use serde::Serialize;
use sqlx::PgPool;

/// A paused kind as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq, Eq)]
pub(crate) struct PausedKind {
    /// The job kind (`push`, `webhook`, ...).
    pub(crate) kind: String,
    /// When it was paused.
    pub(crate) paused_at: chrono::DateTime<chrono::Utc>,
    /// Who paused it (the CLI: `$USER`).
    pub(crate) paused_by: Option<String>,
    /// Why, as given.
    pub(crate) reason: Option<String>,
}

/// Inserts `kind` as paused; `false` if it already was (its row is kept as is).
pub(crate) async fn insert_paused(
    pool: &PgPool,
    kind: &str,
    by: Option<&str>,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        "INSERT INTO paused_kinds (kind, paused_by, reason) VALUES ($1, $2, $3)
         ON CONFLICT (kind) DO NOTHING",
        kind,
        by,
        reason,
    )
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Deletes `kind`'s row; `false` if there was none.
pub(crate) async fn delete_paused(pool: &PgPool, kind: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!("DELETE FROM paused_kinds WHERE kind = $1", kind)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Every paused kind, by name.
pub(crate) async fn paused_kinds(pool: &PgPool) -> Result<Vec<PausedKind>, sqlx::Error> {
    sqlx::query_as!(
        PausedKind,
        "SELECT kind, paused_at, paused_by, reason FROM paused_kinds ORDER BY kind"
    )
    .fetch_all(pool)
    .await
}
