//! Database outage: a worker reaches PostgreSQL through a TCP proxy (the shared
//! server is never stopped); the proxy refuses connections and drops the open
//! ones for `outage` while `jobs` jobs are published evenly over it. Each job
//! claims its inbox row through the worker's pool (the push handler's first
//! write), so every job fails while the database is away. Run once with the
//! kill switch off (the behaviour before it) and once on: dead letters, lost
//! jobs, the attempt each job succeeded on (max, mean) and the time from the
//! restore to the last job handled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookfleet::amqp::{self, publish, topology::Names};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::job::{Done, Handler, Job, JobError};
use hookfleet::message::Envelope;
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{body, declare_topology, delete_topology};
use hookfleet_testkit::proxy::TcpProxy;

const KIND: &str = "outage";
/// How long the jobs get to drain once the database is back.
const DRAIN_LIMIT: Duration = Duration::from_secs(240);

/// Claims the job's inbox row; records the attempt it succeeded on.
struct InboxClaim {
    pool: PgPool,
    attempts: Arc<Mutex<HashMap<Uuid, u32>>>,
}

#[async_trait::async_trait]
impl Handler for InboxClaim {
    fn kind(&self) -> &str {
        KIND
    }
    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        let id = job.envelope.message_id;
        let r = sqlx::query(
            "INSERT INTO inbox (message_id, queue) VALUES ($1, 'bench.outage') ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        let mut a = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        a.insert(id, job.attempt);
        Ok(if r.rows_affected() == 1 {
            Done::Handled
        } else {
            Done::Duplicate
        })
    }
}

/// One run's figures.
#[derive(Debug, Serialize)]
pub struct Outage {
    /// Kill switch on or off.
    pub kill_switch: bool,
    /// Jobs published during the outage.
    pub jobs: usize,
    /// In the dead-letter queue at the end.
    pub dead: u32,
    /// Neither handled nor dead-lettered at the end.
    pub lost: usize,
    /// Highest attempt a job succeeded on.
    pub max_attempt: u32,
    /// Mean attempt jobs succeeded on.
    pub mean_attempt: f64,
    /// Restore → last job handled, seconds.
    pub drain_s: f64,
}

fn through(cfg: &Config, proxy: &TcpProxy) -> anyhow::Result<SecretUrl> {
    let mut u = url::Url::parse(cfg.database.url.expose())?;
    u.set_host(Some(&proxy.addr.ip().to_string()))?;
    u.set_port(Some(proxy.addr.port()))
        .map_err(|()| anyhow::anyhow!("cannot set the port"))?;
    Ok(SecretUrl::new(u.as_str()))
}

async fn publish_spread(cfg: &Config, jobs: usize, over: Duration) -> anyhow::Result<()> {
    let conn = amqp::connect(&cfg.amqp, "bench-publisher").await?;
    let ch = publish::confirm_channel(&conn).await?;
    let queue = Names::new(&cfg.amqp.prefix).queue(KIND);
    let (ticks, start) = (30usize, Instant::now());
    for t in 0..ticks {
        for _ in 0..jobs / ticks + usize::from(t < jobs % ticks) {
            let env = Envelope::new(KIND, None);
            publish::publish_confirmed(
                &ch,
                "",
                &queue,
                &body(),
                env.to_properties(),
                true,
                Duration::from_secs(10),
            )
            .await?;
        }
        tokio::time::sleep_until((start + over * (t as u32 + 1) / ticks as u32).into()).await;
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

/// One outage with the kill switch `on` or off.
pub async fn database_outage(
    cfg: &Config,
    jobs: usize,
    outage: Duration,
    on: bool,
) -> anyhow::Result<Outage> {
    let mut direct = cfg.clone();
    direct.amqp.prefix = format!("{}o{}", cfg.amqp.prefix, u8::from(on));
    direct.worker.kinds = vec![KIND.into()];
    direct.worker.kind_concurrency = Default::default();
    direct.outbox.relay = false;
    direct.guard.enabled = on;
    declare_topology(&direct).await?;
    let proxy = TcpProxy::start("127.0.0.1:5432".parse()?).await?;
    let mut via = direct.clone();
    via.database.url = through(cfg, &proxy)?;
    via.database.acquire_timeout = Duration::from_secs(2);
    let attempts = Arc::new(Mutex::new(HashMap::new()));
    let a2 = attempts.clone();
    let token = CancellationToken::new();
    let state = hookfleet::worker::WorkerState::default();
    let worker = tokio::spawn(hookfleet::worker::run_with(
        via,
        state.clone(),
        Box::new(move |_, pool: &PgPool| {
            let h: Arc<dyn Handler> = Arc::new(InboxClaim {
                pool: pool.clone(),
                attempts: a2,
            });
            vec![h]
        }),
        token.clone(),
    ));
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !state.health.consuming() {
            anyhow::ensure!(Instant::now() < deadline, "worker not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.block();
        publish_spread(&direct, jobs, outage).await?;
        proxy.unblock();
        let restored = Instant::now();
        let names = Names::new(&direct.amqp.prefix);
        let count = || attempts.lock().unwrap_or_else(|e| e.into_inner()).len();
        let mut dead = 0;
        while restored.elapsed() < DRAIN_LIMIT {
            dead = crate::support::queue_depth(&direct, &names.dead_queue(KIND)).await?;
            if count() + dead as usize >= jobs {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drain_s = restored.elapsed().as_secs_f64();
        let a = attempts.lock().unwrap_or_else(|e| e.into_inner());
        let max_attempt = a.values().copied().max().unwrap_or(0);
        let mean_attempt = a.values().map(|&v| f64::from(v)).sum::<f64>() / (a.len().max(1) as f64);
        anyhow::Ok(Outage {
            kill_switch: on,
            jobs,
            dead,
            lost: jobs.saturating_sub(a.len() + dead as usize),
            max_attempt,
            mean_attempt,
            drain_s,
        })
    }
    .await;
    token.cancel();
    let _ = worker.await;
    delete_topology(&direct).await?;
    result
}
