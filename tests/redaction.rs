//! Redaction of every secret-bearing part of a configured URL: the password of
//! the userinfo and the values of secret query parameters (`password`,
//! `sslpassword`, ...), in `config check` and in [`redact_url`] itself.
use std::process::Command;

use hookfleet::config::{Config, SecretUrl, redact_url};

fn hookfleet() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKFLEET_") {
            c.env_remove(k);
        }
    }
    c
}

const DB_URL: &str = "postgres://u@h/db?sslmode=require&password=s3cret&sslpassword=k3y";
const AMQP_URL: &str = "amqp://u:p4ss@h:5672/%2f?password=x";

#[test]
fn config_check_prints_no_secret_of_any_url() {
    let out = hookfleet()
        .args(["config", "check"])
        .env("HOOKFLEET_DATABASE__URL", DB_URL)
        .env("HOOKFLEET_AMQP__URL", AMQP_URL)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{text}\n{err}");
    for shown in [&text, &err] {
        for secret in ["s3cret", "k3y", "p4ss", "password=x"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
    }
    assert!(
        text.contains("postgres://u@h/db?sslmode=require&password=***&sslpassword=***"),
        "{text}"
    );
    assert!(
        text.contains("amqp://u:***@h:5672/%2f?password=***"),
        "{text}"
    );

    // `amqp.urls` (a comma-separated variable) too.
    let out = hookfleet()
        .args(["config", "check"])
        .env(
            "HOOKFLEET_AMQP__URLS",
            "amqp://u:pw1@n1:5672/%2f?password=q1, amqp://n2:5672/%2f?PassWord=q2",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in ["pw1", "q1", "q2"] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    assert!(text.contains("n2:5672/%2f?PassWord=***"), "{text}");
}

#[test]
fn config_check_of_an_invalid_url_does_not_print_its_secrets() {
    let out = hookfleet()
        .args(["config", "check"])
        .env(
            "HOOKFLEET_DATABASE__URL",
            "host=h user=u password=s3cret sslpassword=k3y",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("database.url"), "{err}");
    assert!(!err.contains("s3cret") && !err.contains("k3y"), "{err}");
}

#[test]
fn secret_query_parameters_are_replaced() {
    for (raw, want) in [
        (
            DB_URL,
            "postgres://u@h/db?sslmode=require&password=***&sslpassword=***",
        ),
        (AMQP_URL, "amqp://u:***@h:5672/%2f?password=***"),
        // Names are case-insensitive and percent-decoded.
        (
            "postgres://h/db?PASSWORD=a&SslPassword=b&pass%77ord=c",
            "postgres://h/db?PASSWORD=***&SslPassword=***&pass%77ord=***",
        ),
        // Other secret-named parameters.
        (
            "postgres://h/db?pass=a&pwd=b&passwd=c&client_secret=d&auth_token=e&apikey=f&api_key=g",
            "postgres://h/db?pass=***&pwd=***&passwd=***&client_secret=***&auth_token=***&apikey=***&api_key=***",
        ),
        // Non-secret parameters (file paths included) are kept as written.
        (
            "postgres://u:pw@h:5432/db?sslmode=verify-full&sslkey=/k.pem&sslrootcert=/ca.pem&application_name=hf",
            "postgres://u:***@h:5432/db?sslmode=verify-full&sslkey=/k.pem&sslrootcert=/ca.pem&application_name=hf",
        ),
        // A value holding delimiters: hidden up to the next `&`.
        (
            "postgres://h/db?password=a@b;c=d#frag",
            "postgres://h/db?password=***#frag",
        ),
        (
            "postgres://h/db?a=1;password=s3cret&b=2",
            "postgres://h/db?a=1;password=***&b=2",
        ),
        ("postgres://h/db?password=", "postgres://h/db?password=***"),
        // Nothing to hide: unchanged.
        ("postgres://u@h/db?password", "postgres://u@h/db?password"),
        ("amqp://h:5672/%2f", "amqp://h:5672/%2f"),
        ("amqp://u:pw@h:5672/%2f", "amqp://u:***@h:5672/%2f"),
    ] {
        let got = redact_url(raw);
        assert_eq!(got, want, "{raw}");
        // Still a URL, and redacting again changes nothing.
        url::Url::parse(&got).unwrap_or_else(|e| panic!("{got}: {e}"));
        assert_eq!(redact_url(&got), got);
    }
}

#[test]
fn malformed_urls_leak_no_secret_either() {
    for (raw, secrets) in [
        (
            "postgres://u:pw@[bad/db?password=s3cret&sslpassword=k3y",
            &["pw", "s3cret", "k3y"][..],
        ),
        // An `@` inside a query secret.
        (
            "postgres://u@[bad/db?password=a@b",
            &["a@b", "password=a"][..],
        ),
        ("postgres://u:pw@[bad/db?password=a@b:c", &["pw", "b:c"][..]),
        // A `?` inside the userinfo password.
        ("amqp://u:a?password=b@h/[bad", &["a?", "password=b"][..]),
        ("amqp://u:p w@[bad/", &["p w"][..]),
        // libpq's empty host (a Unix socket).
        (
            "postgres:///db?host=/run/postgresql&password=s3cret",
            &["s3cret"][..],
        ),
        // Not hierarchical, or not a URL at all.
        ("postgres:/u:pw@h/db", &["pw"][..]),
        ("u:pw@h", &["pw"][..]),
        (
            "host=h user=u password=s3cret sslpassword='k 3y' dbname=d",
            &["s3cret", "k 3y"][..],
        ),
    ] {
        let got = redact_url(raw);
        for s in secrets {
            assert!(!got.contains(s), "{raw} -> {got}");
        }
        assert!(got.contains("***"), "{raw} -> {got}");
    }
}

#[test]
fn secret_url_display_debug_and_serialize_all_redact() {
    let u = SecretUrl::new(DB_URL);
    let want = "postgres://u@h/db?sslmode=require&password=***&sslpassword=***";
    assert_eq!(u.to_string(), want);
    assert_eq!(format!("{u:?}"), format!("{want:?}"));
    assert_eq!(serde_json::to_string(&u).unwrap(), format!("{want:?}"));
    assert_eq!(u.expose(), DB_URL);

    let mut c = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
    c.database.url = u;
    c.amqp.url = SecretUrl::new(AMQP_URL);
    let shown = c.to_redacted_toml();
    for secret in ["s3cret", "k3y", "p4ss", "password=x"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(!format!("{c:?}").contains("s3cret"));
}
