//! Listing and requeueing dead letters against a real broker.
use hookfleet_testkit as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Broker, RunningWorker, TestDb, eventually, test_config, unique_prefix};
use hookfleet::job::{Done, Handler, Job, JobError};
use serde_json::json;

/// Fails permanently while `broken`, then succeeds.
struct Fickle {
    broken: Arc<AtomicBool>,
    handled: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Handler for Fickle {
    fn kind(&self) -> &str {
        "work"
    }
    async fn handle(&self, _job: Job) -> Result<Done, JobError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(JobError::permanent("downstream schema mismatch"));
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(Done::Handled)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_without_loss_and_requeued() {
    let db = TestDb::new().await;
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.worker.kinds = vec!["work".into()];
    let broker = Broker::new(&cfg).await;
    let broken = Arc::new(AtomicBool::new(true));
    let handled = Arc::new(AtomicUsize::new(0));
    let worker = RunningWorker::start(
        cfg.clone(),
        vec![Arc::new(Fickle {
            broken: broken.clone(),
            handled: handled.clone(),
        })],
    );
    worker.ready().await;
    let ids = [
        broker.publish_job("work", &json!({"n": 1})).await,
        broker.publish_job("work", &json!({"n": 2})).await,
    ];
    let dead = broker.names.dead_queue("work");
    let b = &broker;
    eventually(Duration::from_secs(30), "both jobs dead-lettered", || {
        let q = dead.clone();
        async move { (b.depth(&q).await == 2).then_some(()) }
    })
    .await;

    let listed = hookfleet::dlq::list(&cfg, "work", 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|d| d.error.as_deref() == Some("downstream schema mismatch"))
    );
    assert!(
        listed
            .iter()
            .all(|d| d.error_class.as_deref() == Some("permanent"))
    );
    eventually(Duration::from_secs(10), "listing put them back", || {
        let q = dead.clone();
        async move { (b.depth(&q).await == 2).then_some(()) }
    })
    .await;

    // Requeue one by id, then the rest, once the cause is fixed.
    broken.store(false, Ordering::SeqCst);
    let one = hookfleet::dlq::requeue(&cfg, "work", 10, Some(&ids[1].to_string()))
        .await
        .unwrap();
    assert_eq!(one, 1);
    let h = &handled;
    eventually(
        Duration::from_secs(30),
        "requeued job handled",
        || async move { (h.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    let rest = hookfleet::dlq::requeue(&cfg, "work", 10, None)
        .await
        .unwrap();
    assert_eq!(rest, 1);
    eventually(Duration::from_secs(30), "all handled", || async move {
        (h.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    assert_eq!(broker.depth(&dead).await, 0);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

#[test]
fn dlq_for_an_unknown_kind_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookfleet"))
        .args(["dlq", "list", "nosuchkind"])
        .env_remove("HOOKFLEET_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job kind \"nosuchkind\""));
}
