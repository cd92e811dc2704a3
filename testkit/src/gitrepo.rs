//! Real git repositories: for tests, a bare repository with the hookfleet hook
//! installed and a working clone that pushes to it ([`Repos`], panicking on
//! failure); for the benches, a tiny repository with two commits and no hook
//! ([`TinyRepo`], returning errors). Both run git through [`git_command`]: no
//! user or system config, no inherited variable.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use hookfleet::config::Config;

use crate::cli::hookfleet_exe;

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

/// A git command in `dir` with a clean environment, a fixed identity and `main`
/// as the default branch.
pub fn git_command(dir: &Path) -> Command {
    let mut c = Command::new("git");
    clean_env(&mut c);
    c.current_dir(dir)
        .args(["-c", "user.name=Ann", "-c", "user.email=ann@example.com"])
        .args(["-c", "init.defaultBranch=main"]);
    c
}

/// Runs git in `dir` and returns stdout; panics with stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_command(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs git in `dir`, returning trimmed stdout, or an error with stderr (for the
/// benches, which report errors instead of panicking).
pub fn try_git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = git_command(dir)
        .args(args)
        .output()
        .with_context(|| format!("running git {args:?}"))?;
    if !out.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
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
            let mut c = Command::new(hookfleet_exe().unwrap());
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

/// A tiny real git repository for push jobs: `<root>/repo.git` (bare) with two
/// commits on `main`, pushed from a working clone `<root>/work`.
pub struct TinyRepo {
    /// Repositories root (`hook.repositories_root`).
    pub root: PathBuf,
    /// `<root>/repo.git`.
    pub bare: PathBuf,
    /// `<root>/work`, a clone that pushes to `bare`.
    pub work: PathBuf,
    /// Repository name relative to `root` (`repo.git`).
    pub name: String,
    /// First commit on main.
    pub c1: String,
    /// Second commit on main (child of `c1`).
    pub c2: String,
}

impl TinyRepo {
    /// Creates the repositories under `root` (which must exist).
    pub fn create(root: &Path) -> anyhow::Result<TinyRepo> {
        let bare = root.join("repo.git");
        let work = root.join("work");
        try_git(root, &["init", "-q", "--bare", "repo.git"])?;
        try_git(root, &["init", "-q", "work"])?;
        let bare_s = bare.to_str().context("non-UTF-8 temp path")?;
        try_git(&work, &["remote", "add", "origin", bare_s])?;
        std::fs::write(work.join("a.txt"), "one\n")?;
        try_git(&work, &["add", "-A"])?;
        try_git(&work, &["commit", "-q", "-m", "one"])?;
        let c1 = try_git(&work, &["rev-parse", "HEAD"])?;
        std::fs::write(work.join("b.txt"), "two\n")?;
        try_git(&work, &["add", "-A"])?;
        try_git(&work, &["commit", "-q", "-m", "two"])?;
        let c2 = try_git(&work, &["rev-parse", "HEAD"])?;
        try_git(&work, &["push", "-q", "origin", "main"])?;
        Ok(TinyRepo {
            root: root.to_path_buf(),
            bare,
            work,
            name: "repo.git".into(),
            c1,
            c2,
        })
    }
}

/// A fresh directory under the system temp dir, named `<tag>-<random>`.
pub fn temp_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "{tag}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[16..]
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
