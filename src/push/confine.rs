//! Which repositories a push job may make the worker read.
//!
//! A job names its repository; whoever can publish to the work queue chooses that
//! name. Without this check a job could point the worker at any git directory on
//! its disk (an absolute path, a `..`, a symlink planted under the root) and send
//! that repository's commits out in events and webhooks. So every name is
//! resolved to its canonical path (symlinks and `..` followed) and accepted only
//! when that path lies:
//!
//! - with `hook.repositories_root` set: inside the root (relative names are
//!   joined to it; absolute ones must point inside it);
//! - without a root: inside one of `hook.allowed_dirs`, or, when that list is
//!   empty, in a repository where `hookfleet hook install` put its hook (the
//!   directories an operator chose by installing the hook; no other repository
//!   on the disk has it).
//!
//! Anything else is a permanent error: the job is dead-lettered with the reason.
//! The hook applies the same rule to its own repository before publishing, so it
//! never produces a job the worker would refuse. Owns only that rule; it reads
//! the file system (canonicalisation, the hook file) and nothing else.

use std::path::{Path, PathBuf};

use crate::config::HookConfig;

/// The line `hookfleet hook install` writes into the hooks it manages; a
/// repository whose `post-receive` has it may be read without a root or an
/// allowed directory.
pub const MARKER: &str = "# hookfleet-managed post-receive hook";

/// Why a repository name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The path does not exist (or cannot be resolved).
    #[error("repository {name:?} cannot be resolved: {reason}")]
    Unresolvable {
        /// The name in the job.
        name: String,
        /// The file system's answer.
        reason: String,
    },
    /// It resolves outside the repositories root.
    #[error("repository {name:?} resolves to {resolved} outside hook.repositories_root ({root})")]
    OutsideRoot {
        /// The name in the job.
        name: String,
        /// Its canonical path.
        resolved: String,
        /// The canonical root.
        root: String,
    },
    /// No root, and the name is relative.
    #[error("repository {name:?} is relative, which needs hook.repositories_root (none is set)")]
    RelativeWithoutRoot {
        /// The name in the job.
        name: String,
    },
    /// No root, and the path is in none of the allowed directories.
    #[error("repository {name:?} resolves to {resolved}, outside hook.allowed_dirs")]
    NotAllowed {
        /// The name in the job.
        name: String,
        /// Its canonical path.
        resolved: String,
    },
    /// No root, no allowed directories, and hookfleet's hook is not installed there.
    #[error(
        "repository {name:?} resolves to {resolved}, which has no hookfleet hook \
         (run `hookfleet hook install` there, or list it in hook.allowed_dirs)"
    )]
    NotInstalled {
        /// The name in the job.
        name: String,
        /// Its canonical path.
        resolved: String,
    },
}

/// The canonical path of the repository `name`, if `cfg` allows reading it.
pub fn resolve(cfg: &HookConfig, name: &str) -> Result<PathBuf, Refused> {
    let root = cfg.repositories_root.trim();
    let path = Path::new(name);
    if root.is_empty() {
        if !path.is_absolute() {
            return Err(Refused::RelativeWithoutRoot { name: name.into() });
        }
        let resolved = canonical(name, path)?;
        return allowed_without_root(cfg, name, resolved);
    }
    let root = canonical(name, Path::new(root))?;
    // Joining an absolute path replaces the root, so both kinds of name end up
    // checked against the canonical root below.
    let resolved = canonical(name, &root.join(path))?;
    if resolved.starts_with(&root) && resolved != root {
        Ok(resolved)
    } else {
        Err(Refused::OutsideRoot {
            name: name.into(),
            resolved: resolved.display().to_string(),
            root: root.display().to_string(),
        })
    }
}

fn allowed_without_root(
    cfg: &HookConfig,
    name: &str,
    resolved: PathBuf,
) -> Result<PathBuf, Refused> {
    if cfg.allowed_dirs.is_empty() {
        if has_our_hook(&resolved) {
            return Ok(resolved);
        }
        return Err(Refused::NotInstalled {
            name: name.into(),
            resolved: resolved.display().to_string(),
        });
    }
    let inside = cfg.allowed_dirs.iter().any(|dir| {
        std::fs::canonicalize(dir.trim())
            .is_ok_and(|dir| resolved.starts_with(&dir) && resolved != dir)
    });
    if inside {
        Ok(resolved)
    } else {
        Err(Refused::NotAllowed {
            name: name.into(),
            resolved: resolved.display().to_string(),
        })
    }
}

fn canonical(name: &str, path: &Path) -> Result<PathBuf, Refused> {
    std::fs::canonicalize(path).map_err(|e| Refused::Unresolvable {
        name: name.into(),
        reason: e.to_string(),
    })
}

/// Whether `git_dir/hooks/post-receive` is the hook `hook install` writes.
fn has_our_hook(git_dir: &Path) -> bool {
    std::fs::read_to_string(git_dir.join("hooks").join("post-receive"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == MARKER))
}
