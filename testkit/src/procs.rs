//! `hookfleet worker` processes: spawn the real binary with environment
//! overrides, wait for `/readyz`, read its RSS, SIGKILL it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// HOOKFLEET_* variables for a `hookfleet worker` process that runs only push
/// jobs (and the relay) under `cfg`'s prefix, for repositories under `repo`.
pub fn worker_env(
    cfg: &hookfleet::config::Config,
    repo: &crate::gitrepo::TinyRepo,
) -> Vec<(String, String)> {
    worker_env_at(cfg, &repo.root)
}

/// [`worker_env`] for a worker whose repositories (and spool) live under `root`.
pub fn worker_env_at(cfg: &hookfleet::config::Config, root: &Path) -> Vec<(String, String)> {
    vec![
        (
            "HOOKFLEET_AMQP__PREFIX".to_string(),
            cfg.amqp.prefix.clone(),
        ),
        (
            "HOOKFLEET_DATABASE__URL".into(),
            cfg.database.url.expose().to_string(),
        ),
        ("HOOKFLEET_DATABASE__AUTO_MIGRATE".into(), "false".into()),
        ("HOOKFLEET_WORKER__KINDS".into(), "[\"push\"]".into()),
        (
            "HOOKFLEET_HOOK__REPOSITORIES_ROOT".into(),
            root.display().to_string(),
        ),
        (
            "HOOKFLEET_SPOOL__DIR".into(),
            root.join("spool").display().to_string(),
        ),
        ("HOOKFLEET_LOG__LEVEL".into(), "warn".into()),
    ]
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A running `hookfleet worker`.
pub struct WorkerProc {
    /// The child (killed on drop).
    pub child: Child,
    /// Its admin port.
    pub admin_port: u16,
}

impl WorkerProc {
    /// Spawns `exe worker` with `env` (HOOKFLEET_* variables of this process are
    /// removed first), `HOOKFLEET_ADMIN__LISTEN` set to `admin_port`, and stdout
    /// and stderr appended to `log`.
    pub fn spawn(
        exe: &Path,
        env: &[(String, String)],
        admin_port: u16,
        log: &Path,
    ) -> anyhow::Result<WorkerProc> {
        Self::spawn_role(exe, "worker", env, admin_port, log)
    }

    /// As [`WorkerProc::spawn`], running `exe <role>` (`worker` or `relay`).
    pub fn spawn_role(
        exe: &Path,
        role: &str,
        env: &[(String, String)],
        admin_port: u16,
        log: &Path,
    ) -> anyhow::Result<WorkerProc> {
        let mut c = Command::new(exe);
        for (k, _) in std::env::vars() {
            if k.starts_with("HOOKFLEET_") {
                c.env_remove(k);
            }
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        c.arg(role)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("HOOKFLEET_ADMIN__LISTEN", format!("127.0.0.1:{admin_port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        let child = c
            .spawn()
            .with_context(|| format!("spawning {} {role}", exe.display()))?;
        Ok(WorkerProc { child, admin_port })
    }

    /// Waits until `/readyz` answers 200, up to `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                anyhow::bail!("worker exited before it was ready: {status}");
            }
            if readyz(self.admin_port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("worker not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident set size in KiB (`VmRSS` of /proc/<pid>/status).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// CPU time used so far by all its threads (see [`process_cpu_seconds`]).
    pub fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(self.child.id()?)
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// SIGTERM (drain), then SIGKILL if it has not exited within `grace`.
    pub async fn terminate(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        self.kill().await;
    }
}

/// The raw HTTP response to `GET path` on `port`, within a second.
async fn get(port: u16, path: &str) -> Option<Vec<u8>> {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

/// `true` when `GET /readyz` on `port` answers 200 within a second.
pub async fn readyz(port: u16) -> bool {
    get(port, "/readyz")
        .await
        .is_some_and(|buf| buf.starts_with(b"HTTP/1.1 200"))
}

/// The value of the unlabelled sample `name` (a counter, or a histogram's
/// `_count` / `_sum`) on the worker's `/metrics` at `port`.
pub async fn metric(port: u16, name: &str) -> Option<f64> {
    let buf = get(port, "/metrics").await?;
    let text = String::from_utf8_lossy(&buf);
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// CPU time a process has used so far, all threads, user + system (`utime` +
/// `stime` of /proc/<pid>/stat, in USER_HZ ticks: 100 per second on Linux).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}
