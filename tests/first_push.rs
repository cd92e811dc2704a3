//! A new user's first push, as the README tells it: no `hook.repositories_root`,
//! no allow-list, the hook installed into a bare repository, `webhook add --repo
//! '*'`, `git push`. The delivery arrives, the repository is named `owner/name`;
//! `webhook add` warns about a pattern that matches none of the repositories
//! pushed so far, and `webhook list` counts each subscription's pushes of the
//! last day.

use hookfleet_testkit as common;
mod octokit;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::gitrepo::{clean_env, git};
use common::receiver::{Got, Receiver, Reply};
use common::{Broker, RunningWorker, TestDb, eventually, test_config, unique_prefix};

const WAIT: Duration = Duration::from_secs(30);

/// `hookfleet <args>` against `db`; returns (exit code, stdout, stderr).
fn hookfleet(db: &TestDb, args: &[&str]) -> (Option<i32>, String, String) {
    common::cli::run(
        &[
            ("HOOKFLEET_DATABASE__URL", &db.url),
            ("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false"),
            ("HOOKFLEET_LOG__LEVEL", "error"),
            ("HOOKFLEET_WEBHOOK__ALLOWED_HOSTS", r#"["127.0.0.1"]"#),
        ],
        args,
    )
}

/// The `webhook list` line of subscription `id`.
fn list_line(db: &TestDb, id: &str) -> String {
    let (code, out, err) = hookfleet(db, &["webhook", "list"]);
    assert_eq!(code, Some(0), "{err}");
    out.lines()
        .find(|l| l.split('\t').next() == Some(id))
        .unwrap_or_else(|| panic!("subscription {id} not in {out}"))
        .to_string()
}

fn added_id(out: &str) -> String {
    out.trim().rsplit(' ').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_push_without_a_root_reaches_a_star_subscription_as_owner_slash_name() {
    let db = TestDb::new().await;
    let mut cfg = test_config(&db.url, &unique_prefix());
    // A new user's configuration: no root, no allow-list.
    cfg.hook.repositories_root = String::new();
    cfg.hook.allowed_dirs = Vec::new();
    cfg.webhook.allowed_hosts = vec!["127.0.0.1".into()];
    cfg.outbox.poll_interval = Duration::from_millis(100);
    let broker = Broker::new(&cfg).await;
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme")).unwrap();
    git(
        &dir.path().join("acme"),
        &["init", "-q", "--bare", "app.git"],
    );
    let bare = dir.path().join("acme/app.git");
    let (code, out, err) = hookfleet(&db, &["hook", "install", bare.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("(repository name: acme/app)"), "{out}");

    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let url = rx.url();
    let (code, out, err) = hookfleet(
        &db,
        &[
            "webhook", "add", "--repo", "*", "--url", &url, "--secret", "s", "--events", "*",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !err.contains("matches none"),
        "no pushes yet, nothing to warn about: {err}"
    );
    let star = added_id(&out);

    push_once(dir.path(), &bare, &cfg);
    // The ping sent on `webhook add`, then the push's `push` and `create`.
    let event = |g: &Got| g.headers["x-github-event"].clone();
    let got = eventually(WAIT, "push and create deliveries", || {
        let got: Vec<Got> = rx
            .got()
            .into_iter()
            .filter(|g| event(g) != "ping")
            .collect();
        async move { (got.len() >= 2).then_some(got) }
    })
    .await;
    let mut events: Vec<String> = got.iter().map(event).collect();
    events.sort();
    assert_eq!(events, ["create", "push"]);
    let bodies: Vec<(String, serde_json::Value)> = got
        .iter()
        .map(|g| {
            let def = format!("{}$event", event(g));
            (def, serde_json::from_slice(&g.body).unwrap())
        })
        .collect();
    // GitHub-exact: each body satisfies octokit's schema of its event.
    octokit::assert_valid(
        &bodies
            .iter()
            .map(|(d, v)| (d.as_str(), v))
            .collect::<Vec<_>>(),
    );
    for Got { headers, body, .. } in &got {
        let sig = &headers["x-hub-signature-256"];
        assert!(sig.starts_with("sha256="), "signed: {headers:?}");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["repository"]["full_name"], "acme/app", "{headers:?}");
        assert_eq!(v["repository"]["name"], "app");
        assert_eq!(v["repository"]["owner"]["login"], "acme");
    }
    let named: Vec<String> = sqlx::query_scalar("SELECT repository FROM pushes")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(named, vec!["acme/app".to_string()]);

    // A pattern written for another naming scheme warns, and says what exists.
    let (code, out, err) = hookfleet(
        &db,
        &[
            "webhook",
            "add",
            "--repo",
            "tmp/*",
            "--url",
            "https://hooks.example.com/x",
        ],
    );
    assert_eq!(code, Some(0), "a warning is not an error: {err}");
    assert!(
        err.contains("warning") && err.contains("matches none") && err.contains("acme/app"),
        "{err}"
    );
    let none = added_id(&out);
    let (code, _, err) = hookfleet(
        &db,
        &[
            "webhook",
            "add",
            "--repo",
            "acme/*",
            "--url",
            "https://hooks.example.com/y",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("matches none"), "{err}");

    // A push two days old is not counted in the last day.
    sqlx::query(
        "INSERT INTO pushes (push_id, repository, pushed_at, ref_count, updates) \
         VALUES (gen_random_uuid(), 'acme/app', now() - interval '2 days', 1, '[]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(
        list_line(&db, &star).ends_with("\tpushes_24h=1"),
        "{}",
        list_line(&db, &star)
    );
    assert!(list_line(&db, &none).ends_with("\tpushes_24h=0"));
    let (_, json, _) = hookfleet(&db, &["webhook", "list", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let row = rows
        .iter()
        .find(|r| r["id"].as_i64().map(|i| i.to_string()).as_deref() == Some(star.as_str()))
        .unwrap();
    assert_eq!(row["pushes_24h"], 1);

    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

/// One commit pushed from a fresh clone through the installed hook, with only
/// what the hook needs to reach this test's broker.
fn push_once(dir: &Path, bare: &Path, cfg: &hookfleet::config::Config) {
    let work = dir.join("work");
    git(dir, &["init", "-q", "work"]);
    std::fs::write(work.join("a.txt"), "a").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    let mut c = Command::new("git");
    clean_env(&mut c);
    let out = c
        .current_dir(&work)
        .env("HOOKFLEET_AMQP__URL", common::AMQP_URL)
        .env("HOOKFLEET_AMQP__PREFIX", &cfg.amqp.prefix)
        .env("HOOKFLEET_SPOOL__DIR", &cfg.spool.dir)
        .args(["push", "-q", bare.to_str().unwrap(), "main"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("NOT recorded") && !stderr.contains("spooled"),
        "{stderr}"
    );
}
