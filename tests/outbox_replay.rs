//! `outbox replay` against real PostgreSQL and RabbitMQ: selection by id range,
//! time range and type, `x-replayed-from`, dry run, and bad filters.

use hookfleet_testkit as common;
use hookfleet_testkit::outbox as outbox_support;

use std::time::Duration;

use common::{TestDb, test_config, unique_prefix};
use hookfleet::amqp::topology::Names;
use hookfleet::config::Config;
use hookfleet::message::H_REPLAYED_FROM;
use hookfleet::outbox::Event;
use hookfleet::outbox::replay::{self, Progress, ReplayError, ReplayReport, ReplayRequest};
use outbox_support::{EventsQueue, commit_events, int_header, mark_published, message_id};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// Rows 1..=12, all published; row i created at 2024-05-01T00:00Z + i hours; types
/// cycle git.push, git.tag.created, webhook.delivery. Row 13 is unpublished.
async fn seed(db: &TestDb, cfg: &Config) -> Vec<Event> {
    let names = Names::new(&cfg.amqp.prefix);
    let types = ["git.push", "git.tag.created", "webhook.delivery"];
    let all: Vec<Event> = (0..13)
        .map(|i| {
            Event::new(
                &names,
                types[i % 3],
                Some(format!("push-{}", i % 2)),
                serde_json::json!({ "n": i }),
            )
        })
        .collect();
    commit_events(&db.pool, &all).await;
    sqlx::query(
        "UPDATE outbox SET created_at = timestamptz '2024-05-01T00:00:00Z' + make_interval(hours => id::int) \
         WHERE id <= 12",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    mark_published(&db.pool, 1, 12, Duration::ZERO, 1).await;
    all
}

async fn replay(
    db: &TestDb,
    cfg: &Config,
    req: ReplayRequest,
) -> Result<ReplayReport, ReplayError> {
    let plan = replay::plan(&req)?;
    replay::run(
        &db.pool,
        &cfg.amqp,
        &plan,
        &Progress::Quiet,
        &CancellationToken::new(),
    )
    .await
}

/// Receives everything queued now and returns the x-replayed-from ids, checking
/// each message keeps the original row's message_id.
async fn replayed_ids(q: &EventsQueue, db: &TestDb) -> Vec<i64> {
    let n = q.ready().await as usize;
    let got = if n == 0 {
        Vec::new()
    } else {
        q.receive(n, WAIT).await
    };
    let mut ids = Vec::new();
    for d in &got {
        let from = int_header(d, H_REPLAYED_FROM).expect("x-replayed-from");
        let original: uuid::Uuid =
            sqlx::query_scalar("SELECT message_id FROM outbox WHERE id = $1")
                .bind(from)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(message_id(d), original, "replay keeps the message_id");
        ids.push(from);
    }
    ids
}

#[tokio::test]
async fn replays_exactly_the_selected_events() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let q = EventsQueue::bind(&cfg).await;
    seed(&db, &cfg).await;

    // By id range (the unpublished row 13 is never replayed).
    let r = replay(
        &db,
        &cfg,
        ReplayRequest {
            from_id: Some(3),
            to_id: Some(13),
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((r.selected, r.published), (10, 10));
    assert_eq!(
        replayed_ids(&q, &db).await,
        (3..=12).collect::<Vec<_>>(),
        "id order"
    );

    // By time range: rows created at +4h ..= +6h.
    let r = replay(
        &db,
        &cfg,
        ReplayRequest {
            since: Some("2024-05-01T04:00:00Z".into()),
            until: Some("2024-05-01T08:00:00+02:00".into()),
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.published, 3);
    assert_eq!(replayed_ids(&q, &db).await, vec![4, 5, 6]);

    // By exact type, by pattern, and with a correlation id and a rate limit.
    let r = replay(
        &db,
        &cfg,
        ReplayRequest {
            event_type: Some("git.push".into()),
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.published, 4);
    assert_eq!(replayed_ids(&q, &db).await, vec![1, 4, 7, 10]);

    replay(
        &db,
        &cfg,
        ReplayRequest {
            event_type: Some("git.#".into()),
            correlation_id: Some("push-0".into()),
            rate: Some(1000),
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap();
    // git.push or git.tag.created (ids ≢ 0 mod 3) and even row index (odd id).
    assert_eq!(replayed_ids(&q, &db).await, vec![1, 5, 7, 11]);

    replay(
        &db,
        &cfg,
        ReplayRequest {
            event_type: Some("*.*.created".into()),
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(replayed_ids(&q, &db).await, vec![2, 5, 8, 11]);

    // To another exchange / routing key: the default exchange straight to our queue.
    let r = replay(
        &db,
        &cfg,
        ReplayRequest {
            from_id: Some(12),
            to_exchange: Some(String::new()),
            routing_key: Some(q.queue.clone()),
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.published, 1);
    assert_eq!(replayed_ids(&q, &db).await, vec![12]);

    // Replays never touch the rows.
    let attempts: i64 = sqlx::query_scalar("SELECT sum(publish_attempts) FROM outbox_published")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 12);
    q.cleanup().await;
}

#[tokio::test]
async fn dry_run_counts_and_samples_without_publishing() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let q = EventsQueue::bind(&cfg).await;
    seed(&db, &cfg).await;
    let r = replay(
        &db,
        &cfg,
        ReplayRequest {
            event_type: Some("webhook.delivery".into()),
            dry_run: true,
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((r.selected, r.published), (4, 0));
    assert_eq!(
        r.sample.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![3, 6, 9, 12]
    );
    assert_eq!(q.ready().await, 0);
    q.cleanup().await;
}

#[tokio::test]
async fn a_missing_target_exchange_reports_where_to_resume() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let q = EventsQueue::bind(&cfg).await;
    seed(&db, &cfg).await;
    let err = replay(
        &db,
        &cfg,
        ReplayRequest {
            from_id: Some(2),
            to_exchange: Some(format!("{}.absent", cfg.amqp.prefix)),
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap_err();
    match &err {
        ReplayError::Broker { resume_from, .. } => assert_eq!(*resume_from, 2),
        other => panic!("unexpected: {other}"),
    }
    assert!(err.to_string().contains("--from-id 2"), "{err}");
    q.cleanup().await;
}

#[tokio::test]
async fn bad_filters_are_usage_errors_and_publish_nothing() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let q = EventsQueue::bind(&cfg).await;
    seed(&db, &cfg).await;
    let bad: [&[&str]; 5] = [
        &[
            "--since",
            "2024-05-02T00:00:00Z",
            "--until",
            "2024-05-01T00:00:00Z",
        ],
        &["--since", "last tuesday"],
        &["--type", "Git.Push"],
        &["--type", "git..push"],
        &["--from-id", "9", "--to-id", "3"],
    ];
    for args in bad {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookfleet"))
            .args(["outbox", "replay"])
            .args(args)
            .env("HOOKFLEET_DATABASE__URL", &db.url)
            .env("HOOKFLEET_AMQP__PREFIX", &cfg.amqp.prefix)
            .env("HOOKFLEET_LOG__LEVEL", "warn")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("invalid replay filter"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(q.ready().await, 0);
    q.cleanup().await;
}

#[tokio::test]
async fn cli_status_and_dry_run() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let q = EventsQueue::bind(&cfg).await;
    seed(&db, &cfg).await;
    let run = |args: &'static [&'static str]| {
        let url = db.url.clone();
        let prefix = cfg.amqp.prefix.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_hookfleet"))
                .args(args)
                .env("HOOKFLEET_DATABASE__URL", url)
                .env("HOOKFLEET_AMQP__PREFIX", prefix)
                .output()
                .await
                .unwrap()
        }
    };
    let out = run(&["outbox", "status", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["pending"], 1);
    assert_eq!(status["published_last_minute"], 12);

    let out = run(&["outbox", "replay", "--type", "git.push", "--dry-run"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 events match"), "{text}");
    assert_eq!(q.ready().await, 0);

    let out = run(&["outbox", "replay", "--from-id", "10"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 3 of 3"));
    assert_eq!(replayed_ids(&q, &db).await, vec![10, 11, 12]);
    q.cleanup().await;
}

#[tokio::test]
async fn an_interrupted_replay_resumes_from_the_reported_id() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let q = EventsQueue::bind(&cfg).await;
    seed(&db, &cfg).await;
    let token = CancellationToken::new();
    let plan = replay::plan(&ReplayRequest {
        rate: Some(10),
        ..ReplayRequest::default()
    })
    .unwrap();
    let (pool, amqp, t) = (db.pool.clone(), cfg.amqp.clone(), token.clone());
    let task =
        tokio::spawn(async move { replay::run(&pool, &amqp, &plan, &Progress::Quiet, &t).await });
    common::eventually(WAIT, "first replayed events", || async {
        (q.ready().await >= 3).then_some(())
    })
    .await;
    token.cancel();
    let resume_from = match task.await.unwrap() {
        Err(ReplayError::Interrupted { resume_from }) => resume_from,
        other => panic!("expected an interruption, got {other:?}"),
    };
    assert!((4..=12).contains(&resume_from), "{resume_from}");
    let first = replayed_ids(&q, &db).await;
    assert_eq!(first, (1..resume_from).collect::<Vec<_>>());

    replay(
        &db,
        &cfg,
        ReplayRequest {
            from_id: Some(resume_from),
            ..ReplayRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        replayed_ids(&q, &db).await,
        (resume_from..=12).collect::<Vec<_>>()
    );
    q.cleanup().await;
}
