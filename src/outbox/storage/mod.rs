//! Every SQL statement of the outbox and inbox tables.
//!
//! Owns the queries: enqueue (one multi-row `INSERT ... UNNEST`), the relay's
//! claim (`FOR UPDATE SKIP LOCKED`, id order), marking rows published or failed,
//! status sampling, replay selection and retention pruning; and the inbox's
//! claim and lookup ([`crate::inbox`] decides when to use them). It never talks to
//! the broker and never decides policy (backoff, batch sizes): callers pass those in.
//!
//! Fixed statements are `sqlx::query!` and friends, checked at build time against
//! the schema (offline data in `.sqlx/`, `scripts/sqlx-prepare`). The statements
//! built at run time are the array inserts other storage modules fold into their
//! own statement ([`EventArrays`], [`inbox_claim_sql`]: crate-private fragment
//! builders that number their parameters from one base, never by hand).
//!
//! Three tables (migration 0006): `outbox` holds what to publish and is written
//! once; `outbox_pending` is the relay's work queue (one narrow row per event not
//! yet confirmed, with its retry state; a trigger adds it on insert, the relay
//! deletes it on confirm); `outbox_published` records when each event was
//! confirmed. So marking a batch published never rewrites the wide rows.
//! `outbox.published_at` and its retry columns are no longer read (see the
//! migration: they keep relays of the previous release away from new rows).
//!
//! One file per use of the tables: `insert.rs` (enqueue, and the fragment the
//! push writer folds in), `batch.rs` (the relay's claim and settling), `backlog.rs`
//! (status and unpark), `selection.rs` (replay), `retention.rs` (pruning) and
//! `inbox_claim.rs`. Their items are re-exported here, so callers name
//! `outbox::storage::claim` whatever file holds it.

mod backlog;
mod batch;
mod inbox_claim;
mod insert;
mod retention;
mod selection;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use backlog::{
    FailingRow, due_lag, failing_count, failing_rows, pending_stats, published_within, unpark,
};
pub use batch::{
    Failure, begin_claim, claim, claim_sql, mark_failed, mark_published, reopen_returned, routes,
};
pub(crate) use inbox_claim::inbox_claim_sql;
pub(crate) use inbox_claim::{claim_message, message_handled};
pub(crate) use insert::insert_events;
pub(crate) use insert::{EVENT_PARAMS, EventArrays, Owned};
pub(crate) use retention::{prune_inbox_batch, prune_outbox_batch};
pub(crate) use selection::{Selection, count_selected, select_page};

/// The PostgreSQL notification channel the outbox trigger signals on insert.
pub(crate) const NOTIFY_CHANNEL: &str = "hookfleet_outbox";

/// One outbox row as the relay and replay read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    /// Position in the outbox (publication order).
    pub id: i64,
    /// Stable AMQP `message_id`.
    pub(crate) message_id: Uuid,
    /// Target exchange.
    pub(crate) exchange: String,
    /// Routing key.
    pub(crate) routing_key: String,
    /// AMQP `type`.
    pub(crate) event_type: String,
    /// AMQP `correlation_id`.
    pub(crate) correlation_id: Option<String>,
    /// Extra headers (string or integer values).
    pub(crate) headers: serde_json::Value,
    /// Body.
    pub(crate) payload: String,
    /// `traceparent` of the span that created the event (NULL: no trace).
    pub(crate) trace_context: Option<String>,
    /// Creation time (AMQP `timestamp`).
    pub(crate) created_at: DateTime<Utc>,
    /// Publish attempts so far (failed ones included).
    pub publish_attempts: i32,
}
