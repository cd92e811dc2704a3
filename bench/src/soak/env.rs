//! Everything the drill creates (database, topology, sink queue, temp dir,
//! worker and relay processes), set up and removed again on every path.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hookfleet::amqp::{self, topology};
use hookfleet::config::{Config, SecretUrl};
use hookfleet::push_job::PUSH_KIND;
use hookfleet_testkit::cli::hookfleet_exe;
use hookfleet_testkit::gitrepo::temp_dir;
use hookfleet_testkit::procs::WorkerProc;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use sqlx::{Connection, PgConnection};

use crate::cluster::Cluster;
use crate::opts::Opts;

/// Retry tiers of the workers, in milliseconds: short, because a database
/// restart fails a few attempts.
pub(crate) const RETRY_TIERS: [u64; 4] = [500, 1000, 2000, 5000];

/// Everything the drill creates, removed by [`Env::cleanup`].
pub(crate) struct Env {
    pub(crate) cfg: Config,
    pub(crate) db_name: String,
    pub(crate) pg_admin_url: String,
    pub(crate) dir: PathBuf,
    pub(crate) workers: Vec<Option<WorkerProc>>,
    pub(crate) worker_env: Vec<(String, String)>,
    pub(crate) ports: Vec<u16>,
    pub(crate) exe: PathBuf,
    pub(crate) sink: String,
    /// Cluster mode: `hookfleet relay` processes, their env and admin ports.
    pub(crate) relays: Vec<Option<WorkerProc>>,
    pub(crate) relay_env: Vec<(String, String)>,
    pub(crate) relay_ports: Vec<u16>,
    /// Cluster mode: the cluster (every node started again at cleanup).
    pub(crate) cluster: Option<Cluster>,
    pub(crate) keep_logs: bool,
}

impl Env {
    pub(crate) fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("worker-{i}.log"))
    }

    pub(crate) fn relay_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("relay-{i}.log"))
    }

    pub(crate) fn spawn_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let w = WorkerProc::spawn(&self.exe, &self.worker_env, self.ports[i], &self.log(i))?;
        self.workers[i] = Some(w);
        Ok(())
    }

    /// `hookfleet relay` as [`WorkerProc::spawn`] runs `hookfleet worker`: the
    /// HOOKFLEET_* variables of this process removed, `relay_env` and its own
    /// admin port set, output appended to its log.
    pub(crate) fn spawn_relay(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self.relay_log(i);
        let relay = WorkerProc::spawn_role(
            &self.exe,
            "relay",
            &self.relay_env,
            self.relay_ports[i],
            &log,
        )?;
        self.relays[i] = Some(relay);
        Ok(())
    }

    pub(crate) async fn cleanup(&mut self) {
        for w in self.workers.iter_mut().flatten() {
            w.kill().await;
        }
        for r in self.relays.iter_mut().flatten() {
            r.kill().await;
        }
        if let Some(cluster) = &self.cluster {
            // Every node running again (a drill cut short may have left one stopped),
            // so the topology can be deleted and the cluster is left whole.
            if let Err(e) = cluster.up().await {
                eprintln!("soak: rabbit-cluster up failed: {e:#}");
            }
        }
        let cfg = &self.cfg;
        let del = async {
            let conn = amqp::connect(&cfg.amqp, "soak-cleanup").await?;
            let ch = conn.create_channel().await?;
            let _ = ch
                .queue_delete(self.sink.as_str().into(), QueueDeleteOptions::default())
                .await;
            topology::delete(&ch, &cfg.amqp.prefix, &cfg.retry.tiers, &cfg.worker.kinds).await?;
            let _ = conn.close(200, "bye".into()).await;
            anyhow::Ok(())
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(30), del)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            eprintln!("soak: deleting the AMQP topology failed: {e:#}");
        }
        let drop_db = async {
            let mut c = PgConnection::connect(&self.pg_admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db_name
            ))
            .execute(&mut c)
            .await?;
            anyhow::Ok(())
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(30), drop_db)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        {
            eprintln!("soak: dropping database {} failed: {e:#}", self.db_name);
        }
        if self.keep_logs {
            eprintln!("soak: logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) async fn setup(o: &Opts, prefix: &str, db_name: &str) -> anyhow::Result<Env> {
    let mut cfg = Config::load_from(None, Vec::<(String, String)>::new())?;
    let mut db_url = url::Url::parse(&o.pg_admin_url).context("--pg-admin-url")?;
    db_url.set_path(db_name);
    cfg.database.url = SecretUrl::new(db_url.as_str());
    cfg.amqp.url = SecretUrl::new(&o.amqp_url);
    let cluster = if o.cluster {
        let mut cluster = Cluster::new(&o.rabbit_cluster);
        eprintln!("soak: rabbit-cluster up");
        cluster.up().await?;
        cluster.urls = cluster.fetch_urls().await?;
        // The soak's own connections (setup, publisher, checks, cleanup) try the
        // nodes too, as the workers do.
        cfg.amqp.urls = cluster.urls.iter().map(SecretUrl::new).collect();
        Some(cluster)
    } else {
        None
    };
    cfg.amqp.prefix = prefix.to_string();
    cfg.worker.kinds = vec![PUSH_KIND.into()];
    // The workers get the same tiers (RETRY_TIERS), so cleanup finds their queues.
    cfg.retry.tiers = RETRY_TIERS
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    let exe = match &o.hookfleet {
        Some(p) => p.clone(),
        None => hookfleet_exe()?,
    };
    let dir = temp_dir("hookfleet-soak")?;
    let sink = format!("{prefix}.sink");
    let mut env = Env {
        cfg,
        db_name: db_name.to_string(),
        pg_admin_url: o.pg_admin_url.clone(),
        dir,
        workers: (0..o.workers).map(|_| None).collect(),
        worker_env: Vec::new(),
        ports: Vec::new(),
        exe,
        sink,
        relays: (0..if o.cluster { o.relays } else { 0 })
            .map(|_| None)
            .collect(),
        relay_env: Vec::new(),
        relay_ports: Vec::new(),
        cluster,
        keep_logs: o.keep_logs,
    };
    // From here on, failures still clean up what exists.
    if let Err(e) = prepare(&mut env).await {
        env.cleanup().await;
        return Err(e);
    }
    Ok(env)
}

pub(crate) async fn prepare(env: &mut Env) -> anyhow::Result<()> {
    let mut c = PgConnection::connect(&env.pg_admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{}\"", env.db_name))
        .execute(&mut c)
        .await?;
    let _ = c.close().await;
    let pool = hookfleet::db::connect(&env.cfg.database).await?;
    hookfleet::db::migrate(&pool).await?;
    pool.close().await;

    let cfg = &env.cfg;
    let conn = amqp::connect(&cfg.amqp, "soak-setup").await?;
    let ch = conn.create_channel().await?;
    topology::declare(&ch, &cfg.amqp, &cfg.retry.tiers, &cfg.worker.kinds).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        env.sink.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await?;
    ch.queue_bind(
        env.sink.as_str().into(),
        topology::Names::new(&cfg.amqp.prefix)
            .events_exchange()
            .as_str()
            .into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}
