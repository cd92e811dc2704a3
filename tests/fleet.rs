//! Several processes at once: 3 `hookfleet worker` processes (relay off)
//! consuming the same push queue and 2 `hookfleet relay` processes draining the
//! same outbox, fed by real `git push`es to 4 repositories in parallel. Every
//! push is recorded once, each repository's ref state ends at its last push
//! (the forward-only rule holds across workers), every event is published
//! exactly once (SKIP LOCKED keeps the relays apart), and all five processes
//! drain and exit 0 on SIGTERM.

use hookfleet_testkit as common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::gitrepo::{clean_env, git};
use common::{Broker, EventSink, TestDb, eventually, test_config, unique_prefix};
use sqlx::PgPool;

const REPOS: usize = 4;
const ROUNDS: usize = 10;
const WAIT: Duration = Duration::from_secs(90);

/// A `hookfleet` process of this test.
fn spawn(args: &[&str], env: &[(String, String)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    clean_env(&mut c);
    c.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn terminate(mut child: Child) -> Option<i32> {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {pid} did not exit within 60s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `root/repo<i>.git` (hook installed) and its clone `root/work<i>`.
fn make_repos(root: &Path) -> Vec<PathBuf> {
    (0..REPOS)
        .map(|i| {
            let bare = format!("repo{i}.git");
            let work = root.join(format!("work{i}"));
            git(root, &["init", "-q", "--bare", &bare]);
            git(root, &["init", "-q", work.to_str().unwrap()]);
            git(
                &work,
                &[
                    "remote",
                    "add",
                    "origin",
                    root.join(&bare).to_str().unwrap(),
                ],
            );
            let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
            clean_env(&mut c);
            assert!(
                c.args(["hook", "install"])
                    .arg(root.join(&bare))
                    .output()
                    .unwrap()
                    .status
                    .success()
            );
            work
        })
        .collect()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_and_two_relays_record_each_push_once_in_order() {
    let db = TestDb::new().await;
    let root = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.worker.kinds = vec!["push".into()];
    let broker = Broker::new(&cfg).await;
    let sink = EventSink::new(&broker).await;
    let env: Vec<(String, String)> = [
        ("HOOKFLEET_DATABASE__URL", db.url.clone()),
        ("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false".into()),
        ("HOOKFLEET_AMQP__URL", common::AMQP_URL.into()),
        ("HOOKFLEET_AMQP__PREFIX", cfg.amqp.prefix.clone()),
        ("HOOKFLEET_AMQP__QUEUE_TYPE", "classic".into()),
        ("HOOKFLEET_ADMIN__LISTEN", "127.0.0.1:0".into()),
        ("HOOKFLEET_LOG__FORMAT", "json".into()),
        ("HOOKFLEET_WORKER__KINDS", "[\"push\"]".into()),
        ("HOOKFLEET_OUTBOX__RELAY", "false".into()),
        ("HOOKFLEET_OUTBOX__POLL_INTERVAL", "200ms".into()),
        (
            "HOOKFLEET_HOOK__REPOSITORIES_ROOT",
            root.path().display().to_string(),
        ),
        (
            "HOOKFLEET_SPOOL__DIR",
            root.path().join("spool").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let workers: Vec<Child> = (0..3).map(|_| spawn(&["worker"], &env)).collect();
    let relays: Vec<Child> = (0..2).map(|_| spawn(&["relay"], &env)).collect();
    let queue = broker.names.queue("push");
    eventually(WAIT, "three workers consuming the push queue", || {
        let (b, q) = (&broker, queue.clone());
        async move {
            let ch = b.conn.create_channel().await.ok()?;
            let ok = ch
                .queue_declare(
                    q.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .ok()?;
            let _ = ch.close(200, "ok".into()).await;
            (ok.consumer_count() == 3).then_some(())
        }
    })
    .await;

    // Each repository pushed by its own thread, ten times, while the others push.
    let works = make_repos(root.path());
    let pushers: Vec<_> = works
        .iter()
        .cloned()
        .map(|work| {
            let (env, root) = (env.clone(), root.path().to_path_buf());
            std::thread::spawn(move || {
                for n in 0..ROUNDS {
                    std::fs::write(work.join("n.txt"), n.to_string()).unwrap();
                    git(&work, &["add", "-A"]);
                    git(&work, &["commit", "-q", "-m", &format!("round {n}")]);
                    let mut c = Command::new("git");
                    clean_env(&mut c);
                    let out = c
                        .current_dir(&work)
                        .envs(env.iter().map(|(k, v)| (k, v)))
                        .env("HOOKFLEET_HOOK__REPOSITORIES_ROOT", &root)
                        .env("HOOKFLEET_PUSHER", "fleet")
                        .args(["push", "-q", "origin", "main"])
                        .output()
                        .unwrap();
                    assert!(out.status.success());
                }
                git(&work, &["rev-parse", "HEAD"])
            })
        })
        .collect();
    let heads: Vec<String> = pushers.into_iter().map(|t| t.join().unwrap()).collect();

    let total = (REPOS * ROUNDS) as i64;
    eventually(WAIT, "every push recorded", || async {
        (count(&db.pool, "SELECT count(*) FROM pushes").await == total).then_some(())
    })
    .await;
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM inbox").await,
        total,
        "each push handled once"
    );
    for (i, head) in heads.iter().enumerate() {
        let (sha, newest): (String, bool) = sqlx::query_as(
            "SELECT r.sha, r.push_id = (SELECT p.push_id FROM pushes p \
                                        WHERE p.repository = r.repository \
                                        ORDER BY p.push_id DESC LIMIT 1) \
             FROM ref_state r WHERE r.repository = $1 AND r.ref = 'refs/heads/main'",
        )
        .bind(format!("repo{i}.git"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(&sha, head, "repo{i}: the ref state is its last push's");
        assert!(newest, "repo{i}: set by its newest push");
    }

    eventually(WAIT, "the outbox drained by the relays", || async {
        (count(&db.pool, "SELECT count(*) FROM outbox_pending").await == 0).then_some(())
    })
    .await;
    let rows = count(&db.pool, "SELECT count(*) FROM outbox").await;
    assert!(rows >= total, "at least one event per push");
    assert_eq!(
        count(
            &db.pool,
            "SELECT coalesce(sum(publish_attempts), 0)::bigint FROM outbox_published"
        )
        .await,
        rows,
        "every row published by one relay, once"
    );
    let mut got = Vec::new();
    sink.wait_for(&mut got, rows as usize, "every event").await;
    let ids: HashSet<_> = got.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(ids.len(), got.len(), "no event twice");
    assert_eq!(got.len() as i64, rows);

    for child in workers.into_iter().chain(relays) {
        assert_eq!(terminate(child), Some(0), "drains and exits 0 on SIGTERM");
    }
    broker.cleanup(&cfg).await;
}
