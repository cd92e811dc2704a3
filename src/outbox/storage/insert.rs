//! The outbox insert: one multi-row `INSERT ... SELECT ... UNNEST` per batch of
//! events, run alone ([`insert_events`], the handlers' `enqueue`) or folded into
//! another statement ([`EventArrays`], [`Owned`]: the push writer's one round
//! trip). Apart from the relay's statements because the two never meet: rows are
//! written here and only read and settled in [`super::batch`].

use std::sync::LazyLock;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::outbox::event::{Event, headers_to_json};

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
pub(crate) async fn insert_events(
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
