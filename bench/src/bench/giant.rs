//! Memory under giant pushes: VmRSS of a real `hookfleet worker` process idle,
//! at its peak while it reads one giant push and then 8 at once, and 30 s after
//! each (memory must come back down: a worker that keeps what one push made it
//! allocate starves the next).
//!
//! The giant repository is made with `git fast-import`: `main` is one commit of
//! 50,000 files, `long` a branch of 20,000 commits. A giant push creates both
//! refs: the reader lists at most `push.max_commits` commits per ref and
//! `push.max_paths_per_commit` paths per commit (it still walks everything to
//! count), and the events are capped at `push.max_event_bytes`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hookfleet::config::Config;
use hookfleet::push_job::update::RefUpdate;
use hookfleet::push_job::{PUSH_KIND, PushJob};

use crate::support::{declare_topology, delete_topology};
use hookfleet_testkit::gitrepo::git_command;
use hookfleet_testkit::procs::{WorkerProc, free_port, worker_env_at};

const ZERO: &str = "0000000000000000000000000000000000000000";
/// Files in the giant commit.
pub const FILES: usize = 50_000;
/// Commits on the long branch.
pub const COMMITS: usize = 20_000;
/// How long memory gets to come back after the pushes are recorded.
pub const SETTLE: Duration = Duration::from_secs(30);

/// The figures, in MiB.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Giant {
    pub idle: f64,
    pub peak_one: f64,
    pub after_one: f64,
    pub peak_eight: f64,
    pub after_eight: f64,
    /// Of `after_eight`: anonymous memory (the heap) and file pages (mapped
    /// packs and indexes), from /proc/<pid>/status.
    pub after_eight_anon: f64,
    pub after_eight_file: f64,
}

/// (RssAnon, RssFile) of `pid` in MiB.
fn rss_split(pid: Option<u32>) -> (f64, f64) {
    let Some(status) = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
    else {
        return (0.0, 0.0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("RssAnon:"), field("RssFile:"))
}

/// `<root>/giant.git` and the ids of its two refs.
struct GiantRepo {
    root: PathBuf,
    main: String,
    long: String,
}

fn create(root: &Path) -> anyhow::Result<GiantRepo> {
    std::fs::create_dir_all(root)?;
    let out = git_command(root)
        .args(["init", "-q", "--bare", "giant.git"])
        .output()?;
    if !out.status.success() {
        bail!("git init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bare = root.join("giant.git");
    let mut child = git_command(&bare)
        .args(["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        let mut w = std::io::BufWriter::new(child.stdin.take().context("fast-import stdin")?);
        writeln!(w, "blob\nmark :1\ndata 5\nhello")?;
        let who = "Bench <bench@example.com> 1700000000 +0000";
        let msg = "fifty thousand files";
        writeln!(
            w,
            "commit refs/heads/main\nmark :2\ncommitter {who}\ndata {}\n{msg}",
            msg.len()
        )?;
        for i in 0..FILES {
            writeln!(w, "M 100644 :1 d{}/f{i}.txt", i / 1000)?;
        }
        writeln!(w)?;
        for i in 0..COMMITS {
            let msg = format!("commit {i}");
            writeln!(
                w,
                "blob\nmark :{}\ndata {}\n{i}",
                i + 3,
                i.to_string().len()
            )?;
            writeln!(
                w,
                "commit refs/heads/long\ncommitter {who}\ndata {}\n{msg}",
                msg.len()
            )?;
            if i == 0 {
                writeln!(w, "from :2")?;
            }
            writeln!(w, "M 100644 :{} long/file.txt\n", i + 3)?;
        }
        w.flush()?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("git fast-import: {}", String::from_utf8_lossy(&out.stderr));
    }
    let rev = |r: &str| -> anyhow::Result<String> {
        let out = git_command(&bare).args(["rev-parse", r]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    Ok(GiantRepo {
        root: root.to_path_buf(),
        main: rev("main")?,
        long: rev("long")?,
    })
}

/// A push creating both refs (a mirror, an import).
fn job(repo: &GiantRepo) -> PushJob {
    PushJob {
        push_id: uuid::Uuid::now_v7(),
        repository: "giant.git".into(),
        path: None,
        pusher: Some("bench".into()),
        push_options: Vec::new(),
        pushed_at: chrono::Utc::now(),
        refs_omitted: 0,
        updates: vec![
            RefUpdate {
                refname: "refs/heads/main".into(),
                before: ZERO.into(),
                after: repo.main.clone(),
            },
            RefUpdate {
                refname: "refs/heads/long".into(),
                before: ZERO.into(),
                after: repo.long.clone(),
            },
        ],
    }
}

async fn publish(cfg: &Config, jobs: &[PushJob]) -> anyhow::Result<()> {
    let conn = hookfleet::amqp::connect(&cfg.amqp, "bench-giant").await?;
    let ch = hookfleet::amqp::publish::confirm_channel(&conn).await?;
    for j in jobs {
        hookfleet::hook::publish::publish_job(
            &ch,
            &cfg.amqp.prefix,
            j,
            hookfleet::hook::fairness::PushLane::Push,
            Duration::from_secs(30),
        )
        .await?;
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

async fn recorded(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM pushes WHERE repository = 'giant.git'")
            .fetch_one(pool)
            .await?,
    )
}

/// Publishes `jobs`, samples the worker's RSS every 50 ms until all are
/// recorded (the peak), then again after [`SETTLE`].
async fn round(
    cfg: &Config,
    pool: &sqlx::PgPool,
    worker: &WorkerProc,
    jobs: &[PushJob],
) -> anyhow::Result<(f64, f64)> {
    let before = recorded(pool).await?;
    publish(cfg, jobs).await?;
    let want = before + jobs.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut peak = 0;
    loop {
        peak = peak.max(worker.rss_kib().unwrap_or(0));
        if recorded(pool).await? >= want {
            break;
        }
        if Instant::now() > deadline {
            bail!("giant pushes not recorded within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settle_until = Instant::now() + SETTLE;
    while Instant::now() < settle_until {
        peak = peak.max(worker.rss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = worker.rss_kib().unwrap_or(0);
    Ok((peak as f64 / 1024.0, after as f64 / 1024.0))
}

/// Runs the giant-push rounds against a release worker.
pub async fn giant(exe: &Path, cfg: &Config, root: &Path) -> anyhow::Result<Giant> {
    let mut cfg = cfg.clone();
    cfg.amqp.prefix = format!("{}giant", cfg.amqp.prefix);
    cfg.worker.kinds = vec![PUSH_KIND.into()];
    let repo = create(&root.join("giant"))?;
    let env = worker_env_at(&cfg, &repo.root);
    declare_topology(&cfg).await?;
    let pool = hookfleet::db::connect(&cfg.database).await?;
    let log = repo.root.join("giant-worker.log");
    let mut worker = WorkerProc::spawn(exe, &env, free_port()?, &log)?;
    worker.wait_ready(Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = worker.rss_kib().unwrap_or(0) as f64 / 1024.0;
    let (peak_one, after_one) = round(&cfg, &pool, &worker, &[job(&repo)]).await?;
    let eight: Vec<PushJob> = (0..8).map(|_| job(&repo)).collect();
    let (peak_eight, after_eight) = round(&cfg, &pool, &worker, &eight).await?;
    let (after_eight_anon, after_eight_file) = rss_split(worker.child.id());
    worker.terminate(Duration::from_secs(10)).await;
    pool.close().await;
    delete_topology(&cfg).await?;
    let _ = std::fs::remove_dir_all(&repo.root);
    Ok(Giant {
        idle,
        peak_one,
        after_one,
        peak_eight,
        after_eight,
        after_eight_anon,
        after_eight_file,
    })
}
