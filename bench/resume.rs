//! Time to resume consuming after the broker connection is cut: a worker (no-op
//! handler) reaches the broker through a TCP proxy; the proxy cuts every
//! connection and refuses new ones for `outage`, a message is published directly
//! meanwhile, then the proxy lets connections through again. Measured from that
//! restore to the message being handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookfleet::amqp::topology::Names;
use hookfleet::config::{Config, SecretUrl};
use hookfleet::job::Handler;
use tokio_util::sync::CancellationToken;

use crate::common::proxy::TcpProxy;
use crate::consume::Noop;
use crate::support::{declare_topology, delete_topology, publish_raw};

async fn wait_count(count: &AtomicU64, want: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while count.load(Ordering::Relaxed) < want {
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
    via.amqp.url = SecretUrl::new(format!("amqp://guest:guest@{}/%2f", proxy.addr));
    let count = Arc::new(AtomicU64::new(0));
    let handler: Arc<dyn Handler> = Arc::new(Noop {
        count: count.clone(),
    });
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
        publish_raw(&direct, "", &queue, 1, "noop", false).await?;
        wait_count(&count, 1, Duration::from_secs(30)).await?;
        for t in 0..trials as u64 {
            proxy.block();
            tokio::time::sleep(outage).await;
            publish_raw(&direct, "", &queue, 1, "noop", false).await?;
            proxy.unblock();
            let restored = Instant::now();
            wait_count(&count, t + 2, Duration::from_secs(60)).await?;
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
