//! Returned (unroutable) messages: matched to their rows across batches
//! ([`ReturnLedger`]), counted per route and logged at most once a minute per route.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::LOG_TARGET;
use super::confirm::Outcome;
use super::policy::RowPolicy;
use crate::amqp::publish;
use crate::metrics::metrics;
use crate::outbox::storage::{self, Failure};

/// How long a return nobody has claimed is kept (a row of a later batch
/// claims it within seconds; this only bounds the ledger).
pub(crate) const RETURN_KEPT: Duration = Duration::from_secs(300);

/// Returned messages not yet matched to their row.
///
/// lapin gives a returned message to whichever confirm completes next (see
/// [`publish::Confirmed`]), so under a `multiple` ack the return of one row
/// can arrive with the confirm of another row of the same batch, of a later
/// batch, or of an earlier one. Returns are matched by message id instead:
/// the settler, which settles batches in order, keeps every return here;
/// an acked row of the batch being settled whose message was returned is
/// failed instead of published; a return whose row an earlier batch already
/// marked published puts that row back in the work queue; one whose row is in
/// a later batch waits here for it. Every return reaches some confirm before
/// the batch holding its row is settled, since the broker returns a message
/// before it acks it and each completed confirm takes the oldest waiting one.
#[derive(Default)]
pub(super) struct ReturnLedger {
    open: HashMap<Uuid, (String, Instant)>,
}

impl ReturnLedger {
    pub(super) fn absorb(&mut self, returns: Vec<publish::Returned>) {
        for r in returns {
            match r.message_id.as_deref().map(Uuid::parse_str) {
                Some(Ok(id)) => {
                    self.open.insert(id, (r.reason, Instant::now()));
                }
                _ => tracing::warn!(
                    target: LOG_TARGET,
                    reason = %r.reason,
                    "relay: a returned message without an outbox message id"
                ),
            }
        }
    }

    /// Fails the acked rows of `outcome` whose message was returned.
    pub(super) fn claim(&mut self, outcome: &mut Outcome, policy: &RowPolicy) {
        if self.open.is_empty() {
            return;
        }
        let mut returned: HashSet<i64> = HashSet::new();
        for (m, id, attempts) in &outcome.acked {
            if let Some((reason, _)) = self.open.remove(m) {
                returned.insert(*id);
                outcome.failed.push(policy.failure(*id, *attempts, reason));
            }
        }
        if !returned.is_empty() {
            outcome.published.retain(|id| !returned.contains(id));
        }
    }

    /// Returns still unclaimed (rows settled earlier, or in later batches).
    pub(super) fn unclaimed(&self) -> (Vec<Uuid>, Vec<String>) {
        self.open
            .iter()
            .map(|(m, (reason, _))| (*m, reason.clone()))
            .unzip()
    }

    pub(super) fn forget(&mut self, ids: &[Uuid]) {
        for id in ids {
            self.open.remove(id);
        }
        self.open.retain(|_, (_, at)| at.elapsed() < RETURN_KEPT);
    }
}

/// How [`publish::confirmed`] words a `mandatory` publish the broker returned.
const UNROUTABLE: &str = "returned as unroutable";
/// At most one unroutable WARN line per (exchange, routing key) per this long.
const UNROUTABLE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Routes remembered for [`UNROUTABLE_LOG_INTERVAL`] before quiet ones are
/// forgotten (routes are event types, so this is never reached in practice).
const UNROUTABLE_ROUTES_KEPT: usize = 1024;

/// What is known of one route's returned rows since its last log line.
struct UnroutableLog {
    logged_at: Instant,
    /// Rows returned since that line (not logged yet).
    rows: u64,
}

/// Returned rows per (exchange, routing key), for the throttled log line.
static UNROUTABLE_LOG: LazyLock<Mutex<HashMap<(String, String), UnroutableLog>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The (exchange, routing key) of each failed row the broker returned as
/// unroutable, read from the outbox (the failures carry only the id). One
/// statement, and only when a row was returned.
pub(super) async fn unroutable_routes(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    failed: &[Failure],
) -> Result<HashMap<i64, (String, String)>, sqlx::Error> {
    let ids: Vec<i64> = failed
        .iter()
        .filter(|f| f.error.starts_with(UNROUTABLE))
        .map(|f| f.id)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = storage::routes(tx, &ids).await?;
    let mut routes: HashMap<i64, (String, String)> = rows
        .into_iter()
        .map(|(id, exchange, routing_key)| (id, (exchange, routing_key)))
        .collect();
    for id in ids {
        // Cannot happen (the row is locked by this batch); still counted.
        routes
            .entry(id)
            .or_insert_with(|| ("unknown".to_string(), "unknown".to_string()));
    }
    Ok(routes)
}

/// Counts `rows` returned rows of a route, and logs them (with those returned
/// since the route's last line) unless that line is less than
/// [`UNROUTABLE_LOG_INTERVAL`] old.
pub(super) fn note_unroutable(exchange: &str, routing_key: &str, rows: u64) {
    metrics()
        .relay_unroutable_total
        .with_label_values(&[exchange, routing_key])
        .inc_by(rows);
    let due = {
        let mut log = UNROUTABLE_LOG
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if log.len() >= UNROUTABLE_ROUTES_KEPT {
            log.retain(|_, l| l.rows > 0 || l.logged_at.elapsed() < UNROUTABLE_LOG_INTERVAL);
        }
        let key = (exchange.to_string(), routing_key.to_string());
        match log.get_mut(&key) {
            Some(l) if l.logged_at.elapsed() < UNROUTABLE_LOG_INTERVAL => {
                l.rows += rows;
                None
            }
            Some(l) => {
                l.logged_at = Instant::now();
                Some(std::mem::take(&mut l.rows) + rows)
            }
            None => {
                log.insert(
                    key,
                    UnroutableLog {
                        logged_at: Instant::now(),
                        rows: 0,
                    },
                );
                Some(rows)
            }
        }
    };
    if let Some(rows) = due {
        tracing::warn!(
            target: LOG_TARGET,
            exchange,
            routing_key,
            rows,
            hint = "bind a queue to the exchange for this routing key: the rows are retried with backoff, parked ones once unparked (`hookfleet outbox unpark`)",
            "relay: events returned as unroutable (nothing bound)"
        );
    }
}
