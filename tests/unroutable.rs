//! Events the broker returns as unroutable (a mandatory publish to an exchange
//! with nothing bound), on the real broker: counted per exchange and routing key
//! in `hookfleet_relay_unroutable_total`, and logged as one readable line per
//! route and minute rather than one per row and attempt. Other failures keep
//! their line per row.
//!
//! The relay's logs are captured by a subscriber set as this thread's default:
//! these tests run on a current-thread runtime, so the relay's spawned task runs
//! here too.

use hookfleet_testkit as common;
use hookfleet_testkit::outbox as outbox_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestDb, eventually, test_config, unique_prefix};
use hookfleet::amqp::topology::Names;
use hookfleet::config::Config;
use hookfleet::metrics::metrics;
use hookfleet::outbox::{self, Event};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use outbox_support::{EventsQueue, commit_events, events};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const SUMMARY: &str = "relay: events returned as unroutable (nothing bound)";

/// Log lines (JSON) written by this thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures WARN and above of this thread until the guard drops.
    fn install() -> (Captured, tracing::subscriber::DefaultGuard) {
        common::init_logs();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The unroutable summary lines about `exchange`.
    fn summaries(&self, exchange: &str) -> Vec<Value> {
        self.with_message(SUMMARY)
            .into_iter()
            .filter(|l| l["fields"]["exchange"] == exchange)
            .collect()
    }

    /// Lines whose message is `message`.
    fn with_message(&self, message: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    }
}

/// An exchange with no bindings: a mandatory publish there is returned.
async fn unbound_exchange(q: &EventsQueue, name: &str) {
    q.channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

async fn setup() -> (TestDb, Config, EventsQueue) {
    let db = TestDb::new().await;
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.outbox.poll_interval = Duration::from_millis(200);
    let q = EventsQueue::bind(&cfg).await;
    (db, cfg, q)
}

async fn delete_exchange(q: &EventsQueue, name: &str) {
    let _ = q
        .channel
        .exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await;
}

fn spawn_relay(
    cfg: &Config,
    pool: &PgPool,
    token: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(outbox::run_relay(
        cfg.amqp.clone(),
        cfg.outbox.clone(),
        pool.clone(),
        token.clone(),
    ))
}

/// `n` events of `event_type` aimed at `exchange`.
fn aimed_at(cfg: &Config, exchange: &str, event_type: &str, n: usize) -> Vec<Event> {
    let names = Names::new(&cfg.amqp.prefix);
    (0..n)
        .map(|i| {
            let mut e = Event::new(&names, event_type, None, serde_json::json!({ "n": i }));
            e.exchange = exchange.to_string();
            e
        })
        .collect()
}

/// Failed publish attempts recorded for the rows aimed at `exchange`.
async fn attempts(pool: &PgPool, exchange: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(p.publish_attempts), 0)::bigint \
         FROM outbox_pending p JOIN outbox o ON o.id = p.id WHERE o.exchange = $1",
    )
    .bind(exchange)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn unroutable(exchange: &str, routing_key: &str) -> u64 {
    metrics()
        .relay_unroutable_total
        .with_label_values(&[exchange, routing_key])
        .get()
}

#[tokio::test]
async fn returned_rows_are_counted_and_logged_once_per_route() {
    let (captured, _guard) = Captured::install();
    let (db, cfg, q) = setup().await;
    let nowhere = format!("{}.nowhere", cfg.amqp.prefix);
    unbound_exchange(&q, &nowhere).await;
    let missing = format!("{}.does-not-exist", cfg.amqp.prefix);

    // One batch: five rows of one unbound route, and one row aimed at a missing
    // exchange (a failure of another kind, never sent). No routable row shares
    // the batch: lapin may hand a return to the wrong confirm of a pipelined
    // batch (see `a_returned_row_is_never_marked_published`).
    let mut batch = aimed_at(&cfg, &nowhere, "git.tag.created", 5);
    batch.extend(aimed_at(&cfg, &missing, "git.push", 1));
    commit_events(&db.pool, &batch).await;
    assert_eq!(unroutable(&nowhere, "git.tag.created"), 0);

    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    // A second attempt of every returned row (after its 1 s backoff), still
    // within the minute: counted again, not logged again.
    eventually(WAIT, "returned rows tried twice", || async {
        (unroutable(&nowhere, "git.tag.created") >= 10).then_some(())
    })
    .await;
    token.cancel();
    relay.await.unwrap().unwrap();

    // Counted once per returned row and attempt: what the rows record.
    assert_eq!(
        i64::try_from(unroutable(&nowhere, "git.tag.created")).unwrap(),
        attempts(&db.pool, &nowhere).await,
        "one count per returned row and attempt"
    );
    let text = hookfleet::metrics::render();
    let sample = format!(
        "hookfleet_relay_unroutable_total{{exchange=\"{nowhere}\",routing_key=\"git.tag.created\"}}"
    );
    assert!(text.contains(&sample), "{sample} missing from:\n{text}");

    // One line for the route, with the rows of the first attempt.
    let summaries = captured.summaries(&nowhere);
    assert_eq!(summaries.len(), 1, "one line per route: {summaries:#?}");
    let line = &summaries[0];
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["fields"]["routing_key"], "git.tag.created", "{line}");
    assert_eq!(line["fields"]["rows"], 5, "{line}");
    let hint = line["fields"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("bind a queue") && hint.contains("unpark"),
        "{line}"
    );
    // No line per returned row; the missing exchange's row keeps its own.
    let per_row = captured.with_message("relay: row not published");
    let error = |l: &Value| {
        l["fields"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        per_row.iter().all(|l| !error(l).contains("unroutable")),
        "{per_row:#?}"
    );
    assert!(
        per_row.iter().any(|l| error(l).contains("does not exist")),
        "{per_row:#?}"
    );

    delete_exchange(&q, &nowhere).await;
    q.cleanup().await;
}

#[tokio::test]
async fn each_route_gets_its_line_and_parking_keeps_its_own() {
    let (captured, _guard) = Captured::install();
    let (db, mut cfg, q) = setup().await;
    cfg.outbox.park_after_attempts = 1;
    let nowhere = format!("{}.nowhere", cfg.amqp.prefix);
    unbound_exchange(&q, &nowhere).await;

    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    // One route after the other (see the first test on sharing a batch).
    let mut parked_so_far = 0;
    for (key, n) in [("webhook.sent", 3), ("webhook.failed", 2)] {
        commit_events(&db.pool, &aimed_at(&cfg, &nowhere, key, n)).await;
        parked_so_far += n;
        eventually(WAIT, "the route's rows parked", || async {
            let parked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox_pending WHERE parked_at IS NOT NULL",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (parked == i64::try_from(parked_so_far).unwrap()).then_some(())
        })
        .await;
    }
    token.cancel();
    relay.await.unwrap().unwrap();

    assert_eq!(unroutable(&nowhere, "webhook.sent"), 3);
    assert_eq!(unroutable(&nowhere, "webhook.failed"), 2);
    let summaries = captured.summaries(&nowhere);
    assert_eq!(summaries.len(), 2, "one line per route: {summaries:#?}");
    for (key, rows) in [("webhook.sent", 3), ("webhook.failed", 2)] {
        let line = summaries
            .iter()
            .find(|l| l["fields"]["routing_key"] == key)
            .unwrap_or_else(|| panic!("no line for {key}: {summaries:#?}"));
        assert_eq!(line["fields"]["rows"], rows, "{line}");
    }
    let parked = captured.lines().into_iter().filter(|l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("relay: row parked"))
    });
    assert_eq!(parked.count(), 5, "parking is logged per row");

    delete_exchange(&q, &nowhere).await;
    q.cleanup().await;
}

/// In a pipelined batch mixing routable and unroutable rows, RabbitMQ may
/// confirm several publishes with one `multiple` ack, and lapin (4.12,
/// `Acknowledgements::complete_pending_before`) hands the waiting returns to
/// those confirms in hash-map order, not to the publishes they belong to. The
/// relay matches returns to rows by message id (its `ReturnLedger`), so a
/// returned row is never marked published (its event lost) and every routable
/// row is published.
#[tokio::test]
async fn a_returned_row_is_never_marked_published() {
    let (db, cfg, q) = setup().await;
    let nowhere = format!("{}.nowhere", cfg.amqp.prefix);
    unbound_exchange(&q, &nowhere).await;
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend(events(&cfg, 1, "good"));
        batch.extend(aimed_at(&cfg, &nowhere, "git.push", 1));
    }
    commit_events(&db.pool, &batch).await;
    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    let got = q.receive(100, WAIT).await;
    assert_eq!(got.len(), 100);
    eventually(WAIT, "every returned row failed once", || async {
        (attempts(&db.pool, &nowhere).await >= 100).then_some(())
    })
    .await;
    token.cancel();
    relay.await.unwrap().unwrap();
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox_published p JOIN outbox o ON o.id = p.id \
         WHERE o.exchange = $1",
    )
    .bind(&nowhere)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(published, 0, "returned rows marked published (events lost)");

    delete_exchange(&q, &nowhere).await;
    q.cleanup().await;
}
