//! The whole pipeline against real git, RabbitMQ and PostgreSQL: the handler
//! transaction (inbox + effects + outbox), the relay, and real `git push`es.
use hookfleet_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::gitrepo::Repos;
use common::transactional::{Transactional, TxHandler};
use common::{
    Broker, EventSink, RunningWorker, SinkEvent, TestDb, eventually, test_config, unique_prefix,
};
use hookfleet::amqp::topology::Names;
use hookfleet::config::Config;
use hookfleet::job::{Handler, Job, JobError};
use hookfleet::outbox::{self, Event};
use hookfleet::push::record::{PushWrite, record};
use hookfleet::push_job::PushJob;
use hookfleet::push_job::update::RefUpdate;
use serde_json::json;
use sqlx::{Postgres, Transaction};

/// Writes a row and enqueues two events, then fails if the body says so.
struct NoteHandler {
    names: Names,
}

#[async_trait::async_trait]
impl TxHandler for NoteHandler {
    type Prepared = ();
    fn kind(&self) -> &str {
        "note"
    }
    async fn prepare(&self, _job: &Job) -> Result<(), JobError> {
        Ok(())
    }
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        job: &Job,
        _: (),
    ) -> Result<(), JobError> {
        let text = job.body()["text"].as_str().unwrap_or_default().to_string();
        sqlx::query("INSERT INTO notes (message_id, text) VALUES ($1, $2)")
            .bind(job.envelope.message_id)
            .bind(&text)
            .execute(&mut **tx)
            .await?;
        let corr = job.envelope.correlation_id.clone();
        let events = [
            Event::new(
                &self.names,
                "note.created",
                corr.clone(),
                json!({"text": text}),
            ),
            Event::new(
                &self.names,
                "note.counted",
                corr,
                json!({"len": text.len()}),
            ),
        ];
        outbox::enqueue_many(tx, &events).await?;
        if job.body()["fail"].as_bool() == Some(true) {
            return Err(JobError::permanent("told to fail after writing"));
        }
        Ok(())
    }
}

fn note_worker(cfg: &Config, db: &TestDb) -> RunningWorker {
    let names = Names::new(&cfg.amqp.prefix);
    let pool = db.pool.clone();
    let timeout = cfg.worker.handler_timeout;
    let h: Arc<dyn Handler> = Arc::new(Transactional::new(
        NoteHandler {
            names: names.clone(),
        },
        pool,
        names.queue("note"),
        timeout,
    ));
    RunningWorker::start(cfg.clone(), vec![h])
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_and_events_commit_together_or_not_at_all_and_redeliveries_are_skipped() {
    let db = TestDb::new().await;
    sqlx::query("CREATE TABLE notes (message_id uuid PRIMARY KEY, text text NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.worker.kinds = vec!["note".into()];
    cfg.outbox.poll_interval = Duration::from_millis(200);
    let broker = Broker::new(&cfg).await;
    let sink = EventSink::new(&broker).await;
    let worker = note_worker(&cfg, &db);
    worker.ready().await;

    // Fails after writing: neither the row nor the events exist, and it is dead-lettered.
    broker
        .publish_job("note", &json!({"text": "no", "fail": true}))
        .await;
    let dead_q = broker.names.dead_queue("note");
    let b = &broker;
    eventually(Duration::from_secs(30), "failed job dead-lettered", || {
        let q = dead_q.clone();
        async move { (b.depth(&q).await == 1).then_some(()) }
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM notes").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM inbox").await,
        0,
        "the inbox claim rolled back too"
    );

    // Succeeds: the row and both events exist, and both reach the bound queue.
    let ok = broker.publish_job("note", &json!({"text": "yes"})).await;
    let mut got = Vec::new();
    sink.wait_for(&mut got, 2, "two events of the successful job")
        .await;
    let mut types: Vec<&str> = got.iter().map(|e| e.event_type.as_str()).collect();
    types.sort();
    assert_eq!(types, ["note.counted", "note.created"]);
    assert!(
        got.iter()
            .all(|e| e.correlation_id.as_deref() == Some("corr-test"))
    );
    assert_eq!(count(&db, "SELECT count(*) FROM notes").await, 1);

    // The same message id delivered again: effects once, events once.
    let env = hookfleet::message::Envelope {
        message_id: ok,
        ..hookfleet::message::Envelope::new("note", Some("corr-test".into()))
    };
    broker
        .publish_raw("note", br#"{"text": "yes"}"#, env.to_properties())
        .await;
    let dup = hookfleet::metrics::metrics()
        .deliveries_total
        .with_label_values(&[&broker.names.queue("note"), "duplicate"]);
    let d = &dup;
    eventually(
        Duration::from_secs(30),
        "redelivery recognised as a duplicate",
        || async move { (d.get() >= 1).then_some(()) },
    )
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM notes").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 2);
    // Everything relayed is marked published, and nothing more arrived.
    eventually(Duration::from_secs(30), "outbox drained", || {
        let pool = db.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n == 0).then_some(())
        }
    })
    .await;
    assert!(sink.take().await.is_empty(), "no event twice");
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

fn push_config(db: &TestDb, repos: &Repos) -> Config {
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.worker.kinds = vec!["push".into()];
    cfg.hook.repositories_root = repos.dir.path().to_string_lossy().into_owned();
    cfg.spool.dir = repos.dir.path().join("spool");
    cfg.outbox.poll_interval = Duration::from_millis(200);
    cfg
}

fn of_type<'a>(events: &'a [SinkEvent], t: &str) -> Vec<&'a SinkEvent> {
    events.iter().filter(|e| e.event_type == t).collect()
}

/// Pushes, then waits for exactly `n` events and returns them.
async fn push_and_collect(
    repos: &Repos,
    cfg: &Config,
    sink: &EventSink,
    args: &[&str],
    n: usize,
) -> Vec<SinkEvent> {
    repos.push(cfg, common::AMQP_URL, args);
    let mut got = Vec::new();
    sink.wait_for(
        &mut got,
        n,
        &format!("{n} events of `git push {}`", args.join(" ")),
    )
    .await;
    let corr: std::collections::BTreeSet<_> =
        got.iter().map(|e| e.correlation_id.clone()).collect();
    assert_eq!(
        corr.len(),
        1,
        "all events of one push share its correlation id: {got:#?}"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_git_pushes_become_github_compatible_events() {
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let cfg = push_config(&db, &repos);
    let broker = Broker::new(&cfg).await;
    let sink = EventSink::new(&broker).await;
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;

    // Branch created.
    let c1 = repos.git(&["rev-parse", "HEAD"]);
    let ev = push_and_collect(&repos, &cfg, &sink, &["-q", "origin", "main"], 2).await;
    let p = &of_type(&ev, "git.push")[0].body;
    assert_eq!(p["ref"], "refs/heads/main");
    assert_eq!(p["created"], true);
    assert_eq!(p["after"], c1.as_str());
    assert_eq!(p["pusher"]["name"], "alice");
    assert_eq!(p["repository"]["full_name"], "repo");
    assert_eq!(p["head_commit"]["id"], c1.as_str());
    assert_eq!(of_type(&ev, "git.branch.created").len(), 1);

    // Updated: one new commit with its paths.
    let c2 = repos.commit("b.txt", "b", "two");
    let ev = push_and_collect(&repos, &cfg, &sink, &["-q", "origin", "main"], 1).await;
    let p = &ev[0].body;
    assert_eq!(
        (
            p["created"].as_bool(),
            p["forced"].as_bool(),
            p["deleted"].as_bool()
        ),
        (Some(false), Some(false), Some(false))
    );
    assert_eq!(p["before"], c1.as_str());
    assert_eq!(p["commits"][0]["id"], c2.as_str());
    assert_eq!(p["commits"][0]["added"], json!(["b.txt"]));
    assert_eq!(p["commits"][0]["distinct"], true);
    assert_eq!(p["commits"][0]["author"]["email"], "ann@example.com");
    assert!(p["compare"].as_str().unwrap().contains(&c1[..12]));

    // Force-pushed.
    repos.git(&["commit", "-q", "--amend", "-m", "two, amended"]);
    let ev = push_and_collect(&repos, &cfg, &sink, &["-q", "-f", "origin", "main"], 2).await;
    assert_eq!(of_type(&ev, "git.push")[0].body["forced"], true);
    assert_eq!(of_type(&ev, "git.branch.force_pushed").len(), 1);

    // Tag created, then deleted.
    repos.git(&["tag", "v1"]);
    let ev = push_and_collect(&repos, &cfg, &sink, &["-q", "origin", "v1"], 2).await;
    assert_eq!(of_type(&ev, "git.tag.created").len(), 1);
    assert_eq!(of_type(&ev, "git.push")[0].body["ref"], "refs/tags/v1");
    let ev = push_and_collect(&repos, &cfg, &sink, &["-q", "origin", ":refs/tags/v1"], 2).await;
    assert_eq!(of_type(&ev, "git.tag.deleted").len(), 1);
    assert_eq!(of_type(&ev, "git.push")[0].body["deleted"], true);

    // Several refs in one push: `feature` with a new commit and `copy` at the same commit.
    repos.git(&["checkout", "-q", "-b", "feature"]);
    let f1 = repos.commit("f.txt", "f", "feature work");
    repos.git(&["branch", "copy"]);
    let ev = push_and_collect(&repos, &cfg, &sink, &["-q", "origin", "feature", "copy"], 4).await;
    let pushes = of_type(&ev, "git.push");
    let mut refs: Vec<&str> = pushes
        .iter()
        .map(|e| e.body["ref"].as_str().unwrap())
        .collect();
    refs.sort();
    assert_eq!(refs, ["refs/heads/copy", "refs/heads/feature"]);
    assert_eq!(of_type(&ev, "git.branch.created").len(), 2);
    assert!(pushes.iter().all(|e| e.body["after"] == f1.as_str()));

    // A merge commit on main, whose other parent is already on `feature`.
    repos.git(&["checkout", "-q", "main"]);
    let m1 = repos.commit("m.txt", "m", "main work");
    repos.git(&["merge", "-q", "--no-ff", "-m", "merge feature", "feature"]);
    let merge = repos.git(&["rev-parse", "HEAD"]);
    let ev = push_and_collect(&repos, &cfg, &sink, &["-q", "origin", "main"], 1).await;
    let commits = ev[0].body["commits"].as_array().unwrap().clone();
    let by_id = |id: &str| commits.iter().find(|c| c["id"] == id).cloned();
    let mc = by_id(&merge).expect("merge commit listed");
    assert_eq!(
        mc["added"],
        json!(["f.txt"]),
        "merge paths are against the first parent"
    );
    assert_eq!(by_id(&m1).unwrap()["distinct"], true);
    assert_eq!(by_id(&f1).unwrap()["distinct"], false, "already on feature");

    // Branch deleted.
    let ev = push_and_collect(&repos, &cfg, &sink, &["-q", "origin", ":copy"], 2).await;
    assert_eq!(of_type(&ev, "git.branch.deleted").len(), 1);

    // Effects: one row per push, ref state at the last positions.
    assert_eq!(count(&db, "SELECT count(*) FROM pushes").await, 8);
    let state: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT ref, sha, deleted FROM ref_state ORDER BY ref")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        state.contains(&("refs/heads/main".into(), merge.clone(), false)),
        "{state:?}"
    );
    assert!(state.iter().any(|(r, _, d)| r == "refs/heads/copy" && *d));
    assert!(state.iter().any(|(r, _, d)| r == "refs/tags/v1" && *d));
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_while_the_broker_is_down_is_spooled_and_handled_once_later() {
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let cfg = push_config(&db, &repos);
    let broker = Broker::new(&cfg).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("amqp://guest:guest@{}/%2f", l.local_addr().unwrap())
    };
    let started = std::time::Instant::now();
    let stderr = repos.push(&cfg, &closed, &["-q", "origin", "main"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the push was not held up"
    );
    assert!(stderr.contains("queued locally"), "{stderr}");
    let spooled = hookfleet::hook::spool::pending(&cfg.spool.dir).unwrap();
    assert_eq!(spooled.len(), 1);

    // The worker flushes the spool at start; the push is handled exactly once.
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    eventually(Duration::from_secs(30), "spooled push handled", || {
        let pool = db.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pushes")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n >= 1).then_some(())
        }
    })
    .await;
    // Flushing again (nothing left) and a second publish of the same job change nothing.
    assert!(
        hookfleet::hook::spool::pending(&cfg.spool.dir)
            .unwrap()
            .is_empty()
    );
    let job: PushJob = {
        let updates: serde_json::Value = sqlx::query_scalar("SELECT updates FROM pushes")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let row: (uuid::Uuid, String, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as("SELECT push_id, repository, pushed_at FROM pushes")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        PushJob {
            push_id: row.0,
            repository: row.1,
            path: None,
            pusher: Some("alice".into()),
            push_options: vec![],
            pushed_at: row.2,
            refs_omitted: 0,
            updates: serde_json::from_value(updates).unwrap(),
        }
    };
    broker
        .publish_raw(
            "push",
            &serde_json::to_vec(&job).unwrap(),
            job.envelope().to_properties(),
        )
        .await;
    let dup = hookfleet::metrics::metrics()
        .deliveries_total
        .with_label_values(&[&broker.names.queue("push"), "duplicate"]);
    let d = &dup;
    eventually(
        Duration::from_secs(30),
        "second copy skipped",
        || async move { (d.get() >= 1).then_some(()) },
    )
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM pushes").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM inbox").await, 1);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_to_one_repository_end_at_the_last_push() {
    let db = TestDb::new().await;
    let repos = Repos::new(false);
    repos.git(&["push", "-q", "origin", "main"]);
    let c1 = repos.git(&["rev-parse", "HEAD"]);
    let c2 = repos.commit("b.txt", "b", "two");
    let c3 = repos.commit("c.txt", "c", "three");
    repos.git(&["push", "-q", "origin", "main"]);
    let mut cfg = push_config(&db, &repos);
    cfg.worker.concurrency = 4;
    let broker = Broker::new(&cfg).await;
    let first = main_moved(&c1, &c2);
    let last = main_moved(&c2, &c3);
    // The later push is published first: order of arrival must not decide.
    for j in [&last, &first] {
        broker
            .publish_raw(
                "push",
                &serde_json::to_vec(j).unwrap(),
                j.envelope().to_properties(),
            )
            .await;
    }
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    eventually(Duration::from_secs(30), "both pushes handled", || {
        let pool = db.pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pushes")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n == 2).then_some(())
        }
    })
    .await;
    let (sha, push_id): (String, uuid::Uuid) =
        sqlx::query_as("SELECT sha, push_id FROM ref_state WHERE ref = 'refs/heads/main'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(sha, c3);
    assert_eq!(push_id, last.push_id);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

/// A push to a repository without an event: `record` needs one row to write.
fn push_of(repo: &str, branch: &str) -> (PushJob, Vec<Event>) {
    let push = PushJob {
        push_id: uuid::Uuid::now_v7(),
        repository: repo.into(),
        path: None,
        pusher: None,
        push_options: vec![],
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![RefUpdate {
            refname: format!("refs/heads/{branch}"),
            before: "0".repeat(40),
            after: "a".repeat(40),
        }],
    };
    let names = Names::new("lock-test");
    let corr = Some(push.push_id.to_string());
    let events = vec![
        Event::new(&names, "git.push", corr.clone(), json!({"n": 1})),
        Event::new(&names, "git.branch.created", corr, json!({"n": 2})),
    ];
    (push, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_writes_nothing_and_draws_no_outbox_id_before_it_holds_the_repository_lock() {
    // `record` is one statement (lock, push, ref state, outbox); its inserts must
    // wait for the lock, or outbox ids of one repository would not follow commit
    // order.
    let db = TestDb::new().await;
    let (a, a_events) = push_of("repo.git", "a");
    let (b, b_events) = push_of("repo.git", "b");
    let write = |push: &PushJob, events: Vec<Event>| PushWrite {
        message_id: push.push_id,
        push: push.clone(),
        events,
        deliveries: vec![],
    };
    let (write_a, write_b) = (write(&a, a_events), write(&b, b_events));
    // The first holds the lock in an open transaction; the second runs as the
    // handler runs it, one statement on a plain connection.
    let mut tx_a = db.pool.begin().await.unwrap();
    assert_eq!(
        record(&mut *tx_a, "lock-test.push", std::slice::from_ref(&write_a))
            .await
            .unwrap(),
        vec![a.push_id]
    );
    let last_id_of_a: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox")
        .fetch_one(&mut *tx_a)
        .await
        .unwrap();
    let (a_id, b_id) = (a.push_id.to_string(), b.push_id.to_string());
    let pool = db.pool.clone();
    let second = tokio::spawn(async move {
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            record(&mut *conn, "lock-test.push", std::slice::from_ref(&write_b))
                .await
                .unwrap(),
            vec![write_b.message_id]
        );
    });
    eventually(
        Duration::from_secs(30),
        "the second push waiting on the advisory lock",
        || {
            let pool = db.pool.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                )
                .fetch_one(&pool)
                .await
                .ok()?;
                (waiting == 1).then_some(())
            }
        },
    )
    .await;
    // Sequences are not transactional: an id drawn by the waiting statement would
    // show here even though it has not committed.
    let seq_last: i64 = sqlx::query_scalar("SELECT last_value FROM outbox_id_seq")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(seq_last, last_id_of_a, "no outbox id drawn while waiting");
    assert!(!second.is_finished());
    tx_a.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second push goes on once the first commits")
        .unwrap();
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT p.payload->>'n' || ':' || o.correlation_id FROM outbox o, \
         LATERAL (SELECT o.payload) p ORDER BY o.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        order,
        vec![
            format!("1:{a_id}"),
            format!("2:{a_id}"),
            format!("1:{b_id}"),
            format!("2:{b_id}"),
        ],
        "ids follow lock order, and each push's events keep their order"
    );
    let (pushes, refs): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM pushes), (SELECT count(*) FROM ref_state)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((pushes, refs), (2, 2));
}

/// Writes a note in `handle`; its `prepare` (the read outside the database)
/// waits for a permit when the body says `wait`, and fails when it says
/// `fail_read`.
struct GatedHandler {
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl TxHandler for GatedHandler {
    type Prepared = String;
    fn kind(&self) -> &str {
        "gated"
    }
    async fn prepare(&self, job: &Job) -> Result<String, JobError> {
        if job.body()["fail_read"].as_bool() == Some(true) {
            return Err(JobError::permanent("the read failed"));
        }
        if job.body()["wait"].as_bool() == Some(true) {
            self.entered.notify_one();
            let _permit = self.gate.acquire().await;
        }
        Ok(job.body()["text"].as_str().unwrap_or_default().to_string())
    }
    async fn handle(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        job: &Job,
        text: String,
    ) -> Result<(), JobError> {
        sqlx::query("INSERT INTO notes (message_id, text) VALUES ($1, $2)")
            .bind(job.envelope.message_id)
            .bind(text)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// A first delivery of a `kind` job with message id `id` and `body`.
fn job_of(kind: &str, id: uuid::Uuid, body: &impl serde::Serialize) -> Job {
    let mut envelope = hookfleet::message::Envelope::new(kind, None);
    envelope.message_id = id;
    Job {
        kind: kind.into(),
        attempt: 1,
        raw: serde_json::to_vec(body).unwrap().into(),
        parsed: std::sync::OnceLock::new(),
        envelope,
        bulk: false,
    }
}

fn gated_job(id: uuid::Uuid, body: serde_json::Value) -> Job {
    job_of("gated", id, &body)
}

async fn gated(db: &TestDb, max_connections: u32) -> (Transactional<GatedHandler>, GatedParts) {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS notes (message_id uuid PRIMARY KEY, text text NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&db.url)
        .await
        .unwrap();
    let parts = GatedParts {
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        entered: Arc::new(tokio::sync::Notify::new()),
    };
    let handler = GatedHandler {
        gate: parts.gate.clone(),
        entered: parts.entered.clone(),
    };
    let t = Transactional::new(handler, pool, "test.gated", Duration::from_secs(30));
    (t, parts)
}

struct GatedParts {
    gate: Arc<tokio::sync::Semaphore>,
    entered: Arc<tokio::sync::Notify>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_reading_its_input_holds_no_database_connection() {
    let db = TestDb::new().await;
    // One connection in the pool: if the read held it, nothing else could commit.
    let (t, parts) = gated(&db, 1).await;
    let t = Arc::new(t);
    let slow = {
        let t = t.clone();
        tokio::spawn(async move {
            t.handle(gated_job(
                uuid::Uuid::now_v7(),
                json!({"wait": true, "text": "slow"}),
            ))
            .await
        })
    };
    parts.entered.notified().await;
    let quick = tokio::time::timeout(
        Duration::from_secs(10),
        t.handle(gated_job(uuid::Uuid::now_v7(), json!({"text": "quick"}))),
    )
    .await
    .expect("a job finished while another was still reading: the read holds no connection");
    assert!(
        matches!(quick, Ok(hookfleet::job::Done::Handled)),
        "{quick:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM notes").await, 1);
    parts.gate.add_permits(1);
    let slow = slow.await.unwrap();
    assert!(
        matches!(slow, Ok(hookfleet::job::Done::Handled)),
        "{slow:?}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM notes").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_whose_read_now_fails_is_skipped_as_a_duplicate() {
    let db = TestDb::new().await;
    let (t, _parts) = gated(&db, 2).await;
    let id = uuid::Uuid::now_v7();
    let first = t.handle(gated_job(id, json!({"text": "once"}))).await;
    assert!(
        matches!(first, Ok(hookfleet::job::Done::Handled)),
        "{first:?}"
    );
    // The same message again, and its read fails now (say, the repository is gone).
    let again = t.handle(gated_job(id, json!({"fail_read": true}))).await;
    assert!(
        matches!(again, Ok(hookfleet::job::Done::Duplicate)),
        "{again:?}"
    );
    // A new message whose read fails is a failure, not a duplicate.
    let other = t
        .handle(gated_job(uuid::Uuid::now_v7(), json!({"fail_read": true})))
        .await;
    assert!(matches!(other, Err(JobError::Permanent(_))), "{other:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM notes").await, 1);
}

/// A push job for `repos`' bare repository creating `main` at its clone's HEAD,
/// as the hook would publish it, with message id `id`.
fn push_job(repos: &Repos, id: uuid::Uuid) -> Job {
    let push = main_moved(&"0".repeat(40), &repos.git(&["rev-parse", "HEAD"]));
    job_of("push", id, &push)
}

/// A push of alice's to `repo.git` moving `main` from `before` to `after`.
fn main_moved(before: &str, after: &str) -> PushJob {
    PushJob {
        push_id: uuid::Uuid::now_v7(),
        repository: "repo.git".into(),
        path: None,
        pusher: Some("alice".into()),
        push_options: vec![],
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![RefUpdate {
            refname: "refs/heads/main".into(),
            before: before.into(),
            after: after.into(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_handler_applies_a_message_once_however_often_and_concurrently_it_comes() {
    // The push handler claims the inbox inside its one statement, not in a
    // transaction of the inbox's: the same guarantees must hold.
    let db = TestDb::new().await;
    let repos = Repos::new(false);
    repos.git(&["push", "-q", "origin", "main"]);
    let cfg = push_config(&db, &repos);
    let h = Arc::new(hookfleet::push::handler::PushHandler::new(
        Arc::new(cfg),
        db.pool.clone(),
    ));
    let id = uuid::Uuid::now_v7();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (h, job) = (h.clone(), push_job(&repos, id));
            tokio::spawn(async move { h.handle(job).await })
        })
        .collect();
    let mut done = Vec::new();
    for r in runs {
        done.push(r.await.unwrap().unwrap());
    }
    let handled = done
        .iter()
        .filter(|d| **d == hookfleet::job::Done::Handled)
        .count();
    assert_eq!(handled, 1, "{done:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM pushes").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM inbox").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM outbox").await,
        2,
        "git.push and git.branch.created, once"
    );

    // A redelivery after the repository is gone is still a duplicate, while a
    // new job for it is a permanent failure.
    std::fs::remove_dir_all(&repos.bare).unwrap();
    let again = h.handle(push_job(&repos, id)).await;
    assert!(
        matches!(again, Ok(hookfleet::job::Done::Duplicate)),
        "{again:?}"
    );
    let other = h.handle(push_job(&repos, uuid::Uuid::now_v7())).await;
    assert!(matches!(other, Err(JobError::Permanent(_))), "{other:?}");
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 2);
}
