//! One trace from `git push` to the webhook receiver (issue 25): a real push
//! through the installed hook (a process of its own, exporting with the
//! standard `OTEL_*` variables and continuing the pusher's `TRACEPARENT`), the
//! worker and relay (this process, exporting through the same OTLP/HTTP
//! pipeline), and a webhook receiver. The spans are decoded by an OTLP
//! collector in the test (`common::otlp`).

use hookfleet_testkit as common;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use common::gitrepo::Repos;
use common::otlp::{Collector, Span};
use common::receiver::{Got, Receiver, Reply};
use common::{
    AMQP_URL, Broker, EventSink, RunningWorker, TestDb, eventually, test_config, unique_prefix,
};
use hookfleet::amqp::topology::Names;
use hookfleet::outbox::replay::{self, Progress, ReplayRequest};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;

const WAIT: Duration = Duration::from_secs(30);
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const CLIENT: i32 = 3;

/// The collector every span of this test binary goes to; this process's
/// subscriber exports through hookfleet's own pipeline (`otel::Exporter`).
fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let c = Collector::start();
        let mut cfg = test_config("postgres://unused", "unused").tracing;
        cfg.enabled = true;
        cfg.endpoint = c.url();
        cfg.service_name = "hookfleet-worker".into();
        let (exporter, tracer) = hookfleet::otel::Exporter::build(&cfg).expect("exporter");
        // Lives as long as the test binary.
        std::mem::forget(exporter);
        // Logs only with RUST_LOG set (debugging this test).
        let logs = std::env::var("RUST_LOG").ok().map(|_| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::from_default_env())
        });
        let _ = tracing_subscriber::registry()
            .with(hookfleet::telemetry::otel_layer(tracer))
            .with(logs)
            .try_init();
        c
    })
}

/// `hookfleet <args>` against `db` (no tracing: the CLI is not under test here).
fn hookfleet(db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    common::cli::run(
        &[
            ("HOOKFLEET_DATABASE__URL", &db.url),
            ("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false"),
            ("HOOKFLEET_LOG__LEVEL", "error"),
            ("HOOKFLEET_WEBHOOK__ALLOWED_HOSTS", r#"["127.0.0.1"]"#),
        ],
        args,
    )
}

/// The spans of `trace_id` once they include everything `done` needs.
async fn trace_when(trace_id: &str, what: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let c = collector();
    eventually(WAIT, what, || {
        let spans = c.trace(trace_id);
        let ready = done(&spans);
        async move { ready.then_some(spans) }
    })
    .await
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one {name:?} in {:#?}", names(spans));
    found[0]
}

fn names(spans: &[Span]) -> Vec<String> {
    spans.iter().map(|s| s.name.clone()).collect()
}

/// Writes the push's spans to `target/push-trace.json` for the README's
/// picture (`scripts/trace-svg` draws `docs/img/push-trace.svg` from it).
fn save_for_the_picture(spans: &[Span]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/push-trace.json");
    let _ = std::fs::write(path, serde_json::to_vec_pretty(spans).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_one_trace_from_the_hook_to_the_webhook_receiver() {
    let otlp = collector();
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.hook.repositories_root = repos.dir.path().to_string_lossy().into_owned();
    cfg.webhook.allowed_hosts = vec!["127.0.0.1".into()];
    cfg.outbox.poll_interval = Duration::from_millis(100);
    let names_ = Names::new(&cfg.amqp.prefix);
    let broker = Broker::new(&cfg).await;
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    // Events are routable (the replay below publishes one with `mandatory`).
    let _sink = EventSink::new(&broker).await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let (code, _, err) = hookfleet(
        &db,
        &[
            "webhook",
            "add",
            "--repo",
            "*",
            "--url",
            &rx.url(),
            "--secret",
            "s",
            "--events",
            "*",
        ],
    );
    assert_eq!(code, Some(0), "{err}");

    // The pusher's CI already has a trace: the push continues it.
    let trace = format!("{:032x}", fastrand::u128(1..));
    let ci_span = format!("{:016x}", fastrand::u64(1..));
    let traceparent = format!("00-{trace}-{ci_span}-01");
    repos.commit("b.txt", "b", "two");
    repos.push_with_env(
        &cfg,
        AMQP_URL,
        &["-q", "origin", "main"],
        &[
            ("TRACEPARENT", &traceparent),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.url()),
            ("OTEL_SERVICE_NAME", "hookfleet-hook"),
        ],
    );

    // The receiver sees the push's trace id in `traceparent`.
    let got: Got = eventually(WAIT, "the push delivery", || {
        let got = rx
            .got()
            .into_iter()
            .find(|g| g.headers["x-github-event"] == "push");
        async move { got }
    })
    .await;
    let received = got.headers.get("traceparent").expect("traceparent sent");
    let parts: Vec<&str> = received.split('-').collect();
    assert_eq!(parts.len(), 4, "{received}");
    assert_eq!(parts[1], trace, "the receiver continues the pusher's trace");

    let http_span_id = parts[2].to_string();
    let spans = trace_when(&trace, "the push's spans", |s| {
        s.iter().any(|s| s.span_id == http_span_id)
            && s.iter().filter(|s| s.kind == CONSUMER).count() >= 2
            && s.iter().any(|s| s.name == "INSERT pushes")
    })
    .await;
    save_for_the_picture(&spans);
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent = |s: &Span| by_id.get(s.parent_span_id.as_str()).copied();

    // Hook: `git push <repo>` under the CI span, then `publish <prefix>.jobs`.
    let hook = one(&spans, "git push repo.git");
    assert_eq!(hook.parent_span_id, ci_span, "continues TRACEPARENT");
    assert_eq!(hook.service, "hookfleet-hook");
    let jobs = names_.jobs_exchange();
    let published = named(&spans, &format!("publish {jobs}"));
    let job_publish = published
        .iter()
        .find(|s| s.parent_span_id == hook.span_id)
        .expect("the hook's publish span");
    assert_eq!(job_publish.kind, PRODUCER);
    assert_eq!(job_publish.attr("messaging.system"), "rabbitmq");
    assert_eq!(job_publish.attr("messaging.destination.name"), jobs);
    assert_eq!(
        job_publish.attr("messaging.rabbitmq.destination.routing_key"),
        "push"
    );
    let push_id = job_publish.attr("messaging.message.id").to_string();
    assert_eq!(
        job_publish.attr("messaging.message.conversation_id"),
        push_id
    );

    // Worker: `process <push queue>` a child of the hook's publish span.
    let push_queue = names_.queue("push");
    let process_push = one(&spans, &format!("process {push_queue}"));
    assert_eq!(process_push.parent_span_id, job_publish.span_id);
    assert_eq!(process_push.kind, CONSUMER);
    assert_eq!(process_push.attr("messaging.message.id"), push_id);
    assert_eq!(
        process_push.attr("messaging.message.conversation_id"),
        push_id
    );
    assert_eq!(process_push.service, "hookfleet-worker");
    let insert = one(&spans, "INSERT pushes");
    assert_eq!(insert.parent_span_id, process_push.span_id);
    assert_eq!(insert.kind, CLIENT);
    assert_eq!(insert.attr("db.system.name"), "postgresql");

    // Relay: each outbox row published in the context that wrote it (the push's
    // `process` span), and the webhook job consumed as its child.
    let relay_publishes: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == PRODUCER && s.parent_span_id == process_push.span_id)
        .collect();
    assert!(
        relay_publishes.len() >= 2,
        "git.push event and webhook job published by the relay: {:#?}",
        names(&spans)
    );
    // The HTTP client span is the receiver's parent, under `process <webhook
    // queue>`, which continues the webhook job's creation context.
    let post = by_id[http_span_id.as_str()];
    let process_webhook = parent(post).expect("the POST span's parent");
    assert_eq!(
        process_webhook.name,
        format!("process {}", names_.queue("webhook"))
    );
    assert_eq!(process_webhook.kind, CONSUMER);
    assert_eq!(
        process_webhook.parent_span_id, process_push.span_id,
        "the webhook job's consumer continues its creation context"
    );
    assert_eq!(post.name, "POST");
    assert_eq!(post.kind, CLIENT);
    assert_eq!(post.parent_span_id, process_webhook.span_id);
    assert_eq!(post.attr("http.response.status_code"), "200");
    assert_eq!(post.attr("server.address"), "127.0.0.1");

    // The relay's claim and settle statements are traces of their own that
    // link to the rows' creation contexts.
    for summary in ["SELECT outbox", "UPDATE outbox"] {
        let trace = trace.clone();
        eventually(WAIT, summary, || {
            let linked = collector()
                .spans()
                .into_iter()
                .any(|s| s.name == summary && s.links.iter().any(|(t, _)| *t == trace));
            async move { linked.then_some(()) }
        })
        .await;
    }

    // A replayed event is a new trace linked to the original one.
    let plan = replay::plan(&ReplayRequest {
        event_type: Some("git.push".into()),
        correlation_id: Some(push_id.clone()),
        ..ReplayRequest::default()
    })
    .unwrap();
    let report = replay::run(
        &db.pool,
        &cfg.amqp,
        &plan,
        &Progress::Quiet,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.published, 1, "{report:?}");
    let replay_span = eventually(WAIT, "the replay's span", || {
        let found = collector().spans().into_iter().find(|s| {
            !s.attr("hookfleet.replayed_from").is_empty()
                && s.links.iter().any(|(t, _)| *t == trace)
        });
        async move { found }
    })
    .await;
    assert_ne!(replay_span.trace_id, trace, "a trace of its own");
    assert!(replay_span.parent_span_id.is_empty(), "a root span");
    assert_eq!(replay_span.kind, PRODUCER);
    let original = relay_publishes
        .iter()
        .find(|s| s.attr("messaging.rabbitmq.destination.routing_key") == "git.push")
        .expect("the original git.push publish");
    assert_eq!(
        replay_span.links,
        vec![(trace.clone(), original.parent_span_id.clone())],
        "linked to the creation context"
    );

    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

/// A collector that accepts connections and never answers: the hook still
/// publishes (within its flush bound) and the job is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_loses_no_push() {
    collector();
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.hook.repositories_root = repos.dir.path().to_string_lossy().into_owned();
    let broker = Broker::new(&cfg).await;
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    // Bound and never accepted: connects complete, requests are never read.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", blackhole.local_addr().unwrap());
    repos.commit("b.txt", "b", "two");
    let stderr = repos.push_with_env(
        &cfg,
        AMQP_URL,
        &["origin", "main"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    assert!(
        !stderr.contains("NOT recorded") && !stderr.contains("queued locally"),
        "published, not spooled: {stderr}"
    );
    let pool = db.pool.clone();
    eventually(WAIT, "the push recorded", || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pushes")
                .fetch_one(&pool)
                .await
                .ok()?;
            (n == 1).then_some(())
        }
    })
    .await;
    drop(blackhole);
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}
