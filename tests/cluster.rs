//! A fleet on a real 3-node RabbitMQ cluster (`scripts/rabbit-cluster`, started
//! by the tests themselves): the node holding the push queue's leader, which
//! is also the node the worker consumes from, is stopped mid-stream while pushes
//! keep coming through the hook. Every push is recorded exactly once, the hook
//! publishes to a live node (nothing spooled), and the node's return changes
//! nothing.
//!
//! The tests of this binary stop and start nodes, so they run one at a time
//! ([`CLUSTER`]); cargo runs test binaries one after another.

use hookfleet_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::gitrepo::{Repos, clean_env, git};
use common::{RunningWorker, TestDb, eventually, test_config, unique_prefix};
use hookfleet::config::{Config, QueueType, SecretUrl};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(90);

static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbit-cluster")
}

/// Runs `scripts/rabbit-cluster ARGS` and returns its stdout; panics with its
/// stderr on failure.
fn cluster(args: &[&str]) -> String {
    let out = Command::new(script()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rabbit-cluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Brings the cluster up (all three nodes running) and returns its URLs.
fn cluster_up() -> Vec<String> {
    cluster(&["up"]);
    cluster(&["urls"])
        .split(',')
        .map(|s| s.trim().to_string())
        .collect()
}

/// The node number (1..=3) holding `queue`'s leader, asked of node `via`.
fn leader_of(queue: &str, via: usize) -> usize {
    let out = cluster(&[
        "ctl",
        &via.to_string(),
        "list_queues",
        "name",
        "leader",
        "--quiet",
        "--no-table-headers",
    ]);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue))
        .unwrap_or_else(|| panic!("queue {queue} not listed:\n{out}"));
    let leader = line.split_whitespace().nth(1).unwrap_or_default();
    leader
        .trim_start_matches("hf")
        .split('@')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the leader of {queue}: {line}"))
}

/// The node number of `host:port` (5701 is node 1).
fn node_of_address(address: &str) -> usize {
    let port: usize = address.rsplit(':').next().unwrap().parse().unwrap();
    port - 5700
}

fn cluster_config(db: &TestDb, urls: &[String], repos: &Repos) -> Config {
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.amqp.urls = urls.iter().map(SecretUrl::new).collect();
    // Replicated on all three nodes: the point of the drill.
    cfg.amqp.queue_type = QueueType::Quorum;
    cfg.amqp.heartbeat = Duration::from_secs(2);
    cfg.worker.kinds = vec!["push".into()];
    cfg.hook.repositories_root = repos.dir.path().display().to_string();
    cfg.hook.allowed_dirs = Vec::new();
    cfg.spool.dir = repos.dir.path().join("spool");
    cfg
}

/// Where a test pushes from: the clone and the repositories root.
#[derive(Clone)]
struct Pusher {
    work: PathBuf,
    root: PathBuf,
    cfg: Config,
    urls: Vec<String>,
}

impl Pusher {
    fn new(repos: &Repos, cfg: &Config, urls: &[String]) -> Self {
        Pusher {
            work: repos.work.clone(),
            root: repos.dir.path().to_path_buf(),
            cfg: cfg.clone(),
            urls: urls.to_vec(),
        }
    }

    /// Pushes `from..to`, one commit each, from a blocking thread (git and the
    /// hook are processes).
    fn pushes(&self, from: usize, to: usize) -> tokio::task::JoinHandle<()> {
        let p = self.clone();
        tokio::task::spawn_blocking(move || {
            for n in from..to {
                p.push_once(n);
            }
        })
    }

    /// One commit and `git push` through the installed hook, which publishes
    /// to the cluster (every node listed).
    fn push_once(&self, n: usize) {
        std::fs::write(self.work.join("n.txt"), n.to_string()).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", &format!("push {n}")]);
        let (cfg, urls) = (&self.cfg, &self.urls);
        let mut c = Command::new("git");
        clean_env(&mut c);
        c.env("HOOKFLEET_AMQP__URLS", urls.join(","))
            .env("HOOKFLEET_AMQP__PREFIX", &cfg.amqp.prefix)
            .env("HOOKFLEET_AMQP__CONNECT_TIMEOUT", "2s")
            .env("HOOKFLEET_SPOOL__DIR", &cfg.spool.dir)
            .env("HOOKFLEET_HOOK__TIMEOUT", "5s")
            .env("HOOKFLEET_HOOK__REPOSITORIES_ROOT", &self.root)
            .env("HOOKFLEET_PUSHER", "alice");
        let out = c
            .current_dir(&self.work)
            .args(["push", "-q", "origin", "main"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git push {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn recorded(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pushes")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Spooled pushes (the hook found no node).
/// Pushes waiting in the spool (its job files; the directory also holds the
/// hook's fairness buckets).
fn spooled(cfg: &Config) -> usize {
    hookfleet::hook::spool::pending(&cfg.spool.dir).map_or(0, |p| p.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_node_mid_stream_loses_and_doubles_nothing() {
    let _one_at_a_time = CLUSTER.lock().await;
    let urls = tokio::task::spawn_blocking(cluster_up).await.unwrap();
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let cfg = cluster_config(&db, &urls, &repos);
    let queue = format!("{}.push", cfg.amqp.prefix);

    // The worker declares the topology, so the queue's leader is on its node.
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    let worker_node = node_of_address(&hookfleet::amqp::node_in_use("consumer").unwrap());
    let via = worker_node % 3 + 1;
    let leader = leader_of(&queue, via);
    assert_eq!(
        leader, worker_node,
        "the worker consumes from the node holding the leader"
    );

    // Pushes before, during and after the node's loss, from a thread (git and
    // the hook are blocking processes).
    const BEFORE: usize = 10;
    const DURING: usize = 20;
    const AFTER: usize = 10;
    let pusher = Pusher::new(&repos, &cfg, &urls);
    pusher.pushes(0, BEFORE).await.unwrap();
    eventually(WAIT, "the first pushes recorded", || async {
        (recorded(&db.pool).await == BEFORE as i64).then_some(())
    })
    .await;

    tokio::task::spawn_blocking(move || cluster(&["stop", &leader.to_string()]))
        .await
        .unwrap();
    let stopped = Instant::now();
    let during = pusher.pushes(BEFORE, BEFORE + DURING);
    let resumed = eventually(WAIT, "a push recorded while the node is down", || async {
        (recorded(&db.pool).await > BEFORE as i64).then(|| stopped.elapsed())
    })
    .await;
    during.await.unwrap();
    eventually(WAIT, "every push made while the node is down", || async {
        (recorded(&db.pool).await == (BEFORE + DURING) as i64).then_some(())
    })
    .await;
    println!("consumption resumed {resumed:?} after node {leader} stopped");
    let now_on = node_of_address(&hookfleet::amqp::node_in_use("consumer").unwrap());
    assert_ne!(now_on, leader, "the worker moved to a live node");
    assert_eq!(spooled(&cfg), 0, "the hook published to a live node");

    // The node comes back: nothing changes, pushes keep flowing.
    tokio::task::spawn_blocking(move || cluster(&["start", &leader.to_string()]))
        .await
        .unwrap();
    pusher
        .pushes(BEFORE + DURING, BEFORE + DURING + AFTER)
        .await
        .unwrap();
    let total = (BEFORE + DURING + AFTER) as i64;
    eventually(WAIT, "every push recorded", || async {
        (recorded(&db.pool).await == total).then_some(())
    })
    .await;
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(inbox, total, "each push handled once");
    let head = repos.git(&["rev-parse", "HEAD"]);
    let sha: String = sqlx::query_scalar("SELECT sha FROM ref_state WHERE ref = 'refs/heads/main'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(sha, head, "the ref state is the last push's");
    assert_eq!(spooled(&cfg), 0);
    worker.stop().await.unwrap();

    // Nothing was dead-lettered; the topology goes.
    let conn = hookfleet::amqp::connect(&cfg.amqp, "test").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let dead = ch
        .queue_declare(
            format!("{}.push.dead", cfg.amqp.prefix).as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(dead.message_count(), 0, "nothing dead-lettered");
    let _ = hookfleet::amqp::topology::delete(
        &ch,
        &cfg.amqp.prefix,
        &cfg.retry.tiers,
        &cfg.worker.kinds,
    )
    .await;
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_publishes_to_a_live_node_while_one_is_down() {
    let _one_at_a_time = CLUSTER.lock().await;
    let urls = tokio::task::spawn_blocking(cluster_up).await.unwrap();
    let repos = Repos::new(true);
    let db = TestDb::new().await;
    let cfg = cluster_config(&db, &urls, &repos);
    // Topology first (from any node), then one node goes.
    let conn = hookfleet::amqp::connect(&cfg.amqp, "test").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    hookfleet::amqp::topology::declare(&ch, &cfg.amqp, &cfg.retry.tiers, &cfg.worker.kinds)
        .await
        .unwrap();
    let down = 2;
    tokio::task::spawn_blocking(move || cluster(&["stop", &down.to_string()]))
        .await
        .unwrap();
    let ch = if conn.status().connected() {
        ch
    } else {
        hookfleet::amqp::connect(&cfg.amqp, "test")
            .await
            .unwrap()
            .create_channel()
            .await
            .unwrap()
    };
    let pushes = 6;
    Pusher::new(&repos, &cfg, &urls)
        .pushes(0, pushes)
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || cluster(&["start", &down.to_string()]))
        .await
        .unwrap();
    assert_eq!(spooled(&cfg), 0, "every push published, none spooled");
    let q = ch
        .queue_declare(
            format!("{}.push", cfg.amqp.prefix).as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    let depth = match q {
        Ok(q) => q.message_count(),
        // The channel was on the stopped node: ask a fresh connection.
        Err(_) => {
            let conn = hookfleet::amqp::connect(&cfg.amqp, "test").await.unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.queue_declare(
                format!("{}.push", cfg.amqp.prefix).as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap()
            .message_count()
        }
    };
    assert_eq!(depth, pushes as u32, "each push is in the work queue once");
    let conn = hookfleet::amqp::connect(&cfg.amqp, "test").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let _ = hookfleet::amqp::topology::delete(
        &ch,
        &cfg.amqp.prefix,
        &cfg.retry.tiers,
        &cfg.worker.kinds,
    )
    .await;
}
