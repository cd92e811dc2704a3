//! hookfleet's test kit, shared by the integration tests (`tests/`, which import it
//! as `common`) and the benches (`bench/`): an isolated database and broker
//! namespace per test, a TCP proxy that cuts connections for real, real git
//! repositories, `hookfleet` run as a command or as worker processes, webhook and
//! OTLP receivers, and polling helpers with deadlines.
//!
//! Every test gets its own PostgreSQL database (`hf_t_<epoch>_<uuid>`, dropped when
//! the guard drops; leftovers of killed runs older than an hour are dropped on the
//! next run) and its own AMQP name prefix, so tests run in parallel.
//!
//! A crate of its own (a dev-dependency of `hookfleet`, a dependency of
//! `hookfleet-bench`) so that there is one copy of each helper. Only integration
//! tests may use it: a unit test inside `src/` would see this crate's `hookfleet`
//! and its own as two different crates.

pub mod broker;
pub mod cli;
pub mod gitrepo;
pub mod otlp;
pub mod outbox;
pub mod pki;
pub mod procs;
pub mod prom;
pub mod proxy;
pub mod receiver;
pub mod transactional;

use std::future::Future;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookfleet::config::{Config, QueueType, SecretUrl};
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

pub use broker::{Broker, EventSink, SinkEvent, header};
pub use proxy::TcpProxy;

/// The local PostgreSQL server, maintenance database.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The local RabbitMQ.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Installs a test log subscriber once (quiet unless RUST_LOG is set).
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// A database of its own for one test, dropped (with FORCE) when this guard drops.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// URL of the database.
    pub url: String,
    /// A pool on it, migrations applied.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates the database and applies the migrations.
    pub async fn new() -> TestDb {
        let db = TestDb::unmigrated().await;
        hookfleet::db::migrate(&db.pool)
            .await
            .expect("migrate test db");
        db
    }

    /// Creates the database without applying any migration.
    pub async fn unmigrated() -> TestDb {
        init_logs();
        drop_stale_databases().await;
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!("hf_t_{epoch}_{}", uuid::Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(PG_ADMIN_URL)
            .await
            .expect("connect admin db");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("connect test db");
        TestDb { name, url, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut c) = PgConnection::connect(PG_ADMIN_URL).await {
                        let _ = sqlx::query(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .execute(&mut c)
                        .await;
                    }
                });
            }
        })
        .join();
    }
}

async fn drop_stale_databases() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.set(()).is_err() {
        return;
    }
    let Ok(mut c) = PgConnection::connect(PG_ADMIN_URL).await else {
        return;
    };
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'hf\\_t\\_%'")
            .fetch_all(&mut c)
            .await
            .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for n in names {
        let epoch: u64 = n
            .split('_')
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if now.saturating_sub(epoch) > 3600 {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"))
                .execute(&mut c)
                .await;
        }
    }
}

/// A unique AMQP name prefix for one test.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

/// Config for a test: defaults, this test's database and prefix, classic queues
/// (cheap to create and delete), short timeouts and retry tiers.
pub fn test_config(db_url: &str, prefix: &str) -> Config {
    let mut c = Config::load_from(None, Vec::<(String, String)>::new()).expect("defaults load");
    c.database.url = SecretUrl::new(db_url);
    c.database.auto_migrate = false;
    c.amqp.url = SecretUrl::new(AMQP_URL);
    c.amqp.prefix = prefix.to_string();
    c.amqp.queue_type = QueueType::Classic;
    c.amqp.connect_timeout = Duration::from_secs(3);
    c.amqp.reconnect_min = Duration::from_millis(50);
    c.amqp.reconnect_max = Duration::from_millis(500);
    c.retry.tiers = vec![Duration::from_millis(50), Duration::from_millis(100)];
    c.worker.drain_timeout = Duration::from_secs(10);
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
    c.spool.dir = std::env::temp_dir().join(format!("hookfleet-test-spool-{prefix}"));
    // Test repositories are temporary bare repositories without the hook.
    c.hook.allowed_dirs = vec![std::env::temp_dir().display().to_string()];
    c
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TcpProxy {
    /// Proxy in front of the local RabbitMQ.
    pub async fn rabbitmq() -> TcpProxy {
        Self::start("127.0.0.1:5672".parse().unwrap())
            .await
            .expect("proxy starts")
    }

    /// An AMQP URL through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

/// A worker running in this test's runtime.
pub struct RunningWorker {
    /// Cancels the worker (drain and stop).
    pub token: CancellationToken,
    /// Readiness and in-flight state.
    pub state: hookfleet::worker::WorkerState,
    /// The worker task.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Starts `hookfleet::worker::run_with` with `handlers`.
    pub fn start(config: Config, handlers: Vec<Arc<dyn hookfleet::job::Handler>>) -> RunningWorker {
        Self::start_with(config, Box::new(move |_, _| handlers))
    }

    /// Starts the worker with a handler factory (handlers that need the pool).
    pub fn start_with(config: Config, factory: hookfleet::worker::HandlerFactory) -> RunningWorker {
        init_logs();
        let token = CancellationToken::new();
        let state = hookfleet::worker::WorkerState::default();
        let task = tokio::spawn(hookfleet::worker::run_with(
            config,
            state.clone(),
            factory,
            token.clone(),
        ));
        RunningWorker { token, state, task }
    }

    /// Waits until the worker consumes (connected, declared, consumers registered).
    pub async fn ready(&self) {
        let health = self.state.health.clone();
        eventually(Duration::from_secs(30), "worker ready", || {
            let ok = health.consuming();
            async move { ok.then_some(()) }
        })
        .await;
    }

    /// Cancels and waits for the worker to return.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("worker task failed: {e}"),
            Err(_) => panic!("worker did not stop within 60s"),
        }
    }
}

/// A reqwest client builder for the tests' plain-HTTP clients. reqwest is built
/// without its own crypto provider (hookfleet hands it a ring rustls config), so
/// a client needs one preconfigured: ring, no roots (these clients speak http).
pub fn http_client() -> reqwest::ClientBuilder {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder().tls_backend_preconfigured(tls)
}
