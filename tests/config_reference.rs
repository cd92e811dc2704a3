//! docs/CONFIG.md is what `hookfleet config reference` renders from the config
//! types, so the reference cannot drift from the code.

use std::process::Command;

const REGENERATE: &str = "cargo run --bin hookfleet -- config reference > docs/CONFIG.md";

#[test]
fn docs_config_md_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    let rendered = hookfleet::config_reference::markdown();
    assert!(
        on_disk == rendered,
        "docs/CONFIG.md is stale (a config key, default or doc comment changed); \
         regenerate it with `{REGENERATE}` and commit it"
    );
}

#[test]
fn the_reference_lists_every_key_of_the_defaults_with_its_env_name() {
    let md = hookfleet::config_reference::markdown();
    let defaults: toml::Table = hookfleet::config::DEFAULT_TOML.parse().unwrap();
    for (section, table) in &defaults {
        for key in table.as_table().unwrap().keys() {
            let env = format!(
                "`HOOKFLEET_{}__{}`",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            );
            let row = md
                .lines()
                .find(|l| l.starts_with(&format!("| `{section}.{key}` |")))
                .unwrap_or_else(|| panic!("{section}.{key} missing"));
            assert!(row.contains(&env), "{row}");
            assert!(!row.ends_with("|  |"), "{section}.{key} has no description");
        }
    }
}

#[test]
fn the_cli_prints_the_reference_whatever_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_hookfleet"))
        .args(["config", "reference"])
        // A broken setting must not stop the reference: it uses no config.
        .env("HOOKFLEET_WORKER__CONCURRENCY", "nope")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        hookfleet::config_reference::markdown()
    );
}

#[test]
fn numbers_show_the_range_the_config_check_accepts() {
    let md = hookfleet::config_reference::markdown();
    let row = |key: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("{key} missing"))
            .to_string()
    };
    // Bounds written inline in Config::validate, found by asking it.
    assert!(
        row("amqp.frame_max").contains("| 4096..=1048576 |"),
        "{}",
        row("amqp.frame_max")
    );
    assert!(
        row("push.max_refs").contains("| 1..=10000 |"),
        "{}",
        row("push.max_refs")
    );
    assert!(row("worker.concurrency").contains("| 1..=10000 |"));
    // A positive duration says so.
    assert!(row("worker.handler_timeout").contains("| duration > 0 |"));
    // No integer key is left with only its type.
    for line in md.lines().filter(|l| l.starts_with("| `")) {
        assert!(!line.contains("| integer |"), "no range shown: {line}");
    }
}
