//! `/readyz` of a running worker names the dependency that is actually down, on
//! real services: the database (its `host:port`, never its password) when it
//! cannot be reached, the broker when the consumers are not connected, both when
//! both are down.
use hookfleet_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::{RunningWorker, TcpProxy, TestDb, eventually, test_config, unique_prefix};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::job::{Done, Handler, Job, JobError};
use serde_json::Value;

/// Handles every job at once (these tests never publish one).
struct Noop(String);

#[async_trait::async_trait]
impl Handler for Noop {
    fn kind(&self) -> &str {
        &self.0
    }
    async fn handle(&self, _job: Job) -> Result<Done, JobError> {
        Ok(Done::Handled)
    }
}

/// Where nothing listens (port 1: tcpmux, never served).
const NOWHERE: &str = "127.0.0.1:1";
/// A password that must never show up in a readiness reason.
const PASSWORD: &str = "s3cret-pw";

fn config(db_url: &str, kind: &str) -> Config {
    let mut c = test_config(db_url, &unique_prefix());
    c.worker.kinds = vec![kind.to_string()];
    c.worker.kind_concurrency = Default::default();
    // The relay would only add its own reconnect noise to these outages.
    c.outbox.relay = false;
    c
}

fn start(cfg: &Config, kind: &str) -> RunningWorker {
    let handler: Arc<dyn Handler> = Arc::new(Noop(kind.to_string()));
    RunningWorker::start(cfg.clone(), vec![handler])
}

/// `/readyz` of a worker.
struct Readyz {
    url: String,
    http: reqwest::Client,
}

impl Readyz {
    async fn of(worker: &RunningWorker) -> Readyz {
        let addr = worker.state.admin_addr.clone();
        let addr = eventually(Duration::from_secs(30), "admin server bound", || {
            let a = addr.get().copied();
            async move { a }
        })
        .await;
        Readyz {
            url: format!("http://{addr}/readyz"),
            http: common::http_client()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn get(&self) -> (u16, Value) {
        let r = self
            .http
            .get(&self.url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /readyz: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Polls until `/readyz` answers `status` with a reason `pred` accepts
    /// (200 has no reason: `pred` sees ""); returns the reason.
    async fn until(&self, status: u16, what: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually(Duration::from_secs(30), what, || async {
            let (s, v) = self.get().await;
            let reason = v["reason"].as_str().unwrap_or_default().to_string();
            (s == status && pred(&reason)).then_some(reason)
        })
        .await
    }
}

fn mentions_database(reason: &str) -> bool {
    reason.to_lowercase().contains("database")
}

fn mentions_broker(reason: &str) -> bool {
    let r = reason.to_lowercase();
    r.contains("broker") || r.contains("rabbitmq") || r.contains("not consuming")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_named_not_the_broker() {
    let kind = "rdy_nodb";
    let cfg = config(&format!("postgres://postgres:{PASSWORD}@{NOWHERE}/x"), kind);
    let worker = start(&cfg, kind);
    let readyz = Readyz::of(&worker).await;

    let reason = readyz
        .until(503, "503 naming the database", |r| {
            r.contains("not answering")
        })
        .await;
    assert!(mentions_database(&reason), "{reason}");
    assert!(reason.contains(NOWHERE), "names host:port: {reason}");
    assert!(!reason.contains(PASSWORD), "never the password: {reason}");
    assert!(
        !mentions_broker(&reason),
        "the broker is fine (and not even tried yet): {reason}"
    );
    // Still so on the next look: not a start-up blip.
    let (status, body) = readyz.get().await;
    assert_eq!(status, 503, "{body}");
    let again = body["reason"].as_str().unwrap();
    assert!(
        mentions_database(again) && !mentions_broker(again),
        "{again}"
    );

    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_named_not_the_database() {
    let kind = "rdy_nomq";
    let db = TestDb::new().await;
    let mut cfg = config(&db.url, kind);
    cfg.amqp.url = SecretUrl::new(format!("amqp://guest:{PASSWORD}@{NOWHERE}/%2f"));
    let worker = start(&cfg, kind);
    let readyz = Readyz::of(&worker).await;

    // Until the database checks pass the consumers are not started at all;
    // after that, the broker is what is missing.
    let reason = readyz
        .until(503, "503 naming the broker", mentions_broker)
        .await;
    assert!(reason.contains("RabbitMQ"), "{reason}");
    assert!(reason.contains(NOWHERE), "names host:port: {reason}");
    assert!(!reason.contains(PASSWORD), "never the password: {reason}");
    assert!(
        !mentions_database(&reason),
        "the database is fine: {reason}"
    );
    let (status, body) = readyz.get().await;
    assert_eq!(status, 503, "{body}");
    let again = body["reason"].as_str().unwrap();
    assert!(
        mentions_broker(again) && !mentions_database(again),
        "{again}"
    );

    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_down_names_both_and_recovery_is_ready() {
    let kind = "rdy_both";
    let db = TestDb::new().await;
    let pg = TcpProxy::start("127.0.0.1:5432".parse().unwrap())
        .await
        .expect("proxy starts");
    let mq = TcpProxy::rabbitmq().await;
    let mut cfg = config(
        &format!("postgres://postgres@{}/{}", pg.addr, db.name),
        kind,
    );
    cfg.amqp.url = SecretUrl::new(mq.amqp_url());
    let worker = start(&cfg, kind);
    let readyz = Readyz::of(&worker).await;
    readyz.until(200, "ready", |_| true).await;

    pg.block();
    mq.block();
    let reason = readyz
        .until(503, "503 naming both", |r| {
            mentions_database(r) && mentions_broker(r)
        })
        .await;
    assert!(reason.contains(&pg.addr.to_string()), "{reason}");
    assert!(reason.contains(&mq.addr.to_string()), "{reason}");

    // The broker back, the database still down: only the database is named.
    mq.unblock();
    let reason = readyz
        .until(503, "503 naming the database alone", |r| {
            !mentions_broker(r)
        })
        .await;
    assert!(mentions_database(&reason), "{reason}");

    pg.unblock();
    readyz.until(200, "ready again", |_| true).await;

    worker.stop().await.unwrap();
}
