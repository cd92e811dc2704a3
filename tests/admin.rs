//! The admin HTTP server on a real port: health, readiness (with and without a
//! database), in-flight jobs, build info and the Prometheus exposition.
use hookfleet_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::prom::{self, check_exposition};
use common::{TestDb, eventually};
use hookfleet::admin::{self, AdminState};
use hookfleet::health::Health;
use hookfleet::inflight::{InFlight, InFlightJob};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running admin server whose state the test controls.
struct Admin {
    base: String,
    health: Arc<Health>,
    inflight: Arc<InFlight>,
    token: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
    client: reqwest::Client,
}

impl Admin {
    async fn start(pool: Option<PgPool>) -> Admin {
        common::init_logs();
        let listener = admin::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::new());
        let inflight = Arc::new(InFlight::default());
        let token = CancellationToken::new();
        let state = AdminState {
            health: health.clone(),
            inflight: inflight.clone(),
            pool,
            console: None,
        };
        let task = tokio::spawn(admin::serve(listener, state, token.clone()));
        Admin {
            base: format!("http://{addr}"),
            health,
            inflight,
            token,
            task: Some(task),
            client: common::http_client()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            ct.starts_with("application/json"),
            "{path}: content-type {ct}"
        );
        (status, r.json().await.unwrap())
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

#[tokio::test]
async fn healthz_is_ok_and_unknown_paths_are_404() {
    let a = Admin::start(None).await;
    let r = a.get("/healthz").await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(a.get("/nope").await.status().as_u16(), 404);
    assert_eq!(a.get("/metrics/extra").await.status().as_u16(), 404);
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_refused() {
    let a = Admin::start(None).await;
    let r = a
        .client
        .get(format!("{}/healthz", a.base))
        .body(vec![b'x'; admin::MAX_BODY_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // A small body does not matter to a GET endpoint.
    let r = a
        .client
        .get(format!("{}/healthz", a.base))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn readyz_follows_consuming_database_and_draining() {
    let a = Admin::start(None).await;
    let (status, body) = a.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"].as_str().unwrap().contains("not consuming"),
        "{body}"
    );

    a.health.set_consuming(true);
    let (status, body) = a.get_json("/readyz").await;
    assert_eq!(status, 503, "database not yet known to be ok: {body}");
    assert!(body["reason"].as_str().unwrap().contains("database"));

    a.health.set_database_ok(true);
    let (status, body) = a.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"ready": true}));

    a.health.set_draining();
    let (status, body) = a.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "draining");
}

#[tokio::test]
async fn readyz_checks_a_live_database() {
    let db = TestDb::new().await;
    let a = Admin::start(Some(db.pool.clone())).await;
    a.health.set_consuming(true);
    assert!(!a.health.database_ok());
    let (status, body) = a.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        a.health.database_ok(),
        "SELECT 1 should mark the database ok"
    );
}

#[tokio::test]
async fn readyz_is_503_when_the_database_is_dead() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("postgres://postgres@127.0.0.1:{closed}/nowhere"))
        .unwrap();
    let a = Admin::start(Some(pool)).await;
    a.health.set_consuming(true);
    a.health.set_database_ok(true);
    let (status, body) = a.get_json("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "database not answering");
    assert!(!a.health.database_ok());
}

#[tokio::test]
async fn jobs_lists_in_flight_deliveries_until_the_guard_drops() {
    let a = Admin::start(None).await;
    let (status, body) = a.get_json("/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!([]));

    let guard = a.inflight.start(
        InFlightJob {
            message_id: "0190c0de-0000-7000-8000-000000000001".into(),
            correlation_id: Some("push-42".into()),
            kind: "push".into(),
            attempt: 2,
            started_at_ms: 0,
            elapsed_seconds: 0.0,
        },
        std::time::Instant::now(),
    );
    let (_, body) = a.get_json("/jobs").await;
    let jobs = body.as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{body}");
    let j = &jobs[0];
    assert_eq!(j["message_id"], "0190c0de-0000-7000-8000-000000000001");
    assert_eq!(j["correlation_id"], "push-42");
    assert_eq!(j["kind"], "push");
    assert_eq!(j["attempt"], 2);
    assert!(j["started_at_ms"].as_u64().unwrap() > 0);
    assert!(j["elapsed_seconds"].as_f64().unwrap() >= 0.0);

    drop(guard);
    let (_, body) = a.get_json("/jobs").await;
    assert_eq!(body, serde_json::json!([]));
}

#[tokio::test]
async fn info_names_the_build_and_uptime_grows() {
    let a = Admin::start(None).await;
    let (status, first) = a.get_json("/info").await;
    assert_eq!(status, 200);
    assert_eq!(first["version"], env!("CARGO_PKG_VERSION"));
    assert!(!first["git_sha"].as_str().unwrap().is_empty());
    let build_time = first["build_time"].as_str().unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(build_time).unwrap();
    assert_eq!(
        parsed.timestamp() as u64,
        first["build_epoch"].as_u64().unwrap()
    );
    let start = first["start_time"].as_u64().unwrap();
    let now = first["now"].as_u64().unwrap();
    assert!(start > 0 && now >= start, "{first}");
    assert!(first["uptime"].as_str().unwrap().ends_with('s'), "{first}");
    let u1 = first["uptime_seconds"].as_f64().unwrap();
    eventually(Duration::from_secs(10), "uptime to grow", || async {
        let (_, later) = a.get_json("/info").await;
        (later["uptime_seconds"].as_f64().unwrap() > u1).then_some(())
    })
    .await;
    let text = first.to_string();
    assert!(!text.contains("://"), "no URLs (secrets) in /info: {text}");
}

#[test]
fn exposition_checker_rejects_malformed_lines() {
    assert_eq!(
        check_exposition("# HELP a_b x\n# TYPE a_b gauge\na_b 1\n"),
        Ok(1)
    );
    assert_eq!(check_exposition("a{x=\"1\\\"}\",y=\"\"} +Inf 123\n"), Ok(1));
    assert!(check_exposition("a 1 2 3\n").is_err());
    assert!(check_exposition("a{x=1} 1\n").is_err());
    assert!(check_exposition("a{x=\"1\" 1\n").is_err());
    assert!(check_exposition("9a 1\n").is_err());
    assert!(check_exposition("# TYPE a widget\n").is_err());
}

#[test]
fn sample_finds_values_by_name_and_labels() {
    let text = "# TYPE a counter\na{q=\"x\",o=\"acked\"} 3\na{q=\"y\",o=\"acked\"} 5\nb_count{k=\"z\"} 2\n";
    assert_eq!(
        prom::sample(text, "a", &[("q", "y"), ("o", "acked")]),
        Some(5.0)
    );
    assert_eq!(prom::sample(text, "a", &[("q", "x")]), Some(3.0));
    assert_eq!(prom::sample(text, "b_count", &[]), Some(2.0));
    assert_eq!(prom::sample(text, "a", &[("q", "nope")]), None);
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_pool_gauges() {
    let db = TestDb::new().await;
    let a = Admin::start(Some(db.pool.clone())).await;
    let r = a.get("/metrics").await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers().get("content-type").unwrap(),
        "text/plain; version=0.0.4"
    );
    let text = r.text().await.unwrap();
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(samples > 0);
    assert!(text.contains("hookfleet_build_info{"), "{text}");
    assert!(
        text.contains("hookfleet_db_pool_connections{state=\"idle\"}"),
        "{text}"
    );
    assert!(
        text.contains("hookfleet_db_pool_connections{state=\"used\"}"),
        "{text}"
    );

    prom::promtool_check(&text);
}

#[tokio::test]
async fn cancelling_the_token_stops_the_server() {
    let mut a = Admin::start(None).await;
    assert_eq!(a.get("/healthz").await.status().as_u16(), 200);
    a.token.cancel();
    let task = a.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("serve returns after cancel")
        .unwrap()
        .unwrap();
    let fresh = common::http_client().build().unwrap();
    assert!(
        fresh
            .get(format!("{}/healthz", a.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_err(),
        "the listener is closed after shutdown"
    );
}
