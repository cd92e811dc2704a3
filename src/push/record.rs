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
//! Why one statement, and not a handler transaction
//! (BEGIN, `inbox::claim`, writes, COMMIT): pushes to one
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
//!
//! This is the push domain's storage: the only SQL of `pushes` and `ref_state`
//! writes. The statements are built at run time (array inserts of the outbox,
//! the webhook deliveries and the inbox claim are folded in), so their bind
//! positions are named once, in [`GroupParams`] and [`OneParams`]: each group of
//! values starts where the previous one ends, its fragment numbers its `$N` from
//! that base, and the values are bound in the same order. No `$N` is written by
//! hand; a unit test checks that each statement's placeholders are exactly
//! `$1..=$count`.
//!
//! # Why one file
//! The statements and the positions of their values ([`GroupParams`],
//! [`OneParams`]) are one contract: a value bound out of place is a wrong
//! write, so they are read, and changed, together.

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

/// The `$N` of each group of values [`record_group`] binds, in bind order.
struct GroupParams {
    /// The inbox queue (one value).
    queue: usize,
    /// [`PushColumns`]' arrays.
    items: usize,
    /// [`RefUpdateColumns`]' arrays, with their owners.
    refs: usize,
    /// [`EventArrays`].
    events: usize,
    /// The events' owners (one `uuid[]`).
    event_owners: usize,
    /// [`DeliveryArrays`].
    deliveries: usize,
    /// The deliveries' owners (one `uuid[]`).
    delivery_owners: usize,
    /// How many values are bound (the last `$N`).
    #[cfg(test)]
    count: usize,
}

/// [`GroupParams`] of the group statement: each group right after the previous.
const GROUP: GroupParams = {
    let queue = 1;
    let items = queue + 1;
    let refs = items + PushColumns::PARAMS;
    let events = refs + RefUpdateColumns::PARAMS;
    let event_owners = events + EVENT_PARAMS;
    let deliveries = event_owners + 1;
    let delivery_owners = deliveries + DELIVERY_PARAMS;
    GroupParams {
        queue,
        items,
        refs,
        events,
        event_owners,
        deliveries,
        delivery_owners,
        #[cfg(test)]
        count: delivery_owners,
    }
};

/// The statement of [`record_group`], its values at [`GROUP`]. Long because it is
/// one SQL statement (claim, lock, insert pushes, refs, events and deliveries in
/// one round trip), which reads best whole.
fn group_sql() -> String {
    let mine = "(SELECT message_id FROM mine)";
    let GroupParams {
        queue,
        items,
        refs,
        events,
        event_owners,
        deliveries,
        delivery_owners,
        ..
    } = GROUP;
    format!(
        "WITH items AS (
             SELECT * FROM {}
                 AS i(message_id, push_id, repository, pusher, pushed_at, ref_count, updates)
         ),
         claim AS (
             INSERT INTO inbox (message_id, queue)
             SELECT message_id, ${queue} FROM items ORDER BY message_id
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
             JOIN {} AS u(owner, r, s, d) ON u.owner = m.message_id
             ORDER BY m.repository, u.r, m.push_id DESC
             {REF_STATE_FORWARD}
         ),
         o AS ({}),
         d AS ({})
         SELECT message_id FROM mine",
        PushColumns::unnest_sql(items),
        RefUpdateColumns::unnest_sql(refs),
        EventArrays::insert_sql(
            events,
            "",
            Some(Owned {
                param: event_owners,
                owners: mine
            })
        ),
        DeliveryArrays::insert_sql(
            deliveries,
            "",
            Some(Owned {
                param: delivery_owners,
                owners: mine
            })
        ),
    )
}

/// [`record`] for two or more pushes.
async fn record_group<'c>(
    conn: impl PgExecutor<'c>,
    queue: &str,
    writes: &[PushWrite],
) -> Result<Vec<Uuid>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(group_sql);
    let mut items = PushColumns::default();
    let mut refs = RefUpdateColumns::default();
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
    // In `GROUP`'s order.
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

/// The `$N` of each group of values [`record_one`] binds, in bind order.
struct OneParams {
    /// The push's columns ([`PUSH_PARAMS`] values: push id, repository,
    /// pusher, pushed at, ref count, updates).
    push: usize,
    /// [`RefUpdateColumns`]' arrays, without owners.
    refs: usize,
    /// The inbox claim (message id, queue).
    claim: usize,
    /// [`EventArrays`].
    events: usize,
    /// [`DeliveryArrays`].
    deliveries: usize,
    /// How many values are bound (the last `$N`).
    #[cfg(test)]
    count: usize,
}

/// How many values [`bind_push`] binds.
const PUSH_PARAMS: usize = 6;

/// [`OneParams`] of the single-push statement: each group right after the previous.
const ONE: OneParams = {
    let push = 1;
    let refs = push + PUSH_PARAMS;
    let claim = refs + RefUpdateColumns::UNOWNED_PARAMS;
    let events = claim + 2;
    let deliveries = events + EVENT_PARAMS;
    OneParams {
        push,
        refs,
        claim,
        events,
        deliveries,
        #[cfg(test)]
        count: deliveries + DELIVERY_PARAMS - 1,
    }
};

/// The statement of [`record_one`], its values at [`ONE`].
fn one_sql() -> String {
    let [id, repository, pusher, pushed_at, ref_count, updates] =
        std::array::from_fn::<usize, PUSH_PARAMS, _>(|i| ONE.push + i);
    format!(
        "WITH claim AS ({}),
         lock AS MATERIALIZED (
             SELECT pg_advisory_xact_lock(hashtextextended(${repository}, 0)) FROM claim
         ),
         p AS (
             INSERT INTO pushes (push_id, repository, pusher, pushed_at, ref_count, updates)
             SELECT ${id}, ${repository}, ${pusher}, ${pushed_at}, ${ref_count}, ${updates}
             FROM lock
             ON CONFLICT (push_id) DO NOTHING
         ),
         r AS (
             INSERT INTO ref_state (repository, ref, sha, deleted, push_id)
             SELECT ${repository}, r, s, d, ${id}
             FROM lock, {} AS u(r, s, d)
             {REF_STATE_FORWARD}
         ),
         o AS ({}),
         d AS ({})
         SELECT 1 FROM lock",
        inbox_claim_sql(ONE.claim),
        RefUpdateColumns::unowned_unnest_sql(ONE.refs),
        EventArrays::insert_sql(ONE.events, "lock, ", None),
        DeliveryArrays::insert_sql(ONE.deliveries, "lock, ", None),
    )
}

/// Binds the push's columns of `w`, in [`one_sql`]'s order.
fn bind_push<'q>(q: Query<'q>, w: &'q PushWrite) -> Query<'q> {
    q.bind(w.push.push_id)
        .bind(&w.push.repository)
        .bind(&w.push.pusher)
        .bind(w.push.pushed_at)
        .bind(ref_count(&w.push))
        .bind(updates_json(&w.push))
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
    static SQL: LazyLock<String> = LazyLock::new(one_sql);
    let mut refs = RefUpdateColumns::default();
    refs.add(w);
    // In `ONE`'s order.
    let q = bind_push(sqlx::query(&SQL), w);
    let q = refs.bind_unowned(q).bind(w.message_id).bind(queue);
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

/// One entry per push: the group statement's `items`.
#[derive(Default)]
struct PushColumns {
    message_ids: Vec<Uuid>,
    push_ids: Vec<Uuid>,
    repositories: Vec<String>,
    pushers: Vec<Option<String>>,
    pushed_at: Vec<DateTime<Utc>>,
    ref_counts: Vec<i32>,
    updates: Vec<serde_json::Value>,
}

impl PushColumns {
    /// How many values [`Self::bind`] binds.
    const PARAMS: usize = 7;

    /// The arrays as a set of rows, read from `$first` on, in [`Self::bind`]'s order.
    fn unnest_sql(first: usize) -> String {
        let [m, p, r, u, at, n, up] =
            std::array::from_fn::<usize, { PushColumns::PARAMS }, _>(|i| first + i);
        format!(
            "UNNEST(${m}::uuid[], ${p}::uuid[], ${r}::text[], ${u}::text[], \
                    ${at}::timestamptz[], ${n}::int4[], ${up}::jsonb[])"
        )
    }

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
struct RefUpdateColumns {
    owners: Vec<Uuid>,
    refs: Vec<String>,
    shas: Vec<String>,
    deleted: Vec<bool>,
}

impl RefUpdateColumns {
    /// How many values [`Self::bind`] binds.
    const PARAMS: usize = 4;
    /// How many values [`Self::bind_unowned`] binds.
    const UNOWNED_PARAMS: usize = 3;

    /// The arrays with their owners, read from `$first` on, in [`Self::bind`]'s order.
    fn unnest_sql(first: usize) -> String {
        let [o, r, s, d] =
            std::array::from_fn::<usize, { RefUpdateColumns::PARAMS }, _>(|i| first + i);
        format!("UNNEST(${o}::uuid[], ${r}::text[], ${s}::text[], ${d}::bool[])")
    }

    /// The arrays without owners (one push), read from `$first` on, in
    /// [`Self::bind_unowned`]'s order.
    fn unowned_unnest_sql(first: usize) -> String {
        let [r, s, d] =
            std::array::from_fn::<usize, { RefUpdateColumns::UNOWNED_PARAMS }, _>(|i| first + i);
        format!("unnest(${r}::text[], ${s}::text[], ${d}::bool[])")
    }

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

    fn bind_unowned(self, q: Query<'_>) -> Query<'_> {
        q.bind(self.refs).bind(self.shas).bind(self.deleted)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The `$N` placeholders of `sql`.
    fn placeholders(sql: &str) -> BTreeSet<usize> {
        let mut found = BTreeSet::new();
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            rest = &rest[at + 1..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(n) = digits.parse() {
                found.insert(n);
            }
        }
        found
    }

    #[test]
    fn group_statement_uses_every_named_position_and_no_other() {
        assert_eq!(
            placeholders(&group_sql()),
            (1..=GROUP.count).collect::<BTreeSet<_>>()
        );
    }

    #[test]
    fn single_push_statement_uses_every_named_position_and_no_other() {
        assert_eq!(
            placeholders(&one_sql()),
            (1..=ONE.count).collect::<BTreeSet<_>>()
        );
    }
}
