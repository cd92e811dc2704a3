//! The push handler's group commit against a real PostgreSQL: pushes that are
//! ready while a write is in progress are written together by one statement,
//! each with its own outcome (recorded, duplicate, or its own error), and a push
//! whose caller stops waiting before a group takes it is not written.
//!
//! A group is made deterministic by holding a repository's advisory lock from
//! the test: the first write waits on it inside the server with the only writer
//! slot, so the pushes sent meanwhile queue up and form the next group.
use hookfleet_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, eventually};
use hookfleet::amqp::topology::Names;
use hookfleet::job::JobError;
use hookfleet::outbox::Event;
use hookfleet::push::group_commit::{GroupCommit, Written};
use hookfleet::push_job::PushJob;
use hookfleet::push_job::update::RefUpdate;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const REPO: &str = "group.git";

fn push_to(branch: &str, sha: char) -> (PushJob, Vec<Event>) {
    let push = PushJob {
        push_id: Uuid::now_v7(),
        repository: REPO.into(),
        path: None,
        pusher: Some("alice".into()),
        push_options: vec![],
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![RefUpdate {
            refname: format!("refs/heads/{branch}"),
            before: "0".repeat(40),
            after: sha.to_string().repeat(40),
        }],
    };
    let names = Names::new("group-test");
    let corr = Some(push.push_id.to_string());
    let events = vec![
        Event::new(&names, "git.push", corr.clone(), json!({"branch": branch})),
        Event::new(
            &names,
            "git.branch.created",
            corr,
            json!({"branch": branch}),
        ),
    ];
    (push, events)
}

fn writer(pool: &PgPool) -> Arc<GroupCommit> {
    Arc::new(GroupCommit::new(
        pool.clone(),
        Names::new("group-test"),
        "group-test.push".into(),
        1,
        32,
    ))
}

/// Holds `REPO`'s advisory lock in an open transaction until it is dropped or
/// committed.
async fn hold_repository_lock(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    hold_lock_of(pool, REPO).await
}

async fn hold_lock_of(pool: &PgPool, repo: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(repo)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

async fn wait_for_lock_waiter(pool: &PgPool) {
    eventually(
        Duration::from_secs(30),
        "a write waiting on the repository lock",
        || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                )
                .fetch_one(&pool)
                .await
                .ok()?;
                (n == 1).then_some(())
            }
        },
    )
    .await;
}

async fn wait_for_queue(w: &GroupCommit, n: usize) {
    eventually(
        Duration::from_secs(30),
        "pushes waiting for a writer",
        || {
            let ready = w.waiting_len() == n;
            async move { ready.then_some(()) }
        },
    )
    .await;
}

type Outcome = tokio::task::JoinHandle<Result<Written, JobError>>;

/// Writes `push` (its message id is its push id, as a push job's envelope has).
fn spawn_push(w: &Arc<GroupCommit>, push: &PushJob, events: Vec<Event>) -> Outcome {
    let (w, push) = (w.clone(), push.clone());
    tokio::spawn(async move { w.write(push.push_id, push, events).await })
}

/// A writer whose only slot is taken by a first push waiting on `REPO`'s lock,
/// which the test holds: pushes written now queue up and form the next group.
struct Held {
    w: Arc<GroupCommit>,
    lock: sqlx::Transaction<'static, sqlx::Postgres>,
    first: PushJob,
    first_task: Outcome,
}

async fn writer_held_on_lock(pool: &PgPool) -> Held {
    let w = writer(pool);
    let lock = hold_repository_lock(pool).await;
    let (first, first_events) = push_to("first", 'f');
    let first_task = spawn_push(&w, &first, first_events);
    wait_for_lock_waiter(pool).await;
    Held {
        w,
        lock,
        first,
        first_task,
    }
}

/// Transaction ids that wrote the pushes' rows: one per statement.
async fn writing_transactions(pool: &PgPool, push_ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM pushes WHERE push_id = ANY($1)")
        .bind(push_ids)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_ready_during_a_write_are_written_by_one_statement_each_with_its_own_outcome() {
    let db = TestDb::new().await;
    // The first push takes the only writer slot and waits on the lock.
    let Held {
        w,
        lock,
        first,
        first_task,
    } = writer_held_on_lock(&db.pool).await;

    // Four more queue up behind it: two pushes to one ref (the later push_id
    // must win), a push to another ref, and a redelivery the inbox already has.
    let (older, older_events) = push_to("main", '1');
    let (newer, newer_events) = push_to("main", '2');
    let (other, other_events) = push_to("other", '3');
    let (dup, dup_events) = push_to("dup", '4');
    sqlx::query("INSERT INTO inbox (message_id, queue) VALUES ($1, 'group-test.push')")
        .bind(dup.push_id)
        .execute(&db.pool)
        .await
        .unwrap();
    // Submitted newest first (ref state must follow push ids, not group
    // order), one at a time so the queue's order is known.
    let mut tasks = Vec::new();
    for (i, (p, ev)) in [
        (&newer, newer_events),
        (&older, older_events),
        (&other, other_events),
        (&dup, dup_events),
    ]
    .into_iter()
    .enumerate()
    {
        tasks.push(spawn_push(&w, p, ev));
        wait_for_queue(&w, i + 1).await;
    }
    wait_for_queue(&w, 4).await;
    lock.commit().await.unwrap();

    assert_eq!(
        first_task.await.unwrap().unwrap(),
        Written::Recorded { webhooks: 0 }
    );
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    let recorded = Written::Recorded { webhooks: 0 };
    assert_eq!(
        outcomes,
        vec![recorded, recorded, recorded, Written::Duplicate]
    );

    // The three new pushes of the group share one transaction; the first had its own.
    assert_eq!(
        writing_transactions(&db.pool, &[newer.push_id, older.push_id, other.push_id]).await,
        1
    );
    assert_eq!(
        writing_transactions(&db.pool, &[first.push_id, newer.push_id]).await,
        2
    );
    // Nothing was written for the duplicate: no push row, no events.
    let dup_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pushes WHERE push_id = $1)
              + (SELECT count(*) FROM outbox WHERE correlation_id = $2)",
    )
    .bind(dup.push_id)
    .bind(dup.push_id.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(dup_rows, 0);
    // Every recorded push has its two events, in push order within the group.
    let corr: Vec<String> = sqlx::query_scalar("SELECT correlation_id FROM outbox ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let id = |p: &PushJob| p.push_id.to_string();
    assert_eq!(
        corr,
        vec![
            id(&first),
            id(&first),
            id(&newer),
            id(&newer),
            id(&older),
            id(&older),
            id(&other),
            id(&other)
        ]
    );
    // Ref state ends at the later push of the two to main.
    let main: (String, Uuid) = sqlx::query_as(
        "SELECT sha, push_id FROM ref_state WHERE repository = $1 AND ref = 'refs/heads/main'",
    )
    .bind(REPO)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(main, ("2".repeat(40), newer.push_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_fails_in_a_group_fails_alone_and_the_others_are_written() {
    let db = TestDb::new().await;
    let Held {
        w,
        lock,
        first_task,
        ..
    } = writer_held_on_lock(&db.pool).await;

    let (good_a, a_events) = push_to("a", 'a');
    // PostgreSQL refuses a NUL character in text (SQLSTATE 22021): bad input,
    // which fails the whole group's statement.
    let (mut bad, bad_events) = push_to("bad", 'b');
    bad.pusher = Some("nul\u{0}here".into());
    let (good_c, c_events) = push_to("c", 'c');
    let tasks = [
        spawn_push(&w, &good_a, a_events),
        spawn_push(&w, &bad, bad_events),
        spawn_push(&w, &good_c, c_events),
    ];
    wait_for_queue(&w, 3).await;
    lock.commit().await.unwrap();
    first_task.await.unwrap().unwrap();

    let [a, b, c] = tasks;
    let recorded = Written::Recorded { webhooks: 0 };
    assert_eq!(a.await.unwrap().unwrap(), recorded);
    assert_eq!(c.await.unwrap().unwrap(), recorded);
    match b.await.unwrap() {
        Err(JobError::Permanent(e)) => assert!(format!("{e:#}").contains("0x00"), "{e:#}"),
        other => panic!("the bad push should fail permanently, got {other:?}"),
    }
    // Written one by one after the group failed: each its own transaction.
    assert_eq!(
        writing_transactions(&db.pool, &[good_a.push_id, good_c.push_id]).await,
        2
    );
    let bad_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM inbox WHERE message_id = $1)
              + (SELECT count(*) FROM outbox WHERE correlation_id = $2)",
    )
    .bind(bad.push_id)
    .bind(bad.push_id.to_string())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(bad_rows, 0, "nothing of the failed push was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_abandoned_before_a_group_takes_it_is_not_written() {
    let db = TestDb::new().await;
    let Held {
        w,
        lock,
        first_task,
        ..
    } = writer_held_on_lock(&db.pool).await;

    let (gone, gone_events) = push_to("gone", 'g');
    let abandoned = spawn_push(&w, &gone, gone_events);
    wait_for_queue(&w, 1).await;
    // The consumer core drops a delivery's future on timeout or shutdown.
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(w.waiting_len(), 0, "the abandoned push left the queue");

    lock.commit().await.unwrap();
    first_task.await.unwrap().unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE message_id = $1")
        .bind(gone.push_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_writes_nothing_and_draws_no_outbox_id_before_it_holds_the_repository_locks() {
    let db = TestDb::new().await;
    let w = writer(&db.pool);
    // A push to another repository takes the only writer slot and waits there.
    let other_lock = hold_lock_of(&db.pool, "other.git").await;
    let (mut elsewhere, elsewhere_events) = push_to("elsewhere", 'e');
    elsewhere.repository = "other.git".into();
    let first = spawn_push(&w, &elsewhere, elsewhere_events);
    wait_for_lock_waiter(&db.pool).await;
    // Two pushes to REPO queue behind it; REPO's lock is held too.
    let lock = hold_repository_lock(&db.pool).await;
    let (a, a_events) = push_to("a", 'a');
    let (b, b_events) = push_to("b", 'b');
    let group = [spawn_push(&w, &a, a_events), spawn_push(&w, &b, b_events)];
    wait_for_queue(&w, 2).await;
    other_lock.commit().await.unwrap();
    first.await.unwrap().unwrap();
    // Now the group's statement runs and waits on REPO's lock.
    wait_for_queue(&w, 0).await;
    wait_for_lock_waiter(&db.pool).await;
    let last_committed: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // Sequences are not transactional: an id drawn by the waiting statement
    // would show here even though it has not committed.
    let seq_last: i64 = sqlx::query_scalar("SELECT last_value FROM outbox_id_seq")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(seq_last, last_committed, "no outbox id drawn while waiting");
    let push_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM pushes WHERE repository = $1")
        .bind(REPO)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(push_rows, 0, "nothing written while waiting");
    lock.commit().await.unwrap();
    for t in group {
        assert_eq!(t.await.unwrap().unwrap(), Written::Recorded { webhooks: 0 });
    }
    assert_eq!(
        writing_transactions(&db.pool, &[a.push_id, b.push_id]).await,
        1
    );
}
