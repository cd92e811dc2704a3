//! Repositories are confined (issue: "bounded by construction"): a job can make
//! the worker read only a repository inside `hook.repositories_root` (or, with
//! no root, inside `hook.allowed_dirs`, or one where the hook was installed),
//! resolved with symlinks and `..`; anything else is dead-lettered as permanent
//! with the reason, and the hook refuses to produce such a job at all.

use hookfleet_testkit as common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::gitrepo::{Repos, clean_env, git};
use common::{Broker, RunningWorker, TestDb, eventually, header, test_config, unique_prefix};
use hookfleet::config::HookConfig;
use hookfleet::message::{H_ERROR, H_ERROR_CLASS};
use hookfleet::push::confine::{Refused, resolve};
use serde_json::json;

fn hook_config(root: &Path, allowed: &[&Path]) -> HookConfig {
    let mut c = test_config("postgres://unused", "confine").hook;
    c.repositories_root = root.display().to_string();
    c.allowed_dirs = allowed.iter().map(|p| p.display().to_string()).collect();
    c
}

fn bare(dir: &Path, name: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "--bare", name]);
    dir.join(name)
}

#[test]
fn with_a_root_only_repositories_inside_it_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let inside = bare(&root.join("team"), "app.git");
    let outside = bare(&tmp.path().join("elsewhere"), "secret.git");
    symlink(&outside, root.join("team").join("link.git")).unwrap();
    symlink(&inside, root.join("team").join("alias.git")).unwrap();
    let cfg = hook_config(&root, &[]);
    let canonical_inside = std::fs::canonicalize(&inside).unwrap();

    assert_eq!(resolve(&cfg, "team/app.git").unwrap(), canonical_inside);
    assert_eq!(
        resolve(&cfg, &inside.display().to_string()).unwrap(),
        canonical_inside,
        "an absolute path inside the root is the same repository"
    );
    assert_eq!(
        resolve(&cfg, "team/alias.git").unwrap(),
        canonical_inside,
        "a symlink that stays inside is followed"
    );
    for name in [
        outside.display().to_string(),
        "team/link.git".to_string(),
        "team/../../elsewhere/secret.git".to_string(),
        "/etc".to_string(),
        "..".to_string(),
        String::new(),
    ] {
        match resolve(&cfg, &name) {
            Err(Refused::OutsideRoot { .. }) => {}
            other => panic!("{name:?} must resolve outside the root, got {other:?}"),
        }
    }
    assert!(matches!(
        resolve(&cfg, "team/missing.git"),
        Err(Refused::Unresolvable { .. })
    ));
}

#[test]
fn without_a_root_absolute_paths_need_an_allowed_dir_or_the_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let ok = bare(&allowed, "ok.git");
    let other = bare(&tmp.path().join("other"), "other.git");
    symlink(&other, allowed.join("link.git")).unwrap();

    let cfg = hook_config(Path::new(""), &[&allowed]);
    assert_eq!(
        resolve(&cfg, &ok.display().to_string()).unwrap(),
        std::fs::canonicalize(&ok).unwrap()
    );
    for name in [
        other.display().to_string(),
        allowed.join("link.git").display().to_string(),
        allowed.join("../other/other.git").display().to_string(),
        "/etc".to_string(),
    ] {
        assert!(
            matches!(resolve(&cfg, &name), Err(Refused::NotAllowed { .. })),
            "{name:?}: {:?}",
            resolve(&cfg, &name)
        );
    }
    assert!(matches!(
        resolve(&cfg, "team/app.git"),
        Err(Refused::RelativeWithoutRoot { .. })
    ));

    // No allowed dirs: only repositories where `hook install` ran.
    let cfg = hook_config(Path::new(""), &[]);
    assert!(matches!(
        resolve(&cfg, &ok.display().to_string()),
        Err(Refused::NotInstalled { .. })
    ));
    assert!(matches!(
        resolve(&cfg, "/etc"),
        Err(Refused::NotInstalled { .. })
    ));
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    clean_env(&mut c);
    let out = c.args(["hook", "install"]).arg(&ok).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        resolve(&cfg, &ok.display().to_string()).unwrap(),
        std::fs::canonicalize(&ok).unwrap()
    );
}

/// The worker dead-letters jobs naming repositories outside the root as
/// permanent failures with the reason, without reading them; a push inside the
/// root is still recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_dead_letters_jobs_for_repositories_outside_the_root() {
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.worker.kinds = vec!["push".into()];
    cfg.hook.repositories_root = repos.dir.path().display().to_string();
    cfg.hook.allowed_dirs = Vec::new();
    // A second real repository with commits, outside the root.
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = Repos::new(false);
    std::fs::rename(&secret.bare, elsewhere.path().join("secret.git")).unwrap();
    let secret_bare = elsewhere.path().join("secret.git");
    git(
        &secret.work,
        &[
            "push",
            "-q",
            secret_bare.to_str().unwrap(),
            "HEAD:refs/heads/main",
        ],
    );
    let head = git(&secret.work, &["rev-parse", "HEAD"]);
    symlink(&secret_bare, repos.dir.path().join("link.git")).unwrap();

    let broker = Broker::new(&cfg).await;
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    let names = [
        secret_bare.display().to_string(),
        "link.git".to_string(),
        "../../".to_string() + &secret_bare.display().to_string()[1..],
        "/etc".to_string(),
    ];
    for name in &names {
        broker
            .publish_job(
                "push",
                &json!({
                    "push_id": uuid::Uuid::now_v7(),
                    "repository": name,
                    "pusher": "mallory",
                    "pushed_at": "2026-12-05T08:00:00Z",
                    "updates": [{
                        "before": "0000000000000000000000000000000000000000",
                        "after": head,
                        "ref": "refs/heads/main"
                    }]
                }),
            )
            .await;
    }
    let dead_q = broker.names.dead_queue("push");
    eventually(Duration::from_secs(30), "four dead letters", || {
        let b = &broker;
        let q = dead_q.clone();
        async move { (b.depth(&q).await == 4).then_some(()) }
    })
    .await;
    for m in broker.drain(&dead_q).await {
        assert_eq!(
            header(&m.properties, H_ERROR_CLASS).as_deref(),
            Some("permanent")
        );
        let error = header(&m.properties, H_ERROR).unwrap_or_default();
        assert!(
            error.contains("outside hook.repositories_root"),
            "reason in the header: {error}"
        );
    }
    let pushes: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pushes, 0, "nothing was read from the repositories outside");
    // The control: a real push inside the root is recorded.
    repos.push(&cfg, common::AMQP_URL, &["-q", "origin", "main"]);
    eventually(
        Duration::from_secs(30),
        "the push inside the root recorded",
        || {
            let pool = db.pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                (n > 0).then_some(())
            }
        },
    )
    .await;
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

/// The hook of a repository outside the root publishes nothing, says why with
/// the ref lines to replay, and exits non-zero.
#[tokio::test]
async fn the_hook_refuses_a_repository_the_worker_would_refuse() {
    let repos = Repos::new(true);
    let cfg = test_config("postgres://unused", &unique_prefix());
    let broker = Broker::new(&cfg).await;
    let other_root = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    clean_env(&mut c);
    let line = format!(
        "0000000000000000000000000000000000000000 {} refs/heads/main\n",
        repos.git(&["rev-parse", "HEAD"])
    );
    let mut child = c
        .args(["hook", "post-receive"])
        .current_dir(&repos.bare)
        .env("HOOKFLEET_AMQP__PREFIX", &cfg.amqp.prefix)
        .env("HOOKFLEET_HOOK__REPOSITORIES_ROOT", other_root.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("NOT recorded"), "{stderr}");
    assert!(
        stderr.contains("outside hook.repositories_root"),
        "{stderr}"
    );
    assert!(
        stderr.contains(line.trim()),
        "the ref line to replay: {stderr}"
    );
    assert_eq!(broker.depth(&broker.names.queue("push")).await, 0);
    broker.cleanup(&cfg).await;
}
