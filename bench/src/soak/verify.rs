//! The verification: every push applied exactly once and every event at the
//! sink at least once, from the database and the sink queue.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use hookfleet::amqp::{self, topology};
use hookfleet::config::Config;
use hookfleet::push_job::PUSH_KIND;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use uuid::Uuid;

pub(crate) use hookfleet_testkit::broker::queue_depth;

use crate::env::Env;
use crate::report::Report;

/// Every message id in `queue` (consumed without ack, so the queue empties),
/// stopping when the queue's depth at the start is reached and nothing more
/// arrives for a second.
pub(crate) async fn drain_ids(cfg: &Config, queue: &str) -> anyhow::Result<Vec<String>> {
    let depth = queue_depth(cfg, queue).await? as usize;
    let conn = amqp::connect(&cfg.amqp, "soak-drain").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "soak-drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut ids = Vec::with_capacity(depth);
    loop {
        let idle = if ids.len() >= depth {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(d)) => {
                let d = d?;
                ids.push(
                    d.properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                );
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(ids)
}

pub(crate) async fn verify(
    env: &Env,
    pool: &sqlx::PgPool,
    expected: &HashMap<Uuid, usize>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let names = topology::Names::new(&env.cfg.amqp.prefix);
    let processed: Vec<Uuid> = sqlx::query_scalar("SELECT push_id FROM pushes")
        .fetch_all(pool)
        .await?;
    let processed: HashSet<Uuid> = processed.into_iter().collect();
    report.processed = processed.len();
    let dead = drain_ids(&env.cfg, &names.dead_queue(PUSH_KIND)).await?;
    report.dead_lettered = dead.len();
    let dead: HashSet<Uuid> = dead.iter().filter_map(|s| s.parse().ok()).collect();
    report.lost_jobs = expected
        .keys()
        .filter(|id| !processed.contains(id) && !dead.contains(id))
        .count();
    report.inbox_rows = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE queue = $1")
        .bind(names.queue(PUSH_KIND))
        .fetch_one(pool)
        .await?;

    let rows: Vec<(Uuid, Option<String>, bool)> = sqlx::query_as(
        "SELECT o.message_id, o.correlation_id, \
                    EXISTS (SELECT 1 FROM outbox_published p WHERE p.id = o.id) \
             FROM outbox o",
    )
    .fetch_all(pool)
    .await?;
    report.outbox_rows = rows.len();
    report.outbox_unpublished = rows.iter().filter(|r| !r.2).count() as i64;
    let mut per_push: HashMap<Uuid, usize> = HashMap::new();
    for (_, corr, _) in &rows {
        if let Some(id) = corr.as_deref().and_then(|c| c.parse().ok()) {
            *per_push.entry(id).or_default() += 1;
        }
    }
    for (id, want) in expected {
        let got = per_push.get(id).copied().unwrap_or(0);
        if got > *want {
            report.effects_duplicated += 1;
        } else if got < *want && processed.contains(id) {
            report.events_short += 1;
        }
    }

    let sink = drain_ids(&env.cfg, &env.sink).await?;
    report.sink_deliveries = sink.len();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in &sink {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    report.events_duplicated = sink.len() - seen.len();
    let outbox_ids: HashSet<String> = rows.iter().map(|r| r.0.to_string()).collect();
    report.events_missing = outbox_ids
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .count();
    report.events_unknown = seen.keys().filter(|id| !outbox_ids.contains(**id)).count();
    Ok(())
}
