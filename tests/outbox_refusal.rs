//! Rows the broker refuses never stall the relay (issue: "bounded by
//! construction"): each kind of refusal on the real broker is recorded on its
//! row, the row is parked after `outbox.park_after_attempts`, and the rows
//! behind it are published in the same pass; `outbox unpark` brings a parked row
//! back after the cause is fixed.
//!
//! Its own test binary: one test lowers the broker's `max_message_size`, a
//! node-wide setting, and cargo runs test binaries one after another. Tests in
//! here take [`BROKER_LIMIT`] so they never overlap that one.

use hookfleet_testkit as common;
use hookfleet_testkit::outbox as outbox_support;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::{TestDb, eventually, test_config, unique_prefix};
use hookfleet::amqp::topology::Names;
use hookfleet::config::Config;
use hookfleet::outbox::{self, Event};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use outbox_support::{EventsQueue, commit_events, events, message_id};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// Serialises the tests of this binary around the node-wide size limit.
static BROKER_LIMIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spawn_relay(
    cfg: &Config,
    pool: &PgPool,
    token: &CancellationToken,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(outbox::run_relay(
        cfg.amqp.clone(),
        cfg.outbox.clone(),
        pool.clone(),
        token.clone(),
    ))
}

async fn setup() -> (TestDb, Config, EventsQueue) {
    let db = TestDb::new().await;
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.outbox.poll_interval = Duration::from_millis(200);
    let q = EventsQueue::bind(&cfg).await;
    (db, cfg, q)
}

/// The retry state of the row holding `event`.
#[derive(Debug, sqlx::FromRow)]
struct RowState {
    publish_attempts: i32,
    last_error: Option<String>,
    parked: bool,
}

async fn row_state(pool: &PgPool, event: &Event) -> Option<RowState> {
    sqlx::query_as(
        "SELECT p.publish_attempts, p.last_error, p.parked_at IS NOT NULL AS parked \
         FROM outbox_pending p JOIN outbox o ON o.id = p.id WHERE o.message_id = $1",
    )
    .bind(event.envelope.message_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn wait_parked(pool: &PgPool, event: &Event) -> RowState {
    eventually(WAIT, "the refused row parked", || async {
        row_state(pool, event).await.filter(|s| s.parked)
    })
    .await
}

fn ids(events: &[Event]) -> Vec<uuid::Uuid> {
    events.iter().map(|e| e.envelope.message_id).collect()
}

/// Sets the broker node's `max_message_size` (bytes) for channels opened from
/// now on.
fn set_broker_max_message_size(bytes: u64) {
    let out = Command::new("rabbitmqctl")
        .args([
            "eval",
            &format!("application:set_env(rabbit, max_message_size, {bytes})."),
        ])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts the broker's limit back when dropped, even when the test panics.
struct RestoreLimit(u64);
impl Drop for RestoreLimit {
    fn drop(&mut self) {
        set_broker_max_message_size(self.0);
    }
}

fn broker_max_message_size() -> u64 {
    let out = Command::new("rabbitmqctl")
        .args(["eval", "application:get_env(rabbit, max_message_size)."])
        .output()
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // `{ok,134217728}`
    text.trim()
        .trim_start_matches("{ok,")
        .trim_end_matches('}')
        .parse()
        .unwrap_or(134_217_728)
}

#[tokio::test]
async fn a_row_over_the_brokers_size_limit_is_parked_and_the_rows_behind_it_flow() {
    let _serial = BROKER_LIMIT.lock().await;
    let (db, mut cfg, q) = setup().await;
    cfg.outbox.park_after_attempts = 2;
    let names = Names::new(&cfg.amqp.prefix);
    // The broker takes at most 1 MiB; hookfleet's own limit is left above that, so
    // only the broker can refuse the row: by closing the relay's channel.
    let _restore = RestoreLimit(broker_max_message_size());
    set_broker_max_message_size(1_048_576);

    let before = events(&cfg, 5, "before");
    let big = Event::new(
        &names,
        "git.push.bulk",
        Some("big".into()),
        serde_json::json!({ "blob": "x".repeat(2 * 1024 * 1024) }),
    );
    let after = events(&cfg, 20, "after");
    commit_events(&db.pool, &before).await;
    commit_events(&db.pool, std::slice::from_ref(&big)).await;
    commit_events(&db.pool, &after).await;

    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    let want: HashSet<_> = ids(&before).into_iter().chain(ids(&after)).collect();
    let got_ids = q.receive_ids(&want, WAIT).await;
    assert_eq!(
        got_ids, want,
        "every row around the refused one is published"
    );

    let state = wait_parked(&db.pool, &big).await;
    assert_eq!(state.publish_attempts, 2, "parked after two refusals");
    let error = state.last_error.unwrap_or_default();
    assert!(
        error.contains("channel closed by the broker") && error.contains("406"),
        "the broker's reason is recorded: {error}"
    );
    let status = outbox::status::fetch(&db.pool).await.unwrap();
    assert_eq!(status.parked, 1);
    assert_eq!(status.pending, 1);
    assert_eq!(
        status.oldest_pending_age_seconds, 0.0,
        "a parked row waits for an operator: it does not age the relay's backlog"
    );
    assert!(status.render().contains("PARKED"), "{}", status.render());

    // Events written after the refusal still flow.
    let later = events(&cfg, 3, "later");
    commit_events(&db.pool, &later).await;
    let got = q.receive(3, WAIT).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), ids(&later));

    // The fix: the broker takes big messages again; unparked, the row goes out.
    drop(_restore);
    assert_eq!(
        outbox::storage::unpark(&db.pool, &[]).await.unwrap(),
        1,
        "one row unparked"
    );
    let got = q.receive(1, WAIT).await;
    assert_eq!(message_id(&got[0]), big.envelope.message_id);
    eventually(WAIT, "nothing left pending", || async {
        (outbox::status::fetch(&db.pool).await.unwrap().pending == 0).then_some(())
    })
    .await;

    token.cancel();
    relay.await.unwrap().unwrap();
    q.cleanup().await;
}

#[tokio::test]
async fn a_row_over_max_message_bytes_is_parked_without_being_sent() {
    let _serial = BROKER_LIMIT.lock().await;
    let (db, mut cfg, q) = setup().await;
    cfg.amqp.max_message_bytes = 65_536;
    let names = Names::new(&cfg.amqp.prefix);
    let big = Event::new(
        &names,
        "git.push",
        Some("big".into()),
        serde_json::json!({ "blob": "y".repeat(100_000) }),
    );
    let mut batch = events(&cfg, 3, "p");
    batch.insert(1, big.clone());
    commit_events(&db.pool, &batch).await;

    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    let got = q.receive(3, WAIT).await;
    let good: Vec<_> = batch
        .iter()
        .filter(|e| e.envelope.message_id != big.envelope.message_id)
        .map(|e| e.envelope.message_id)
        .collect();
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), good);
    let state = wait_parked(&db.pool, &big).await;
    assert_eq!(state.publish_attempts, 1, "parked at its first attempt");
    assert!(
        state
            .last_error
            .is_some_and(|e| e.contains("exceeds amqp.max_message_bytes")),
    );
    token.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(q.ready().await, 0, "the oversized row was never sent");
    q.cleanup().await;
}

#[tokio::test]
async fn unroutable_and_missing_exchange_rows_are_parked_after_their_attempts() {
    let _serial = BROKER_LIMIT.lock().await;
    let (db, mut cfg, q) = setup().await;
    cfg.outbox.park_after_attempts = 2;
    let names = Names::new(&cfg.amqp.prefix);
    let nowhere = format!("{}.nowhere", cfg.amqp.prefix);
    q.channel
        .exchange_declare(
            nowhere.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut unroutable = Event::new(&names, "git.push", None, serde_json::json!({}));
    unroutable.exchange = nowhere.clone();
    let mut missing = Event::new(&names, "git.push", None, serde_json::json!({}));
    missing.exchange = format!("{}.does-not-exist", cfg.amqp.prefix);
    let mut batch = events(&cfg, 2, "p");
    batch.insert(1, unroutable.clone());
    batch.insert(2, missing.clone());
    commit_events(&db.pool, &batch).await;

    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    let got = q.receive(2, WAIT).await;
    assert_eq!(got.len(), 2);
    for (bad, why) in [(&unroutable, "unroutable"), (&missing, "does not exist")] {
        let state = wait_parked(&db.pool, bad).await;
        assert_eq!(state.publish_attempts, 2);
        let error = state.last_error.unwrap_or_default();
        assert!(error.contains(why), "{error}");
    }
    let status = outbox::status::fetch(&db.pool).await.unwrap();
    assert_eq!(status.parked, 2);
    // A parked row is no longer tried: its attempts stay put while the relay runs.
    let more = events(&cfg, 1, "after");
    commit_events(&db.pool, &more).await;
    assert_eq!(
        message_id(&q.receive(1, WAIT).await[0]),
        more[0].envelope.message_id
    );
    assert_eq!(
        row_state(&db.pool, &unroutable)
            .await
            .unwrap()
            .publish_attempts,
        2
    );

    // Unparking one id leaves the other parked.
    let id: i64 = sqlx::query_scalar("SELECT id FROM outbox WHERE message_id = $1")
        .bind(unroutable.envelope.message_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(outbox::storage::unpark(&db.pool, &[id]).await.unwrap(), 1);
    let state = row_state(&db.pool, &unroutable).await.unwrap();
    assert!(!state.parked);
    assert!(row_state(&db.pool, &missing).await.unwrap().parked);

    token.cancel();
    relay.await.unwrap().unwrap();
    let _ = q
        .channel
        .exchange_delete(nowhere.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    q.cleanup().await;
}
