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

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::event::{Event, headers_to_json};

/// The PostgreSQL notification channel the outbox trigger signals on insert.
pub const NOTIFY_CHANNEL: &str = "hookfleet_outbox";

/// One outbox row as the relay and replay read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    /// Position in the outbox (publication order).
    pub id: i64,
    /// Stable AMQP `message_id`.
    pub message_id: Uuid,
    /// Target exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// AMQP `type`.
    pub event_type: String,
    /// AMQP `correlation_id`.
    pub correlation_id: Option<String>,
    /// Extra headers (string or integer values).
    pub headers: serde_json::Value,
    /// Body.
    pub payload: String,
    /// `traceparent` of the span that created the event (NULL: no trace).
    pub trace_context: Option<String>,
    /// Creation time (AMQP `timestamp`).
    pub created_at: DateTime<Utc>,
    /// Publish attempts so far (failed ones included).
    pub publish_attempts: i32,
}

/// The parameter arrays of an outbox insert (`INSERT ... SELECT ... UNNEST`), so
/// the insert can run alone ([`insert_events`]) or be folded into a caller's
/// statement as a CTE ([`crate::push::record`]: one round trip for the effects
/// and events of a group of pushes). One definition of the SQL either way.
#[derive(Default)]
pub(crate) struct EventArrays {
    ids: Vec<Uuid>,
    exchanges: Vec<String>,
    keys: Vec<String>,
    types: Vec<String>,
    corr: Vec<Option<String>>,
    headers: Vec<serde_json::Value>,
    payloads: Vec<serde_json::Value>,
    traces: Vec<Option<String>>,
}

/// How many parameters [`EventArrays::insert_sql`] uses.
pub(crate) const EVENT_PARAMS: usize = 8;

/// An array insert folded into a statement that writes for several owners (the
/// pushes of one group commit), some of which may be skipped (duplicates): one
/// more parameter, `param`, a `uuid[]` parallel to the arrays naming each row's
/// owner, and `owners`, an SQL set expression of the owners whose rows are
/// inserted (e.g. `(SELECT message_id FROM mine)`). Reading `owners` also makes
/// the insert wait for whatever produces them (the repository locks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owned<'a> {
    /// Parameter number of the owner array.
    pub(crate) param: usize,
    /// The owners whose rows are inserted.
    pub(crate) owners: &'a str,
}

impl Owned<'_> {
    /// The extra UNNEST column, its alias and the WHERE clause (all empty for
    /// `None`).
    pub(crate) fn parts(owned: Option<Owned<'_>>) -> (String, &'static str, String) {
        match owned {
            None => (String::new(), "", String::new()),
            Some(o) => (
                format!(", ${}::uuid[]", o.param),
                ", owner",
                format!("WHERE owner IN {} ", o.owners),
            ),
        }
    }
}

impl EventArrays {
    /// The arrays of `events`, in order (ids are assigned in this order).
    pub(crate) fn new(events: &[Event]) -> Self {
        let mut a = EventArrays::default();
        a.extend(events);
        a
    }

    /// Appends `events`.
    pub(crate) fn extend(&mut self, events: &[Event]) {
        for e in events {
            self.ids.push(e.envelope.message_id);
            self.exchanges.push(e.exchange.clone());
            self.keys.push(e.routing_key.clone());
            self.types.push(e.event_type().to_string());
            self.corr.push(e.envelope.correlation_id.clone());
            self.headers.push(headers_to_json(&e.envelope.headers));
            self.payloads.push(e.payload.clone());
            self.traces.push(e.trace_context.clone());
        }
    }

    /// The INSERT reading the arrays from parameters `$first` to
    /// `$first + EVENT_PARAMS - 1`, every row, or with `owned` only the rows of
    /// some owners (see [`Owned`]); `join` (e.g. `"lock, "`) is put in front of
    /// the UNNEST in the FROM list, so the rows are produced only after it. Rows
    /// are inserted in array order (`WITH ORDINALITY`), so ids follow it.
    pub(crate) fn insert_sql(first: usize, join: &str, owned: Option<Owned<'_>>) -> String {
        let [m, x, k, t, c, h, p, tc] =
            std::array::from_fn::<usize, EVENT_PARAMS, _>(|i| first + i);
        let (owner_col, owner_alias, filter) = Owned::parts(owned);
        format!(
            "INSERT INTO outbox (message_id, exchange, routing_key, event_type, correlation_id, \
                                 headers, payload, trace_context) \
             SELECT e.m, e.x, e.k, e.t, e.c, e.h, e.p, e.tc \
             FROM {join}UNNEST(${m}::uuid[], ${x}::text[], ${k}::text[], ${t}::text[], ${c}::text[], \
                         ${h}::jsonb[], ${p}::jsonb[], ${tc}::text[]{owner_col}) \
                  WITH ORDINALITY AS e(m, x, k, t, c, h, p, tc{owner_alias}, n) \
             {filter}ORDER BY e.n"
        )
    }

    /// Binds the arrays (in [`Self::insert_sql`]'s parameter order) to `q`.
    pub(crate) fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.ids)
            .bind(self.exchanges)
            .bind(self.keys)
            .bind(self.types)
            .bind(self.corr)
            .bind(self.headers)
            .bind(self.payloads)
            .bind(self.traces)
    }
}

/// Inserts all `events` with one statement (one round trip; the table's trigger
/// queues them in `outbox_pending` and sends one NOTIFY).
pub async fn insert_events(
    tx: &mut Transaction<'static, Postgres>,
    events: &[Event],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    static SQL: LazyLock<String> = LazyLock::new(|| EventArrays::insert_sql(1, "", None));
    EventArrays::new(events)
        .bind(sqlx::query(&SQL))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

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
    include_str!("sql/claim.sql")
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
    pub id: i64,
    /// What went wrong (stored in `last_error`).
    pub error: String,
    /// Delay before the next attempt, or `None` to park the row (set it aside
    /// until `outbox unpark`).
    pub retry_in: Option<Duration>,
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
    pub id: i64,
    /// Event type.
    pub event_type: String,
    /// Target exchange.
    pub exchange: String,
    /// Failed attempts.
    pub publish_attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When the relay tries again; `None` when parked (stored as `infinity`,
    /// which chrono cannot hold).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the row was set aside; `None` while the relay still retries it.
    pub parked_at: Option<DateTime<Utc>>,
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

/// Replay selection; all bounds inclusive, all optional.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Smallest id.
    pub from_id: Option<i64>,
    /// Largest id.
    pub to_id: Option<i64>,
    /// Earliest `created_at`.
    pub since: Option<DateTime<Utc>>,
    /// Latest `created_at`.
    pub until: Option<DateTime<Utc>>,
    /// Exact event type.
    pub event_type: Option<String>,
    /// PostgreSQL regex the event type (with a trailing `.`) must match (wildcards).
    pub event_type_regex: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Rows published to this exchange are left out (`outbox replay` passes the
    /// jobs exchange unless `--include-jobs`: re-sending a `webhook` job
    /// re-delivers to receivers, which a replay of events must not do unasked).
    pub exclude_exchange: Option<String>,
}

// The published rows a [`Selection`] matches: `outbox o` joined with
// `outbox_published p`, `$1`-`$8` the selection's fields in declaration order (both
// statements below spell the same FROM and WHERE; `query!` needs literals). The id
// bounds are put on both sides so that whichever join the planner picks starts at
// `$1`, not at either table's first row.

/// Number of published rows the selection matches.
pub async fn count_selected(pool: &PgPool, s: &Selection) -> Result<i64, sqlx::Error> {
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
pub async fn select_page(
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

/// Deletes up to `limit` events published more than `older_than` ago (their
/// `outbox_published` and `outbox` rows); returns how many. Unpublished rows are
/// never touched: only what `outbox_published` names is deleted.
pub async fn prune_outbox_batch(
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
pub async fn prune_inbox_batch(
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

/// The inbox claim's INSERT with the message id at `$first` and the queue at
/// `$first + 1`. It returns one row when the message is new and none when the
/// inbox has it, so a writer can fold it into its own statement as a CTE and make
/// every write read from it (`push::record`). The same statement as
/// [`claim_message`]'s (a unit test holds them equal).
pub(crate) fn inbox_claim_sql(first: usize) -> String {
    format!(
        "INSERT INTO inbox (message_id, queue) VALUES (${first}, ${}) \
         ON CONFLICT DO NOTHING RETURNING 1",
        first + 1
    )
}

/// Claims `message_id` for `queue` in the inbox, in `tx`; `false` when it was
/// handled before (a concurrent redelivery waits on the first one's row lock and
/// then sees it).
pub async fn claim_message(
    tx: &mut Transaction<'static, Postgres>,
    message_id: Uuid,
    queue: &str,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar!(
        "INSERT INTO inbox (message_id, queue) VALUES ($1, $2) \
         ON CONFLICT DO NOTHING RETURNING 1",
        message_id,
        queue,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(claimed.len() == 1)
}

/// Whether the inbox has `message_id` (handled before, by any queue).
pub async fn message_handled(pool: &PgPool, message_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM inbox WHERE message_id = $1) AS \"handled!\"",
        message_id,
    )
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`claim_message`] runs the literal of `inbox_claim_sql(1)` (`query!`
    /// needs a literal): the two must not drift apart.
    #[test]
    fn inbox_claim_fragment_is_the_checked_statement() {
        assert_eq!(
            inbox_claim_sql(1),
            "INSERT INTO inbox (message_id, queue) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING RETURNING 1"
        );
    }
}
