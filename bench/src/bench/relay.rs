//! The relay: throughput from a pre-filled outbox (vs raw publish-with-confirms
//! of the same size and window), and commit→consume latency at a steady rate;
//! [`rows`] runs them and makes the group's rows.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hookfleet::amqp::{self, topology::Names};
use hookfleet::config::Config;
use hookfleet::outbox::{self, Event};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::opts::Sizes;
use crate::support::{
    self, BODY_SIZE, OUTBOX_TABLES, Row, declare_queue, delete_queue, now_micros, percentile,
    sink_consumer, truncate, wait_for_quiet_services,
};

fn event(names: &Names, t: i64) -> Event {
    // Same size on the wire as the baselines' bodies.
    let pad = "x".repeat(BODY_SIZE - 30);
    Event::new(names, "bench.event", None, json!({ "t": t, "pad": pad }))
}

async fn unpublished(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox_pending")
        .fetch_one(pool)
        .await?)
}

/// Relay msg/s from an outbox of `n` rows (relay batch = the window).
/// The events exchange must exist.
pub async fn relay_throughput(cfg: &Config, pool: &PgPool, n: u64) -> anyhow::Result<f64> {
    let names = Names::new(&cfg.amqp.prefix);
    let sink = format!("{}.relay-sink", cfg.amqp.prefix);
    declare_queue(cfg, &sink, Some((&names.events_exchange(), "#"))).await?;
    // Every round starts from the same tables: exactly `n` rows, no published rows
    // (and their dead index entries) left by earlier rounds.
    truncate(pool, OUTBOX_TABLES).await?;
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let events: Vec<Event> = (0..k).map(|_| event(&names, 0)).collect();
        let mut tx = pool.begin().await?;
        outbox::enqueue_many(&mut tx, &events).await?;
        tx.commit().await?;
        left -= k;
    }
    wait_for_quiet_services().await;
    let token = CancellationToken::new();
    // Done = the relay's own counter of committed publications moved by `n`: an
    // in-process read, where polling `count(*)` would load the database it measures.
    let published = || hookfleet::metrics::metrics().relay_published_total.get();
    let target = published() + n;
    let start = Instant::now();
    let relay = tokio::spawn(outbox::run_relay(
        cfg.amqp.clone(),
        cfg.outbox.clone(),
        pool.clone(),
        token.clone(),
    ));
    let deadline = start + Duration::from_secs(600);
    while published() < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "relay did not drain the outbox in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(unpublished(pool).await? == 0, "rows left unpublished");
    token.cancel();
    let _ = relay.await;
    delete_queue(cfg, &sink).await?;
    Ok(rate)
}

/// Commit→consume latency (p50, p99 in ms): `rate` single-row transactions per
/// second for `secs`, relay running, a consumer on a bound queue; latency =
/// consume time - the commit's timestamp in the body.
pub async fn relay_latency(
    cfg: &Config,
    pool: &PgPool,
    rate: u64,
    secs: u64,
) -> anyhow::Result<(f64, f64)> {
    let names = Names::new(&cfg.amqp.prefix);
    let sink = format!("{}.latency-sink", cfg.amqp.prefix);
    declare_queue(cfg, &sink, Some((&names.events_exchange(), "#"))).await?;
    truncate(pool, OUTBOX_TABLES).await?;
    let token = CancellationToken::new();
    let relay = tokio::spawn(outbox::run_relay(
        cfg.amqp.clone(),
        cfg.outbox.clone(),
        pool.clone(),
        token.clone(),
    ));
    let total = rate * secs;
    let conn = amqp::connect(&cfg.amqp, "bench-consumer").await?;
    let (_ch, mut consumer) = sink_consumer(&conn, &sink, "latency").await?;
    let collector = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total as usize);
        while lat.len() < total as usize {
            let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_secs(30), consumer.next()).await
            else {
                break;
            };
            let now = now_micros();
            let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            if let Some(t) = v["t"].as_i64() {
                lat.push((now - t) as f64 / 1000.0);
            }
        }
        lat
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..total {
        tick.tick().await;
        let mut tx = pool.begin().await?;
        // The timestamp is taken just before COMMIT.
        outbox::enqueue(&mut tx, &event(&names, now_micros())).await?;
        tx.commit().await?;
    }
    let mut lat = collector.await?;
    token.cancel();
    let _ = relay.await;
    let _ = conn.close(200, "ok".into()).await;
    delete_queue(cfg, &sink).await?;
    truncate(pool, OUTBOX_TABLES).await?;
    Ok((percentile(&mut lat, 50.0), percentile(&mut lat, 99.0)))
}

/// Relay throughput vs raw publish-with-confirms, and commit→consume latency.
pub async fn rows(
    cfg: &hookfleet::config::Config,
    pool: &sqlx::PgPool,
    s: &Sizes,
    step: &impl Fn(&str),
    rows: &mut Vec<Row>,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let mut relay_cfg = cfg.clone();
    relay_cfg.worker.kinds = vec!["push".into()];
    support::declare_topology(&relay_cfg).await?;
    let events = hookfleet::amqp::topology::Names::new(&cfg.amqp.prefix).events_exchange();
    let (mut raws, mut relays) = (Vec::new(), Vec::new());
    for round in 1..=s.rounds {
        step(&format!(
            "relay round {round}/{}: raw publish-with-confirms",
            s.rounds
        ));
        let sink = format!("{}.pub-sink", cfg.amqp.prefix);
        support::declare_queue(cfg, &sink, Some((&events, "#"))).await?;
        support::wait_for_quiet_services().await;
        raws.push(
            support::publish_raw(cfg, &events, "bench.event", s.relay, "bench.event", true).await?,
        );
        support::delete_queue(cfg, &sink).await?;
        step(&format!(
            "relay round {round}/{}: throughput from a pre-filled outbox",
            s.rounds
        ));
        relays.push(relay_throughput(cfg, pool, s.relay).await?);
    }
    extra.insert(
        "relay_rounds".into(),
        serde_json::json!({ "raw": raws.clone(), "hookfleet": relays.clone() }),
    );
    rows.push(Row::vs(
        &format!(
            "relay throughput ({} rows, batch {}, median of {})",
            s.relay,
            support::PREFETCH,
            s.rounds
        ),
        support::percentile(&mut relays, 50.0),
        "raw publish-with-confirms, window 256",
        support::percentile(&mut raws, 50.0),
        "msg/s",
        0.90,
    ));
    step("relay: commit→consume latency");
    let (p50, p99) = relay_latency(cfg, pool, s.latency_rate, s.latency_secs).await?;
    rows.push(Row::alone(
        &format!("relay commit→consume latency p50 at {}/s", s.latency_rate),
        p50,
        "ms",
        None,
    ));
    rows.push(Row::alone(
        &format!("relay commit→consume latency p99 at {}/s", s.latency_rate),
        p99,
        "ms",
        None,
    ));
    extra.insert(
        "relay_latency".into(),
        serde_json::json!({ "rate_per_s": s.latency_rate, "secs": s.latency_secs }),
    );
    support::delete_topology(&relay_cfg).await
}
