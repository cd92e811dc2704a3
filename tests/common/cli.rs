//! The `hookfleet` binary run as a command by a test, in an environment of its
//! own: no HOOKFLEET_* or GIT_* variable of the test process leaks in.
#![allow(dead_code)]

use std::process::Command;

use super::gitrepo::clean_env;

/// `hookfleet` with a clean environment.
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
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
