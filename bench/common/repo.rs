//! A tiny real git repository for push jobs: `<root>/repo.git` (bare) with two
//! commits on `main`, pushed from a working clone `<root>/work`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The bare repository and the facts push jobs need.
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

/// A git command with no user or system config and no inherited GIT_* or
/// HOOKFLEET_* variables.
pub fn git_command(dir: &Path) -> Command {
    let mut c = Command::new("git");
    for (k, _) in std::env::vars() {
        if k.starts_with("GIT_") || k.starts_with("HOOKFLEET_") {
            c.env_remove(k);
        }
    }
    c.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(["-c", "init.defaultBranch=main"]);
    c
}

/// Runs git in `dir`, returning trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
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

impl TinyRepo {
    /// Creates the repositories under `root` (which must exist).
    pub fn create(root: &Path) -> anyhow::Result<TinyRepo> {
        let bare = root.join("repo.git");
        let work = root.join("work");
        git(root, &["init", "-q", "--bare", "repo.git"])?;
        git(root, &["init", "-q", "work"])?;
        let bare_s = bare.to_str().context("non-UTF-8 temp path")?;
        git(&work, &["remote", "add", "origin", bare_s])?;
        std::fs::write(work.join("a.txt"), "one\n")?;
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", "one"])?;
        let c1 = git(&work, &["rev-parse", "HEAD"])?;
        std::fs::write(work.join("b.txt"), "two\n")?;
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", "two"])?;
        let c2 = git(&work, &["rev-parse", "HEAD"])?;
        git(&work, &["push", "-q", "origin", "main"])?;
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
