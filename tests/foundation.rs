//! Migrations, worker start/stop, and clear errors against unreachable services.
use hookfleet_testkit as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDb, eventually, test_config, unique_prefix};
use hookfleet::health::Health;
use tokio_util::sync::CancellationToken;

fn hookfleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKFLEET_") {
            c.env_remove(k);
        }
    }
    c.env("HOOKFLEET_LOG__FORMAT", "json");
    c
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn migrate_twice_is_a_noop() {
    let db = TestDb::new().await;
    let count = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = count(db.pool.clone()).await;
    assert!(before >= 1);
    hookfleet::db::migrate(&db.pool).await.unwrap();
    assert_eq!(count(db.pool.clone()).await, before);
    // And through the binary, twice.
    for _ in 0..2 {
        let out = hookfleet()
            .arg("migrate")
            .env("HOOKFLEET_DATABASE__URL", &db.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(count(db.pool.clone()).await, before);
}

#[tokio::test]
async fn a_pooled_connection_cut_while_idle_is_replaced_not_handed_out() {
    // The pool pings only connections idle for `PING_AFTER_IDLE`: one cut by the
    // server while idle (a restart, a failover) must not reach a job.
    let db = TestDb::new().await;
    let mut cfg = test_config(&db.url, &unique_prefix()).database;
    cfg.max_connections = 1;
    cfg.min_connections = 0;
    let pool = hookfleet::db::lazy_pool(&cfg).unwrap();
    let pid = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
                .fetch_one(&pool)
                .await
        }
    };
    let first = pid().await.unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first)
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the backend gone", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(first)
            .fetch_one(&db.pool)
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await;
    // Idleness is what is under test: nothing to wait on but the clock.
    tokio::time::sleep(hookfleet::db::PING_AFTER_IDLE).await;
    let second = pid().await.expect("a live connection, not the cut one");
    assert_ne!(second, first);
}

#[tokio::test]
async fn worker_reports_ready_and_exits_promptly_on_cancel() {
    let db = TestDb::new().await;
    let config = test_config(&db.url, &unique_prefix());
    let health = Arc::new(Health::new());
    let token = CancellationToken::new();
    let task = tokio::spawn(hookfleet::worker::run(
        config,
        health.clone(),
        token.clone(),
    ));
    eventually(Duration::from_secs(20), "worker ready", || {
        let ok = health.readiness().is_ok();
        async move { ok.then_some(()) }
    })
    .await;
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("worker must stop within a second of cancellation")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn migrate_against_a_closed_port_fails_fast_with_a_clear_error() {
    let port = closed_port();
    let start = Instant::now();
    let out = hookfleet()
        .arg("migrate")
        .env(
            "HOOKFLEET_DATABASE__URL",
            format!("postgres://postgres:hunter2@127.0.0.1:{port}/x"),
        )
        .env("HOOKFLEET_DATABASE__CONNECT_TIMEOUT", "2s")
        .output()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(2) + Duration::from_millis(1500));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("cannot connect to PostgreSQL at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn migrate_against_a_silent_server_times_out() {
    // Accepts TCP but never speaks: only the connect timeout can end this.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let start = Instant::now();
    let out = hookfleet()
        .arg("migrate")
        .env(
            "HOOKFLEET_DATABASE__URL",
            format!("postgres://postgres@127.0.0.1:{port}/x"),
        )
        .env("HOOKFLEET_DATABASE__CONNECT_TIMEOUT", "1s")
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("within"),
        "{err}"
    );
    drop(listener);
}

#[test]
fn worker_with_unreachable_broker_names_the_address() {
    let port = closed_port();
    let db_url = "postgres://postgres@127.0.0.1:5432/postgres";
    let mut child = hookfleet()
        .arg("worker")
        .env(
            "HOOKFLEET_AMQP__URL",
            format!("amqp://guest:sekret@127.0.0.1:{port}/%2f"),
        )
        .env("HOOKFLEET_DATABASE__URL", db_url)
        .env("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false")
        .env("HOOKFLEET_ADMIN__LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let needle = format!("cannot connect to RabbitMQ at 127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let hit = line.contains(&needle);
                seen.push(line);
                if hit {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no clear broker error in:\n{}", seen.join("\n"));
    assert!(
        !seen.iter().any(|l| l.contains("sekret")),
        "password leaked:\n{}",
        seen.join("\n")
    );
}
