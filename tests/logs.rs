//! The real `hookfleet worker` binary's JSON logs: every line of a delivery
//! carries the delivery's span fields, a missing broker is reported once (not on
//! every retry tick), no secret reaches the log, and SIGTERM exits 0.
use hookfleet_testkit as common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Broker, TestDb, unique_prefix};
use hookfleet::config::Config;
use hookfleet::push_job::PushJob;
use hookfleet::push_job::update::RefUpdate;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

/// How long any one expected log line may take to appear.
const LINE_DEADLINE: Duration = Duration::from_secs(60);

/// A `hookfleet worker` child process whose stderr is read line by line.
struct Worker {
    child: Child,
    stderr: Lines<BufReader<ChildStderr>>,
    /// Every JSON line read so far.
    seen: Vec<Value>,
}

impl Worker {
    /// Starts the binary with `env` on top of this process's environment.
    fn spawn(env: &[(String, String)]) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
        cmd.arg("worker")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn hookfleet worker");
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Worker {
            child,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `pred`; panics after [`LINE_DEADLINE`].
    async fn line_where(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LINE_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::time::timeout(left, self.stderr.next_line()).await {
                Ok(Ok(Some(l))) => l,
                Ok(Ok(None)) => panic!("worker exited while waiting for {what}"),
                Ok(Err(e)) => panic!("reading worker stderr: {e}"),
                Err(_) => panic!("no log line within {LINE_DEADLINE:?}: {what}"),
            };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    /// Sends SIGTERM, reads the remaining lines and returns the exit code.
    async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().expect("worker still running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let rest = async {
            while let Ok(Some(line)) = self.stderr.next_line().await {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                self.seen.push(v);
            }
            self.child.wait().await
        };
        let status = match tokio::time::timeout(Duration::from_secs(60), rest).await {
            Ok(status) => status.expect("wait for worker"),
            Err(_) => {
                // Name the step it hung in: the last lines it logged.
                let tail: Vec<String> = self
                    .seen
                    .iter()
                    .rev()
                    .take(25)
                    .rev()
                    .map(|v| v.to_string())
                    .collect();
                panic!(
                    "worker did not exit within 60s of SIGTERM; its last lines:\n{}",
                    tail.join("\n")
                );
            }
        };
        status.code()
    }
}

fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or_default()
}

/// Environment for a worker on `db` under `prefix`, JSON logs, admin on port 0.
fn worker_env(db: &TestDb, prefix: &str, rust_log: &str) -> Vec<(String, String)> {
    let allowed = format!("[{:?}]", std::env::temp_dir().display().to_string());
    // A spool of its own: a job another test left in the default spool would
    // make this worker's flusher connect (and log) too.
    let spool = std::env::temp_dir()
        .join(format!("hookfleet-test-spool-{prefix}"))
        .display()
        .to_string();
    [
        ("HOOKFLEET_DATABASE__URL", db.url.as_str()),
        ("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false"),
        ("HOOKFLEET_AMQP__PREFIX", prefix),
        ("HOOKFLEET_AMQP__QUEUE_TYPE", "classic"),
        ("HOOKFLEET_ADMIN__LISTEN", "127.0.0.1:0"),
        ("HOOKFLEET_LOG__FORMAT", "json"),
        // The test repositories are temporary ones without the hook.
        ("HOOKFLEET_HOOK__ALLOWED_DIRS", &allowed),
        ("HOOKFLEET_SPOOL__DIR", &spool),
        ("RUST_LOG", rust_log),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn push_job(repository: String, after: String) -> PushJob {
    PushJob {
        push_id: uuid::Uuid::now_v7(),
        repository,
        path: None,
        pusher: Some("logs-test".into()),
        push_options: Vec::new(),
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![RefUpdate {
            refname: "refs/heads/main".into(),
            before: "0".repeat(40),
            after,
        }],
    }
}

async fn publish(broker: &Broker, job: &PushJob) {
    broker
        .publish_raw("push", &job.to_json(), job.envelope().to_properties())
        .await;
}

/// The lines of one delivery: ours (consumer, inbox, push handler) and sqlx's
/// debug lines for its statements on `inbox` (logged from the delivery task or
/// the spawned transaction task).
fn delivery_lines(seen: &[Value]) -> Vec<&Value> {
    seen.iter()
        .filter(|v| {
            let target = v["target"].as_str().unwrap_or_default();
            let ours = [
                "hookfleet::consumer::process",
                "hookfleet::inbox",
                "hookfleet::push",
            ]
            .iter()
            .any(|t| target.starts_with(t));
            // The claim and the duplicate lookup (not the pruner's DELETE).
            let inbox_query = target == "sqlx::query"
                && v["fields"]["db.statement"].as_str().is_some_and(|s| {
                    s.contains("INSERT INTO inbox")
                        || s.contains("FROM inbox WHERE message_id = $1")
                });
            ours || inbox_query
        })
        .collect()
}

/// Every line carries the delivery's span with its message and correlation id.
fn assert_span(lines: &[&Value], id: &str) {
    for v in lines {
        assert_eq!(v["span"]["message.id"], id, "line without span: {v}");
        assert_eq!(v["span"]["correlation.id"], id, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_delivery_carries_its_span_fields() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let env = worker_env(&db, &prefix, "info,hookfleet=debug,sqlx::query=debug");
    // The same config the binary loads, for declaring and deleting the topology.
    let cfg = Config::load_from(None, env.clone()).unwrap();
    let broker = Broker::new(&cfg).await;
    let mut worker = Worker::spawn(&env);
    worker
        .line_where("ready: connected, topology declared, consuming", |v| {
            message(v) == "ready: connected, topology declared, consuming"
        })
        .await;

    // A push to a real repository: handled, its transaction in a task of its own.
    let repos = common::gitrepo::Repos::new(false);
    repos.git(&["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let head = repos.git(&["rev-parse", "HEAD"]);
    let ok = push_job(repos.bare.display().to_string(), head);
    let ok_id = ok.push_id.to_string();
    let started = worker.seen.len();
    publish(&broker, &ok).await;
    // "handled" is the delivery's last line (after the commit).
    worker
        .line_where("the push handled", |v| {
            message(v) == "handled" && v["span"]["message.id"] == ok_id.as_str()
        })
        .await;
    let lines = delivery_lines(&worker.seen[started..]);
    let from_tx_task = |v: &&&Value| {
        v["target"] == "hookfleet::push::handler"
            || v["fields"]["db.statement"]
                .as_str()
                .is_some_and(|s| s.contains("INSERT INTO inbox"))
    };
    assert!(
        lines.iter().filter(from_tx_task).count() >= 2,
        "the inbox claim and the push recorded, logged in the transaction task: {lines:#?}"
    );
    assert_span(&lines, &ok_id);

    // A push to a repository that does not exist: a permanent error, dead-lettered.
    let bad = push_job(format!("/nonexistent/{prefix}.git"), "a".repeat(40));
    let id = bad.push_id.to_string();
    let started = worker.seen.len();
    publish(&broker, &bad).await;
    let dead = worker
        .line_where("the dead-lettered warning", |v| {
            message(v) == "dead-lettered"
        })
        .await;
    assert_eq!(dead["level"], "WARN", "{dead}");
    let span = &dead["span"];
    assert_eq!(span["name"], "delivery", "{dead}");
    assert_eq!(span["message.id"], id.as_str(), "{dead}");
    assert_eq!(span["correlation.id"], id.as_str(), "{dead}");
    assert_eq!(span["queue"], broker.names.queue("push").as_str(), "{dead}");
    assert_eq!(span["attempt"].as_u64(), Some(1), "{dead}");
    let lines = delivery_lines(&worker.seen[started..]);
    assert!(
        lines.len() >= 2,
        "the inbox lookup and the dead-letter warning: {lines:#?}"
    );
    assert_span(&lines, &id);

    assert_eq!(worker.terminate().await, Some(0), "SIGTERM exits 0");
    let dead_copies = broker.drain(&broker.names.dead_queue("push")).await;
    assert_eq!(dead_copies.len(), 1);
    broker.cleanup(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_broker_is_logged_once_not_per_retry() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = worker_env(
        &db,
        &prefix,
        // Retries are logged at debug: shown here only to count them.
        "info,hookfleet::consumer::supervisor=debug,hookfleet::outbox::relay=debug",
    );
    let secret = "s3cret-pw";
    env.extend(
        [
            (
                "HOOKFLEET_AMQP__URL",
                format!("amqp://guest:{secret}@127.0.0.1:{port}/%2f"),
            ),
            ("HOOKFLEET_AMQP__RECONNECT_MIN", "20ms".into()),
            ("HOOKFLEET_AMQP__RECONNECT_MAX", "100ms".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let consumer_retry = "still cannot start consuming";
    let relay_retry = "relay: still failing";
    let count = |seen: &[Value], msg: &str| seen.iter().filter(|v| message(v) == msg).count();
    let mut worker = Worker::spawn(&env);
    // Both the consumer and the relay retry at least five times.
    let (mut c, mut r) = (0, 0);
    worker
        .line_where("5 consumer and 5 relay retries at debug", |v| {
            c += usize::from(message(v) == consumer_retry);
            r += usize::from(message(v) == relay_retry);
            c >= 5 && r >= 5
        })
        .await;
    assert_eq!(worker.terminate().await, Some(0), "SIGTERM exits 0");

    let (consumer, relay) = (
        count(&worker.seen, consumer_retry),
        count(&worker.seen, relay_retry),
    );
    assert!(
        consumer >= 5 && relay >= 5,
        "retries: consumer {consumer}, relay {relay}"
    );
    // Each component reports the outage once, however many retries it makes.
    let loud: Vec<&Value> = worker
        .seen
        .iter()
        .filter(|v| v["level"] == "ERROR" || v["level"] == "WARN")
        .collect();
    let mut per_target: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &loud {
        *per_target
            .entry(v["target"].as_str().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        per_target,
        BTreeMap::from([
            ("hookfleet::consumer::supervisor", 1),
            ("hookfleet::outbox::relay", 1)
        ]),
        "one warning or error per component: {loud:#?}"
    );
    let broker = format!("127.0.0.1:{port}");
    for v in &loud {
        let text = v["fields"]["error"].as_str().unwrap_or_default();
        assert!(text.contains(&broker), "names the broker: {v}");
    }
    for v in &worker.seen {
        assert!(!v.to_string().contains(secret), "secret in log: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_attempt_logs_its_status_as_a_number() {
    let db = TestDb::new().await;
    let prefix = unique_prefix();
    let mut env = worker_env(&db, &prefix, "info");
    env.push((
        "HOOKFLEET_WEBHOOK__ALLOWED_HOSTS".into(),
        r#"["127.0.0.1"]"#.into(),
    ));
    let cfg = Config::load_from(None, env.clone()).unwrap();
    let broker = Broker::new(&cfg).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async { "ok" });
        let _ = axum::serve(listener, app).await;
    });
    hookfleet::webhook::manage::add(
        &db.pool,
        &hookfleet::webhook::manage::AddRequest {
            repo: "**".into(),
            url,
            secret: None,
            events: "push".into(),
            content_type: "json".into(),
            style: Default::default(),
        },
        &hookfleet::webhook::manage::keyring(&cfg.webhook).unwrap(),
    )
    .await
    .unwrap();
    let mut worker = Worker::spawn(&env);
    let repos = common::gitrepo::Repos::new(false);
    repos.git(&["push", "-q", "origin", "HEAD:refs/heads/main"]);
    let head = repos.git(&["rev-parse", "HEAD"]);
    publish(&broker, &push_job(repos.bare.display().to_string(), head)).await;
    let attempt = worker
        .line_where("the webhook attempt", |v| message(v) == "webhook attempt")
        .await;
    assert_eq!(
        attempt["fields"]["status"].as_u64(),
        Some(200),
        "a number, not Debug text: {attempt}"
    );
    assert_eq!(worker.terminate().await, Some(0));
    broker.cleanup(&cfg).await;
}
