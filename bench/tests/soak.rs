//! The chaos drill in small, so CI catches regressions: 300 push jobs through two
//! real `hookfleet worker` processes while the broker connections are cut once
//! and one worker is SIGKILLed and restarted (no service restarts: CI may lack
//! the permission). The drill itself (`bench/src/soak`) verifies exactly-once
//! effects and at-least-once events from the database and a sink queue.
//!
//! It drives the workspace's `hookfleet` binary, found in `target/<profile>/`
//! above this test's `deps/` (`CARGO_BIN_EXE_hookfleet` exists only in the
//! product crate's own tests). `cargo test` from the root builds it, as it builds
//! every member; `cargo test -p hookfleet-bench` alone does not, so run
//! `cargo build --bin hookfleet` first or it drives a missing or stale binary.

use std::process::Command;

#[test]
fn short_chaos_drill_loses_nothing_and_applies_each_push_once() {
    let out = Command::new(env!("CARGO_BIN_EXE_hookfleet-soak"))
        .args([
            "--jobs",
            "300",
            "--workers",
            "2",
            "--kills",
            "1",
            "--cuts",
            "1",
        ])
        .args(["--event-every", "2", "--cut-every", "1"])
        .args([
            "--no-broker-restart",
            "--no-db-restart",
            "--max-seconds",
            "50",
        ])
        .arg("--hookfleet")
        .arg(hookfleet_testkit::cli::hookfleet_exe().expect("the hookfleet binary"))
        .output()
        .expect("run hookfleet-soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "soak failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "| pushes processed (rows in `pushes`) | 300 |",
        "| **lost jobs** | 0 |",
        "| **dead-lettered** | 0 |",
        "| inbox rows for the push queue | 300 |",
        "| **events missing at the sink** | 0 |",
        "| outbox rows | 500 |",
        "chaos: connection cuts / worker SIGKILLs / broker restarts / db restarts | 1 / 1 / 0 / 0 |",
    ] {
        let found = stdout.lines().any(|l| l.ends_with(line));
        assert!(found, "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("result: PASS"), "{stdout}");
}
