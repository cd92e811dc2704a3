//! `hookfleet hook install <repo.git>...`: writes each bare repository's
//! `hooks/post-receive` as a small shell script that runs this binary by absolute
//! path (and `--config <file>` when one was given).
//!
//! Owns recognising its own hook (a marker line) so re-installing is safe, and
//! refusing to replace any other hook unless forced. It never edits anything
//! outside `<repo>/hooks/`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Marker line identifying a hook written by hookfleet.
pub use crate::push::confine::MARKER;

/// Why a hook was not installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum InstallError {
    /// The path is not a git directory.
    #[error("{0} is not a git repository (no HEAD or objects/)")]
    NotARepository(PathBuf),
    /// Another post-receive hook is there.
    #[error("{0} exists and was not written by hookfleet; use --force to replace it")]
    ForeignHook(PathBuf),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The hook script for `binary` (and `config`, when given).
pub(crate) fn script(binary: &Path, config: Option<&Path>) -> String {
    let mut cmd = shell_quote(&binary.to_string_lossy());
    if let Some(c) = config {
        cmd.push_str(" --config ");
        cmd.push_str(&shell_quote(&c.to_string_lossy()));
    }
    format!(
        "#!/bin/sh\n{MARKER}\n# Written by `hookfleet hook install`; re-run it to update. Do not edit.\nexec {cmd} hook post-receive\n"
    )
}

/// Installs the hook into `repo`; returns the hook's path. `binary` and
/// `config` are made absolute so the hook works from any cwd.
pub(crate) fn install(
    repo: &Path,
    binary: &Path,
    config: Option<&Path>,
    force: bool,
) -> Result<PathBuf, InstallError> {
    let ioe = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Io { path, source }
    };
    if !repo.join("HEAD").is_file() || !repo.join("objects").is_dir() {
        return Err(InstallError::NotARepository(repo.to_path_buf()));
    }
    let binary = std::fs::canonicalize(binary).map_err(ioe(binary))?;
    let config = match config {
        Some(c) => Some(std::fs::canonicalize(c).map_err(ioe(c))?),
        None => None,
    };
    let hooks = repo.join("hooks");
    std::fs::create_dir_all(&hooks).map_err(ioe(&hooks))?;
    let hook = hooks.join("post-receive");
    match std::fs::read(&hook) {
        Ok(existing) => {
            let ours = String::from_utf8_lossy(&existing)
                .lines()
                .any(|l| l.trim() == MARKER);
            if !ours && !force {
                return Err(InstallError::ForeignHook(hook));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ioe(&hook)(e)),
    }
    let tmp = hooks.join(".post-receive.hookfleet-tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(script(&binary, config.as_deref()).as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &hook)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        InstallError::Io {
            path: hook.clone(),
            source: e,
        }
    })?;
    Ok(hook)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_paths() {
        let s = script(
            Path::new("/opt/it's/hookfleet"),
            Some(Path::new("/etc/h f.toml")),
        );
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains(MARKER));
        assert!(
            s.contains("exec '/opt/it'\\''s/hookfleet' --config '/etc/h f.toml' hook post-receive")
        );
    }
}
