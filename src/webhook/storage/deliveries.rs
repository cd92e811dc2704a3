//! Statements of `webhook_deliveries`: the rows written with the push (alone,
//! or folded into the push writer's statement through [`DeliveryArrays`]) and
//! the handler's load of one.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::outbox::storage::Owned;

/// One delivery to create in the push transaction.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Stable across retries and redeliveries.
    pub delivery_id: Uuid,
    /// Target subscription.
    pub subscription_id: i64,
    /// hookfleet event type (`git.push`...).
    pub(crate) event_type: String,
    /// The push id.
    pub(crate) correlation_id: Option<String>,
    /// The body to POST.
    pub(crate) payload: serde_json::Value,
}

/// The parameter arrays of a delivery insert, so the insert can run alone
/// ([`insert_deliveries`]) or be folded into the push handler's one statement
/// ([`crate::push::record`]). One definition of the SQL either way.
#[derive(Default)]
pub(crate) struct DeliveryArrays {
    ids: Vec<Uuid>,
    subs: Vec<i64>,
    types: Vec<String>,
    corr: Vec<Option<String>>,
    payloads: Vec<serde_json::Value>,
}

/// How many parameters [`DeliveryArrays::insert_sql`] uses.
pub(crate) const DELIVERY_PARAMS: usize = 5;

impl DeliveryArrays {
    /// The arrays of `rows`.
    pub(crate) fn new(rows: &[NewDelivery]) -> Self {
        let mut a = DeliveryArrays::default();
        a.extend(rows);
        a
    }

    /// Appends `rows`.
    pub(crate) fn extend(&mut self, rows: &[NewDelivery]) {
        for r in rows {
            self.ids.push(r.delivery_id);
            self.subs.push(r.subscription_id);
            self.types.push(r.event_type.clone());
            self.corr.push(r.correlation_id.clone());
            self.payloads.push(r.payload.clone());
        }
    }

    /// The INSERT reading the arrays from parameters `$first` to
    /// `$first + DELIVERY_PARAMS - 1`, every row, or with `owned` only the rows
    /// of some owners (see [`Owned`]); `join` (e.g. `"lock, "`) is put in front
    /// of the UNNEST in the FROM list, so rows are produced only after it.
    pub(crate) fn insert_sql(first: usize, join: &str, owned: Option<Owned<'_>>) -> String {
        let [i, s, t, c, p] = std::array::from_fn::<usize, DELIVERY_PARAMS, _>(|k| first + k);
        let (owner_col, owner_alias, filter) = Owned::parts(owned);
        format!(
            "INSERT INTO webhook_deliveries (delivery_id, subscription_id, event_type, \
                                             correlation_id, payload) \
             SELECT d.i, d.s, d.t, d.c, d.p \
             FROM {join}UNNEST(${i}::uuid[], ${s}::bigint[], ${t}::text[], ${c}::text[], \
                         ${p}::jsonb[]{owner_col}) AS d(i, s, t, c, p{owner_alias}) \
             {filter}"
        )
    }

    /// Binds the arrays (in [`Self::insert_sql`]'s parameter order) to `q`.
    pub(crate) fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(self.ids)
            .bind(self.subs)
            .bind(self.types)
            .bind(self.corr)
            .bind(self.payloads)
    }
}

/// Inserts delivery rows with one statement.
pub async fn insert_deliveries(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[NewDelivery],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| DeliveryArrays::insert_sql(1, "", None));
    DeliveryArrays::new(rows)
        .bind(sqlx::query(&SQL))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A delivery with its subscription, as the handler needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    /// Delivery id.
    pub(crate) delivery_id: Uuid,
    /// Subscription id.
    pub(crate) subscription_id: i64,
    /// hookfleet event type.
    pub(crate) event_type: String,
    /// Push id.
    pub(crate) correlation_id: Option<String>,
    /// Body.
    pub(crate) payload: serde_json::Value,
    /// When the delivery was written: in the push's transaction, so the time
    /// of the event (the Standard Webhooks payload's `timestamp`).
    pub(crate) created_at: DateTime<Utc>,
}

/// Loads a delivery.
pub async fn load_delivery(pool: &PgPool, id: Uuid) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as!(
        DeliveryRow,
        "SELECT delivery_id, subscription_id, event_type, correlation_id, payload, created_at \
         FROM webhook_deliveries WHERE delivery_id = $1",
        id,
    )
    .fetch_optional(pool)
    .await
}
