//! Checks webhook bodies against octokit's published webhook schemas
//! (`@octokit/webhooks-schemas`), validated by ajv under node.
//!
//! The packages are installed from the npm registry on first use into
//! `<target>/tmp/test-node` (versions pinned in [`PACKAGES`]); a marker file
//! written after a complete install means later runs install nothing. Test
//! binaries run in parallel, so the install runs under `flock` on a lock file
//! there: the first waits for npm, the others for the first. Needs `node`,
//! `npm` and `flock` (util-linux) on PATH; a missing one fails the test with
//! a message saying so, never skips it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The npm packages, pinned so a new release cannot change what passes.
pub const PACKAGES: [&str; 3] = [
    "@octokit/webhooks-schemas@7.6.1",
    "ajv@8.20.0",
    "ajv-formats@3.0.1",
];

const SCRIPT: &str = include_str!("validate.js");

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-node")
}

/// Installs the packages once per directory (see the module doc); returns the
/// validator script's path.
fn installed() -> &'static PathBuf {
    static SCRIPT_PATH: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT_PATH.get_or_init(|| {
        let dir = dir();
        std::fs::create_dir_all(&dir).expect("create the test-node directory");
        let marker = format!(".installed-{}", PACKAGES.join("+").replace(['/', '@'], "_"));
        let install = format!(
            "test -f '{marker}' || {{ npm install --prefix . --no-audit --no-fund --silent {pkgs} \
             && touch '{marker}'; }}",
            pkgs = PACKAGES.join(" ")
        );
        let out = Command::new("flock")
            .current_dir(&dir)
            .args([".install.lock", "sh", "-c", &install])
            .output()
            .unwrap_or_else(|e| panic!("cannot run flock (util-linux) for the npm install: {e}"));
        assert!(
            out.status.success(),
            "npm install of {PACKAGES:?} into {} failed (node and npm are needed): {}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let script = dir.join("validate.js");
        std::fs::write(&script, SCRIPT).expect("write validate.js");
        script
    })
}

/// Validates each `(definition, body)` (definitions as the package names
/// them: `push$event`, `create$event`, `delete$event`, `ping$event`); returns
/// ajv's errors per body, `None` for a valid one.
pub fn validate(bodies: &[(&str, &Value)]) -> Vec<Option<Value>> {
    let script = installed();
    let input: Vec<Value> = bodies
        .iter()
        .map(|(schema, body)| serde_json::json!({ "schema": schema, "body": body }))
        .collect();
    let mut child = Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(&serde_json::to_vec(&input).unwrap())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "validator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .into_iter()
        .map(|r| if r.is_null() { None } else { Some(r) })
        .collect()
}

/// Panics, naming each invalid body and why, unless every body is valid.
pub fn assert_valid(bodies: &[(&str, &Value)]) {
    let errors: Vec<String> = validate(bodies)
        .into_iter()
        .zip(bodies)
        .filter_map(|(e, (schema, body))| e.map(|e| format!("{schema}: {e:#}\nbody: {body:#}")))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}
