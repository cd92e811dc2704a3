//! What a push means for the database, as one statement for a group of pushes.
//!
//! Under `pg_advisory_xact_lock` on each repository (so pushes to one repository
//! apply one at a time; the lock lives in the transaction, never on a pooled
//! session) the statement claims each push's message in the inbox, records the
//! push, moves the ref-state rows forward, and enqueues the events, webhook jobs
//! and webhook deliveries through the outbox. Ref state only moves forward
//! ([`REF_STATE_FORWARD`]), so pushes handled out of order still end at the
//! last push.
//!
//! Why one statement, and not the inbox's generic transaction
//! (`inbox::Transactional`: BEGIN, claim, writes, COMMIT): pushes to one
//! repository serialize on its lock, and in a transaction the lock is held from
//! the locking statement until COMMIT, so the reply to that statement, the
//! wake-up of the task and the COMMIT's round trip would be paid by every push of
//! the repository in turn. Run outside an explicit transaction, the statement is
//! its own transaction: the lock is taken and released inside the server, around
//! the writes and the commit only.
//!
//! Why a group ([`super::group_commit`]): the statement's fixed costs (a round
//! trip, planning and starting a large statement, the commit's WAL flush and
//! NOTIFY, taking the lock) are paid once for every push that was waiting, and a
//! busy repository's lock is taken once per group instead of once per push.
//!
//! Duplicates (the inbox already has the message) are skipped one by one: every
//! write reads from the claimed messages, and the statement returns their ids.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Row};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::outbox::Event;
use crate::outbox::storage::{EVENT_PARAMS, EventArrays, Owned, inbox_claim_sql};
use crate::push_job::PushJob;
use crate::push_job::update::is_zero;
use crate::webhook::Deliveries;
use crate::webhook::storage::{DELIVERY_PARAMS, DeliveryArrays, NewDelivery};

/// One push's writes.
#[derive(Debug)]
pub struct PushWrite {
    /// The delivery's message id, claimed in the inbox.
    pub message_id: Uuid,
    /// The push.
    pub push: PushJob,
    /// Outbox rows, in order: the push's events, then its webhook jobs.
    pub events: Vec<Event>,
    /// Webhook delivery rows.
    pub deliveries: Vec<NewDelivery>,
}

impl PushWrite {
    /// The writes of a push (message `message_id`) with its `events` and the
    /// webhook `deliveries` planned for them: the outbox gets the events, then
    /// the deliveries' `webhook` jobs.
    pub fn new(
        message_id: Uuid,
        push: PushJob,
        mut events: Vec<Event>,
        deliveries: Deliveries,
    ) -> Self {
        let Deliveries { rows, mut jobs } = deliveries;
        // Planned in the group's writer: the jobs belong to this push's trace.
        let trace = events.first().and_then(|e| e.trace_context.clone());
        for job in &mut jobs {
            job.trace_context.clone_from(&trace);
        }
        events.append(&mut jobs);
        Self {
            message_id,
            push,
            events,
            deliveries: rows,
        }
    }
}

/// Ref state only moves forward: a push older than the one that last set a ref
/// (push ids are time-ordered UUID v7) does not overwrite it. The conflict
/// clause of both statements' `ref_state` insert.
const REF_STATE_FORWARD: &str = "ON CONFLICT (repository, ref) DO UPDATE
                     SET sha = EXCLUDED.sha, deleted = EXCLUDED.deleted,
                         push_id = EXCLUDED.push_id, updated_at = now()
                     WHERE ref_state.push_id < EXCLUDED.push_id";

/// Records `writes` (claimed in the inbox of `queue`) in one statement and
/// returns the message ids it claimed: a write whose message the inbox already
/// had is skipped, with nothing written for it. Run on a plain connection the
/// statement is its own transaction and commits before it returns; in a
/// transaction, the locks are held until that commits.
///
/// The claims come first and the locks read from them, and every insert reads
/// from the locks: nothing is written for a duplicate, and no row is written (and
/// no outbox id drawn) before the locks are held, so outbox ids of one
/// repository follow commit order. Locks are taken in hash order, so two groups
/// sharing repositories cannot deadlock on them. Message ids must be distinct
/// within `writes` (a group never holds one message twice).
pub async fn record<'c>(
    conn: impl PgExecutor<'c>,
    queue: &str,
    writes: &[PushWrite],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let span = record_span(writes);
    async {
        if let [one] = writes {
            return record_one(conn, queue, one).await;
        }
        record_group(conn, queue, writes).await
    }
    .instrument(span)
    .await
}

/// The push statement's database span: a child of the writing push's span,
/// linked to the trace of every push of the group (their events' creation
/// contexts), so each push's trace shows the statement that wrote it.
fn record_span(writes: &[PushWrite]) -> tracing::Span {
    let span = crate::otel::span::db("INSERT", "INSERT pushes");
    let current = crate::otel::propagate::traceparent_of(&tracing::Span::current());
    for w in writes {
        let Some(tp) = w.events.first().and_then(|e| e.trace_context.as_deref()) else {
            continue;
        };
        if Some(tp) != current.as_deref()
            && let Some(sc) = crate::otel::propagate::span_context(tp, None)
        {
            span.add_link(sc);
        }
    }
    span
}

/// [`record`] for two or more pushes.
async fn record_group<'c>(
    conn: impl PgExecutor<'c>,
    queue: &str,
    writes: &[PushWrite],
) -> Result<Vec<Uuid>, sqlx::Error> {
    const ITEMS: usize = 2;
    const REFS: usize = ITEMS + 7;
    const EVENTS: usize = REFS + 4;
    const EVENT_OWNERS: usize = EVENTS + EVENT_PARAMS;
    const DELIVERIES: usize = EVENT_OWNERS + 1;
    const DELIVERY_OWNERS: usize = DELIVERIES + DELIVERY_PARAMS;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let mine = "(SELECT message_id FROM mine)";
        format!(
            "WITH items AS (
                 SELECT * FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[],
                                      $6::timestamptz[], $7::int4[], $8::jsonb[])
                     AS i(message_id, push_id, repository, pusher, pushed_at, ref_count, updates)
             ),
             claim AS (
                 INSERT INTO inbox (message_id, queue)
                 SELECT message_id, $1 FROM items ORDER BY message_id
                 ON CONFLICT DO NOTHING RETURNING message_id
             ),
             lock AS MATERIALIZED (
                 SELECT count(*) AS repositories FROM (
                     SELECT pg_advisory_xact_lock(h) FROM (
                         SELECT DISTINCT hashtextextended(i.repository, 0) AS h
                         FROM items i JOIN claim USING (message_id) ORDER BY h
                     ) k
                 ) l
             ),
             mine AS MATERIALIZED (
                 SELECT i.* FROM lock, items i JOIN claim USING (message_id)
             ),
             p AS (
                 INSERT INTO pushes (push_id, repository, pusher, pushed_at, ref_count, updates)
                 SELECT push_id, repository, pusher, pushed_at, ref_count, updates FROM mine
                 ON CONFLICT (push_id) DO NOTHING
             ),
             r AS (
                 INSERT INTO ref_state (repository, ref, sha, deleted, push_id)
                 SELECT DISTINCT ON (m.repository, u.r) m.repository, u.r, u.s, u.d, m.push_id
                 FROM mine m
                 JOIN UNNEST(${REFS}::uuid[], ${}::text[], ${}::text[], ${}::bool[])
                     AS u(owner, r, s, d) ON u.owner = m.message_id
                 ORDER BY m.repository, u.r, m.push_id DESC
                 {REF_STATE_FORWARD}
             ),
             o AS ({}),
             d AS ({})
             SELECT message_id FROM mine",
            REFS + 1,
            REFS + 2,
            REFS + 3,
            EventArrays::insert_sql(
                EVENTS,
                "",
                Some(Owned {
                    param: EVENT_OWNERS,
                    owners: mine
                })
            ),
            DeliveryArrays::insert_sql(
                DELIVERIES,
                "",
                Some(Owned {
                    param: DELIVERY_OWNERS,
                    owners: mine
                })
            ),
        )
    });
    let mut items = Items::default();
    let mut refs = Refs::default();
    let mut events = EventArrays::default();
    let mut event_owners: Vec<Uuid> = Vec::new();
    let mut deliveries = DeliveryArrays::default();
    let mut delivery_owners: Vec<Uuid> = Vec::new();
    for w in writes {
        items.add(w);
        refs.add(w);
        events.extend(&w.events);
        event_owners.extend(std::iter::repeat_n(w.message_id, w.events.len()));
        deliveries.extend(&w.deliveries);
        delivery_owners.extend(std::iter::repeat_n(w.message_id, w.deliveries.len()));
    }
    let q = sqlx::query(&SQL).bind(queue);
    let q = refs.bind(items.bind(q));
    let q = events.bind(q).bind(event_owners);
    let q = deliveries.bind(q).bind(delivery_owners);
    // All rows, not the first: the statement's writes finish and it commits
    // only after its rows are sent, and an error there must reach the caller.
    q.fetch_all(conn)
        .await?
        .iter()
        .map(|row| row.try_get::<Uuid, _>(0))
        .collect()
}

/// [`record`] for a single push: the same writes, without the group's joins
/// between the pushes and their rows (items, claims, owners). A push written
/// alone is the common case below full load, and those joins would cost it
/// server time for nothing and hold the repository's lock longer
/// (BENCHMARKS.md, "What limits each figure").
async fn record_one<'c>(
    conn: impl PgExecutor<'c>,
    queue: &str,
    w: &PushWrite,
) -> Result<Vec<Uuid>, sqlx::Error> {
    const CLAIM: usize = 10;
    const EVENTS: usize = CLAIM + 2;
    const DELIVERIES: usize = EVENTS + EVENT_PARAMS;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH claim AS ({}),
             lock AS MATERIALIZED (
                 SELECT pg_advisory_xact_lock(hashtextextended($2, 0)) FROM claim
             ),
             p AS (
                 INSERT INTO pushes (push_id, repository, pusher, pushed_at, ref_count, updates)
                 SELECT $1, $2, $3, $4, $5, $6 FROM lock
                 ON CONFLICT (push_id) DO NOTHING
             ),
             r AS (
                 INSERT INTO ref_state (repository, ref, sha, deleted, push_id)
                 SELECT $2, r, s, d, $1
                 FROM lock, unnest($7::text[], $8::text[], $9::bool[]) AS u(r, s, d)
                 {REF_STATE_FORWARD}
             ),
             o AS ({}),
             d AS ({})
             SELECT 1 FROM lock",
            inbox_claim_sql(CLAIM),
            EventArrays::insert_sql(EVENTS, "lock, ", None),
            DeliveryArrays::insert_sql(DELIVERIES, "lock, ", None),
        )
    });
    let mut refs = Refs::default();
    refs.add(w);
    let q = sqlx::query(&SQL)
        .bind(w.push.push_id)
        .bind(&w.push.repository)
        .bind(&w.push.pusher)
        .bind(w.push.pushed_at)
        .bind(ref_count(&w.push))
        .bind(updates_json(&w.push))
        .bind(refs.refs)
        .bind(refs.shas)
        .bind(refs.deleted)
        .bind(w.message_id)
        .bind(queue);
    let q = DeliveryArrays::new(&w.deliveries).bind(EventArrays::new(&w.events).bind(q));
    // All rows, as in `record`: the commit happens after the row is sent.
    let claimed = !q.fetch_all(conn).await?.is_empty();
    Ok(if claimed { vec![w.message_id] } else { vec![] })
}

/// `pushes.ref_count` of `p`.
fn ref_count(p: &PushJob) -> i32 {
    i32::try_from(p.updates.len()).unwrap_or(i32::MAX)
}

/// `pushes.updates` of `p`.
fn updates_json(p: &PushJob) -> serde_json::Value {
    // Serialising validated ref updates (strings) cannot fail.
    serde_json::to_value(&p.updates).unwrap_or(serde_json::Value::Null)
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// One entry per push, in parameter order `$2`–`$8`.
#[derive(Default)]
struct Items {
    message_ids: Vec<Uuid>,
    push_ids: Vec<Uuid>,
    repositories: Vec<String>,
    pushers: Vec<Option<String>>,
    pushed_at: Vec<DateTime<Utc>>,
    ref_counts: Vec<i32>,
    updates: Vec<serde_json::Value>,
}

impl Items {
    fn add(&mut self, w: &PushWrite) {
        let p = &w.push;
        self.message_ids.push(w.message_id);
        self.push_ids.push(p.push_id);
        self.repositories.push(p.repository.clone());
        self.pushers.push(p.pusher.clone());
        self.pushed_at.push(p.pushed_at);
        self.ref_counts.push(ref_count(p));
        self.updates.push(updates_json(p));
    }

    fn bind(self, q: Query<'_>) -> Query<'_> {
        q.bind(self.message_ids)
            .bind(self.push_ids)
            .bind(self.repositories)
            .bind(self.pushers)
            .bind(self.pushed_at)
            .bind(self.ref_counts)
            .bind(self.updates)
    }
}

/// One entry per ref update of every push, with its push's message id.
#[derive(Default)]
struct Refs {
    owners: Vec<Uuid>,
    refs: Vec<String>,
    shas: Vec<String>,
    deleted: Vec<bool>,
}

impl Refs {
    fn add(&mut self, w: &PushWrite) {
        for u in &w.push.updates {
            self.owners.push(w.message_id);
            self.refs.push(u.refname.clone());
            self.shas.push(u.after.clone());
            self.deleted.push(is_zero(&u.after));
        }
    }

    fn bind(self, q: Query<'_>) -> Query<'_> {
        q.bind(self.owners)
            .bind(self.refs)
            .bind(self.shas)
            .bind(self.deleted)
    }
}
