//! Webhook delivery end to end: a real HTTP receiver on 127.0.0.1, the worker with
//! the default handlers, the outbox relay, real PostgreSQL and RabbitMQ; one test
//! drives a real `git push` through the installed hook.
use hookfleet_testkit as common;
mod octokit;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cli::command as hookfleet;
use common::gitrepo::{clean_env, git};
use common::receiver::{Receiver, Reply};
use common::{Broker, RunningWorker, TestDb, eventually, test_config, unique_prefix};
use hmac::{Hmac, Mac};
use hookfleet::amqp::topology::Names;
use hookfleet::config::Config;
use hookfleet::outbox::{self, Event};
use hookfleet::push_job::PushJob;
use hookfleet::webhook::{self, manage};
use sha2::Sha256;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

// ---------- the system under test ----------

struct Env {
    db: TestDb,
    cfg: Config,
    broker: Broker,
    worker: RunningWorker,
    relay_stop: CancellationToken,
    relay: tokio::task::JoinHandle<anyhow::Result<()>>,
    names: Names,
}

impl Env {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Env {
        let db = TestDb::new().await;
        let mut cfg = test_config(&db.url, &unique_prefix());
        cfg.webhook.allowed_hosts = vec!["127.0.0.1".into()];
        cfg.outbox.poll_interval = Duration::from_millis(100);
        tweak(&mut cfg);
        let broker = Broker::new(&cfg).await;
        let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
        worker.ready().await;
        // The relay publishes the webhook jobs; run one here whether or not the
        // worker runs its own (several relays are safe: SKIP LOCKED).
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(outbox::run_relay(
            cfg.amqp.clone(),
            cfg.outbox.clone(),
            db.pool.clone(),
            relay_stop.clone(),
        ));
        let names = Names::new(&cfg.amqp.prefix);
        Env {
            db,
            cfg,
            broker,
            worker,
            relay_stop,
            relay,
            names,
        }
    }

    async fn stop(self) {
        self.relay_stop.cancel();
        let _ = self.relay.await;
        self.worker.stop().await.unwrap();
        self.broker.cleanup(&self.cfg).await;
        drop(self.db);
    }

    async fn subscribe(&self, repo: &str, url: &str, secret: Option<&str>, events: &str) -> i64 {
        manage::add(
            &self.db.pool,
            &manage::AddRequest {
                repo: repo.into(),
                url: url.into(),
                secret: secret.map(str::to_string),
                events: events.into(),
                content_type: "json".into(),
                style: Default::default(),
            },
            &Default::default(),
        )
        .await
        .unwrap()
        .id
    }

    /// Runs `deliveries_for_push` (and writes its rows and jobs) for one synthetic `git.push` event of `repo`.
    async fn push_event(&self, repo: &str) -> usize {
        let push = PushJob {
            push_id: Uuid::now_v7(),
            repository: repo.into(),
            path: None,
            pusher: Some("ann".into()),
            push_options: vec![],
            pushed_at: chrono::Utc::now(),
            refs_omitted: 0,
            updates: vec![],
        };
        let ev = Event::new(
            &self.names,
            "git.push",
            Some(push.push_id.to_string()),
            serde_json::json!({ "ref": "refs/heads/main", "push_id": push.push_id }),
        );
        let mut tx = self.db.pool.begin().await.unwrap();
        let d = webhook::deliveries_for_push(&mut tx, &self.names, &push, &[ev])
            .await
            .unwrap();
        webhook::storage::insert_deliveries(&mut tx, &d.rows)
            .await
            .unwrap();
        outbox::enqueue_many(&mut tx, &d.jobs).await.unwrap();
        tx.commit().await.unwrap();
        d.jobs.len()
    }

    async fn dead(&self, n: u32) {
        let q = self.names.dead_queue("webhook");
        eventually(WAIT, &format!("{n} dead-lettered webhook jobs"), || {
            let b = &self.broker;
            let q = q.clone();
            async move { (b.depth(&q).await >= n).then_some(()) }
        })
        .await;
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Attempt {
    delivery_id: Uuid,
    subscription_id: i64,
    message_id: Uuid,
    outcome: String,
    status: Option<i32>,
    error: Option<String>,
    request_headers: serde_json::Value,
}

async fn attempts(pool: &PgPool) -> Vec<Attempt> {
    sqlx::query_as(
        "SELECT delivery_id, subscription_id, message_id, outcome, status, error, \
                request_headers FROM webhook_attempts ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_attempts(pool: &PgPool, n: usize) -> Vec<Attempt> {
    eventually(WAIT, &format!("{n} recorded attempts"), || async move {
        let a = attempts(pool).await;
        (a.len() >= n).then_some(a)
    })
    .await
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

// ---------- git helpers ----------

/// `root/org/app.git` (bare; `configure` run in it first, each a git command
/// line), the hook installed, and `root/work`, a clone with one commit.
fn org_app_with_hook(root: &Path, configure: &[&[&str]]) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(root.join("org")).unwrap();
    git(&root.join("org"), &["init", "-q", "--bare", "app.git"]);
    let bare = root.join("org/app.git");
    for args in configure {
        git(&bare, args);
    }
    let out = hookfleet()
        .args(["hook", "install"])
        .arg(&bare)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let work = root.join("work");
    git(root, &["init", "-q", "work"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    std::fs::write(work.join("a.txt"), "a").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    (bare, work)
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_push_delivers_once_per_matching_subscription_signed() {
    let root = tempfile::tempdir().unwrap();
    let env = Env::start(|c| c.hook.repositories_root = root.path().display().to_string()).await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let a = env
        .subscribe("org/*", &rx.url(), Some("s3cret"), "push")
        .await;
    let b = env
        .subscribe("org/app", &rx.url(), None, "push,branch")
        .await;
    let _other = env.subscribe("other/*", &rx.url(), None, "*").await;
    let off = env.subscribe("org/**", &rx.url(), None, "*").await;
    manage::set_active(&env.db.pool, off, false).await.unwrap();

    // A bare repository org/app.git with the hook installed, and a clone.
    let (_bare, work) = org_app_with_hook(root.path(), &[]);
    push_as_ann(&env, root.path(), &work, &["origin", "main"]);

    // a: git.push; b: git.push + git.branch.created. Nothing for other/disabled.
    let got = rx.wait_for(3).await;
    let recorded = wait_attempts(&env.db.pool, 3).await;
    assert!(
        recorded.iter().all(|r| r.outcome == "success"),
        "{recorded:?}"
    );
    let mut per_sub: HashMap<(i64, String), usize> = HashMap::new();
    for g in &got {
        let h = &g.headers;
        assert_eq!(h["content-type"], "application/json");
        assert!(h["user-agent"].starts_with("hookfleet/"), "{h:?}");
        let id = &h["x-hookfleet-delivery"];
        assert!(Uuid::parse_str(id).is_ok());
        assert_eq!(&h["x-github-delivery"], id);
        let event = h["x-hookfleet-event"].clone();
        let gh = &h["x-github-event"];
        match event.as_str() {
            "git.push" => assert_eq!(gh, "push"),
            "git.branch.created" => assert_eq!(gh, "create"),
            other => panic!("unexpected event {other}"),
        }
        let sub: i64 = h["x-hookfleet-subscription"].parse().unwrap();
        if sub == a {
            assert_eq!(h["x-hub-signature-256"], hmac_hex("s3cret", &g.body));
        } else {
            assert_eq!(sub, b);
            assert!(!h.contains_key("x-hub-signature-256"));
        }
        let body: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
        // GitHub's create event names the ref without its prefix.
        let want = if gh == "create" {
            "main"
        } else {
            "refs/heads/main"
        };
        assert_eq!(body["ref"], want);
        assert_eq!(body["repository"]["full_name"], "org/app");
        *per_sub.entry((sub, event)).or_default() += 1;
    }
    assert_eq!(
        per_sub,
        HashMap::from([
            ((a, "git.push".to_string()), 1),
            ((b, "git.push".to_string()), 1),
            ((b, "git.branch.created".to_string()), 1),
        ])
    );
    // The secret itself is never stored.
    for r in &recorded {
        assert!(!r.request_headers.to_string().contains("s3cret"));
    }
    // Once the queue and outbox are drained, still exactly three requests.
    let q = env.names.queue("webhook");
    eventually(WAIT, "webhook jobs published and consumed", || {
        let (b, pool, q) = (&env.broker, &env.db.pool, q.clone());
        async move {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox_pending p JOIN outbox o ON o.id = p.id \
                     WHERE o.routing_key = 'webhook'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            (pending == 0 && b.depth(&q).await == 0).then_some(())
        }
    })
    .await;
    assert_eq!(rx.got().len(), 3);
    assert_eq!(attempts(&env.db.pool).await.len(), 3);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_is_retried_with_the_same_delivery_id() {
    let env = Env::start(|_| {}).await;
    let rx = Receiver::start(vec![Reply::Status(500)], Reply::Status(200)).await;
    env.subscribe("org/app", &rx.url(), Some("k"), "push").await;
    assert_eq!(env.push_event("org/app").await, 1);
    let got = rx.wait_for(2).await;
    let recorded = wait_attempts(&env.db.pool, 2).await;
    assert_eq!(
        got[0].headers["x-hookfleet-delivery"],
        got[1].headers["x-hookfleet-delivery"]
    );
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(recorded[0].outcome, "retry");
    assert_eq!(recorded[0].status, Some(500));
    assert_eq!(recorded[1].outcome, "success");
    assert_eq!(recorded[1].status, Some(200));
    assert_eq!(recorded[0].delivery_id, recorded[1].delivery_id);
    let state: String = sqlx::query_scalar("SELECT state FROM webhook_deliveries")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(state, "succeeded");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_fails_permanently_without_retry() {
    let env = Env::start(|_| {}).await;
    let rx = Receiver::start(vec![], Reply::Status(404)).await;
    env.subscribe("org/app", &rx.url(), None, "push").await;
    env.push_event("org/app").await;
    env.dead(1).await;
    let recorded = attempts(&env.db.pool).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].outcome, "failed");
    assert_eq!(recorded[0].status, Some(404));
    assert_eq!(rx.got().len(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_times_out_then_is_retried() {
    let env = Env::start(|c| c.webhook.timeout = Duration::from_millis(500)).await;
    let rx = Receiver::start(vec![Reply::Hang], Reply::Status(200)).await;
    env.subscribe("org/app", &rx.url(), None, "push").await;
    env.push_event("org/app").await;
    let recorded = eventually(WAIT, "a success after a timeout", || async {
        let a = attempts(&env.db.pool).await;
        a.iter().any(|r| r.outcome == "success").then_some(a)
    })
    .await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[0].outcome, "retry");
    assert_eq!(recorded[0].status, None);
    assert!(
        recorded[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{recorded:?}"
    );
    assert_eq!(recorded[0].delivery_id, recorded[1].delivery_id);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_honours_retry_after() {
    // Attempt 1 would normally retry after 50ms; Retry-After: 1 picks the 1500ms tier.
    let env = Env::start(|c| {
        c.retry.tiers = vec![Duration::from_millis(50), Duration::from_millis(1500)];
    })
    .await;
    let rx = Receiver::start(vec![Reply::StatusRetryAfter(429, 1)], Reply::Status(200)).await;
    env.subscribe("org/app", &rx.url(), None, "push").await;
    env.push_event("org/app").await;
    let got = rx.wait_for(2).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(1000), "retried after {gap:?}");
    let recorded = wait_attempts(&env.db.pool, 2).await;
    assert_eq!(recorded[0].status, Some(429));
    assert_eq!(recorded[0].outcome, "retry");
    assert_eq!(recorded[1].outcome, "success");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_disable_the_subscription_and_enable_restores_it() {
    // The breaker would postpone the fourth attempt; this is about disabling.
    let env = Env::start(|c| c.webhook.breaker_failures = 0).await;
    assert_eq!(env.cfg.webhook.disable_after_failures, 4);
    let rx = Receiver::start(vec![], Reply::Status(500)).await;
    let sub = env.subscribe("org/app", &rx.url(), None, "push").await;
    env.push_event("org/app").await;
    // Four failed attempts disable it; the job goes dead, not to a fifth attempt.
    env.dead(1).await;
    assert_eq!(rx.got().len(), 4);
    let (active, failures): (bool, i32) = sqlx::query_as(
        "SELECT active, consecutive_failures FROM webhook_subscriptions WHERE id = $1",
    )
    .bind(sub)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert!(!active);
    assert_eq!(failures, 4);
    let disabled: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'webhook.disabled'")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(disabled["subscription_id"], sub);

    // A pending delivery while disabled: recorded as failed, no request.
    // (deliveries_for_push skips inactive subscriptions, so create one by hand
    // as if it had been enqueued just before the disable.)
    manage::set_active(&env.db.pool, sub, true).await.unwrap();
    let mut tx = env.db.pool.begin().await.unwrap();
    let push = PushJob {
        push_id: Uuid::now_v7(),
        repository: "org/app".into(),
        path: None,
        pusher: None,
        push_options: vec![],
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![],
    };
    let ev = Event::new(&env.names, "git.push", None, serde_json::json!({"n": 2}));
    let d = webhook::deliveries_for_push(&mut tx, &env.names, &push, &[ev])
        .await
        .unwrap();
    webhook::storage::insert_deliveries(&mut tx, &d.rows)
        .await
        .unwrap();
    outbox::enqueue_many(&mut tx, &d.jobs).await.unwrap();
    sqlx::query("UPDATE webhook_subscriptions SET active = false WHERE id = $1")
        .bind(sub)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    env.dead(2).await;
    let recorded = attempts(&env.db.pool).await;
    let last = recorded.last().unwrap();
    assert_eq!(last.outcome, "failed");
    assert_eq!(last.error.as_deref(), Some("subscription disabled"));
    assert_eq!(rx.got().len(), 4);

    // `enable` restores deliveries.
    manage::set_active(&env.db.pool, sub, true).await.unwrap();
    rx.set_default(Reply::Status(200));
    assert_eq!(env.push_event("org/app").await, 1);
    rx.wait_for(5).await;
    eventually(WAIT, "a successful attempt", || async {
        let a = attempts(&env.db.pool).await;
        a.iter().any(|r| r.outcome == "success").then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_sends_the_same_body_and_delivery_id_again() {
    let env = Env::start(|_| {}).await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    env.subscribe("org/*", &rx.url(), Some("k"), "push").await;
    env.push_event("org/app").await;
    let first = rx.wait_for(1).await;
    let recorded = wait_attempts(&env.db.pool, 1).await;
    let delivery = recorded[0].delivery_id;
    manage::redeliver(&env.db.pool, &env.names, delivery)
        .await
        .unwrap();
    let got = rx.wait_for(2).await;
    assert_eq!(got[1].body, first[0].body);
    assert_eq!(got[1].headers["x-hookfleet-delivery"], delivery.to_string());
    assert_eq!(
        got[1].headers["x-hub-signature-256"],
        first[0].headers["x-hub-signature-256"]
    );
    let recorded = wait_attempts(&env.db.pool, 2).await;
    assert_eq!(recorded[1].delivery_id, delivery);
    assert_eq!(recorded[1].outcome, "success");
    assert_ne!(recorded[0].message_id, recorded[1].message_id);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_addresses_are_refused_by_default() {
    let env = Env::start(|c| c.webhook.allowed_hosts = vec![]).await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let urls = [
        rx.url(),
        format!("http://localhost:{}/hook", rx.port),
        format!("http://[::1]:{}/hook", rx.port),
        "http://10.0.0.1/hook".to_string(),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ];
    for u in &urls {
        env.subscribe("org/app", u, None, "push").await;
    }
    assert_eq!(env.push_event("org/app").await, urls.len());
    env.dead(urls.len() as u32).await;
    let recorded = attempts(&env.db.pool).await;
    assert_eq!(recorded.len(), urls.len(), "{recorded:?}");
    for r in &recorded {
        assert_eq!(r.outcome, "failed", "{r:?}");
        assert!(
            r.error.as_deref().unwrap_or("").contains("refused"),
            "{r:?}"
        );
        assert!(r.subscription_id > 0);
    }
    assert!(rx.got().is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_subscriptions_and_rejects_bad_urls() {
    let db = TestDb::new().await;
    let run = |args: &[&str]| {
        let out = hookfleet()
            .env("HOOKFLEET_DATABASE__URL", &db.url)
            .env("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false")
            .env("HOOKFLEET_LOG__LEVEL", "error")
            .arg("webhook")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (url, why) in [
        ("ftp://x", "scheme"),
        ("http://user:pw@host/", "credentials"),
        ("http://[::1", "invalid URL"),
        ("not a url", "invalid URL"),
    ] {
        let (code, _, err) = run(&["add", "--repo", "org/*", "--url", url]);
        assert_eq!(code, Some(2), "{url}: {err}");
        assert!(err.contains(why), "{url}: {err}");
        assert!(!err.contains(":pw"), "{err}");
    }
    let (code, _, err) = run(&[
        "add",
        "--repo",
        "org/*",
        "--url",
        "https://h/x",
        "--events",
        "pull",
    ]);
    assert_eq!(code, Some(2), "{err}");

    let (code, out, err) = run(&[
        "add",
        "--repo",
        "org/*",
        "--url",
        "https://hooks.example.com/x",
        "--secret",
        "topsecret",
        "--events",
        "push,tag",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let id: i64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(err.contains("ping delivery"), "{err}");
    let (code, out, _) = run(&["list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("org/*") && out.contains("active") && out.contains("push,tag"));
    assert!(!out.contains("topsecret"));
    let (_, out, _) = run(&["list", "--json"]);
    assert!(!out.contains("topsecret"));
    assert_eq!(run(&["disable", &id.to_string()]).0, Some(0));
    assert!(run(&["list"]).1.contains("disabled"));
    assert_eq!(run(&["enable", &id.to_string()]).0, Some(0));
    assert!(run(&["list"]).1.contains("\tactive\t"));
    assert_eq!(run(&["deliveries", "--failed"]).0, Some(0));
    assert_eq!(run(&["redeliver", &Uuid::now_v7().to_string()]).0, Some(1));
    assert_eq!(run(&["remove", &id.to_string()]).0, Some(0));
    assert_eq!(run(&["remove", &id.to_string()]).0, Some(1));
    assert!(run(&["list"]).1.trim().is_empty());
}

#[tokio::test]
async fn retention_prunes_old_deliveries_and_attempts_only() {
    let db = TestDb::new().await;
    for (age, id) in [("10 days", Uuid::now_v7()), ("1 minute", Uuid::now_v7())] {
        sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id, subscription_id, event_type, payload, \
                                             created_at) \
             VALUES ($1, 1, 'git.push', '{}', now() - $2::interval)",
        )
        .bind(id)
        .bind(age)
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, subscription_id, message_id, attempt, \
                 url, request_headers, outcome, duration_ms, created_at) \
             VALUES ($1, 1, $1, 1, 'http://x/', '{}', 'success', 1, now() - $2::interval)",
        )
        .bind(id)
        .bind(age)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let n = webhook::storage::prune_batch(&db.pool, Duration::from_secs(7 * 86_400), 100)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let left: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhook_deliveries), (SELECT count(*) FROM webhook_attempts)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, (1, 1));
}

// ---------- GitHub-exact bodies ----------

/// The octokit definition a body of `X-GitHub-Event: name` must satisfy.
fn schema_of(name: &str) -> &'static str {
    match name {
        "push" | "force_push" => "push$event",
        "create" => "create$event",
        "delete" => "delete$event",
        "ping" => "ping$event",
        other => panic!("no GitHub schema for event {other}"),
    }
}

/// `git push ARGS` from `work` as pusher `ann`, through the hook installed in
/// a repository under `root`.
fn push_as_ann(env: &Env, root: &Path, work: &Path, args: &[&str]) {
    let mut c = Command::new("git");
    clean_env(&mut c);
    let out = c
        .current_dir(work)
        .env("HOOKFLEET_AMQP__URL", common::AMQP_URL)
        .env("HOOKFLEET_AMQP__PREFIX", &env.cfg.amqp.prefix)
        .env("HOOKFLEET_SPOOL__DIR", &env.cfg.spool.dir)
        .env("HOOKFLEET_HOOK__REPOSITORIES_ROOT", root)
        .env("HOOKFLEET_PUSHER", "ann")
        .arg("push")
        .arg("-q")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git push {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_pushes_deliver_github_exact_bodies_that_match_octokit_schemas() {
    let root = tempfile::tempdir().unwrap();
    let env = Env::start(|c| c.hook.repositories_root = root.path().display().to_string()).await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let sub = env.subscribe("org/*", &rx.url(), Some("s3cret"), "*").await;

    // org/app.git, whose HEAD names `trunk`: the default branch comes from
    // HEAD, not from the branch pushed first.
    let (_bare, work) = org_app_with_hook(
        root.path(),
        &[
            &["symbolic-ref", "HEAD", "refs/heads/trunk"],
            &["config", "receive.advertisePushOptions", "true"],
        ],
    );

    // Each step waits for its two deliveries (push + lifecycle event), so the
    // worker reads each push before the next changes the repository.
    let r = root.path();
    let steps: [&[&str]; 6] = [
        &["-o", "ci.skip", "-o", "note=a b", "origin", "main"],
        &["origin", "v1"],
        &["-f", "origin", "main"],
        &["origin", "main:feature"],
        &["origin", ":feature"],
        &["origin", ":refs/tags/v1"],
    ];
    for (i, args) in steps.iter().enumerate() {
        match i {
            1 => {
                git(&work, &["tag", "v1"]);
            }
            2 => {
                git(&work, &["commit", "-q", "--amend", "-m", "two"]);
            }
            _ => {}
        }
        push_as_ann(&env, r, &work, args);
        rx.wait_for(2 * (i + 1)).await;
    }
    let got = rx.wait_for(12).await;

    let bodies: Vec<(String, serde_json::Value)> = got
        .iter()
        .map(|g| {
            let h = &g.headers;
            assert_eq!(h["x-hub-signature-256"], hmac_hex("s3cret", &g.body));
            assert_eq!(h["x-github-hook-id"], sub.to_string());
            assert!(Uuid::parse_str(&h["x-hookfleet-push-id"]).is_ok(), "{h:?}");
            assert!(
                chrono::DateTime::parse_from_rfc3339(&h["x-hookfleet-pushed-at"]).is_ok(),
                "{h:?}"
            );
            (
                h["x-github-event"].clone(),
                serde_json::from_slice(&g.body).unwrap(),
            )
        })
        .collect();
    octokit::assert_valid(
        &bodies
            .iter()
            .map(|(name, b)| (schema_of(name), b))
            .collect::<Vec<_>>(),
    );

    let mut names: Vec<&str> = bodies.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "create",
            "create",
            "create",
            "delete",
            "delete",
            "force_push",
            "push",
            "push",
            "push",
            "push",
            "push",
            "push"
        ]
    );
    let repo_id = &bodies[0].1["repository"]["id"];
    for (name, b) in &bodies {
        // hookfleet's facts travel in headers, never in the body.
        for k in [
            "push_id",
            "pushed_at",
            "push_options",
            "total_commits_count",
        ] {
            assert!(b.get(k).is_none(), "{name} body has {k}: {b}");
        }
        let repo = &b["repository"];
        assert_eq!(&repo["id"], repo_id, "ids are stable");
        assert_eq!(repo["full_name"], "org/app");
        assert_eq!(repo["default_branch"], "trunk");
        assert_eq!(repo["owner"]["login"], "org");
        assert_eq!(repo["owner"]["type"], "Organization");
        assert_eq!(b["organization"]["login"], "org");
        assert_eq!(b["sender"]["login"], "ann");
    }
    let find = |name: &str, r: &str| {
        bodies
            .iter()
            .find(|(n, b)| n == name && b["ref"] == r)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no {name} body for {r}: {bodies:?}"))
    };
    let created = find("create", "main");
    assert_eq!(created["ref_type"], "branch");
    assert_eq!(created["master_branch"], "trunk");
    assert_eq!(find("create", "v1")["ref_type"], "tag");
    assert_eq!(find("delete", "v1")["ref_type"], "tag");
    assert_eq!(find("delete", "feature")["ref_type"], "branch");
    assert_eq!(find("force_push", "refs/heads/main")["forced"], true);
    let first = find("push", "refs/heads/main");
    assert_eq!(first["commits"][0]["message"], "one");
    assert_eq!(first["pusher"]["name"], "ann");
    // The first push's options, percent-encoded, on both its deliveries.
    let with_options = got
        .iter()
        .filter(|g| {
            g.headers
                .get("x-hookfleet-push-options")
                .map(String::as_str)
                == Some("ci.skip,note%3Da%20b")
        })
        .count();
    assert_eq!(with_options, 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_add_and_webhook_ping_send_a_valid_ping() {
    let env = Env::start(|_| {}).await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let run = |args: &[&str]| {
        let out = hookfleet()
            .env("HOOKFLEET_DATABASE__URL", &env.db.url)
            .env("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false")
            .env("HOOKFLEET_AMQP__PREFIX", &env.cfg.amqp.prefix)
            .env("HOOKFLEET_LOG__LEVEL", "error")
            .env("USER", "tester")
            .arg("webhook")
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "webhook {args:?}: {err}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run(&[
        "add",
        "--repo",
        "org/app",
        "--url",
        &rx.url(),
        "--secret",
        "s3cret",
        "--events",
        "push,branch",
    ]);
    let id: i64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    rx.wait_for(1).await;
    run(&["ping", &id.to_string()]);
    let got = rx.wait_for(2).await;

    let bodies: Vec<serde_json::Value> = got
        .iter()
        .map(|g| serde_json::from_slice(&g.body).unwrap())
        .collect();
    octokit::assert_valid(&bodies.iter().map(|b| ("ping$event", b)).collect::<Vec<_>>());
    assert_ne!(
        got[0].headers["x-hookfleet-delivery"],
        got[1].headers["x-hookfleet-delivery"]
    );
    for (g, b) in got.iter().zip(&bodies) {
        assert_eq!(g.headers["x-github-event"], "ping");
        assert_eq!(g.headers["x-hookfleet-event"], "webhook.ping");
        assert_eq!(
            g.headers["x-hub-signature-256"],
            hmac_hex("s3cret", &g.body)
        );
        assert_eq!(b["hook_id"], id);
        assert_eq!(b["hook"]["config"]["url"], rx.url());
        assert_eq!(b["hook"]["config"]["secret"], "********");
        assert_eq!(
            b["hook"]["events"],
            serde_json::json!(["push", "create", "delete"])
        );
        assert_eq!(b["sender"]["login"], "tester");
        assert!(!String::from_utf8_lossy(&g.body).contains("s3cret"));
    }
    // No such subscription: exit 1, nothing sent.
    let out = hookfleet()
        .env("HOOKFLEET_DATABASE__URL", &env.db.url)
        .env("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false")
        .env("HOOKFLEET_LOG__LEVEL", "error")
        .args(["webhook", "ping", "999999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    env.stop().await;
}

#[test]
fn the_schema_check_refuses_hookfleet_fields_in_a_github_body() {
    let cfg = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
    let site = webhook::github::Site::new(&cfg);
    let stored = serde_json::json!({
        "ref": "refs/heads/main", "before": "0".repeat(40), "after": "a".repeat(40),
        "created": true, "deleted": false, "forced": false, "base_ref": null,
        "compare": "https://git.example.com/org/app/compare/0...a", "commits": [],
        "head_commit": null, "pusher": {"name": "ann"}, "sender": {"login": "ann"},
        "repository": {"name": "app", "full_name": "org/app"},
        "push_id": Uuid::now_v7(), "pushed_at": chrono::Utc::now(), "push_options": [],
    });
    let body = webhook::github::body("git.push", &stored, &site);
    let mut with_extra = body.clone();
    with_extra["push_id"] = stored["push_id"].clone();
    let r = octokit::validate(&[("push$event", &body), ("push$event", &with_extra)]);
    assert!(r[0].is_none(), "{:?}", r[0]);
    assert!(
        r[1].as_ref()
            .is_some_and(|e| e.to_string().contains("additionalProperties")),
        "{:?}",
        r[1]
    );
}

// ---------- guards: the circuit breaker per host ----------

/// A real blackhole in front of a receiver: while dead it accepts connections
/// and never answers (holding them until the client hangs up); once revived it
/// forwards new connections to `target`.
struct Blackhole {
    port: u16,
    dead: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Blackhole {
    async fn start(target: std::net::SocketAddr) -> Blackhole {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dead = std::sync::Arc::new(AtomicBool::new(true));
        let accepted = std::sync::Arc::new(AtomicU64::new(0));
        let (d, a) = (dead.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let dead_now = d.load(Ordering::SeqCst);
                if dead_now {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    if dead_now {
                        // Read and drop whatever comes, never answer.
                        let mut buf = [0u8; 4096];
                        while matches!(inbound.read(&mut buf).await, Ok(n) if n > 0) {}
                        return;
                    }
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Blackhole {
            port,
            dead,
            accepted,
        }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn revive(&self) {
        self.dead.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    fn swallowed(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn breaker_state(host: &str) -> i64 {
    hookfleet::metrics::metrics()
        .webhook_breaker_state
        .with_label_values(&[host])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_host_opens_the_breaker_postpones_without_attempts_and_a_probe_closes_it() {
    let env = Env::start(|c| {
        c.webhook.timeout = Duration::from_millis(300);
        c.webhook.breaker_failures = 2;
        // Long against the 100 ms retry tier, so attempt 3 finds it open.
        c.webhook.breaker_open_for = Duration::from_secs(2);
        c.webhook.disable_after_failures = 100;
        c.retry.max_attempts = 3;
    })
    .await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let hole = Blackhole::start(([127, 0, 0, 1], rx.port).into()).await;
    env.subscribe("org/app", &hole.url(), None, "push").await;
    env.push_event("org/app").await;

    // Attempts 1 and 2 time out and open the breaker; the third attempt is
    // postponed (attempt unchanged) until the breaker half-opens, and its probe
    // times out too: dead-lettered as attempt 3, with postponements on record.
    env.dead(1).await;
    let dead = env.broker.drain(&env.names.dead_queue("webhook")).await;
    let props = &dead[0].delivery.properties;
    assert_eq!(common::header(props, "x-attempt").as_deref(), Some("3"));
    let postponed: u32 = common::header(props, "x-postponed")
        .expect("x-postponed on the dead letter")
        .parse()
        .unwrap();
    assert!(postponed >= 1, "postponed {postponed} times");
    assert_eq!(
        common::header(props, "x-postpone-reason").as_deref(),
        Some("breaker_open")
    );
    assert_eq!(
        hole.swallowed(),
        3,
        "two failures and one probe reached the host"
    );
    let recorded = attempts(&env.db.pool).await;
    assert_eq!(
        recorded.len(),
        3,
        "postponements are not attempts: {recorded:?}"
    );
    assert_eq!(breaker_state(&hole.host()), 2, "a failed probe reopens it");

    // The host answers again: the next delivery waits for the half-open probe,
    // which succeeds and closes the breaker.
    hole.revive();
    env.push_event("org/app").await;
    rx.wait_for(1).await;
    eventually(WAIT, "a successful attempt", || async {
        let a = attempts(&env.db.pool).await;
        a.iter().any(|r| r.outcome == "success").then_some(())
    })
    .await;
    assert_eq!(
        breaker_state(&hole.host()),
        0,
        "a successful probe closes it"
    );
    assert_eq!(hole.swallowed(), 3);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_rate_limit_postpones_the_excess_and_delivers_everything() {
    let env = Env::start(|c| {
        c.rate_limit.webhook_per_subscription = 2.0;
        c.rate_limit.webhook_burst = 1;
    })
    .await;
    let postponed = || {
        hookfleet::metrics::metrics()
            .postponed_total
            .with_label_values(&["webhook", "rate_limit"])
            .get()
    };
    let before = postponed();
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    env.subscribe("org/app", &rx.url(), None, "push").await;
    for _ in 0..6 {
        env.push_event("org/app").await;
    }
    rx.wait_for(6).await;
    let recorded = wait_attempts(&env.db.pool, 6).await;
    assert!(
        recorded.iter().all(|a| a.outcome == "success"),
        "{recorded:?}"
    );
    assert_eq!(recorded.len(), 6, "postponements are not attempts");
    assert!(
        postponed() > before,
        "six at once over a burst of one: some postponed"
    );
    assert_eq!(env.broker.depth(&env.names.dead_queue("webhook")).await, 0);
    env.stop().await;
}
