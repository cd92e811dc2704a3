//! Running the git CLI against a bare repository, with a deadline.
//!
//! Owns the process boundary: `push.git` with `--git-dir=<repo>`, `LC_ALL=C` (so
//! error texts can be classified), no inherited `GIT_*` repository variables,
//! `kill_on_drop` and `push.git_timeout` (the child is killed when the deadline
//! passes), and the error taxonomy: a missing repository or object is
//! [`GitError::NotFound`] (permanent), a timeout [`GitError::Timeout`]
//! (transient), anything else [`GitError::Failed`]. It never writes to the
//! repository.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::PushConfig;

/// Git failures, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitError {
    /// The repository or an object does not exist: retrying cannot help.
    #[error("not found: {0}")]
    NotFound(String),
    /// git exceeded `push.git_timeout` and was killed: may succeed later.
    #[error("git {command} timed out after {timeout:?}")]
    Timeout {
        /// The git subcommand.
        command: String,
        /// Deadline.
        timeout: Duration,
    },
    /// git could not be run, failed otherwise, or printed something unparsable.
    #[error("git {command} failed: {message}")]
    Failed {
        /// The git subcommand.
        command: String,
        /// stderr (trimmed) or the spawn/parse error.
        message: String,
    },
}

impl GitError {
    /// `true` for errors that retrying cannot fix (a dead letter at once).
    pub fn is_permanent(&self) -> bool {
        matches!(self, GitError::NotFound(_))
    }
}

/// Variables that would point git at another repository than `--git-dir`.
const REPO_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_COMMON_DIR",
    "GIT_QUARANTINE_PATH",
];

/// A bare repository read through the git CLI.
#[derive(Debug, Clone)]
pub struct GitRepo {
    /// The git executable.
    pub git: String,
    /// Per-command deadline.
    pub timeout: Duration,
    /// The git dir.
    pub path: PathBuf,
}

/// What a git command printed, when it exited 0 or 1.
#[derive(Debug)]
pub(crate) struct Output {
    /// Exit status 0 (`true`) or 1 (`false`; only when allowed).
    pub success: bool,
    /// stdout.
    pub stdout: Vec<u8>,
}

impl GitRepo {
    /// The repository at `path`, with git and timeout from `cfg`.
    pub fn new(cfg: &PushConfig, path: impl Into<PathBuf>) -> GitRepo {
        GitRepo {
            git: cfg.git.clone(),
            timeout: cfg.git_timeout,
            path: path.into(),
        }
    }

    /// Checks that the path exists and git sees a repository there.
    pub async fn check(&self) -> Result<(), GitError> {
        self.run(&["rev-parse", "--git-dir"], None)
            .await
            .map(|_| ())
    }

    /// Runs git; non-zero exit is an error.
    pub(crate) async fn run(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Vec<u8>, GitError> {
        self.run_status(args, stdin, false).await.map(|o| o.stdout)
    }

    /// Runs git; exit status 1 is returned as `success: false` when `allow_1`
    /// (`merge-base --is-ancestor`, `rev-parse --verify --quiet`).
    pub(crate) async fn run_status(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        allow_1: bool,
    ) -> Result<Output, GitError> {
        let command = args.first().copied().unwrap_or("").to_string();
        if !self.path.is_dir() {
            return Err(GitError::NotFound(format!(
                "repository {} does not exist",
                self.path.display()
            )));
        }
        let mut cmd = Command::new(&self.git);
        cmd.arg(git_dir_arg(&self.path))
            .args(args)
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for v in REPO_ENV {
            cmd.env_remove(v);
        }
        let failed = |message: String| GitError::Failed {
            command: command.clone(),
            message,
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| failed(format!("cannot run {:?}: {e}", self.git)))?;
        let input = child.stdin.take();
        let work = async {
            let feed = async {
                if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
                    // git may exit before reading everything (an error): not our error.
                    let _ = pipe.write_all(bytes).await;
                    let _ = pipe.shutdown().await;
                }
            };
            let (_, out) = tokio::join!(feed, child.wait_with_output());
            out
        };
        let out = match tokio::time::timeout(self.timeout, work).await {
            // Dropping the future drops the child, and kill_on_drop kills it.
            Err(_) => {
                return Err(GitError::Timeout {
                    command,
                    timeout: self.timeout,
                });
            }
            Ok(Err(e)) => return Err(failed(format!("waiting for git: {e}"))),
            Ok(Ok(out)) => out,
        };
        match out.status.code() {
            Some(0) => Ok(Output {
                success: true,
                stdout: out.stdout,
            }),
            Some(1) if allow_1 => Ok(Output {
                success: false,
                stdout: out.stdout,
            }),
            code => {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                if is_not_found(&stderr) {
                    Err(GitError::NotFound(format!("git {command}: {stderr}")))
                } else {
                    let status = code.map_or("a signal".to_string(), |c| format!("status {c}"));
                    Err(failed(format!("exited with {status}: {stderr}")))
                }
            }
        }
    }
}

fn git_dir_arg(path: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from("--git-dir=");
    s.push(path.as_os_str());
    s
}

/// git's wording for a missing repository or object.
fn is_not_found(stderr: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "not a git repository",
        "bad object",
        "bad revision",
        "unknown revision",
        "not a valid object name",
        "not a valid commit name",
        "invalid object name",
        "not a valid object",
        "missing object",
        "does not exist",
    ];
    let lower = stderr.to_ascii_lowercase();
    PATTERNS.iter().any(|p| lower.contains(p))
}
