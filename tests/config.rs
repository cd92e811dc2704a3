//! Config layering, validation messages and redaction.
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use hookfleet::config::{Config, ConfigError};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn precedence_is_default_then_file_then_env() {
    let c = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(c.database.max_connections, 16);
    assert_eq!(c.worker.concurrency, 64);

    let f = file("[database]\nmax_connections = 7\n[worker]\nconcurrency = 9\n");
    let c = Config::load_from(Some(f.path()), env(&[])).unwrap();
    assert_eq!(c.database.max_connections, 7);
    assert_eq!(c.worker.concurrency, 9);
    // Keys the file does not set keep their defaults.
    assert_eq!(c.retry.max_attempts, 5);

    let c = Config::load_from(
        Some(f.path()),
        env(&[
            ("HOOKFLEET_DATABASE__MAX_CONNECTIONS", "20"),
            ("HOOKFLEET_AMQP__QUEUE_TYPE", "classic"),
        ]),
    )
    .unwrap();
    assert_eq!(c.database.max_connections, 20);
    assert_eq!(c.worker.concurrency, 9);
    assert_eq!(c.amqp.queue_type, hookfleet::config::QueueType::Classic);
}

#[test]
fn nested_env_and_non_config_variables() {
    let c = Config::load_from(
        None,
        env(&[
            ("HOOKFLEET_WORKER__KIND_CONCURRENCY__PUSH", "3"),
            // Not config: no double underscore (the hook reads it as the pusher).
            ("HOOKFLEET_PUSHER", "alice"),
            ("HOOKFLEET_CONFIG", "/nonexistent"),
        ]),
    )
    .unwrap();
    assert_eq!(c.worker.kind_concurrency["push"], 3);
}

fn err(file_text: Option<&str>, vars: &[(&str, &str)]) -> String {
    let f = file_text.map(file);
    match Config::load_from(f.as_ref().map(|f| f.path()), env(vars)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn validation_errors_name_key_value_and_range() {
    assert_eq!(
        err(None, &[("HOOKFLEET_WORKER__CONCURRENCY", "0")]),
        "worker.concurrency must be 1..=10000, got 0"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_DATABASE__MAX_CONNECTIONS", "0")]),
        "database.max_connections must be 1..=1000, got 0"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_RETRY__MAX_ATTEMPTS", "1000")]),
        "retry.max_attempts must be 1..=100, got 1000"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_OUTBOX__BATCH_SIZE", "0")]),
        "outbox.batch_size must be 1..=10000, got 0"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_WORKER__KIND_CONCURRENCY__PUSH", "0")]),
        "worker.kind_concurrency.push must be 1..=10000, got 0"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_RETRY__TIERS", "[]")]),
        "retry.tiers must list at least one delay, got []"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_AMQP__URL", "http://x")]),
        "amqp.url must use one of the schemes amqp, amqps, got \"http\""
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_AMQP__PREFIX", "a b")]),
        "amqp.prefix must be 1..=100 characters of [A-Za-z0-9._-], got \"a b\""
    );
    let e = err(None, &[("HOOKFLEET_AMQP__RECONNECT_MAX", "1ms")]);
    assert!(
        e.starts_with("amqp.reconnect_max must be at least amqp.reconnect_min"),
        "{e}"
    );
    let e = err(None, &[("HOOKFLEET_WORKER__HANDLER_TIMEOUT", "0s")]);
    assert_eq!(e, "worker.handler_timeout must be greater than 0s, got 0s");
    // Each push writer holds a pooled connection: no more writers than connections.
    assert_eq!(
        err(
            None,
            &[
                ("HOOKFLEET_DATABASE__MAX_CONNECTIONS", "4"),
                ("HOOKFLEET_PUSH__GROUP_WRITERS", "5")
            ]
        ),
        "push.group_writers must be 1..=4, got 5"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_PUSH__GROUP_MAX", "0")]),
        "push.group_max must be 1..=1000, got 0"
    );
}

#[test]
fn database_wait_and_webhook_pruning_have_their_own_keys() {
    let c = Config::load_from(None, env(&[])).unwrap();
    assert_eq!(
        (c.database.reconnect_min, c.database.reconnect_max),
        (c.amqp.reconnect_min, c.amqp.reconnect_max),
        "the database wait's defaults are the broker's"
    );
    assert_eq!(
        (c.webhook.prune_interval, c.webhook.prune_batch_size),
        (c.outbox.prune_interval, c.outbox.prune_batch_size),
        "webhook pruning's defaults are the outbox's"
    );
    let c = Config::load_from(
        None,
        env(&[
            ("HOOKFLEET_AMQP__RECONNECT_MIN", "1s"),
            ("HOOKFLEET_AMQP__RECONNECT_MAX", "1m"),
            ("HOOKFLEET_OUTBOX__PRUNE_INTERVAL", "1h"),
        ]),
    )
    .unwrap();
    assert_eq!(c.database.reconnect_max, Duration::from_secs(10));
    assert_eq!(c.webhook.prune_interval, Duration::from_secs(60));
    let e = err(None, &[("HOOKFLEET_DATABASE__RECONNECT_MAX", "1ms")]);
    assert!(
        e.starts_with("database.reconnect_max must be at least database.reconnect_min"),
        "{e}"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_DATABASE__RECONNECT_MIN", "0s")]),
        "database.reconnect_min must be greater than 0s, got 0s"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_WEBHOOK__PRUNE_INTERVAL", "0s")]),
        "webhook.prune_interval must be greater than 0s, got 0s"
    );
    assert_eq!(
        err(None, &[("HOOKFLEET_WEBHOOK__PRUNE_BATCH_SIZE", "0")]),
        "webhook.prune_batch_size must be 1..=100000, got 0"
    );
}

#[test]
fn unknown_keys_are_errors_naming_their_source() {
    let e = err(Some("[worker]\nconcurency = 3\n"), &[]);
    assert!(
        e.contains("config file") && e.contains("unknown field `concurency`"),
        "{e}"
    );
    let e = err(None, &[("HOOKFLEET_WORKER__CONCURENCY", "3")]);
    assert!(
        e.contains("environment variable HOOKFLEET_WORKER__CONCURENCY"),
        "{e}"
    );
    assert!(e.contains("unknown field `concurency`"), "{e}");
    let e = err(Some("[nosuchsection]\nx = 1\n"), &[]);
    assert!(e.contains("unknown field `nosuchsection`"), "{e}");
}

#[test]
fn malformed_values_name_the_file_position_or_variable() {
    let e = err(Some("[worker]\nconcurrency = = 3\n"), &[]);
    assert!(
        e.contains("is not valid TOML") && e.contains("line 2"),
        "{e}"
    );
    let e = err(None, &[("HOOKFLEET_DATABASE__MAX_CONNECTIONS", "many")]);
    assert!(
        e.contains("environment variable HOOKFLEET_DATABASE__MAX_CONNECTIONS"),
        "{e}"
    );
    assert!(e.contains("database.max_connections"), "{e}");
    let e = err(None, &[("HOOKFLEET_WORKER__HANDLER_TIMEOUT", "soon")]);
    assert!(
        e.contains("HOOKFLEET_WORKER__HANDLER_TIMEOUT") && e.contains("handler_timeout"),
        "{e}"
    );
    match Config::load_from(
        Some(std::path::Path::new("/nonexistent/hookfleet.toml")),
        env(&[]),
    ) {
        Err(ConfigError::Read { .. }) => {}
        other => panic!("expected a read error, got {other:?}"),
    }
}

fn hookfleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKFLEET_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn config_check_redacts_passwords() {
    let out = hookfleet()
        .args(["config", "check"])
        .env("HOOKFLEET_AMQP__URL", "amqp://user:pw-s3cr3t@host:5672/%2f")
        .env("HOOKFLEET_DATABASE__URL", "postgres://u:pw-s3cr3t@h/db")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // A distinctive password: config keys such as webhook.secret_key say "secret".
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(text.contains("amqp://user:***@host:5672/%2f"), "{text}");
    assert!(text.contains("postgres://u:***@h/db"), "{text}");
    // The printed config is itself valid config.
    let f = file(&text.replace(":***@", ":pw@"));
    Config::load_from(Some(f.path()), env(&[])).unwrap();
}

#[test]
fn config_check_exits_2_on_invalid_config() {
    let out = hookfleet()
        .args(["config", "check"])
        .env("HOOKFLEET_WORKER__CONCURRENCY", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("worker.concurrency must be 1..=10000, got 0"),
        "{err}"
    );
    let out = hookfleet()
        .args(["config", "check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_cli_arguments_exit_2_and_version_has_sha() {
    let out = hookfleet().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = hookfleet().arg("--version").output().unwrap();
    assert!(out.status.success());
    let v = String::from_utf8(out.stdout).unwrap();
    assert!(
        v.contains(env!("CARGO_PKG_VERSION")) && v.contains("(git ") && v.contains("built "),
        "{v}"
    );
}

#[test]
fn amqp_urls_from_a_file_list_or_a_comma_separated_variable() {
    let f = file("[amqp]\nurls = [\"amqp://u:pw1@n1:5672/%2f\", \"amqp://u:pw2@n2:5673/%2f\"]\n");
    let c = Config::load_from(Some(f.path()), env(&[])).unwrap();
    let got: Vec<String> = c.amqp.endpoints().iter().map(|u| u.address()).collect();
    assert_eq!(got, vec!["n1:5672", "n2:5673"]);

    let c = Config::load_from(
        None,
        env(&[(
            "HOOKFLEET_AMQP__URLS",
            "amqp://u:pw1@n1:5672/%2f, amqp://u:pw2@n2:5672/%2f,amqp://u:pw3@n3:5672/%2f",
        )]),
    )
    .unwrap();
    assert_eq!(c.amqp.endpoints().len(), 3);
    assert_eq!(c.amqp.addresses(), "n1:5672,n2:5672,n3:5672");
    // Every URL shown redacted.
    let shown = c.to_redacted_toml();
    for pw in ["pw1", "pw2", "pw3"] {
        assert!(!shown.contains(pw), "{shown}");
    }
    assert!(shown.contains("n3:5672"), "{shown}");

    // amqp.url alone keeps working: one endpoint.
    let c = Config::load_from(
        None,
        env(&[("HOOKFLEET_AMQP__URL", "amqp://guest:guest@solo:5672/%2f")]),
    )
    .unwrap();
    let got: Vec<String> = c.amqp.endpoints().iter().map(|u| u.address()).collect();
    assert_eq!(got, vec!["solo:5672"]);
}

#[test]
fn amqp_url_and_urls_both_set_is_an_error_naming_both() {
    let f = file("[amqp]\nurl = \"amqp://guest:guest@a:5672/%2f\"\n");
    let e = Config::load_from(
        Some(f.path()),
        env(&[("HOOKFLEET_AMQP__URLS", "amqp://b:5672/%2f")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("amqp.url") && e.contains("amqp.urls"), "{e}");
    assert!(e.contains("HOOKFLEET_AMQP__URLS"), "names where: {e}");
    let e = Config::load_from(
        None,
        env(&[("HOOKFLEET_AMQP__URLS", "amqp://b:5672/%2f,http://c/")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("amqp.urls") && e.contains("http"), "{e}");
}

#[test]
fn console_token_is_secret_and_must_be_long_enough() {
    let short = Config::load_from(None, env(&[("HOOKFLEET_ADMIN__CONSOLE_TOKEN", "abc")]))
        .unwrap_err()
        .to_string();
    assert!(short.contains("admin.console_token"), "{short}");
    assert!(!short.contains("abc"), "the token never shows: {short}");
    let token = "0123456789abcdef0123";
    let c = Config::load_from(None, env(&[("HOOKFLEET_ADMIN__CONSOLE_TOKEN", token)])).unwrap();
    assert_eq!(c.admin.console_token.expose(), token);
    let shown = format!("{c:?}{}", toml::to_string(&c).unwrap());
    assert!(!shown.contains(token), "redacted in Debug and config check");
    assert!(
        Config::load_from(None, env(&[]))
            .unwrap()
            .admin
            .console_token
            .expose()
            .is_empty(),
        "off by default"
    );
}
