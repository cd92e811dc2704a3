//! Consumer core against a real RabbitMQ: limits, outcomes, poison, reconnects, drain.
use hookfleet_testkit as common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    Broker, RunningWorker, TcpProxy, TestDb, eventually, header, test_config, unique_prefix,
};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::job::{Done, Handler, Job, JobError};
use serde_json::json;
use uuid::Uuid;

/// Records successes per message id and the concurrency it saw.
#[derive(Default)]
struct Recorder {
    done: Mutex<HashMap<Uuid, u32>>,
    attempts: Mutex<HashMap<u64, Vec<u32>>>,
    current: AtomicUsize,
    max: AtomicUsize,
}

impl Recorder {
    fn enter(&self) {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.current.fetch_sub(1, Ordering::SeqCst);
    }
    fn done_count(&self) -> usize {
        self.done.lock().unwrap().len()
    }
}

/// A test handler whose behaviour each job's body chooses:
/// `{"n": 1, "panic_until": 9, "fail_until": 2, "sleep_ms": 5, "sleep_on_first_ms": 2000}`.
struct TestHandler {
    kind: String,
    rec: Arc<Recorder>,
    /// Shared with another handler to see global concurrency.
    global: Option<Arc<Recorder>>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

#[async_trait::async_trait]
impl Handler for TestHandler {
    fn kind(&self) -> &str {
        &self.kind
    }
    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        self.rec.enter();
        if let Some(g) = &self.global {
            g.enter();
        }
        let result = self.run(&job).await;
        self.rec.leave();
        if let Some(g) = &self.global {
            g.leave();
        }
        result
    }
}

impl TestHandler {
    fn new(kind: &str, rec: Arc<Recorder>) -> Self {
        Self {
            kind: kind.into(),
            rec,
            global: None,
            gate: None,
        }
    }

    async fn run(&self, job: &Job) -> Result<Done, JobError> {
        let n = job.body()["n"].as_u64().unwrap_or(0);
        self.rec
            .attempts
            .lock()
            .unwrap()
            .entry(n)
            .or_default()
            .push(job.attempt);
        if let Some(gate) = &self.gate {
            let _p = gate.acquire().await.unwrap();
        }
        if let Some(ms) = job.body()["sleep_ms"].as_u64() {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if job.attempt == 1
            && let Some(ms) = job.body()["sleep_on_first_ms"].as_u64()
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if job.body()["panic_until"]
            .as_u64()
            .is_some_and(|k| u64::from(job.attempt) <= k)
        {
            panic!("test panic for job {n}");
        }
        if job.body()["fail_until"]
            .as_u64()
            .is_some_and(|k| u64::from(job.attempt) <= k)
        {
            return Err(JobError::transient(anyhow::anyhow!(
                "flaky, attempt {}",
                job.attempt
            )));
        }
        if job.body()["permanent"].as_bool() == Some(true) {
            return Err(JobError::permanent("bad input"));
        }
        *self
            .rec
            .done
            .lock()
            .unwrap()
            .entry(job.envelope.message_id)
            .or_default() += 1;
        Ok(Done::Handled)
    }
}

fn config(db: &TestDb, kinds: &[&str]) -> Config {
    let mut c = test_config(&db.url, &unique_prefix());
    c.worker.kinds = kinds.iter().map(|k| k.to_string()).collect();
    c.worker.kind_concurrency = BTreeMap::new();
    c
}

/// Starts a worker handling kind `work` whose broker connections (consumer,
/// publisher, relay) all go through `proxy`.
fn start_behind(cfg: &mut Config, proxy: &TcpProxy) -> (RunningWorker, Arc<Recorder>) {
    cfg.amqp.url = SecretUrl::new(proxy.amqp_url());
    let rec = Arc::new(Recorder::default());
    let worker = RunningWorker::start(
        cfg.clone(),
        vec![Arc::new(TestHandler::new("work", rec.clone()))],
    );
    (worker, rec)
}

async fn all_done(rec: &Arc<Recorder>, n: usize, what: &str) {
    let rec = rec.clone();
    eventually(Duration::from_secs(60), what, || {
        let c = rec.done_count();
        async move { (c >= n).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_jobs_once_each_within_global_and_per_kind_limits() {
    let db = TestDb::new().await;
    let mut cfg = config(&db, &["light", "heavy"]);
    cfg.worker.concurrency = 8;
    cfg.worker.kind_concurrency = BTreeMap::from([("heavy".to_string(), 3)]);
    let broker = Broker::new(&cfg).await;
    let global = Arc::new(Recorder::default());
    let (light, heavy) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let handlers: Vec<Arc<dyn Handler>> = vec![
        Arc::new(TestHandler {
            global: Some(global.clone()),
            ..TestHandler::new("light", light.clone())
        }),
        Arc::new(TestHandler {
            global: Some(global.clone()),
            ..TestHandler::new("heavy", heavy.clone())
        }),
    ];
    let worker = RunningWorker::start(cfg.clone(), handlers);
    worker.ready().await;
    let mut ids = Vec::new();
    for n in 0..1000u64 {
        let kind = if n % 4 == 0 { "heavy" } else { "light" };
        ids.push(
            broker
                .publish_job(kind, &json!({"n": n, "sleep_ms": 2}))
                .await,
        );
    }
    eventually(Duration::from_secs(120), "1000 jobs handled", || {
        let c = light.done_count() + heavy.done_count();
        async move { (c >= 1000).then_some(()) }
    })
    .await;
    worker.stop().await.unwrap();
    let mut done = light.done.lock().unwrap().clone();
    done.extend(heavy.done.lock().unwrap().clone());
    assert_eq!(done.len(), 1000);
    assert!(
        ids.iter().all(|id| done.get(id) == Some(&1)),
        "every job exactly once"
    );
    let (g, h) = (
        global.max.load(Ordering::SeqCst),
        heavy.max.load(Ordering::SeqCst),
    );
    assert!(g <= 8, "global concurrency {g} exceeded 8");
    assert!(h <= 3, "heavy concurrency {h} exceeded 3");
    assert!(g >= 2, "the pool ran jobs concurrently (max {g})");
    for q in ["light", "heavy"] {
        assert_eq!(broker.depth(&broker.names.queue(q)).await, 0, "all acked");
    }
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_isolated_retried_then_dead_lettered() {
    let db = TestDb::new().await;
    let mut cfg = config(&db, &["work"]);
    cfg.retry.max_attempts = 3;
    let broker = Broker::new(&cfg).await;
    let rec = Arc::new(Recorder::default());
    let worker = RunningWorker::start(
        cfg.clone(),
        vec![Arc::new(TestHandler::new("work", rec.clone()))],
    );
    worker.ready().await;
    let mut panicking = Vec::new();
    for n in 0..40u64 {
        if n % 10 == 0 {
            panicking.push(
                broker
                    .publish_job("work", &json!({"n": n, "panic_until": 99}))
                    .await,
            );
        } else {
            broker.publish_job("work", &json!({"n": n})).await;
        }
    }
    all_done(&rec, 36, "healthy jobs handled").await;
    let dead_q = broker.names.dead_queue("work");
    eventually(
        Duration::from_secs(30),
        "4 panicking jobs dead-lettered",
        || {
            let b = &broker;
            let q = dead_q.clone();
            async move { (b.depth(&q).await >= 4).then_some(()) }
        },
    )
    .await;
    let dead = broker.drain(&dead_q).await;
    assert_eq!(dead.len(), 4);
    for m in &dead {
        let p = &m.delivery.properties;
        assert_eq!(header(p, "x-error-class").as_deref(), Some("panic"));
        assert!(
            header(p, "x-error").unwrap().contains("test panic"),
            "reason kept"
        );
        assert_eq!(header(p, "x-attempt").as_deref(), Some("3"));
        let id: Uuid = p.message_id().as_ref().unwrap().as_str().parse().unwrap();
        assert!(panicking.contains(&id));
    }
    // Each panicking job was tried max_attempts times, by a worker that stayed up.
    let attempts = rec.attempts.lock().unwrap().clone();
    for n in [0u64, 10, 20, 30] {
        assert_eq!(attempts[&n], vec![1, 2, 3]);
    }
    assert!(
        hookfleet::metrics::metrics()
            .handler_panics_total
            .with_label_values(&["work"])
            .get()
            >= 12
    );
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_and_timeouts_succeed_on_a_later_attempt() {
    let db = TestDb::new().await;
    let mut cfg = config(&db, &["work"]);
    cfg.worker.handler_timeout = Duration::from_millis(300);
    let broker = Broker::new(&cfg).await;
    let rec = Arc::new(Recorder::default());
    let worker = RunningWorker::start(
        cfg.clone(),
        vec![Arc::new(TestHandler::new("work", rec.clone()))],
    );
    worker.ready().await;
    let flaky = broker
        .publish_job("work", &json!({"n": 1, "fail_until": 2}))
        .await;
    let slow = broker
        .publish_job("work", &json!({"n": 2, "sleep_on_first_ms": 5000}))
        .await;
    let perm = broker
        .publish_job("work", &json!({"n": 3, "permanent": true}))
        .await;
    all_done(&rec, 2, "flaky and slow jobs handled").await;
    let attempts = rec.attempts.lock().unwrap().clone();
    assert_eq!(attempts[&1], vec![1, 2, 3], "x-attempt increases");
    assert_eq!(
        attempts[&2],
        vec![1, 2],
        "a timeout is retried like a transient error"
    );
    let done = rec.done.lock().unwrap().clone();
    assert_eq!(done.get(&flaky), Some(&1));
    assert_eq!(done.get(&slow), Some(&1));
    // The permanent failure went to the dead queue at once, with its reason.
    let dead_q = broker.names.dead_queue("work");
    let dead = eventually(
        Duration::from_secs(20),
        "permanent failure dead-lettered",
        || {
            let b = &broker;
            let q = dead_q.clone();
            async move {
                let d = b.drain(&q).await;
                (!d.is_empty()).then_some(d)
            }
        },
    )
    .await;
    let p = &dead[0].delivery.properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), perm.to_string());
    assert_eq!(header(p, "x-error-class").as_deref(), Some("permanent"));
    assert_eq!(header(p, "x-error").as_deref(), Some("bad input"));
    assert_eq!(
        rec.attempts.lock().unwrap()[&3],
        vec![1],
        "permanent errors are not retried"
    );
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_with_a_reason() {
    let db = TestDb::new().await;
    let cfg = config(&db, &["work"]);
    let broker = Broker::new(&cfg).await;
    let rec = Arc::new(Recorder::default());
    let worker = RunningWorker::start(
        cfg.clone(),
        vec![Arc::new(TestHandler::new("work", rec.clone()))],
    );
    worker.ready().await;
    let json_props = || {
        lapin::BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(Uuid::now_v7().to_string().into())
    };
    broker.publish_job("work", &json!({"n": 1})).await;
    let random: Vec<u8> = (0..64).map(|_| fastrand::u8(..)).collect();
    broker.publish_raw("work", &random, json_props()).await;
    broker.publish_job("work", &json!({"n": 2})).await;
    broker.publish_raw("work", b"{not json", json_props()).await;
    broker
        .publish_raw(
            "work",
            b"{\"n\": 3}",
            lapin::BasicProperties::default().with_content_type("application/json".into()),
        )
        .await;
    broker
        .publish_raw(
            "work",
            b"{\"n\": 4}",
            json_props().with_content_type("text/plain".into()),
        )
        .await;
    broker.publish_job("work", &json!({"n": 5})).await;
    all_done(&rec, 3, "valid jobs around the poison handled").await;
    let dead_q = broker.names.dead_queue("work");
    eventually(
        Duration::from_secs(20),
        "4 poison messages dead-lettered",
        || {
            let b = &broker;
            let q = dead_q.clone();
            async move { (b.depth(&q).await >= 4).then_some(()) }
        },
    )
    .await;
    let dead = broker.drain(&dead_q).await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| header(&m.delivery.properties, "x-error").unwrap())
        .collect();
    assert_eq!(dead.len(), 4, "{reasons:?}");
    assert!(
        dead.iter()
            .all(|m| header(&m.delivery.properties, "x-error-class").as_deref() == Some("poison"))
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("not valid JSON"))
            .count(),
        2,
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing message_id")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("text/plain")),
        "{reasons:?}"
    );
    assert_eq!(rec.done_count(), 3);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_cut_and_redeclares_a_deleted_queue() {
    let db = TestDb::new().await;
    let mut cfg = config(&db, &["work"]);
    cfg.worker.concurrency = 8;
    let broker = Broker::new(&cfg).await;
    let proxy = TcpProxy::rabbitmq().await;
    let (worker, rec) = start_behind(&mut cfg, &proxy);
    worker.ready().await;
    let mut ids = Vec::new();
    for n in 0..300u64 {
        ids.push(
            broker
                .publish_job("work", &json!({"n": n, "sleep_ms": 20}))
                .await,
        );
    }
    all_done(&rec, 50, "some jobs handled before the cut").await;
    let accepted = proxy.accepted();
    proxy.cut();
    assert!(rec.done_count() < 300, "the cut happened mid-stream");
    all_done(&rec, 300, "every job handled after the cut").await;
    assert!(
        proxy.accepted() > accepted,
        "the worker reconnected through the proxy"
    );
    let done = rec.done.lock().unwrap().clone();
    assert!(ids.iter().all(|id| done.contains_key(id)), "none lost");

    // Delete the work queue behind the worker's back: its consumer is cancelled,
    // and the worker must declare the queue again.
    let ch = broker.conn.create_channel().await.unwrap();
    ch.queue_delete(
        broker.names.queue("work").as_str().into(),
        Default::default(),
    )
    .await
    .unwrap();
    let q = broker.names.queue("work");
    let conn = &broker.conn;
    eventually(
        Duration::from_secs(30),
        "worker redeclared the queue and consumes it",
        || {
            let q = q.clone();
            async move {
                // A passive declare of a missing queue closes its channel: use a fresh one.
                let ch = conn.create_channel().await.ok()?;
                let opts = lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                match ch
                    .queue_declare(q.as_str().into(), opts, Default::default())
                    .await
                {
                    Ok(info) if info.consumer_count() > 0 => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
    let mut more = Vec::new();
    for n in 1000..1050u64 {
        more.push(broker.publish_job("work", &json!({"n": n})).await);
    }
    all_done(&rec, 350, "jobs published after the redeclare handled").await;
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_work_and_acks_it() {
    let db = TestDb::new().await;
    let cfg = config(&db, &["work"]);
    let broker = Broker::new(&cfg).await;
    let rec = Arc::new(Recorder::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = TestHandler {
        gate: Some(gate.clone()),
        ..TestHandler::new("work", rec.clone())
    };
    let worker = RunningWorker::start(cfg.clone(), vec![Arc::new(handler)]);
    worker.ready().await;
    for n in 0..50u64 {
        broker.publish_job("work", &json!({"n": n})).await;
    }
    let inflight = worker.state.inflight.clone();
    eventually(Duration::from_secs(30), "50 jobs in flight", || {
        let n = inflight.len();
        async move { (n == 50).then_some(()) }
    })
    .await;
    let health = worker.state.health.clone();
    worker.token.cancel();
    eventually(Duration::from_secs(10), "draining reported", || {
        let d = health.draining();
        async move { d.then_some(()) }
    })
    .await;
    assert!(health.readiness().is_err(), "not ready while draining");
    assert_eq!(
        rec.done_count(),
        0,
        "nothing finished before the gate opened"
    );
    gate.add_permits(1000);
    let result = tokio::time::timeout(Duration::from_secs(30), worker.task)
        .await
        .expect("worker exits")
        .unwrap();
    assert!(result.is_ok());
    assert_eq!(rec.done_count(), 50, "every in-flight job finished");
    assert_eq!(
        broker.depth(&broker.names.queue("work")).await,
        0,
        "and was acked, none requeued"
    );
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_broker_hangs_still_stops() {
    // Every broker connection (consumer, publisher, relay) goes through the proxy,
    // which then stops forwarding without closing anything: closes and cancels are
    // never answered. Shutdown must still end (bounded steps), not wait on them.
    let db = TestDb::new().await;
    let mut cfg = config(&db, &["work"]);
    let broker = Broker::new(&cfg).await;
    let proxy = TcpProxy::rabbitmq().await;
    let (worker, _rec) = start_behind(&mut cfg, &proxy);
    worker.ready().await;
    // A dead-lettered job opens the publisher's connection too.
    broker
        .publish_job("work", &json!({"n": 1, "permanent": true}))
        .await;
    let b = &broker;
    let dead = &b.names.dead_queue("work");
    eventually(
        Duration::from_secs(30),
        "the job dead-lettered",
        || async move { (b.depth(dead).await == 1).then_some(()) },
    )
    .await;
    proxy.stall();
    // `stop` fails the test if the worker has not returned within 60 s.
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_broker_is_down_and_consumes_once_it_is_up() {
    let db = TestDb::new().await;
    let mut cfg = config(&db, &["work"]);
    let broker = Broker::new(&cfg).await;
    let proxy = TcpProxy::rabbitmq().await;
    proxy.block();
    let (worker, rec) = start_behind(&mut cfg, &proxy);
    let p = &proxy;
    eventually(
        Duration::from_secs(30),
        "several connection attempts",
        || async move { (p.accepted() >= 3).then_some(()) },
    )
    .await;
    assert!(
        !worker.state.health.consuming(),
        "not ready while the broker is unreachable"
    );
    assert!(
        !worker.task.is_finished(),
        "the worker keeps retrying instead of exiting"
    );
    broker.publish_job("work", &json!({"n": 1})).await;
    proxy.unblock();
    worker.ready().await;
    all_done(&rec, 1, "job handled once the broker is reachable").await;
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_topology_declares_idempotently_and_a_retried_job_comes_back() {
    // The default queue type: quorum work, retry (at-least-once dead-lettering) and dead queues.
    let db = TestDb::new().await;
    let mut cfg = config(&db, &["work"]);
    cfg.amqp.queue_type = hookfleet::config::QueueType::Quorum;
    let broker = Broker::new(&cfg).await;
    // Declaring again with the same arguments is a no-op, not a channel error.
    hookfleet::amqp::topology::declare(&broker.ch, &cfg.amqp, &cfg.retry.tiers, &cfg.worker.kinds)
        .await
        .unwrap();
    let rec = Arc::new(Recorder::default());
    let worker = RunningWorker::start(
        cfg.clone(),
        vec![Arc::new(TestHandler::new("work", rec.clone()))],
    );
    worker.ready().await;
    broker
        .publish_job("work", &json!({"n": 1, "fail_until": 1}))
        .await;
    all_done(&rec, 1, "job retried through a quorum retry queue").await;
    assert_eq!(rec.attempts.lock().unwrap()[&1], vec![1, 2]);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}
