//! What an operator sees from the command line: one line per runtime error, no
//! spurious library errors after a command that succeeded, each environment
//! variable named once in `--help`, exit codes that tell bad usage (2) from a
//! failure (1), and `outbox replay` leaving job rows alone unless asked.

use hookfleet_testkit as common;

use common::{AMQP_URL, Broker, EventSink, TestDb, test_config, unique_prefix};
use hookfleet::amqp::topology::Names;

/// `hookfleet <args>` with `env` and JSON logs; returns (exit code, stdout, stderr).
fn run(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec![("HOOKFLEET_LOG__FORMAT", "json")];
    all.extend_from_slice(env);
    common::cli::run(&all, args)
}

/// stderr lines that are log lines at ERROR (JSON) or mention lapin.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("lapin"))
        .collect()
}

#[test]
fn a_refused_login_is_one_line() {
    let (code, out, err) = run(
        &[
            (
                "HOOKFLEET_AMQP__URL",
                "amqp://guest:wrong@127.0.0.1:5672/%2f",
            ),
            ("HOOKFLEET_AMQP__CONNECT_TIMEOUT", "3s"),
        ],
        &["dlq", "list", "push"],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {err}");
    assert!(
        lines[0].starts_with("hookfleet: cannot connect to RabbitMQ at 127.0.0.1:5672")
            && lines[0].contains("ACCESS_REFUSED"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "the password never shows: {err}");
}

#[test]
fn a_port_in_use_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(&[("HOOKFLEET_ADMIN__LISTEN", &addr)], &["worker"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.matches("cannot listen on").count(),
        1,
        "the message once, got: {err}"
    );
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("hookfleet: cannot listen on")
    );
}

#[test]
fn a_config_syntax_error_names_its_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad2.toml");
    std::fs::write(&file, "x = \n").unwrap();
    let (code, _, err) = run(
        &[],
        &["--config", file.to_str().unwrap(), "config", "check"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("config file "), "{err}");
    assert!(!err.contains("config file config file"), "{err}");
    assert!(err.contains("bad2.toml is not valid TOML"), "{err}");
}

#[test]
fn help_names_each_environment_variable_once() {
    let (code, out, _) = run(&[], &["worker", "--help"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.matches("HOOKFLEET_CONFIG").count(), 1, "{out}");
    let (code, out, _) = run(&[], &["webhook", "add", "--help"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.matches("HOOKFLEET_WEBHOOK_SECRET").count(), 1, "{out}");
}

#[test]
fn hook_install_on_a_path_that_is_no_repository_is_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&[], &["hook", "install", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a"), "{err}");
}

#[tokio::test]
async fn requeue_of_an_unknown_message_id_says_so_and_fails() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let broker = Broker::new(&cfg).await;
    let env = [
        ("HOOKFLEET_AMQP__URL", AMQP_URL),
        ("HOOKFLEET_AMQP__PREFIX", cfg.amqp.prefix.as_str()),
    ];
    let (code, out, err) = run(&env, &["dlq", "requeue", "push", "--message-id", "nope"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("no dead letter with message id nope"), "{err}");
    assert!(error_lines(&err).is_empty(), "{err}");
    broker.cleanup(&cfg).await;
}

/// One published event row and one published `webhook` job row.
async fn published_rows(db: &TestDb, names: &Names) {
    for (exchange, key) in [
        (names.events_exchange(), "git.push"),
        (names.jobs_exchange(), "webhook"),
    ] {
        sqlx::query(
            "WITH o AS (INSERT INTO outbox (message_id, exchange, routing_key, event_type, \
                 payload, published_at) \
             VALUES (gen_random_uuid(), $1, $2, $2, '{}', now()) RETURNING id) \
             INSERT INTO outbox_published (id, published_at, publish_attempts) SELECT id, now(), 1 FROM o",
        )
        .bind(&exchange)
        .bind(key)
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn replay_sends_events_only_unless_asked_and_ends_cleanly() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let broker = Broker::new(&cfg).await;
    let names = Names::new(&cfg.amqp.prefix);
    let sink = EventSink::new(&broker).await;
    published_rows(&db, &names).await;
    let env = [
        ("HOOKFLEET_DATABASE__URL", db.url.as_str()),
        ("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false"),
        ("HOOKFLEET_AMQP__URL", AMQP_URL),
        ("HOOKFLEET_AMQP__PREFIX", cfg.amqp.prefix.as_str()),
    ];
    let (code, out, err) = run(&env, &["outbox", "replay", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("1 events match"), "{out}");
    assert!(
        out.contains("job rows left out; --include-jobs adds them"),
        "{out}"
    );
    let (code, out, err) = run(&env, &["outbox", "replay", "--dry-run", "--include-jobs"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("2 events match") && out.contains("job rows included"),
        "{out}"
    );

    let (code, out, err) = run(&env, &["outbox", "replay"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("replayed 1 of 1 events"), "{out}");
    assert!(error_lines(&err).is_empty(), "a clean end: {err}");
    assert_eq!(
        broker.depth(&names.queue("webhook")).await,
        0,
        "no job re-sent"
    );
    let mut got = Vec::new();
    sink.wait_for(&mut got, 1, "the replayed event").await;

    // spool flush: one spooled push published, then the same clean end.
    let job = hookfleet::push_job::PushJob {
        push_id: uuid::Uuid::now_v7(),
        repository: "acme/app".into(),
        path: None,
        pusher: None,
        push_options: vec![],
        pushed_at: chrono::Utc::now(),
        updates: vec![hookfleet::push_job::update::RefUpdate {
            refname: "refs/heads/main".into(),
            before: "0".repeat(40),
            after: "a".repeat(40),
        }],
        refs_omitted: 0,
    };
    hookfleet::hook::spool::write_job(&cfg.spool.dir, &job).unwrap();
    let spool = cfg.spool.dir.display().to_string();
    let mut env = env.to_vec();
    env.push(("HOOKFLEET_SPOOL__DIR", &spool));
    let (code, out, err) = run(&env, &["spool", "flush"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("published 1 spooled push"), "{out}");
    assert!(error_lines(&err).is_empty(), "a clean end: {err}");
    broker.cleanup(&cfg).await;
}

/// Parks a message in `push`'s dead queue with `x-error-class` and `x-error`.
async fn park(broker: &Broker, class: &str, error: &str) {
    use lapin::types::{AMQPValue, FieldTable};
    let ch = broker.conn.create_channel().await.unwrap();
    let mut h = FieldTable::default();
    h.insert("x-error-class".into(), AMQPValue::LongString(class.into()));
    h.insert("x-error".into(), AMQPValue::LongString(error.into()));
    h.insert("x-attempt".into(), AMQPValue::LongLongInt(3));
    let props = lapin::BasicProperties::default()
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_headers(h);
    ch.basic_publish(
        "".into(),
        broker.names.dead_queue("push").as_str().into(),
        Default::default(),
        b"{}",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test]
async fn dlq_discard_drops_only_what_the_filters_match() {
    let db = TestDb::new().await;
    let cfg = test_config(&db.url, &unique_prefix());
    let broker = Broker::new(&cfg).await;
    park(&broker, "poison", "not JSON: expected value").await;
    park(&broker, "permanent", "downstream schema mismatch").await;
    park(&broker, "permanent", "repository gone").await;
    let env = [
        ("HOOKFLEET_AMQP__URL", AMQP_URL),
        ("HOOKFLEET_AMQP__PREFIX", cfg.amqp.prefix.as_str()),
    ];
    let dead = broker.names.dead_queue("push");
    let args = ["dlq", "discard", "push", "--error-class", "permanent"];
    let (code, out, err) = run(
        &env,
        &[&args[..], &["--reason-contains", "SCHEMA"]].concat(),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), format!("discarded 1 message(s) from {dead}"));
    let (code, out, err) = run(&env, &["dlq", "list", "push", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let left: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let errors: Vec<&str> = left.iter().map(|d| d["error"].as_str().unwrap()).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        !errors.contains(&"downstream schema mismatch"),
        "{errors:?}"
    );
    // No filter: everything left goes.
    let (code, out, err) = run(&env, &["dlq", "discard", "push"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("discarded 2 message(s) from {dead}"));
    assert_eq!(broker.depth(&dead).await, 0);
    broker.cleanup(&cfg).await;
}
