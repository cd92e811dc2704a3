//! Dead webhook host: the healthy receivers' delivery latency with one
//! subscription's host blackholed (accepts, never answers) against the same
//! receivers with no dead host, in one run.
//!
//! Scaled down for a shared 2-core machine: 20 healthy receivers, pushes at
//! 5/s for 20 s (one delivery per subscription each: 100 deliveries/s, 2,000
//! healthy deliveries a round), the default `webhook.timeout` (10 s) and pool
//! (64 permits); the dead subscription is kept active
//! (`webhook.disable_after_failures` 1000) so the dead host keeps costing for the
//! whole round, as it does until its subscription is disabled. Latency: the
//! delivery rows committed → the request at the receiver (relay included).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookfleet::amqp::topology::Names;
use hookfleet::config::Config;
use hookfleet::outbox::{self, Event};
use hookfleet::push_job::PushJob;
use hookfleet::webhook::{self, manage};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::percentile;

const HEALTHY: usize = 20;
const RATE: u64 = 5;
const SECONDS: u64 = 20;

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// p50 and p99 (ms) of healthy deliveries, without and with a dead host.
pub struct Figures {
    pub quiet: (f64, f64),
    pub dead: (f64, f64),
}

pub async fn run(base: &Config) -> anyhow::Result<Figures> {
    let mut cfg = base.clone();
    // One loopback address per receiver: hosts, as the per-host limits see them.
    cfg.webhook.allowed_hosts = vec!["127.0.0.0/8".into()];
    cfg.webhook.disable_after_failures = 1000;
    cfg.outbox.poll_interval = Duration::from_millis(100);
    let pool = hookfleet::db::connect(&cfg.database).await?;
    let arrivals: Arrivals = Arc::default();
    for i in 0..HEALTHY {
        let url = receiver(arrivals.clone(), i + 2).await?;
        subscribe(&pool, &url).await?;
    }
    let token = CancellationToken::new();
    let state = hookfleet::worker::WorkerState::default();
    let worker = tokio::spawn(hookfleet::worker::run_with(
        cfg.clone(),
        state.clone(),
        hookfleet::worker::default_handlers(),
        token.clone(),
    ));
    while !state.health.consuming() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names = Names::new(&cfg.amqp.prefix);
    let quiet = round(&pool, &names, &arrivals, None).await?;
    let dead_url = blackhole().await?;
    let dead_sub = subscribe(&pool, &dead_url).await?;
    let dead = round(&pool, &names, &arrivals, Some(dead_sub)).await?;
    token.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    pool.close().await;
    Ok(Figures { quiet, dead })
}

async fn subscribe(pool: &sqlx::PgPool, url: &str) -> anyhow::Result<i64> {
    let req = manage::AddRequest {
        repo: "*".into(),
        url: url.into(),
        secret: None,
        events: "push".into(),
        content_type: "json".into(),
        style: Default::default(),
    };
    Ok(manage::add(pool, &req, &Default::default()).await?.id)
}

/// Pushes at [`RATE`]/s for [`SECONDS`] s; returns the healthy deliveries' p50/p99 (ms).
async fn round(
    pool: &sqlx::PgPool,
    names: &Names,
    arrivals: &Arrivals,
    dead: Option<i64>,
) -> anyhow::Result<(f64, f64)> {
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    for _ in 0..RATE * SECONDS {
        tick.tick().await;
        let rows = push_event(pool, names).await?;
        let at = Instant::now();
        for (id, sub) in rows {
            if Some(sub) != dead {
                sent.insert(id.to_string(), at);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = {
            let a = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            sent.keys().filter(|k| a.contains_key(*k)).count()
        };
        if done == sent.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = arrivals.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut ms: Vec<f64> = sent
        .iter()
        .filter_map(|(k, t)| a.get(k).map(|r| r.duration_since(*t).as_secs_f64() * 1e3))
        .collect();
    anyhow::ensure!(
        ms.len() == sent.len(),
        "{} of {} healthy deliveries arrived",
        ms.len(),
        sent.len()
    );
    Ok((percentile(&mut ms, 50.0), percentile(&mut ms, 99.0)))
}

async fn push_event(pool: &sqlx::PgPool, names: &Names) -> anyhow::Result<Vec<(Uuid, i64)>> {
    let push = PushJob {
        push_id: Uuid::now_v7(),
        repository: "org/app".into(),
        path: None,
        pusher: Some("ann".into()),
        push_options: vec![],
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![],
    };
    let ev = Event::new(
        names,
        "git.push",
        Some(push.push_id.to_string()),
        serde_json::json!({ "ref": "refs/heads/main", "push_id": push.push_id }),
    );
    let mut tx = pool.begin().await?;
    let d = webhook::deliveries_for_push(&mut tx, names, &push, &[ev]).await?;
    webhook::storage::insert_deliveries(&mut tx, &d.rows).await?;
    outbox::enqueue_many(&mut tx, &d.jobs).await?;
    tx.commit().await?;
    Ok(d.rows
        .iter()
        .map(|r| (r.delivery_id, r.subscription_id))
        .collect())
}

/// A receiver on 127.0.0.`n` answering 200 that records each delivery id's arrival.
async fn receiver(arrivals: Arrivals, n: usize) -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let arrivals = arrivals.clone();
        async move {
            if let Some(id) = headers
                .get("x-hookfleet-delivery")
                .and_then(|v| v.to_str().ok())
                && let Ok(mut a) = arrivals.lock()
            {
                a.entry(id.to_string()).or_insert_with(Instant::now);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.{n}:0")).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://127.0.0.{n}:{port}/hook"))
}

/// A listener (its own host) that accepts and never answers.
async fn blackhole() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.100:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    Ok(format!("http://127.0.0.100:{port}/hook"))
}
