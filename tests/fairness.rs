//! Fairness between repositories on the real services: the hook sends a
//! repository's storm to the bulk queue, the worker lets other repositories'
//! pushes pass it, the bulk queue's retries come back to it, the bulk pacer
//! slows a storm when the outbox lags, and a rate limit postpones a
//! repository's excess without losing it.

use hookfleet_testkit as common;

use std::time::Duration;

use chrono::Utc;
use common::cli::hookfleet_exe;
use common::gitrepo::{Repos, git};
use common::procs::{WorkerProc, free_port, metric, worker_env_at};
use common::{Broker, EventSink, RunningWorker, TestDb, eventually, test_config, unique_prefix};
use hookfleet::config::Config;
use hookfleet::push_job::PushJob;
use hookfleet::push_job::update::RefUpdate;
use uuid::Uuid;

fn push_config(db: &TestDb, repos: &Repos) -> Config {
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.worker.kinds = vec!["push".into()];
    cfg.hook.repositories_root = repos.dir.path().to_string_lossy().into_owned();
    cfg.spool.dir = repos.dir.path().join("spool");
    cfg.outbox.poll_interval = Duration::from_millis(100);
    cfg
}

/// A job creating branch `name` of `repository` at `commit`.
fn job(repository: &str, name: &str, commit: &str) -> PushJob {
    PushJob {
        push_id: Uuid::now_v7(),
        repository: repository.into(),
        path: None,
        pusher: Some("bot".into()),
        push_options: Vec::new(),
        pushed_at: Utc::now(),
        refs_omitted: 0,
        updates: vec![RefUpdate {
            refname: format!("refs/heads/{name}"),
            before: "0".repeat(40),
            after: commit.into(),
        }],
    }
}

/// `repo.git` (the storm) and `quiet.git`, another repository with the same
/// commits, and the commit both have.
fn storm_and_quiet_repos() -> (Repos, String) {
    let repos = Repos::new(false);
    git(repos.work.as_path(), &["push", "-q", "origin", "HEAD:main"]);
    git(
        repos.dir.path(),
        &["clone", "-q", "--bare", "repo.git", "quiet.git"],
    );
    let commit = repos.git(&["rev-parse", "HEAD"]);
    (repos, commit)
}

async fn publish(broker: &Broker, routing_key: &str, job: &PushJob) {
    broker
        .publish_raw(routing_key, &job.to_json(), job.envelope().to_properties())
        .await;
}

async fn pushes_recorded(db: &TestDb, repository: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pushes WHERE repository = $1")
        .bind(repository)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_sends_a_repository_over_its_burst_to_the_bulk_queue() {
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let cfg = push_config(&db, &repos);
    let broker = Broker::new(&cfg).await;
    // A burst of 2 and next to no refill: the third push on is a storm.
    let env = [
        ("HOOKFLEET_FAIRNESS__REPOSITORY_BURST", "2"),
        ("HOOKFLEET_FAIRNESS__REPOSITORY_RATE", "0.001"),
    ];
    for i in 0..4 {
        repos.commit(&format!("f{i}.txt"), "x", "c");
        let stderr = repos.push_with_env(
            &cfg,
            common::AMQP_URL,
            &["-q", "origin", &format!("HEAD:refs/heads/b{i}")],
            &env,
        );
        assert!(!stderr.contains("NOT recorded"), "{stderr}");
    }
    let (push, bulk) = (broker.names.queue("push"), broker.names.bulk_queue("push"));
    assert_eq!(broker.depth(&push).await, 2, "the burst goes to {push}");
    assert_eq!(broker.depth(&bulk).await, 2, "the rest goes to {bulk}");
    // Fairness off: the one FIFO of before.
    repos.commit("g.txt", "x", "c");
    repos.push_with_env(
        &cfg,
        common::AMQP_URL,
        &["-q", "origin", "HEAD:refs/heads/off"],
        &[
            ("HOOKFLEET_FAIRNESS__ENABLED", "false"),
            ("HOOKFLEET_FAIRNESS__REPOSITORY_BURST", "2"),
        ],
    );
    assert_eq!(broker.depth(&push).await, 3);
    assert_eq!(broker.depth(&bulk).await, 2);
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_repositorys_push_passes_a_storm_in_the_bulk_queue() {
    const STORM: usize = 400;
    let db = TestDb::new().await;
    let (repos, commit) = storm_and_quiet_repos();
    let mut cfg = push_config(&db, &repos);
    cfg.worker.concurrency = 8;
    cfg.fairness.bulk_concurrency = 1;
    let broker = Broker::new(&cfg).await;
    let sink = EventSink::new(&broker).await;
    for i in 0..STORM {
        publish(
            &broker,
            "push.bulk",
            &job("repo.git", &format!("s{i}"), &commit),
        )
        .await;
    }
    let bulk = broker.names.bulk_queue("push");
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    let quiet = job("quiet.git", "q", &commit);
    publish(&broker, "push", &quiet).await;
    let quiet_id = quiet.push_id.to_string();
    // One permit for the storm: the quiet push is written long before it drains.
    sink.wait_for_match(Duration::from_secs(60), "the quiet push's events", |e| {
        e.correlation_id.as_deref() == Some(quiet_id.as_str())
    })
    .await;
    let storm_left = broker.depth(&bulk).await;
    assert!(
        storm_left > 0,
        "the quiet push waited for the whole storm of {STORM}"
    );
    // Nothing of the storm is lost.
    eventually(Duration::from_secs(120), "the storm written", || async {
        (pushes_recorded(&db, "repo.git").await == STORM as i64).then_some(())
    })
    .await;
    assert_eq!(pushes_recorded(&db, "quiet.git").await, 1);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_queues_retry_tiers_return_to_the_bulk_queue() {
    let db = TestDb::new().await;
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.worker.kinds = vec!["push".into()];
    let broker = Broker::new(&cfg).await;
    let bulk = broker.names.bulk_queue("push");
    let tier = hookfleet::amqp::topology::retry_queue_of(&bulk, cfg.retry.tiers[0]);
    let env = hookfleet::message::Envelope::new("push", None);
    hookfleet::amqp::publish::publish_confirmed(
        &broker.ch,
        "",
        &tier,
        b"{}",
        env.to_properties(),
        true,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "the copy back in the bulk queue",
        || async { (broker.depth(&bulk).await == 1).then_some(()) },
    )
    .await;
    assert_eq!(broker.depth(&broker.names.queue("push")).await, 0);
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_postpones_a_repositorys_excess_and_loses_none() {
    const PUSHES: usize = 6;
    let db = TestDb::new().await;
    let repos = Repos::new(false);
    git(repos.work.as_path(), &["push", "-q", "origin", "HEAD:main"]);
    let commit = repos.git(&["rev-parse", "HEAD"]);
    let mut cfg = push_config(&db, &repos);
    // Two pushes at once, then one every 100 ms; the tiers are 50 and 100 ms.
    cfg.rate_limit.push_per_repository = 10.0;
    cfg.rate_limit.push_burst = 2;
    cfg.retry.max_postponements = 1_000;
    let broker = Broker::new(&cfg).await;
    let postponed = || {
        hookfleet::metrics::metrics()
            .postponed_total
            .with_label_values(&["push", "rate_limit"])
            .get()
    };
    let before = postponed();
    for i in 0..PUSHES {
        publish(&broker, "push", &job("repo.git", &format!("r{i}"), &commit)).await;
    }
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    eventually(Duration::from_secs(60), "every push written", || async {
        (pushes_recorded(&db, "repo.git").await == PUSHES as i64).then_some(())
    })
    .await;
    assert!(
        postponed() > before,
        "six pushes at once over a burst of two were postponed"
    );
    assert_eq!(broker.depth(&broker.names.dead_queue("push")).await, 0);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

/// The bulk pacer's second signal on the real services: with no relay
/// publishing, the quiet pushes' events wait in the outbox, and the worker
/// halves its storm's rate for the outbox's lag, down to
/// `fairness.bulk_min_rate`. A worker process of its own, so its `/metrics`
/// are no other test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_outbox_slows_the_storm_to_its_minimum_rate() {
    const STORM: usize = 2_000;
    let db = TestDb::new().await;
    let (repos, commit) = storm_and_quiet_repos();
    let cfg = push_config(&db, &repos);
    let broker = Broker::new(&cfg).await;
    for i in 0..STORM {
        let storm = job("repo.git", &format!("s{i}"), &commit);
        publish(&broker, "push.bulk", &storm).await;
    }
    // The test's topology (classic queues, short tiers) and repositories.
    let mut env = worker_env_at(&cfg, repos.dir.path());
    let tmp = std::env::temp_dir().display().to_string();
    env.extend([
        (
            "HOOKFLEET_AMQP__QUEUE_TYPE".to_string(),
            "classic".to_string(),
        ),
        (
            "HOOKFLEET_RETRY__TIERS".into(),
            r#"["50ms", "100ms"]"#.into(),
        ),
        ("HOOKFLEET_HOOK__ALLOWED_DIRS".into(), format!("[{tmp:?}]")),
        ("HOOKFLEET_OUTBOX__RELAY".into(), "false".into()),
        ("HOOKFLEET_FAIRNESS__BULK_MIN_RATE".into(), "5".into()),
    ]);
    let port = free_port().unwrap();
    let log = repos.dir.path().join("worker.log");
    let mut worker = WorkerProc::spawn(&hookfleet_exe().unwrap(), &env, port, &log).unwrap();
    if let Err(e) = worker.wait_ready(Duration::from_secs(60)).await {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("{e}; its log:\n{log}");
    }
    // Quiet pushes keep coming (one a poll), so every interval of the pacer
    // has push jobs to protect; their events stay in the outbox.
    let mut n = 0;
    eventually(
        Duration::from_secs(60),
        "the storm slowed to 5/s for the outbox's lag",
        || {
            n += 1;
            let quiet = job("quiet.git", &format!("q{n}"), &commit);
            let broker = &broker;
            async move {
                publish(broker, "push", &quiet).await;
                let lag = r#"hookfleet_bulk_slowdowns_total{kind="push",signal="outbox_lag"}"#;
                let rate = r#"hookfleet_bulk_rate{kind="push"}"#;
                let slowed = metric(port, lag).await.unwrap_or(0.0) > 0.0;
                (slowed && metric(port, rate).await == Some(5.0)).then_some(())
            }
        },
    )
    .await;
    let left = broker.depth(&broker.names.bulk_queue("push")).await;
    assert!(left > 0, "the storm is paced, not drained at once");
    worker.terminate(Duration::from_secs(30)).await;
    broker.cleanup(&cfg).await;
}
