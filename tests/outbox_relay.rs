//! The relay against real PostgreSQL and RabbitMQ: commit/rollback visibility,
//! two relays without duplicates, poison rows, broker cuts, ordering, pruning.

use hookfleet_testkit as common;
use hookfleet_testkit::outbox as outbox_support;

use std::collections::HashSet;
use std::time::Duration;

use common::{TcpProxy, TestDb, eventually, test_config, unique_prefix};
use hookfleet::amqp::topology::Names;
use hookfleet::config::{Config, SecretUrl};
use hookfleet::message::{CONTENT_TYPE_JSON, H_SCHEMA_VERSION};
use hookfleet::metrics::metrics;
use hookfleet::outbox::{self, Event};
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use outbox_support::{
    EventsQueue, commit_events, events, int_header, mark_published, message_id, pending,
};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

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

async fn wait_all_published(pool: &PgPool, what: &str) {
    eventually(WAIT, what, || async {
        (pending(pool).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn committed_events_are_published_and_rolled_back_ones_never() {
    let (db, cfg, q) = setup().await;
    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);

    let committed = events(&cfg, 3, "push-1");
    commit_events(&db.pool, &committed).await;
    let rolled_back = events(&cfg, 2, "push-2");
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue_many(&mut tx, &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();
    // Single-event enqueue, committed after the rollback: once it arrives, anything
    // the rolled-back transaction could have caused would have arrived before it.
    let marker = events(&cfg, 1, "push-3").remove(0);
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &marker).await.unwrap();
    tx.commit().await.unwrap();

    let got = q.receive(4, WAIT).await;
    let ids: Vec<_> = got.iter().map(message_id).collect();
    let expected: Vec<_> = committed
        .iter()
        .chain([&marker])
        .map(|e| e.envelope.message_id)
        .collect();
    assert_eq!(ids, expected, "committed events, in order");
    for r in &rolled_back {
        assert!(!ids.contains(&r.envelope.message_id));
    }
    let d = &got[0];
    let p = &d.properties;
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "git.push");
    assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "push-1");
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        CONTENT_TYPE_JSON
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    assert!(p.timestamp().is_some());
    assert_eq!(int_header(d, H_SCHEMA_VERSION), Some(1));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&d.data).unwrap(),
        serde_json::json!({"seq": 0})
    );
    wait_all_published(&db.pool, "rows marked published").await;
    assert_eq!(q.ready().await, 0, "nothing else was published");

    token.cancel();
    relay.await.unwrap().unwrap();
    q.cleanup().await;
}

#[tokio::test]
async fn two_relays_publish_5000_events_exactly_once() {
    let (db, cfg, q) = setup().await;
    let all = events(&cfg, 5000, "bulk");
    for chunk in all.chunks(500) {
        commit_events(&db.pool, chunk).await;
    }
    let published_before = metrics().relay_published_total.get();
    let token = CancellationToken::new();
    let a = spawn_relay(&cfg, &db.pool, &token);
    let b = spawn_relay(&cfg, &db.pool, &token);
    wait_all_published(&db.pool, "5000 rows published").await;
    token.cancel();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();

    let attempts: i64 = sqlx::query_scalar("SELECT sum(publish_attempts) FROM outbox_published")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 5000, "every row published with one attempt");
    // Other tests in this binary share the registry, hence `>=`.
    assert!(metrics().relay_published_total.get() - published_before >= 5000);
    // Every publish was confirmed before its row was marked, so all are queued now.
    assert_eq!(q.ready().await, 5000, "no event published twice");
    let got = q.receive(5000, WAIT).await;
    let ids: HashSet<_> = got.iter().map(message_id).collect();
    let expected: HashSet<_> = all.iter().map(|e| e.envelope.message_id).collect();
    assert_eq!(ids, expected);
    q.cleanup().await;
}

#[tokio::test]
async fn a_poison_row_does_not_block_the_others() {
    let (db, cfg, q) = setup().await;
    let names = Names::new(&cfg.amqp.prefix);
    // An exchange with no bindings: a mandatory publish there is returned.
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
    let mut batch = events(&cfg, 2, "p");
    let mut missing = Event::new(&names, "git.push", None, serde_json::json!({}));
    missing.exchange = format!("{}.does-not-exist", cfg.amqp.prefix);
    let mut unroutable = Event::new(&names, "git.push", None, serde_json::json!({}));
    unroutable.exchange = nowhere.clone();
    batch.insert(1, missing.clone());
    batch.insert(2, unroutable.clone());
    batch.extend(events(&cfg, 2, "p"));
    commit_events(&db.pool, &batch).await;

    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    let got = q.receive(4, WAIT).await;
    let good: Vec<_> = batch
        .iter()
        .filter(|e| e.exchange == names.events_exchange())
        .map(|e| e.envelope.message_id)
        .collect();
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), good);

    for bad in [&missing, &unroutable] {
        let (attempts, error, later): (i32, Option<String>, bool) =
            eventually(WAIT, "poison row marked failed", || async {
                let r: (i32, Option<String>, bool) = sqlx::query_as(
                    "SELECT p.publish_attempts, p.last_error, p.next_attempt_at > o.created_at \
                     FROM outbox_pending p JOIN outbox o ON o.id = p.id \
                     WHERE o.message_id = $1",
                )
                .bind(bad.envelope.message_id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
                (r.0 > 0).then_some(r)
            })
            .await;
        assert!(attempts > 0);
        assert!(error.is_some_and(|e| !e.is_empty()));
        assert!(later, "next attempt is backed off");
    }
    assert!(metrics().relay_failed_total.get() >= 2);
    // New events still flow past the failing rows.
    let more = events(&cfg, 3, "after");
    commit_events(&db.pool, &more).await;
    let got = q.receive(3, WAIT).await;
    assert_eq!(
        got.iter().map(message_id).collect::<Vec<_>>(),
        more.iter()
            .map(|e| e.envelope.message_id)
            .collect::<Vec<_>>()
    );
    // Messages can arrive before the relay commits; wait for the marks.
    eventually(WAIT, "good rows marked published", || async {
        (pending(&db.pool).await == 2).then_some(())
    })
    .await;
    let status = outbox::status::fetch(&db.pool).await.unwrap();
    assert_eq!(status.pending, 2);
    assert_eq!(status.failing, 2);
    assert_eq!(status.published_last_minute, 7, "the seven good rows");
    let failing: Vec<&str> = status
        .failing_rows
        .iter()
        .map(|r| r.exchange.as_str())
        .collect();
    assert_eq!(failing, vec![missing.exchange.as_str(), nowhere.as_str()]);
    assert!(status.render().contains("does not exist"));

    token.cancel();
    relay.await.unwrap().unwrap();
    let _ = q
        .channel
        .exchange_delete(nowhere.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    q.cleanup().await;
}

/// Stopping a relay mid-backlog: the batches it sent are settled, the batch it
/// claimed ahead but did not send is rolled back (its rows stay queued), so what
/// the broker holds is exactly what `outbox_published` records; a second relay
/// then publishes the rest, each row once.
#[tokio::test]
async fn a_relay_stopped_mid_backlog_publishes_each_row_once_with_the_next() {
    let (db, cfg, q) = setup().await;
    let n = 10_000;
    let all = events(&cfg, n, "stop");
    for chunk in all.chunks(1000) {
        commit_events(&db.pool, chunk).await;
    }
    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    eventually(WAIT, "a first batch published", || async {
        (pending(&db.pool).await < n as i64).then_some(())
    })
    .await;
    token.cancel();
    relay.await.unwrap().unwrap();

    let left = pending(&db.pool).await;
    assert!(left > 0, "stopped mid-backlog");
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_published")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(published + left, n as i64, "every row queued or published");
    eventually(WAIT, "the sent batches queued", || async {
        (i64::from(q.ready().await) == published).then_some(())
    })
    .await;

    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    wait_all_published(&db.pool, "the rest published").await;
    token.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(q.ready().await as usize, n, "no row published twice");
    let got = q.receive(n, WAIT).await;
    let ids: HashSet<_> = got.iter().map(message_id).collect();
    let expected: HashSet<_> = all.iter().map(|e| e.envelope.message_id).collect();
    assert_eq!(ids, expected);
    q.cleanup().await;
}

#[tokio::test]
async fn broker_cuts_lose_nothing() {
    let (db, mut cfg, q) = setup().await;
    let proxy = TcpProxy::rabbitmq().await;
    cfg.amqp.url = SecretUrl::new(proxy.amqp_url());
    cfg.outbox.batch_size = 50;
    let first = events(&cfg, 500, "cut");
    commit_events(&db.pool, &first).await;

    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    eventually(WAIT, "some rows published", || async {
        (pending(&db.pool).await < 500).then_some(())
    })
    .await;
    proxy.cut();
    let second = events(&cfg, 500, "cut");
    commit_events(&db.pool, &second).await;
    eventually(WAIT, "relay reconnected", || async {
        (proxy.accepted() >= 2).then_some(())
    })
    .await;
    proxy.block();
    let third = events(&cfg, 100, "cut");
    commit_events(&db.pool, &third).await;
    proxy.unblock();
    wait_all_published(&db.pool, "all rows published after cuts").await;
    token.cancel();
    relay.await.unwrap().unwrap();

    // At least once: every message id arrives (duplicates allowed after a cut).
    let expected: HashSet<_> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|e| e.envelope.message_id)
        .collect();
    let queued = q.ready().await as usize;
    assert!(queued >= expected.len());
    let got = q.receive(queued, WAIT).await;
    let ids: HashSet<_> = got.iter().map(message_id).collect();
    assert_eq!(ids, expected);
    q.cleanup().await;
}

#[tokio::test]
async fn one_relay_keeps_id_order_per_correlation_id() {
    let (db, mut cfg, q) = setup().await;
    cfg.outbox.batch_size = 16;
    let names = Names::new(&cfg.amqp.prefix);
    let mut all = Vec::new();
    for i in 0..300usize {
        let corr = format!("c{}", i % 3);
        all.push(Event::new(
            &names,
            "git.push",
            Some(corr),
            serde_json::json!({ "seq": i }),
        ));
    }
    for chunk in all.chunks(37) {
        commit_events(&db.pool, chunk).await;
    }
    let token = CancellationToken::new();
    let relay = spawn_relay(&cfg, &db.pool, &token);
    let got = q.receive(300, WAIT).await;
    token.cancel();
    relay.await.unwrap().unwrap();

    for c in ["c0", "c1", "c2"] {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|d| d.properties.correlation_id().as_ref().unwrap().as_str() == c)
            .map(|d| {
                serde_json::from_slice::<serde_json::Value>(&d.data).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs.len(), 100);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{c} out of order: {seqs:?}"
        );
    }
    q.cleanup().await;
}

#[tokio::test]
async fn pruning_removes_only_rows_older_than_retention() {
    let db = TestDb::new().await;
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.outbox.retention = Duration::from_secs(3600);
    cfg.outbox.inbox_retention = Duration::from_secs(7200);
    cfg.outbox.prune_batch_size = 2;
    let all = events(&cfg, 10, "prune");
    commit_events(&db.pool, &all).await;
    // ids 1-5: published 2h ago; 6-7: published just now; 8-10: unpublished, 2 days old.
    sqlx::query("UPDATE outbox SET created_at = now() - interval '2 hours' WHERE id <= 5")
        .execute(&db.pool)
        .await
        .unwrap();
    mark_published(&db.pool, 1, 5, Duration::from_secs(2 * 3600), 1).await;
    mark_published(&db.pool, 6, 7, Duration::ZERO, 1).await;
    sqlx::query("UPDATE outbox SET created_at = now() - interval '2 days' WHERE id >= 8")
        .execute(&db.pool)
        .await
        .unwrap();
    for (age_hours, n) in [(3, 3), (1, 2)] {
        for _ in 0..n {
            sqlx::query(
                "INSERT INTO inbox (message_id, queue, processed_at) \
                 VALUES ($1, 'q', now() - make_interval(hours => $2))",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(age_hours)
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }

    let pruned = outbox::prune_once(&db.pool, &cfg.outbox, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned.outbox, 5);
    assert_eq!(pruned.inbox, 3);
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec![6, 7, 8, 9, 10]);
    let published: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox_published ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(published, vec![6, 7]);
    assert_eq!(pending(&db.pool).await, 3, "unpublished rows stay queued");
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 2);
    let again = outbox::prune_once(&db.pool, &cfg.outbox, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again, outbox::prune::Pruned::default());
}

/// The plan of the relay's claim in `begin_claim` after a burst, before any
/// ANALYZE: the pending table's key walked in id order, no sort of every pending
/// row, each outbox row read by its key (not the outbox walked from its start).
async fn claim_plan(tx: &mut sqlx::Transaction<'static, sqlx::Postgres>) -> String {
    let lines: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN {}",
        outbox::storage::claim_sql().replace("$1", "256")
    ))
    .fetch_all(&mut **tx)
    .await
    .unwrap();
    lines.join("\n")
}

#[tokio::test]
async fn a_claim_after_a_burst_walks_the_pending_index_without_sorting() {
    let (db, cfg, _q) = setup().await;
    let burst = events(&cfg, 5_000, "burst");
    commit_events(&db.pool, &burst).await;

    // The statistics are stale (no ANALYZE yet): a plain transaction gets the
    // planner's guess — the plan this test guards against.
    let mut plain = db.pool.begin().await.unwrap();
    let guessed = claim_plan(&mut plain).await;
    plain.rollback().await.unwrap();

    // One connection: the session that ran the claim is the one checked below.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let mut tx = outbox::storage::begin_claim(&one).await.unwrap();
    let plan = claim_plan(&mut tx).await;
    assert!(
        plan.contains("Index Scan using outbox_pending_pkey")
            && plan.contains("Nested Loop")
            && plan.contains("Index Scan using outbox_pkey")
            && !plan.contains("Sort"),
        "claim plan:\n{plan}\n(plain transaction's plan:\n{guessed})"
    );
    let rows = outbox::storage::claim(&mut tx, 256).await.unwrap();
    assert_eq!(rows.len(), 256);
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "id order");
    tx.rollback().await.unwrap();

    // The settings were LOCAL: they did not outlive the transaction on the pooled
    // session.
    let mut conn = one.acquire().await.unwrap();
    for setting in ["enable_bitmapscan", "enable_seqscan"] {
        let v: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(v, "on", "{setting} leaked to the session");
    }
}

/// The relays' lag (what the bulk pacer reads) is the age of the row at the
/// head of the relay's order (lowest id) among those due: rows backing off or
/// parked are not due, and an empty outbox has none.
#[tokio::test]
async fn the_due_lag_is_the_age_of_the_first_row_due() {
    let db = TestDb::new().await;
    let lag = || outbox::storage::due_lag(&db.pool);
    assert_eq!(lag().await.unwrap(), Duration::ZERO, "nothing pending");
    sqlx::query(
        "INSERT INTO outbox_pending (id, next_attempt_at, parked_at) VALUES
         (1, 'infinity', now() - interval '1 hour'),
         (2, now() + interval '1 hour', NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        lag().await.unwrap(),
        Duration::ZERO,
        "parked and backing-off rows are not due"
    );
    sqlx::query(
        "INSERT INTO outbox_pending (id, next_attempt_at) VALUES
         (3, now() - interval '10 minutes'),
         (4, now() - interval '20 minutes')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let l = lag().await.unwrap();
    assert!(
        l >= Duration::from_secs(600) && l < Duration::from_secs(1200),
        "the lag of row 3, the first due: {l:?}"
    );
}
