//! The `hookfleet` binary run as a command by a test, in an environment of its
//! own: no HOOKFLEET_* or GIT_* variable of the test process leaks in.
//!
//! The binary is found beside the running executable: `CARGO_BIN_EXE_hookfleet`
//! exists only while cargo compiles the product crate's own integration tests,
//! not this library, and cargo builds the binary (into the directory above
//! `deps/`, where the test executables are) before it runs those tests.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use super::gitrepo::clean_env;

/// The `hookfleet` binary next to the running executable (same profile): beside
/// it (a bench binary) or one directory up (a test executable in `deps/`).
pub fn hookfleet_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("executable has no directory")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("hookfleet");
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "no hookfleet binary next to {} (build it: cargo build --bin hookfleet)",
        me.display()
    )
}

/// `hookfleet` with a clean environment.
pub fn command() -> Command {
    let mut c = Command::new(hookfleet_exe().unwrap());
    clean_env(&mut c);
    c
}

/// Runs `hookfleet <args>` with `env`; returns (exit code, stdout, stderr).
pub fn run(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let out = command()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
