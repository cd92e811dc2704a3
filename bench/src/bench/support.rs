//! Shared bench plumbing: the result row, configs for a run, a database of the
//! run's own, raw confirmed publishing (the publish baseline), queues, and
//! percentiles.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hookfleet::amqp::{self, publish};
use hookfleet::config::{Config, QueueType, SecretUrl};
pub use hookfleet_testkit::broker::queue_depth;
use hookfleet_testkit::procs::process_cpu_seconds;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

/// Message body size of every throughput figure.
pub const BODY_SIZE: usize = 1024;
/// Prefetch of the consumers and publish window of the publishers (and the
/// relay's batch size).
pub const PREFETCH: u16 = 256;
use hookfleet_testkit::PG_ADMIN_URL;

/// The outbox with its work queue and publication log. Truncated together: a
/// `TRUNCATE outbox` alone makes its trigger DELETE the other two's rows, which
/// would leave dead tuples for the next round's claims to walk past.
pub const OUTBOX_TABLES: &str = "outbox, outbox_pending, outbox_published";

/// Empties `tables` (a comma-separated list) so a round starts from clean tables.
pub async fn truncate(pool: &sqlx::PgPool, tables: &str) -> anyhow::Result<()> {
    sqlx::query(&format!("TRUNCATE {tables}"))
        .execute(pool)
        .await?;
    Ok(())
}

/// One line of the table: a hookfleet figure next to its baseline.
#[derive(Debug, Serialize)]
pub struct Row {
    /// What is measured.
    pub name: String,
    /// hookfleet's figure.
    pub hookfleet: f64,
    /// What it is compared with ("-" when nothing).
    pub baseline_name: String,
    /// The baseline figure, if there is one.
    pub baseline: Option<f64>,
    /// Unit of both figures.
    pub unit: String,
    /// hookfleet / baseline.
    pub ratio: Option<f64>,
    /// The goal.
    pub target: String,
    /// `Some(true)` when the target is met, `None` when it has no number.
    pub met: Option<bool>,
}

impl Row {
    /// A row with a baseline; `min_ratio` is the target.
    pub fn vs(name: &str, hf: f64, base_name: &str, base: f64, unit: &str, min_ratio: f64) -> Row {
        let ratio = if base > 0.0 { hf / base } else { 0.0 };
        Row {
            name: name.into(),
            hookfleet: hf,
            baseline_name: base_name.into(),
            baseline: Some(base),
            unit: unit.into(),
            ratio: Some(ratio),
            target: format!("ratio >= {min_ratio:.2}"),
            met: Some(ratio >= min_ratio),
        }
    }

    /// A row without a baseline; `max` is an upper bound when given.
    pub fn alone(name: &str, hf: f64, unit: &str, max: Option<f64>) -> Row {
        Row {
            name: name.into(),
            hookfleet: hf,
            baseline_name: "-".into(),
            baseline: None,
            unit: unit.into(),
            ratio: None,
            target: max.map_or("-".into(), |m| format!("<= {m} {unit}")),
            met: max.map(|m| hf <= m),
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| figure | hookfleet | baseline | ratio | target | met |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let base = match r.baseline {
            Some(b) => format!("{} {} ({})", fmt(b), r.unit, r.baseline_name),
            None => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} {} | {} | {} | {} | {} |\n",
            r.name,
            fmt(r.hookfleet),
            r.unit,
            base,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        ));
    }
    s
}

/// Defaults, this run's prefix and database, quorum queues, prefetch = pool size.
pub fn base_config(prefix: &str, db_name: &str) -> anyhow::Result<Config> {
    let mut c = Config::load_from(None, Vec::<(String, String)>::new())?;
    c.amqp.prefix = prefix.to_string();
    c.amqp.queue_type = QueueType::Quorum;
    c.database.url = SecretUrl::new(format!("postgres://postgres@127.0.0.1:5432/{db_name}"));
    c.database.auto_migrate = false;
    c.worker.concurrency = u32::from(PREFETCH);
    c.worker.kind_concurrency.clear();
    c.outbox.batch_size = u32::from(PREFETCH);
    c.admin.listen = "127.0.0.1:0".parse()?;
    c.log.level = "warn".into();
    Ok(c)
}

/// Creates and migrates the run's database.
pub async fn create_database(name: &str, cfg: &Config) -> anyhow::Result<()> {
    let mut c = PgConnection::connect(PG_ADMIN_URL).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut c)
        .await?;
    let _ = c.close().await;
    let pool = hookfleet::db::connect(&cfg.database).await?;
    hookfleet::db::migrate(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Drops the run's database.
pub async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut c = PgConnection::connect(PG_ADMIN_URL).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut c)
        .await?;
    Ok(())
}

/// A JSON body of [`BODY_SIZE`] bytes.
pub fn body() -> Vec<u8> {
    let pad = "x".repeat(BODY_SIZE - 20);
    format!("{{\"n\":0,\"pad\":\"{pad}\"}}").into_bytes()
}

/// The baseline publisher: `n` messages of [`body`] to `exchange`/`routing_key`
/// with confirms, window [`PREFETCH`]; returns msg/s.
pub async fn publish_raw(
    cfg: &Config,
    exchange: &str,
    routing_key: &str,
    n: u64,
    kind: &str,
    mandatory: bool,
) -> anyhow::Result<f64> {
    publish_raw_data(cfg, exchange, routing_key, &body(), n, kind, mandatory).await
}

/// [`publish_raw`] with `data` as every message's body.
pub async fn publish_raw_data(
    cfg: &Config,
    exchange: &str,
    routing_key: &str,
    data: &[u8],
    n: u64,
    kind: &str,
    mandatory: bool,
) -> anyhow::Result<f64> {
    let conn = amqp::connect(&cfg.amqp, "bench-publisher").await?;
    let ch = publish::confirm_channel(&conn).await?;
    let start = Instant::now();
    let mut pending = VecDeque::new();
    for _ in 0..n {
        let env = hookfleet::message::Envelope::new(kind, None);
        let c = publish::send(
            &ch,
            exchange,
            routing_key,
            data,
            env.to_properties(),
            mandatory,
        )
        .await?;
        pending.push_back(c);
        if pending.len() >= usize::from(PREFETCH)
            && let Some(c) = pending.pop_front()
        {
            publish::confirmed(c, Duration::from_secs(30)).await?;
        }
    }
    for c in pending {
        publish::confirmed(c, Duration::from_secs(30)).await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "ok".into()).await;
    Ok(rate)
}

/// Declares a durable queue of the configured type, bound to `exchange` with
/// `key` when given.
pub async fn declare_queue(
    cfg: &Config,
    queue: &str,
    bind: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let conn = amqp::connect(&cfg.amqp, "bench-setup").await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    if let Some((exchange, key)) = bind {
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

/// Deletes a queue.
pub async fn delete_queue(cfg: &Config, queue: &str) -> anyhow::Result<()> {
    with_cleanup_retries(|| async {
        let conn = amqp::connect(&cfg.amqp, "bench-setup").await?;
        let ch = conn.create_channel().await?;
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
        let _ = conn.close(200, "ok".into()).await;
        Ok(())
    })
    .await
}

/// Runs a cleanup step up to three times, waiting for quiet services between.
/// Deleting a quorum queue right after 100,000 messages went through it can
/// fail inside RabbitMQ 3.10 (`wal_down` while its write-ahead log restarts,
/// seen as INTERNAL_ERROR); the same delete succeeds a moment later, and a
/// bench should not lose its figures to its own cleanup.
async fn with_cleanup_retries<F, Fut>(step: F) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match step().await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 3 => {
                eprintln!("cleanup failed ({e:#}); retrying once the services are quiet");
                wait_for_quiet_services().await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Declares the run's topology for `kinds`.
pub async fn declare_topology(cfg: &Config) -> anyhow::Result<()> {
    let conn = amqp::connect(&cfg.amqp, "bench-setup").await?;
    let ch = conn.create_channel().await?;
    hookfleet::amqp::topology::declare(&ch, &cfg.amqp, &cfg.retry.tiers, &cfg.worker.kinds).await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

/// Deletes the run's topology for `kinds`.
pub async fn delete_topology(cfg: &Config) -> anyhow::Result<()> {
    with_cleanup_retries(|| async {
        let conn = amqp::connect(&cfg.amqp, "bench-setup").await?;
        let ch = conn.create_channel().await?;
        hookfleet::amqp::topology::delete(
            &ch,
            &cfg.amqp.prefix,
            &cfg.retry.tiers,
            &cfg.worker.kinds,
        )
        .await?;
        let _ = conn.close(200, "ok".into()).await;
        Ok(())
    })
    .await
}

/// The `p`-th percentile (0..=100) of `v` (sorted in place), in the same unit.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Microseconds since the Unix epoch (wall clock, comparable with `created_at`).
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The processes of the local services: RabbitMQ's Erlang VM (`beam.smp`) and
/// every PostgreSQL process (server, backends, background workers).
fn service_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let comm = comm.trim();
            (comm == "beam.smp" || comm.starts_with("postgres")).then_some(pid)
        })
        .collect()
}

/// CPU seconds each of `pids` has used so far (a process that is gone is left out).
fn cpu_by_pid(pids: &[u32]) -> Vec<(u32, f64)> {
    pids.iter()
        .filter_map(|p| Some((*p, process_cpu_seconds(*p)?)))
        .collect()
}

/// Waits (up to 15 s) until the local broker and database are quiet: together
/// under 5 % of a core over 200 ms. A quorum queue just filled with 100,000
/// messages keeps the broker busy for a while (its write-ahead log is flushed
/// into segment files), and a freshly filled table has PostgreSQL writing and
/// analysing; a round that starts inside that work measures the services'
/// housekeeping, and the baseline and hookfleet rounds would start at different
/// points of it. Every throughput round starts from quiet services. Services on
/// another machine are not watched (returns at once).
pub async fn wait_for_quiet_services() {
    let window = Duration::from_millis(200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        // Listed afresh each time: backends come and go.
        let pids = service_pids();
        if pids.is_empty() {
            return;
        }
        let before = cpu_by_pid(&pids);
        tokio::time::sleep(window).await;
        let after = cpu_by_pid(&pids);
        // Only processes alive at both reads count (a backend may exit between).
        let used: f64 = after
            .iter()
            .filter_map(|(pid, a)| Some(a - before.iter().find(|(p, _)| p == pid)?.1))
            .sum();
        if used < 0.05 * window.as_secs_f64() {
            return;
        }
    }
}

/// A consumer of `queue` on a channel of its own (prefetch 1,000, no acks):
/// how the benches read their sink queues. The channel is returned with it.
pub async fn sink_consumer(
    conn: &lapin::Connection,
    queue: &str,
    tag: &str,
) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

/// A push of `repository` creating branch `refname` at `after`, pushed now.
pub fn branch_push(repository: &str, refname: String, after: &str) -> hookfleet::push_job::PushJob {
    hookfleet::push_job::PushJob {
        push_id: uuid::Uuid::now_v7(),
        repository: repository.into(),
        path: None,
        pusher: Some("bench".into()),
        push_options: Vec::new(),
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![hookfleet::push_job::update::RefUpdate {
            refname,
            before: "0".repeat(40),
            after: after.into(),
        }],
    }
}
