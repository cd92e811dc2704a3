//! The transaction baseline: a pgbench-style loop of the push transaction's
//! shape through sqlx, with as many concurrent connections as the worker uses
//! for push jobs, and the same database work as the handler: read the webhook
//! subscriptions (`webhook::deliveries_for_push`), then one statement that claims
//! the inbox, takes `pg_advisory_xact_lock` and inserts the push, ref_state and
//! two outbox rows, committing as it ends (`push::record::record`, as the
//! handler runs it for a push written alone). One push per transaction, as
//! pgbench runs a script: the worker's group commit, which writes the pushes
//! that are ready together, has no counterpart here. No git, no broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookfleet::amqp::topology::Names;
use hookfleet::outbox::Event;
use hookfleet::push::record::{PushWrite, record};
use hookfleet::webhook::deliveries_for_push;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ceiling::{machine_busy_seconds, ms_per};
use crate::support::{OUTBOX_TABLES, branch_push, truncate};

/// One baseline round.
pub struct TxnRun {
    /// Transactions/s.
    pub rate: f64,
    /// The machine's busy CPU time per transaction, in ms (all processes: the
    /// database and this loop's client side; [`crate::ceiling`]).
    pub cpu_ms: Option<f64>,
}

/// Transactions/s over `secs` with `conns` concurrent loops, all on one repository
/// (so they serialize on the advisory lock, as the e2e pushes do).
pub async fn push_transactions(
    pool: &PgPool,
    prefix: &str,
    conns: usize,
    secs: u64,
) -> anyhow::Result<TxnRun> {
    let names = Names::new(prefix);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let busy_before = machine_busy_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (pool, names, done) = (pool.clone(), names.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let push = branch_push(
                    "repo.git",
                    format!("refs/heads/b-{}", Uuid::now_v7().simple()),
                    &"a".repeat(40),
                );
                let payload = json!({ "push_id": push.push_id, "pad": "x".repeat(1000) });
                let corr = Some(push.push_id.to_string());
                let events = [
                    Event::new(&names, "git.push", corr.clone(), payload.clone()),
                    Event::new(&names, "git.branch.created", corr, payload),
                ];
                let mut conn = pool.acquire().await?;
                let d = deliveries_for_push(&mut conn, &names, &push, &events).await?;
                let write = PushWrite::new(push.push_id, push, events.to_vec(), d);
                if record(&mut *conn, "bench.push", std::slice::from_ref(&write))
                    .await?
                    .is_empty()
                {
                    anyhow::bail!("push {} claimed twice", write.push.push_id);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let count = done.load(Ordering::Relaxed) as f64;
    let run = TxnRun {
        rate: count / start.elapsed().as_secs_f64(),
        cpu_ms: ms_per(busy_before, machine_busy_seconds(), count),
    };
    truncate(pool, &format!("inbox, pushes, ref_state, {OUTBOX_TABLES}")).await?;
    Ok(run)
}
