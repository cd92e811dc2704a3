//! The consumer-level guards on real services: the kill switch (PostgreSQL cut
//! for real through a proxy that refuses connections and drops the open ones)
//! and fleet-wide pause of a job kind through the real CLI, across two workers
//! and a restart.
use hookfleet_testkit as common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Broker, RunningWorker, TcpProxy, TestDb, eventually, test_config, unique_prefix};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::job::{Done, Handler, Job, JobError};
use sqlx::PgPool;
use tokio::sync::Notify;

const KIND: &str = "push";
const WAIT: Duration = Duration::from_secs(30);

/// Writes each job's id through the worker's own pool (so a database outage
/// fails it transiently) and records the attempt of every job it handled.
struct Recorder {
    pool: PgPool,
    handled: Arc<Mutex<BTreeMap<String, Vec<u32>>>>,
    /// When set, a job announces it started and waits for `release` first.
    hold: Option<(Arc<Notify>, Arc<Notify>)>,
}

#[async_trait::async_trait]
impl Handler for Recorder {
    fn kind(&self) -> &str {
        KIND
    }
    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        if let Some((started, release)) = &self.hold {
            started.notify_one();
            release.notified().await;
        }
        let id = job.envelope.message_id.to_string();
        sqlx::query("INSERT INTO guard_test (id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&id)
            .execute(&self.pool)
            .await?;
        self.handled
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .push(job.attempt);
        Ok(Done::Handled)
    }
}

type Handled = Arc<Mutex<BTreeMap<String, Vec<u32>>>>;

fn start(
    cfg: &Config,
    handled: &Handled,
    hold: Option<(Arc<Notify>, Arc<Notify>)>,
) -> RunningWorker {
    let handled = handled.clone();
    RunningWorker::start_with(
        cfg.clone(),
        Box::new(move |_, pool| {
            let h: Arc<dyn Handler> = Arc::new(Recorder {
                pool: pool.clone(),
                handled,
                hold,
            });
            vec![h]
        }),
    )
}

fn config(db_url: &str) -> Config {
    let mut c = test_config(db_url, &unique_prefix());
    c.worker.kinds = vec![KIND.to_string()];
    c.worker.kind_concurrency = Default::default();
    c.outbox.relay = false;
    c.guard.probe_interval = Duration::from_millis(200);
    c.guard.probe_timeout = Duration::from_millis(500);
    c.guard.half_open_jobs = 2;
    c.guard.pause_poll_interval = Duration::from_millis(500);
    c.database.acquire_timeout = Duration::from_secs(1);
    c
}

async fn table(db: &TestDb) {
    sqlx::query("CREATE TABLE guard_test (id text PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn consumers(broker: &Broker, queue: &str) -> u32 {
    broker.consumers(queue).await
}

async fn retry_and_dead(broker: &Broker, cfg: &Config) -> u32 {
    let mut n = broker.depth(&broker.names.dead_queue(KIND)).await;
    for t in &cfg.retry.tiers {
        n += broker.depth(&broker.names.retry_queue(KIND, *t)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_stops_consuming_and_keeps_every_attempt() {
    let db = TestDb::new().await;
    table(&db).await;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap())
        .await
        .unwrap();
    let url = format!("postgres://postgres@{}/{}", proxy.addr, db.name);
    let mut cfg = config(&url);
    cfg.database.url = SecretUrl::new(&url);
    let broker = Broker::new(&cfg).await;
    let queue = broker.names.queue(KIND);
    let handled: Handled = Arc::default();
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let worker = start(&cfg, &handled, Some((started.clone(), release.clone())));
    worker.ready().await;

    // One job in flight when PostgreSQL goes away.
    let first = broker.publish_job(KIND, &serde_json::json!({})).await;
    started.notified().await;
    proxy.block();
    release.notify_one();

    let health = worker.state.health.clone();
    let reason = eventually(WAIT, "readiness names the kill switch", || {
        let r = health.readiness();
        async move {
            r.err()
                .filter(|r| r.contains("kill switch open: database not answering"))
        }
    })
    .await;
    assert!(!reason.contains("broker"), "{reason}");
    assert_eq!(hookfleet::metrics::metrics().killswitch_state.get(), 2);
    eventually(WAIT, "consumers cancelled", || {
        let b = &broker;
        let q = queue.clone();
        async move { (consumers(b, &q).await == 0).then_some(()) }
    })
    .await;
    // Released: every later job waits in the queue, nothing goes to the tiers.
    for _ in 0..19 {
        broker.publish_job(KIND, &serde_json::json!({})).await;
    }
    eventually(WAIT, "all 20 jobs back in the queue", || {
        let b = &broker;
        let q = queue.clone();
        async move { (b.depth(&q).await == 20).then_some(()) }
    })
    .await;
    assert_eq!(
        retry_and_dead(&broker, &cfg).await,
        0,
        "no retry copy, no dead letter"
    );
    let held = hookfleet::metrics::metrics()
        .deliveries_total
        .with_label_values(&[queue.as_str(), "held"])
        .get();
    assert!(held >= 1, "the in-flight job was requeued as it came");

    // PostgreSQL back: half-open, then closed; every job handled once, at attempt 1.
    proxy.unblock();
    for _ in 0..20 {
        release.notify_one();
    }
    let released = release.clone();
    eventually(WAIT, "all 20 jobs handled", || {
        released.notify_waiters();
        let n = handled.lock().unwrap().len();
        async move { (n == 20).then_some(()) }
    })
    .await;
    let handled = handled.lock().unwrap().clone();
    // Every run of every job was at attempt 1. The tripping job may have run
    // twice: when its first run won the race with the cut, its ack can go
    // with the consumers the switch cancels, and the broker delivers it again
    // as it came (the inbox makes that harmless).
    let runs = &handled[&first.to_string()];
    assert!(
        runs.iter().all(|a| *a == 1),
        "the tripping job kept attempt 1: {runs:?}"
    );
    assert!(
        handled.values().all(|a| a.iter().all(|x| *x == 1)),
        "{handled:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM guard_test")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 20);
    eventually(WAIT, "switch closed and ready", || {
        let ok =
            health.readiness().is_ok() && hookfleet::metrics::metrics().killswitch_state.get() == 0;
        async move { ok.then_some(()) }
    })
    .await;
    let m = hookfleet::metrics::metrics();
    for to in ["open", "half_open", "closed"] {
        assert!(
            m.killswitch_transitions_total
                .with_label_values(&[to])
                .get()
                >= 1,
            "{to}"
        );
    }
    assert_eq!(retry_and_dead(&broker, &cfg).await, 0);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

fn cli(db: &TestDb, args: &[&str]) -> String {
    let (code, out, err) = common::cli::run(&[("HOOKFLEET_DATABASE__URL", db.url.as_str())], args);
    assert_eq!(code, Some(0), "hookfleet {args:?}: {out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_reaches_every_worker_and_survives_a_restart() {
    let db = TestDb::new().await;
    table(&db).await;
    let cfg = config(&db.url);
    let broker = Broker::new(&cfg).await;
    let queue = broker.names.queue(KIND);
    let handled: Handled = Arc::default();
    let a = start(&cfg, &handled, None);
    let b = start(&cfg, &handled, None);
    a.ready().await;
    b.ready().await;
    let per_worker = u32::from(cfg.amqp.consumers_per_queue);
    eventually(WAIT, "both workers consuming", || {
        let (br, q) = (&broker, queue.clone());
        async move { (consumers(br, &q).await == 2 * per_worker).then_some(()) }
    })
    .await;

    let out = cli(&db, &["pause", KIND, "--reason", "maintenance"]);
    assert!(out.contains("paused push"), "{out}");
    eventually(WAIT, "no consumer left on the queue", || {
        let (br, q) = (&broker, queue.clone());
        async move { (consumers(br, &q).await == 0).then_some(()) }
    })
    .await;
    for w in [&a, &b] {
        assert_eq!(w.state.health.paused_kinds(), vec![KIND.to_string()]);
        assert_eq!(w.state.health.readiness(), Ok(()), "paused is not a fault");
    }
    for _ in 0..10 {
        broker.publish_job(KIND, &serde_json::json!({})).await;
    }
    assert_eq!(broker.depth(&queue).await, 10, "the messages stay queued");
    let listed = cli(&db, &["pause", "--list"]);
    assert!(
        listed.starts_with("push\tpaused ") && listed.contains(": maintenance"),
        "{listed}"
    );

    // A restarted worker reads the pause before it consumes anything.
    b.stop().await.unwrap();
    let c = start(&cfg, &handled, None);
    c.ready().await;
    assert_eq!(c.state.health.paused_kinds(), vec![KIND.to_string()]);
    assert_eq!(consumers(&broker, &queue).await, 0);
    assert_eq!(broker.depth(&queue).await, 10);
    assert!(handled.lock().unwrap().is_empty());

    let out = cli(&db, &["resume", KIND]);
    assert!(out.contains("resumed push"), "{out}");
    eventually(WAIT, "the queued jobs handled after resume", || {
        let n = handled.lock().unwrap().len();
        async move { (n == 10).then_some(()) }
    })
    .await;
    assert_eq!(broker.depth(&queue).await, 0);
    assert!(a.state.health.paused_kinds().is_empty());
    a.stop().await.unwrap();
    c.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}
