//! Real git repositories for tests: a bare repository with the hookfleet hook
//! installed and a working clone that pushes to it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hookfleet::config::Config;

/// Removes inherited HOOKFLEET_* and GIT_* variables.
pub fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKFLEET_") || k.starts_with("GIT_") {
            c.env_remove(k);
        }
    }
    c.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
}

/// Runs git in `dir` and returns stdout; panics with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let mut c = Command::new("git");
    clean_env(&mut c);
    let out = c
        .current_dir(dir)
        .args(["-c", "user.name=Ann", "-c", "user.email=ann@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `root/repo.git` (bare, hook installed) and `root/work` (a clone with one commit).
pub struct Repos {
    /// Holds everything; also the repositories root.
    pub dir: tempfile::TempDir,
    /// The working clone.
    pub work: PathBuf,
    /// The bare repository.
    pub bare: PathBuf,
}

impl Repos {
    /// Creates both and installs the hook (unless `install` is false).
    pub fn new(install: bool) -> Repos {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("repo.git");
        let work = dir.path().join("work");
        git(dir.path(), &["init", "-q", "--bare", "repo.git"]);
        git(dir.path(), &["init", "-q", "work"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        std::fs::write(work.join("a.txt"), "a").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "one"]);
        if install {
            let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
            clean_env(&mut c);
            let out = c.args(["hook", "install"]).arg(&bare).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Repos { dir, work, bare }
    }

    /// Runs git in the clone.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.work, args)
    }

    /// Writes a file and commits it in the clone; returns the commit id.
    pub fn commit(&self, file: &str, content: &str, message: &str) -> String {
        std::fs::write(self.work.join(file), content).unwrap();
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// `git push <args>` from the clone with the hook configured for `cfg` and the
    /// broker at `amqp_url`; returns stderr.
    pub fn push(&self, cfg: &Config, amqp_url: &str, args: &[&str]) -> String {
        self.push_with_env(cfg, amqp_url, args, &[])
    }

    /// [`Repos::push`] with extra variables for git and so for the hook
    /// (`TRACEPARENT`, `OTEL_*`).
    pub fn push_with_env(
        &self,
        cfg: &Config,
        amqp_url: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> String {
        let mut c = Command::new("git");
        clean_env(&mut c);
        c.envs(env.iter().copied());
        c.env("HOOKFLEET_AMQP__URL", amqp_url)
            .env("HOOKFLEET_AMQP__PREFIX", &cfg.amqp.prefix)
            .env("HOOKFLEET_AMQP__CONNECT_TIMEOUT", "1s")
            .env("HOOKFLEET_SPOOL__DIR", &cfg.spool.dir)
            .env("HOOKFLEET_HOOK__TIMEOUT", "2s")
            .env("HOOKFLEET_HOOK__REPOSITORIES_ROOT", self.dir.path())
            .env("HOOKFLEET_PUSHER", "alice");
        let out = c
            .current_dir(&self.work)
            .arg("push")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "git push failed: {stderr}");
        stderr
    }
}
