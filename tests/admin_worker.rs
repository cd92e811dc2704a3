//! The admin endpoints of a running worker (real broker through a proxy, real
//! database): readiness follows the broker connection and says `draining` on
//! shutdown, `/jobs` lists a delivery while its handler runs, `/info` and
//! `/metrics` reflect the process and the work it did.
use hookfleet_testkit as common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::prom::{self, check_exposition};
use common::{Broker, RunningWorker, TcpProxy, TestDb, eventually, test_config, unique_prefix};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::job::{Done, Handler, Job, JobError};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Handles jobs at once, except those with `"block": true`, which wait for a
/// permit of `gate` (the test releases them one by one).
struct GatedHandler {
    kind: String,
    gate: Arc<Semaphore>,
}

#[async_trait::async_trait]
impl Handler for GatedHandler {
    fn kind(&self) -> &str {
        &self.kind
    }
    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        if job.body()["block"].as_bool() == Some(true) {
            self.gate.acquire().await.unwrap().forget();
        }
        Ok(Done::Handled)
    }
}

/// A worker consuming `kind` (unique per test: metric labels are per process).
fn start(cfg: &Config, kind: &str) -> (RunningWorker, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let handler: Arc<dyn Handler> = Arc::new(GatedHandler {
        kind: kind.into(),
        gate: gate.clone(),
    });
    (RunningWorker::start(cfg.clone(), vec![handler]), gate)
}

fn config(db: &TestDb, kind: &str) -> Config {
    let mut c = test_config(&db.url, &unique_prefix());
    c.worker.kinds = vec![kind.to_string()];
    c.worker.kind_concurrency = BTreeMap::new();
    c
}

/// HTTP access to the worker's admin server.
struct AdminClient {
    base: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// Waits for the worker to bind its admin listener.
    async fn of(worker: &RunningWorker) -> AdminClient {
        let addr = worker.state.admin_addr.clone();
        let addr = eventually(Duration::from_secs(30), "admin server bound", || {
            let a = addr.get().copied();
            async move { a }
        })
        .await;
        AdminClient {
            base: format!("http://{addr}"),
            http: common::http_client()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path).await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, v)
    }

    /// Polls `/readyz` until it answers `status` (and, if given, that reason).
    async fn readyz_becomes(&self, status: u16, reason: Option<&str>, what: &str) -> Value {
        eventually(Duration::from_secs(30), what, || async {
            let (s, v) = self.json("/readyz").await;
            let reason_ok =
                reason.is_none_or(|r| v["reason"].as_str().is_some_and(|got| got.contains(r)));
            (s == status && reason_ok).then_some(v)
        })
        .await
    }

    /// Polls `/jobs` until `pred` holds for the list.
    async fn jobs_until(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        eventually(Duration::from_secs(30), what, || async {
            let (s, v) = self.json("/jobs").await;
            assert_eq!(s, 200);
            let list = v.as_array().cloned().unwrap_or_default();
            pred(&list).then_some(list)
        })
        .await
    }

    /// The live exposition, checked line by line (and by promtool when installed).
    async fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        text
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_connection() {
    let db = TestDb::new().await;
    let mut cfg = config(&db, "adm_ready");
    let broker = Broker::new(&cfg).await;
    let proxy = TcpProxy::rabbitmq().await;
    cfg.amqp.url = SecretUrl::new(proxy.amqp_url());
    let (worker, _gate) = start(&cfg, "adm_ready");
    let admin = AdminClient::of(&worker).await;

    let ready = admin
        .readyz_becomes(200, None, "ready once consuming")
        .await;
    assert_eq!(ready["ready"], true);

    proxy.block();
    let down = admin
        .readyz_becomes(503, Some("not consuming"), "503 after the broker is cut")
        .await;
    assert_eq!(down["ready"], false);
    // Liveness is not readiness: the process is fine, it just cannot consume.
    assert_eq!(admin.get("/healthz").await.0, 200);

    proxy.unblock();
    admin
        .readyz_becomes(200, None, "ready again after reconnecting")
        .await;

    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_info_and_metrics_reflect_the_work_done() {
    let kind = "adm_metered";
    let db = TestDb::new().await;
    let cfg = config(&db, kind);
    let queue = hookfleet::amqp::topology::Names::new(&cfg.amqp.prefix).queue(kind);
    let broker = Broker::new(&cfg).await;
    let (worker, gate) = start(&cfg, kind);
    let admin = AdminClient::of(&worker).await;
    worker.ready().await;

    // /info: the build and a growing uptime.
    let (status, info) = admin.json("/info").await;
    assert_eq!(status, 200);
    assert!(
        !info["git_sha"].as_str().unwrap_or_default().is_empty(),
        "{info}"
    );
    let u1 = info["uptime_seconds"].as_f64().unwrap();
    eventually(Duration::from_secs(10), "uptime to grow", || async {
        let (_, later) = admin.json("/info").await;
        (later["uptime_seconds"].as_f64().unwrap() > u1).then_some(())
    })
    .await;

    // /metrics: counters move by what was processed.
    let before = admin.metrics().await;
    let acked = |text: &str| {
        prom::sample(
            text,
            "hookfleet_deliveries_total",
            &[("queue", &queue), ("outcome", "acked")],
        )
        .unwrap_or(0.0)
    };
    let handled = |text: &str| {
        prom::sample(
            text,
            "hookfleet_handler_duration_seconds_count",
            &[("kind", kind)],
        )
        .unwrap_or(0.0)
    };
    let (acked0, handled0) = (acked(&before), handled(&before));
    for n in 0..7 {
        broker.publish_job(kind, &json!({ "n": n })).await;
    }
    let after = eventually(Duration::from_secs(30), "7 deliveries acked", || async {
        let text = admin.metrics().await;
        (acked(&text) >= acked0 + 7.0).then_some(text)
    })
    .await;
    assert_eq!(acked(&after), acked0 + 7.0, "exactly the 7 processed");
    assert_eq!(handled(&after), handled0 + 7.0, "handler duration count");
    prom::promtool_check(&after);

    // /jobs: a delivery whose handler is running, until it finishes.
    let id = broker.publish_job(kind, &json!({ "block": true })).await;
    let listed = admin
        .jobs_until("the blocked job listed", |l| !l.is_empty())
        .await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let job = &listed[0];
    assert_eq!(job["message_id"], id.to_string());
    assert_eq!(job["correlation_id"], "corr-test");
    assert_eq!(job["kind"], kind);
    assert_eq!(job["attempt"], 1);
    let e1 = job["elapsed_seconds"].as_f64().unwrap();
    assert!(e1 >= 0.0, "{job}");
    admin
        .jobs_until("elapsed to grow", |l| {
            l.first()
                .and_then(|j| j["elapsed_seconds"].as_f64())
                .is_some_and(|e| e > e1)
        })
        .await;
    gate.add_permits(1);
    admin
        .jobs_until("the released job gone", |l| l.is_empty())
        .await;

    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_draining_while_in_flight_work_finishes() {
    let kind = "adm_drain";
    let db = TestDb::new().await;
    let cfg = config(&db, kind);
    let broker = Broker::new(&cfg).await;
    let (worker, gate) = start(&cfg, kind);
    let admin = AdminClient::of(&worker).await;
    admin.readyz_becomes(200, None, "ready").await;

    let id = broker.publish_job(kind, &json!({ "block": true })).await;
    admin
        .jobs_until("the blocked job listed", |l| !l.is_empty())
        .await;

    worker.token.cancel();
    let v = admin
        .readyz_becomes(503, Some("draining"), "503 draining")
        .await;
    assert_eq!(v["reason"], "draining");
    // Still draining: the job is in flight and the admin server still answers.
    let (_, jobs) = admin.json("/jobs").await;
    assert_eq!(jobs[0]["message_id"], id.to_string(), "{jobs}");

    gate.add_permits(1);
    worker.stop().await.unwrap();
    assert_eq!(
        broker.depth(&broker.names.queue(kind)).await,
        0,
        "the drained job was acked"
    );
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depths_show_the_dead_letters() {
    let kind = "adm_depths";
    let db = TestDb::new().await;
    let mut cfg = config(&db, kind);
    cfg.admin.queue_depth_interval = Duration::from_millis(100);
    let broker = Broker::new(&cfg).await;
    let (worker, _gate) = start(&cfg, kind);
    let admin = AdminClient::of(&worker).await;
    worker.ready().await;
    let depth = |text: &str, queue: &str| {
        prom::sample(
            text,
            "hookfleet_queue_messages",
            &[("kind", kind), ("queue", queue)],
        )
    };
    // Bodies that are not JSON: poison, dead-lettered at once.
    for _ in 0..2 {
        broker
            .publish_raw(kind, b"{not json", lapin::BasicProperties::default())
            .await;
    }
    let text = eventually(
        Duration::from_secs(30),
        "2 dead letters on /metrics",
        || async {
            let text = admin.metrics().await;
            (depth(&text, "dead") == Some(2.0)).then_some(text)
        },
    )
    .await;
    assert_eq!(depth(&text, "work"), Some(0.0), "{text}");
    assert_eq!(depth(&text, "retry"), Some(0.0), "{text}");
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}
