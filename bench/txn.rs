//! The transaction baseline: a pgbench-style loop of the push transaction's
//! shape through sqlx, with as many concurrent connections as the worker uses
//! for push jobs — BEGIN; INSERT inbox; pg_advisory_xact_lock + INSERT pushes,
//! ref_state and two outbox rows (one statement, `push::handler::record`, as the
//! handler runs it); COMMIT. No git, no broker: the database's ceiling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use hookfleet::amqp::topology::Names;
use hookfleet::outbox::Event;
use hookfleet::push::job::PushJob;
use hookfleet::push::update::RefUpdate;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// Transactions/s over `secs` with `conns` concurrent loops, all on one repository
/// (so they serialize on the advisory lock, as the e2e pushes do).
pub async fn push_transactions(
    pool: &PgPool,
    prefix: &str,
    conns: usize,
    secs: u64,
) -> anyhow::Result<f64> {
    let names = Names::new(prefix);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (pool, names, done) = (pool.clone(), names.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let push = PushJob {
                    push_id: Uuid::now_v7(),
                    repository: "repo.git".into(),
                    pusher: Some("bench".into()),
                    push_options: Vec::new(),
                    pushed_at: Utc::now(),
                    updates: vec![RefUpdate {
                        refname: format!("refs/heads/b-{}", Uuid::now_v7().simple()),
                        before: "0".repeat(40),
                        after: "a".repeat(40),
                    }],
                };
                let payload = json!({ "push_id": push.push_id, "pad": "x".repeat(1000) });
                let corr = Some(push.push_id.to_string());
                let events = [
                    Event::new(&names, "git.push", corr.clone(), payload.clone()),
                    Event::new(&names, "git.branch.created", corr, payload),
                ];
                let mut tx = pool.begin().await?;
                hookfleet::inbox::claim(&mut tx, push.push_id, "bench.push").await?;
                hookfleet::push::handler::record(&mut tx, &push, &events).await?;
                tx.commit().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    sqlx::query("TRUNCATE inbox, pushes, ref_state, outbox")
        .execute(pool)
        .await?;
    Ok(rate)
}
