//! Time to resume consuming after the broker connection is cut: a worker (no-op
//! handler) reaches the broker through a TCP proxy; the proxy cuts every
//! connection and refuses new ones for `outage`, a message is published directly
//! meanwhile, then the proxy lets connections through again. Measured from that
//! restore to the message being handled.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookfleet::amqp::{self, publish, topology::Names};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::job::{Done, Handler, Job, JobError};
use hookfleet::message::Envelope;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{body, declare_topology, delete_topology};
use hookfleet_testkit::proxy::TcpProxy;

/// Remembers the message ids it handled (a redelivery after a cut must not count
/// as the next trial's message).
struct Seen(Arc<Mutex<HashSet<Uuid>>>);

#[async_trait::async_trait]
impl Handler for Seen {
    fn kind(&self) -> &str {
        "noop"
    }
    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.envelope.message_id);
        Ok(Done::Handled)
    }
}

/// Publishes one message straight to the broker; returns its id.
async fn publish_one(cfg: &Config, queue: &str) -> anyhow::Result<Uuid> {
    let conn = amqp::connect(&cfg.amqp, "bench-publisher").await?;
    let ch = publish::confirm_channel(&conn).await?;
    let env = Envelope::new("noop", None);
    publish::publish_confirmed(
        &ch,
        "",
        queue,
        &body(),
        env.to_properties(),
        true,
        Duration::from_secs(10),
    )
    .await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(env.message_id)
}

async fn wait_for(seen: &Mutex<HashSet<Uuid>>, id: Uuid, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !seen.lock().unwrap_or_else(|e| e.into_inner()).contains(&id) {
        anyhow::ensure!(Instant::now() < deadline, "no delivery within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Resume times in ms, one per trial.
pub async fn resume_after_cut(
    cfg: &Config,
    outage: Duration,
    trials: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut direct = cfg.clone();
    direct.worker.kinds = vec!["noop".into()];
    direct.outbox.relay = false;
    declare_topology(&direct).await?;
    let proxy = TcpProxy::start("127.0.0.1:5672".parse()?).await?;
    let mut via = direct.clone();
    // The reconnect backoff resets only after a session that lasted
    // `healthy_after` (30 s by default). Trials seconds apart would otherwise
    // continue one growing series; each trial should find a worker that has been
    // healthy for a while, as a single outage in production does.
    via.amqp.healthy_after = Duration::from_millis(500);
    via.amqp.url = SecretUrl::new(format!("amqp://guest:guest@{}/%2f", proxy.addr));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let handler: Arc<dyn Handler> = Arc::new(Seen(seen.clone()));
    let token = CancellationToken::new();
    let state = hookfleet::worker::WorkerState::default();
    let worker = tokio::spawn(hookfleet::worker::run_with(
        via,
        state.clone(),
        Box::new(move |_, _| vec![handler]),
        token.clone(),
    ));
    let queue = Names::new(&direct.amqp.prefix).queue("noop");
    let mut out = Vec::new();
    let result = async {
        let id = publish_one(&direct, &queue).await?;
        wait_for(&seen, id, Duration::from_secs(30)).await?;
        for _ in 0..trials {
            tokio::time::sleep(Duration::from_millis(600)).await;
            proxy.block();
            tokio::time::sleep(outage).await;
            let id = publish_one(&direct, &queue).await?;
            proxy.unblock();
            let restored = Instant::now();
            wait_for(&seen, id, Duration::from_secs(60)).await?;
            out.push(restored.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok(())
    }
    .await;
    token.cancel();
    let _ = worker.await;
    delete_topology(&direct).await?;
    result?;
    Ok(out)
}
