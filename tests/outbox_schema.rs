//! The outbox's three tables (migration 0006): upgrading a database written by the
//! previous release while its pods still run, and keeping the work queue in step
//! with the outbox when rows are deleted.

use hookfleet_testkit as common;

use std::time::Duration;

use common::TestDb;
use hookfleet::outbox::storage;
use sqlx::PgPool;

/// The previous release's relay claim, verbatim.
const PREVIOUS_CLAIM: &str = "SELECT id FROM outbox \
     WHERE published_at IS NULL AND next_attempt_at <= now() \
     ORDER BY id LIMIT 256 FOR UPDATE SKIP LOCKED";

/// An insert as the previous release's handlers write it (no publication columns).
async fn insert_as_previous_release(pool: &PgPool, n: i32) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox (message_id, exchange, routing_key, event_type, payload) \
         VALUES (gen_random_uuid(), 'hookfleet.events', 'git.push', 'git.push', \
                 jsonb_build_object('n', $1::int)) \
         RETURNING id",
    )
    .bind(n)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Applies the migrations before 0006, from a copy of their files.
async fn migrate_to_previous_release(pool: &PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0006" {
            std::fs::copy(&path, dir.path().join(&name)).unwrap();
        }
    }
    let previous = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    assert_eq!(previous.iter().count(), 5);
    previous.run(pool).await.unwrap();
}

#[tokio::test]
async fn upgrading_queues_pending_rows_keeps_history_and_idles_previous_relays() {
    let db = TestDb::unmigrated().await;
    let pool = &db.pool;
    migrate_to_previous_release(pool).await;

    // 1: published 2 hours ago; 2: failed twice, due in an hour; 3, 4: pending.
    for n in 1..=4 {
        insert_as_previous_release(pool, n).await;
    }
    sqlx::query(
        "UPDATE outbox SET published_at = now() - interval '2 hours', publish_attempts = 1 \
         WHERE id = 1",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE outbox SET publish_attempts = 2, last_error = 'exchange gone', \
                           next_attempt_at = now() + interval '1 hour' WHERE id = 2",
    )
    .execute(pool)
    .await
    .unwrap();

    hookfleet::db::migrate(pool).await.unwrap();

    let published: Vec<(i64, i32, bool)> = sqlx::query_as(
        "SELECT id, publish_attempts, \
                published_at BETWEEN now() - interval '121 minutes' \
                                 AND now() - interval '119 minutes' \
         FROM outbox_published ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(published, vec![(1, 1, true)], "history kept with its time");
    let pending: Vec<(i64, i32, Option<String>, bool)> = sqlx::query_as(
        "SELECT id, publish_attempts, last_error, next_attempt_at > now() \
         FROM outbox_pending ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        pending,
        vec![
            (2, 2, Some("exchange gone".to_string()), true),
            (3, 0, None, false),
            (4, 0, None, false),
        ],
        "pending rows queued with their retry state"
    );

    // A pod of the previous release still inserting: its row is queued too.
    let late = insert_as_previous_release(pool, 5).await;
    let queued: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox_pending WHERE id = $1)")
            .bind(late)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(queued, "an insert of the previous release is queued");

    // The previous release's relay finds nothing left to claim, so no row is
    // published by both releases.
    let mut tx = pool.begin().await.unwrap();
    let theirs: Vec<i64> = sqlx::query_scalar(PREVIOUS_CLAIM)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(theirs, Vec::<i64>::new());
    tx.rollback().await.unwrap();

    // The new relay claims the due rows in id order, with their attempts.
    let mut tx = storage::begin_claim(pool).await.unwrap();
    let ours: Vec<(i64, i32)> = storage::claim(&mut tx, 256)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.id, r.publish_attempts))
        .collect();
    assert_eq!(ours, vec![(3, 0), (4, 0), (late, 0)]);
    tx.rollback().await.unwrap();

    let (count, _, _) = storage::pending_stats(pool).await.unwrap();
    assert_eq!(count, 4);
    assert_eq!(storage::failing_count(pool).await.unwrap(), 1);
    assert_eq!(
        storage::published_within(pool, Duration::from_secs(3 * 3600))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        storage::published_within(pool, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn deleting_or_truncating_outbox_rows_takes_their_queue_and_log_rows_along() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    for n in 1..=4 {
        insert_as_previous_release(pool, n).await;
    }
    let ids = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT id FROM {table} ORDER BY id"))
            .fetch_all(pool)
            .await
            .unwrap()
    };
    assert_eq!(ids("outbox_pending").await, vec![1, 2, 3, 4]);
    let mut tx = pool.begin().await.unwrap();
    storage::mark_published(&mut tx, &[4]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids("outbox_published").await, vec![4]);

    // An operator deletes rows by hand: the relay must not be handed their ids.
    sqlx::query("DELETE FROM outbox WHERE id IN (1, 4)")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(ids("outbox_pending").await, vec![2, 3]);
    assert_eq!(ids("outbox_published").await, Vec::<i64>::new());
    let mut tx = storage::begin_claim(pool).await.unwrap();
    let claimed: Vec<i64> = storage::claim(&mut tx, 256)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(claimed, vec![2, 3]);
    tx.rollback().await.unwrap();

    sqlx::query("TRUNCATE outbox").execute(pool).await.unwrap();
    assert_eq!(ids("outbox_pending").await, Vec::<i64>::new());
    // Truncating the three tables together works too.
    insert_as_previous_release(pool, 5).await;
    sqlx::query("TRUNCATE outbox, outbox_pending, outbox_published")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(ids("outbox_pending").await, Vec::<i64>::new());
    let late = insert_as_previous_release(pool, 6).await;
    assert_eq!(ids("outbox_pending").await, vec![late]);
}
