//! The post-receive hook end to end: installed into a real bare repository,
//! driven by a real `git push`, publishing to the real broker or spooling when it
//! is out of reach; and `spool flush`.
use hookfleet_testkit as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{AMQP_URL, eventually, test_config, unique_prefix};
use hookfleet::amqp::topology::{self, Names};
use hookfleet::config::Config;
use hookfleet::hook::spool;
use hookfleet::message::Envelope;
use hookfleet::push_job::PushJob;
use lapin::options::BasicGetOptions;
use tokio_util::sync::CancellationToken;

const ZERO: &str = "0000000000000000000000000000000000000000";
const HOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// The binary with no inherited HOOKFLEET_* variables.
fn hookfleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    clean_env(&mut c);
    c
}

fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKFLEET_") || k.starts_with("GIT_") {
            c.env_remove(k);
        }
    }
}

/// Broker, prefix, spool and hook settings as HOOKFLEET_* variables (git passes
/// its environment on to hooks).
fn hook_env(c: &mut Command, amqp_url: &str, cfg: &Config, root: &Path) {
    c.env("HOOKFLEET_AMQP__URL", amqp_url)
        .env("HOOKFLEET_AMQP__PREFIX", &cfg.amqp.prefix)
        .env("HOOKFLEET_AMQP__CONNECT_TIMEOUT", "1s")
        .env("HOOKFLEET_SPOOL__DIR", &cfg.spool.dir)
        .env("HOOKFLEET_HOOK__TIMEOUT", "2s")
        .env("HOOKFLEET_HOOK__REPOSITORIES_ROOT", root)
        .env("HOOKFLEET_PUSHER", "alice");
}

fn git(dir: &Path, args: &[&str]) -> String {
    let mut c = Command::new("git");
    clean_env(&mut c);
    let out = c
        .current_dir(dir)
        .args(["-c", "user.name=Ann", "-c", "user.email=ann@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository with the hook installed and a clone with one commit.
struct Repos {
    dir: tempfile::TempDir,
    work: PathBuf,
}

fn repos() -> Repos {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("repo.git");
    let work = dir.path().join("work");
    git(dir.path(), &["init", "-q", "--bare", "repo.git"]);
    git(&bare, &["config", "receive.advertisePushOptions", "true"]);
    git(dir.path(), &["init", "-q", "work"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    std::fs::write(work.join("a.txt"), "a").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
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
    assert!(bare.join("hooks/post-receive").is_file());
    Repos { dir, work }
}

/// `git push` in the clone with the hook pointed at `amqp_url`; returns stderr.
fn push(r: &Repos, amqp_url: &str, cfg: &Config, args: &[&str]) -> String {
    let mut c = Command::new("git");
    clean_env(&mut c);
    hook_env(&mut c, amqp_url, cfg, r.dir.path());
    let out = c
        .current_dir(&r.work)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .arg("push")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "git push failed: {stderr}");
    stderr
}

fn config() -> Config {
    let prefix = unique_prefix();
    let mut cfg = test_config("postgres://postgres@127.0.0.1:5432/unused", &prefix);
    cfg.spool.dir = tempfile::tempdir().unwrap().keep();
    cfg
}

/// Declares the topology for `cfg`'s prefix; returns a channel for reading.
async fn broker(cfg: &Config) -> (lapin::Connection, lapin::Channel) {
    let conn = hookfleet::amqp::connect(&cfg.amqp, "test").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    topology::declare(&ch, &cfg.amqp, &cfg.retry.tiers, &["push".to_string()])
        .await
        .unwrap();
    (conn, ch)
}

async fn cleanup(cfg: &Config, ch: &lapin::Channel) {
    let _ = topology::delete(ch, &cfg.amqp.prefix, &cfg.retry.tiers, &["push".into()]).await;
    let _ = std::fs::remove_dir_all(&cfg.spool.dir);
}

/// Waits for the next job in `<prefix>.push`.
async fn next_job(cfg: &Config, ch: &lapin::Channel) -> (Envelope, PushJob) {
    let queue = Names::new(&cfg.amqp.prefix).queue("push");
    let msg = eventually(Duration::from_secs(10), "a push job in the queue", || {
        let (ch, queue) = (ch.clone(), queue.clone());
        async move {
            ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
        }
    })
    .await;
    let env = Envelope::from_properties(&msg.delivery.properties).unwrap();
    let job = PushJob::from_json(&msg.delivery.data).unwrap();
    (env, job)
}

async fn queue_is_empty(cfg: &Config, ch: &lapin::Channel) -> bool {
    let queue = Names::new(&cfg.amqp.prefix).queue("push");
    ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none()
}

#[tokio::test]
async fn a_real_push_publishes_one_job() {
    let cfg = config();
    let (_conn, ch) = broker(&cfg).await;
    let r = repos();
    let head = git(&r.work, &["rev-parse", "HEAD"]);
    let stderr = push(&r, AMQP_URL, &cfg, &["-o", "ci.skip", "origin", "main"]);
    assert!(!stderr.contains("queued locally"), "{stderr}");

    let (env, job) = next_job(&cfg, &ch).await;
    assert_eq!(env.message_id, job.push_id);
    assert_eq!(env.correlation_id, Some(job.push_id.to_string()));
    assert_eq!(env.event_type.as_deref(), Some("push"));
    assert_eq!(job.push_id.get_version_num(), 7);
    assert_eq!(
        job.repository, "repo.git",
        "relative to hook.repositories_root"
    );
    assert_eq!(job.pusher.as_deref(), Some("alice"));
    assert_eq!(job.push_options, vec!["ci.skip"]);
    assert_eq!(job.updates.len(), 1);
    assert_eq!(job.updates[0].refname, "refs/heads/main");
    assert_eq!(job.updates[0].before, ZERO);
    assert_eq!(job.updates[0].after, head);

    // Two refs in one push: one job with both updates, in git's order.
    git(&r.work, &["tag", "v1"]);
    git(&r.work, &["branch", "topic"]);
    push(&r, AMQP_URL, &cfg, &["origin", "v1", "topic"]);
    let (_, job) = next_job(&cfg, &ch).await;
    let mut refs: Vec<&str> = job.updates.iter().map(|u| u.refname.as_str()).collect();
    refs.sort();
    assert_eq!(refs, vec!["refs/heads/topic", "refs/tags/v1"]);
    assert!(spool::pending(&cfg.spool.dir).unwrap().is_empty());
    cleanup(&cfg, &ch).await;
}

#[tokio::test]
async fn unreachable_broker_spools_and_flush_publishes_later() {
    let cfg = config();
    let (_conn, ch) = broker(&cfg).await;
    let r = repos();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("amqp://guest:guest@{}/%2f", l.local_addr().unwrap())
    };
    let head = git(&r.work, &["rev-parse", "HEAD"]);
    let started = Instant::now();
    let stderr = push(&r, &closed, &cfg, &["origin", "main"]);
    assert!(
        started.elapsed() < HOOK_TIMEOUT + Duration::from_secs(5),
        "the push took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("queued locally"), "{stderr}");
    let files = spool::pending(&cfg.spool.dir).unwrap();
    assert_eq!(files.len(), 1, "one spooled job");
    let spooled = PushJob::from_json(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(spooled.updates[0].after, head);
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(&format!("-{}.json", spooled.push_id))
    );
    assert!(queue_is_empty(&cfg, &ch).await);

    // A corrupt file is moved aside, never deleted, and does not block the rest.
    std::fs::write(cfg.spool.dir.join("00000000-garbage.json"), "{not json").unwrap();

    let mut c = hookfleet();
    hook_env(&mut c, AMQP_URL, &cfg, r.dir.path());
    let out = c.args(["spool", "flush"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("published 1 "), "{stdout}");
    assert!(stdout.contains("1 corrupt"), "{stdout}");
    let (env, job) = next_job(&cfg, &ch).await;
    assert_eq!(
        env.message_id, spooled.push_id,
        "same message id as the push"
    );
    assert_eq!(job, spooled);
    assert!(spool::pending(&cfg.spool.dir).unwrap().is_empty());
    assert!(
        cfg.spool
            .dir
            .join(spool::CORRUPT_DIR)
            .join("00000000-garbage.json")
            .is_file()
    );
    cleanup(&cfg, &ch).await;
}

#[tokio::test]
async fn the_worker_flusher_publishes_spooled_jobs() {
    let cfg = config();
    let (_conn, ch) = broker(&cfg).await;
    let job = PushJob {
        push_id: uuid::Uuid::now_v7(),
        repository: "r.git".into(),
        path: None,
        pusher: None,
        push_options: vec![],
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![
            hookfleet::push_job::update::parse_line(&format!(
                "{ZERO} {} refs/heads/main",
                "a".repeat(40)
            ))
            .unwrap(),
        ],
    };
    spool::write_job(&cfg.spool.dir, &job).unwrap();
    let token = CancellationToken::new();
    let settings = spool::FlushSettings {
        spool: cfg.spool.clone(),
        amqp: cfg.amqp.clone(),
        fairness: cfg.fairness.clone(),
    };
    let task = tokio::spawn(spool::run_spool_flusher(settings, token.clone()));
    let (env, got) = next_job(&cfg, &ch).await;
    assert_eq!(env.message_id, job.push_id);
    assert_eq!(got, job);
    eventually(Duration::from_secs(5), "an empty spool", || async {
        spool::pending(&cfg.spool.dir)
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(hookfleet::metrics::metrics().spool_files_pending.get(), 0);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("flusher stops on cancel")
        .unwrap();
    cleanup(&cfg, &ch).await;
}

/// Runs `hook post-receive` directly with `stdin` (repositories root: the git
/// dir's grandparent).
fn run_hook(cfg: &Config, git_dir: &Path, stdin: &str, extra: &[(&str, &str)]) -> (bool, String) {
    use std::io::Write;
    let mut c = hookfleet();
    hook_env(
        &mut c,
        AMQP_URL,
        cfg,
        git_dir.parent().unwrap().parent().unwrap(),
    );
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c
        .args(["hook", "post-receive"])
        .env("GIT_DIR", git_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn garbage_lines_are_skipped_and_valid_ones_published() {
    let cfg = config();
    let (_conn, ch) = broker(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let git_dir = dir.path().join("team").join("x.git");
    std::fs::create_dir_all(&git_dir).unwrap();
    let a = "a".repeat(40);
    let b = "b".repeat(40);

    // Nothing valid: nothing published, still exit 0.
    let (ok, stderr) = run_hook(&cfg, &git_dir, "garbage\n", &[]);
    assert!(ok);
    assert!(stderr.contains("line 1"), "{stderr}");

    let input = format!(
        "{ZERO} {a} refs/heads/main\nthis is garbage\n{a} {b} refs/heads/bad..name\n{a} {} refs/heads/x\n{a} {b} refs/tags/v1\n",
        "c".repeat(64)
    );
    let (ok, stderr) = run_hook(&cfg, &git_dir, &input, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("ignoring line 2"), "{stderr}");
    assert!(
        stderr.contains("ignoring line 3") && stderr.contains(".."),
        "{stderr}"
    );
    assert!(
        stderr.contains("ignoring line 4") && stderr.contains("length"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("line 1:") && !stderr.contains("line 5"),
        "{stderr}"
    );

    let (_, job) = next_job(&cfg, &ch).await;
    assert_eq!(job.repository, "team/x.git");
    let refs: Vec<&str> = job.updates.iter().map(|u| u.refname.as_str()).collect();
    assert_eq!(refs, vec!["refs/heads/main", "refs/tags/v1"]);
    assert!(
        queue_is_empty(&cfg, &ch).await,
        "the garbage-only run published nothing"
    );

    // An invalid configuration never blocks git: a clear message and exit 0.
    let (ok, stderr) = run_hook(&cfg, &git_dir, &input, &[("HOOKFLEET_HOOK__TIMEOUT", "0s")]);
    assert!(ok);
    assert!(
        stderr.contains("invalid configuration") && stderr.contains("hook.timeout"),
        "{stderr}"
    );
    assert!(queue_is_empty(&cfg, &ch).await);
    cleanup(&cfg, &ch).await;
}

#[test]
fn install_refuses_a_foreign_hook_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "--bare", "r.git"]);
    let bare = dir.path().join("r.git");
    let hook = bare.join("hooks").join("post-receive");
    std::fs::write(&hook, "#!/bin/sh\necho mine\n").unwrap();

    let out = hookfleet()
        .args(["hook", "install"])
        .arg(&bare)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(&hook).unwrap(),
        "#!/bin/sh\necho mine\n"
    );

    let cfg_file = dir.path().join("hf.toml");
    std::fs::write(&cfg_file, "[hook]\ntimeout = \"3s\"\n").unwrap();
    let out = hookfleet()
        .args(["hook", "install", "--force"])
        .arg(&bare)
        .arg("--config")
        .arg(&cfg_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = std::fs::read_to_string(&hook).unwrap();
    assert!(script.contains(hookfleet::hook::install::MARKER));
    assert!(script.contains(env!("CARGO_BIN_EXE_hookfleet")) || script.contains("hookfleet'"));
    assert!(script.contains("--config") && script.contains("hf.toml"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&hook).unwrap().permissions().mode() & 0o111,
            0o111
        );
    }
    // Re-installing over its own hook needs no --force.
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
    // Not a repository.
    let out = hookfleet()
        .args(["hook", "install"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a git repository"));
}
