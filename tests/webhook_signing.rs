//! Webhook signing styles, secret rotation, secrets at rest and 410 Gone, end to
//! end: a real HTTP receiver on 127.0.0.1, the worker, the outbox relay, real
//! PostgreSQL and RabbitMQ, and the `hookfleet` binary for the CLI.
//!
//! Signatures are checked by an implementation that is not hookfleet's: the
//! `standardwebhooks` package from PyPI (the spec's reference library) for the
//! Standard Webhooks style and Python's `hmac` for GitHub's, through
//! `tests/py/verify_webhook.py`. The package is installed once into the target
//! directory (`target/tmp/test-py`) by the first test that needs it, under a
//! file lock so test binaries running at once do not race.
use hookfleet_testkit as common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::receiver::{Got, Receiver, Reply};
use common::{Broker, RunningWorker, TestDb, eventually, test_config, unique_prefix};
use hookfleet::amqp::topology::Names;
use hookfleet::config::{Config, SecretString};
use hookfleet::outbox::{self, Event};
use hookfleet::push_job::PushJob;
use hookfleet::webhook::secrets::{Keyring, SEALED_PREFIX};
use hookfleet::webhook::subscription::Style;
use hookfleet::webhook::{self, manage};
use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// The reference implementation, pinned so a new release cannot change what passes.
const STANDARDWEBHOOKS: &str = "standardwebhooks==1.3.0";

// ---------- the independent verifier ----------

/// The directory holding the `standardwebhooks` package, installed on first use.
fn python_packages() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(root).unwrap();
        let dir = root.join("test-py");
        // Under flock(1): install into a scratch directory and rename, so a
        // killed install never leaves a half package that looks installed.
        let status = std::process::Command::new("flock")
            .arg(root.join("test-py.lock"))
            .args([
                "sh",
                "-c",
                r#"test -f "$DIR/standardwebhooks/webhooks.py" && exit 0
                   rm -rf "$DIR.tmp" &&
                   python3 -m pip install --quiet --disable-pip-version-check --no-input \
                       --target "$DIR.tmp" "$PKG" &&
                   rm -rf "$DIR" && mv "$DIR.tmp" "$DIR""#,
            ])
            .env("DIR", &dir)
            .env("PKG", STANDARDWEBHOOKS)
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .status()
            .expect("run flock/python3 to install standardwebhooks");
        assert!(status.success(), "installing {STANDARDWEBHOOKS} failed");
        dir
    })
}

/// Whether the independent verifier accepts `got` signed with `secret`; the
/// error is the verifier's reason.
async fn verify(style: &str, secret: &str, got: &Got) -> Result<(), String> {
    let packages = python_packages();
    let input = serde_json::json!({
        "style": style,
        "secret": secret,
        "headers": got.headers,
        "body_b64": B64.encode(&got.body),
    });
    let mut child = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/verify_webhook.py"
        ))
        .env("PYTHONPATH", packages)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(said),
        _ => panic!(
            "verifier crashed: {said} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

// ---------- the system under test ----------

struct Env {
    db: TestDb,
    cfg: Config,
    broker: Broker,
    worker: RunningWorker,
    relay_stop: CancellationToken,
    relay: tokio::task::JoinHandle<anyhow::Result<()>>,
    names: Names,
}

impl Env {
    async fn start(tweak: impl FnOnce(&mut Config)) -> Env {
        Env::start_on(TestDb::new().await, tweak).await
    }

    async fn start_on(db: TestDb, tweak: impl FnOnce(&mut Config)) -> Env {
        let mut cfg = test_config(&db.url, &unique_prefix());
        cfg.webhook.allowed_hosts = vec!["127.0.0.1".into()];
        cfg.outbox.poll_interval = Duration::from_millis(100);
        tweak(&mut cfg);
        let broker = Broker::new(&cfg).await;
        let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
        worker.ready().await;
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(outbox::run_relay(
            cfg.amqp.clone(),
            cfg.outbox.clone(),
            db.pool.clone(),
            relay_stop.clone(),
        ));
        let names = Names::new(&cfg.amqp.prefix);
        Env {
            db,
            cfg,
            broker,
            worker,
            relay_stop,
            relay,
            names,
        }
    }

    async fn stop(self) -> TestDb {
        self.relay_stop.cancel();
        let _ = self.relay.await;
        self.worker.stop().await.unwrap();
        self.broker.cleanup(&self.cfg).await;
        self.db
    }

    fn keys(&self) -> Keyring {
        Keyring::from_config(&self.cfg.webhook).unwrap()
    }

    async fn subscribe(&self, url: &str, style: Style, secret: Option<&str>) -> manage::Added {
        manage::add(
            &self.db.pool,
            &manage::AddRequest {
                repo: "org/app".into(),
                url: url.into(),
                secret: secret.map(str::to_string),
                events: "push".into(),
                content_type: "json".into(),
                style,
            },
            &self.keys(),
        )
        .await
        .unwrap()
    }

    /// Writes one `git.push` delivery (and its job) for each matching subscription.
    async fn push_event(&self) -> serde_json::Value {
        let push = PushJob {
            push_id: Uuid::now_v7(),
            repository: "org/app".into(),
            path: None,
            pusher: Some("ann".into()),
            push_options: vec![],
            pushed_at: chrono::Utc::now(),
            refs_omitted: 0,
            updates: vec![],
        };
        let payload = serde_json::json!({ "ref": "refs/heads/main", "push_id": push.push_id });
        let ev = Event::new(
            &self.names,
            "git.push",
            Some(push.push_id.to_string()),
            payload.clone(),
        );
        let mut tx = self.db.pool.begin().await.unwrap();
        let d = webhook::deliveries_for_push(&mut tx, &self.names, &push, &[ev])
            .await
            .unwrap();
        webhook::storage::insert_deliveries(&mut tx, &d.rows)
            .await
            .unwrap();
        outbox::enqueue_many(&mut tx, &d.jobs).await.unwrap();
        tx.commit().await.unwrap();
        payload
    }
}

fn random_key() -> String {
    B64.encode((0..32).map(|_| fastrand::u8(..)).collect::<Vec<u8>>())
}

/// Everything PostgreSQL would hand to a backup: `pg_dump` of the database.
fn dump(db: &TestDb) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--no-owner", &db.name])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn stored_secrets(pool: &PgPool) -> Vec<(i64, Option<String>, Option<String>)> {
    sqlx::query_as("SELECT id, secret, previous_secret FROM webhook_subscriptions ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn hookfleet(db_url: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HOOKFLEET_") {
            c.env_remove(k);
        }
    }
    c.env("HOOKFLEET_DATABASE__URL", db_url)
        .env("HOOKFLEET_DATABASE__AUTO_MIGRATE", "false")
        .env("HOOKFLEET_LOG__LEVEL", "error");
    c
}

fn run(mut c: std::process::Command) -> (Option<i32>, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_style_verifies_with_the_reference_library_through_a_rotation() {
    let env = Env::start(|c| c.webhook.secret_key = SecretString::new(random_key())).await;
    let rx = Receiver::start(vec![Reply::Status(500)], Reply::Status(200)).await;
    let added = env.subscribe(&rx.url(), Style::Standard, None).await;
    let first = added.generated_secret.expect("a generated whsec_ secret");
    assert!(first.starts_with("whsec_"));
    assert!(!added.stored_plaintext);

    // A retry: same webhook-id and body, each attempt signed for its own timestamp.
    let payload = env.push_event().await;
    let got = rx.wait_for(2).await;
    let delivery: Uuid = sqlx::query_scalar("SELECT delivery_id FROM webhook_deliveries")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    for g in &got {
        assert_eq!(g.headers["webhook-id"], delivery.to_string());
        assert_eq!(g.headers["x-hookfleet-delivery"], delivery.to_string());
        assert!(!g.headers.contains_key("x-hub-signature-256"));
        assert_eq!(g.headers["webhook-signature"].split(' ').count(), 1);
        verify("standard", &first, g).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(body["type"], "git.push");
        // data is the GitHub-style body of the event: its fields, not hookfleet's.
        assert_eq!(body["data"]["ref"], payload["ref"]);
        assert!(body["data"].get("push_id").is_none(), "{body}");
        let ts = body["timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    }
    assert_eq!(got[0].body, got[1].body);
    // Another secret of the right form does not verify.
    let other = webhook::secrets::generate(Style::Standard);
    assert!(verify("standard", &other, &got[1]).await.is_err());

    // Rotation with an overlap: both signatures, either secret verifies.
    let rotated = manage::rotate_secret(
        &env.db.pool,
        &env.keys(),
        added.id,
        None,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let second = rotated.generated_secret.unwrap();
    env.push_event().await;
    let got = rx.wait_for(3).await;
    assert_eq!(got[2].headers["webhook-signature"].split(' ').count(), 2);
    verify("standard", &second, &got[2]).await.unwrap();
    verify("standard", &first, &got[2]).await.unwrap();

    // Rotation with no overlap: only the newest secret signs.
    let third = webhook::secrets::generate(Style::Standard);
    manage::rotate_secret(
        &env.db.pool,
        &env.keys(),
        added.id,
        Some(third.clone()),
        Duration::ZERO,
    )
    .await
    .unwrap();
    env.push_event().await;
    let got = rx.wait_for(4).await;
    assert_eq!(got[3].headers["webhook-signature"].split(' ').count(), 1);
    verify("standard", &third, &got[3]).await.unwrap();
    assert!(verify("standard", &second, &got[3]).await.is_err());
    assert!(verify("standard", &first, &got[3]).await.is_err());

    // A rotation to a secret of the wrong form is refused.
    let bad = manage::rotate_secret(
        &env.db.pool,
        &env.keys(),
        added.id,
        Some("not-whsec".into()),
        Duration::ZERO,
    )
    .await;
    assert!(
        matches!(bad, Err(manage::WebhookManageError::Invalid(_))),
        "{bad:?}"
    );

    // No secret anywhere at rest: not in the table, not in the attempt log.
    let dumped = dump(&env.db);
    for s in [&first, &second, &third] {
        let key = s.trim_start_matches("whsec_");
        assert!(!dumped.contains(key), "a secret is in the dump");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_style_signs_with_the_new_secret_only_after_a_rotation() {
    let env = Env::start(|_| {}).await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let added = env
        .subscribe(&rx.url(), Style::Github, Some("old-secret"))
        .await;
    assert!(added.stored_plaintext, "no webhook.secret_key in this test");
    assert_eq!(added.generated_secret, None);
    env.push_event().await;
    let got = rx.wait_for(1).await;
    verify("github", "old-secret", &got[0]).await.unwrap();
    assert!(!got[0].headers.contains_key("webhook-signature"));
    assert_eq!(got[0].headers["x-github-event"], "push");

    manage::rotate_secret(
        &env.db.pool,
        &env.keys(),
        added.id,
        Some("new-secret".into()),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    env.push_event().await;
    let got = rx.wait_for(2).await;
    verify("github", "new-secret", &got[1]).await.unwrap();
    assert_eq!(
        verify("github", "old-secret", &got[1]).await,
        Err("github: signature mismatch".into())
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription_at_once_and_the_log_says_why() {
    let env = Env::start(|_| {}).await;
    let rx = Receiver::start(vec![], Reply::Status(410)).await;
    let sub = env.subscribe(&rx.url(), Style::Standard, None).await.id;
    env.push_event().await;
    let q = env.names.dead_queue("webhook");
    eventually(WAIT, "the job dead-lettered", || {
        let (b, q) = (&env.broker, q.clone());
        async move { (b.depth(&q).await >= 1).then_some(()) }
    })
    .await;
    assert_eq!(rx.got().len(), 1, "no retry after 410");
    let (active, failures, reason): (bool, i32, Option<String>) = sqlx::query_as(
        "SELECT active, consecutive_failures, disabled_reason FROM webhook_subscriptions \
         WHERE id = $1",
    )
    .bind(sub)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert!(!active);
    assert_eq!(
        failures, 1,
        "disabled on the first 410, not after 4 failures"
    );
    assert_eq!(reason.as_deref(), Some("receiver answered 410 Gone"));
    let event: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'webhook.disabled'")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(event["subscription_id"], sub);
    assert_eq!(event["reason"], "receiver answered 410 Gone");

    // The delivery log and the subscription list say why.
    let mut c = hookfleet(&env.db.url);
    c.args(["webhook", "deliveries"]);
    let (code, out, err) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("failed") && out.contains("status=410") && out.contains("410 Gone"),
        "{out}"
    );
    let mut c = hookfleet(&env.db.url);
    c.args(["webhook", "list"]);
    let (_, out, _) = run(c);
    assert!(
        out.contains("disabled: receiver answered 410 Gone"),
        "{out}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_and_migrate_reencrypts_them() {
    let db = TestDb::new().await;
    let (key1, key2) = (random_key(), random_key());
    let rx = Receiver::start(vec![], Reply::Status(200)).await;

    // A subscription from before encryption: plaintext in both columns.
    sqlx::query(
        "INSERT INTO webhook_subscriptions (repository_pattern, url, secret, events, \
             previous_secret, previous_secret_expires_at) \
         VALUES ('org/app', $1, 'legacy-plain-secret', '{push}', 'legacy-old-secret', \
                 now() + interval '1 hour')",
    )
    .bind(rx.url())
    .execute(&db.pool)
    .await
    .unwrap();

    // Without a key, `webhook add` warns that the secret is stored in plaintext.
    let mut c = hookfleet(&db.url);
    c.args([
        "webhook",
        "add",
        "--repo",
        "other/*",
        "--url",
        "https://h.example/x",
    ])
    .args(["--secret", "unkeyed-secret"]);
    let (code, _, err) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("stored in plaintext"), "{err}");
    assert!(!err.contains("unkeyed-secret"));
    sqlx::query("DELETE FROM webhook_subscriptions WHERE repository_pattern = 'other/*'")
        .execute(&db.pool)
        .await
        .unwrap();

    // With key1: the standard-style secret is generated, printed once, stored sealed.
    let mut c = hookfleet(&db.url);
    c.env("HOOKFLEET_WEBHOOK__SECRET_KEY", &key1)
        .args(["webhook", "add", "--repo", "org/app", "--url", &rx.url()])
        .args(["--style", "standard"]);
    let (code, out, err) = run(c);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("plaintext"), "{err}");
    let whsec = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("the generated secret on stdout")
        .to_string();
    assert!(whsec.starts_with("whsec_"), "{out}");
    // --style standard with a secret of the wrong form: usage error.
    let mut c = hookfleet(&db.url);
    c.args(["webhook", "add", "--repo", "org/app", "--url", &rx.url()])
        .args(["--style", "standard", "--secret", "plain"]);
    let (code, _, err) = run(c);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("whsec_"), "{err}");

    let dumped = dump(&db);
    assert!(!dumped.contains(whsec.trim_start_matches("whsec_")));
    assert!(dumped.contains("legacy-plain-secret"), "not migrated yet");

    // `migrate` with key1 encrypts the plaintext ones in place.
    let migrate = |env: &[(&str, &str)]| {
        let mut c = hookfleet(&db.url);
        c.arg("migrate");
        for (k, v) in env {
            c.env(k, v);
        }
        let (code, _, err) = run(c);
        assert_eq!(code, Some(0), "{err}");
    };
    migrate(&[("HOOKFLEET_WEBHOOK__SECRET_KEY", &key1)]);
    let dumped = dump(&db);
    for s in ["legacy-plain-secret", "legacy-old-secret"] {
        assert!(!dumped.contains(s), "{s} still in the dump");
    }
    let keyring = |current: &str, previous: &[&str]| {
        let mut c = Config::load_from(None, Vec::<(String, String)>::new()).unwrap();
        c.webhook.secret_key = SecretString::new(current);
        c.webhook.previous_secret_keys = previous.iter().map(|p| SecretString::new(*p)).collect();
        Keyring::from_config(&c.webhook).unwrap()
    };
    let k1 = keyring(&key1, &[]);
    let id1 = k1.current_id().unwrap().to_string();
    let sealed_with = |rows: &[(i64, Option<String>, Option<String>)], id: &str| {
        rows.iter()
            .flat_map(|(_, s, p)| [s, p])
            .flatten()
            .all(|v| v.starts_with(&format!("{SEALED_PREFIX}{id}:")))
    };
    let rows = stored_secrets(&db.pool).await;
    assert!(sealed_with(&rows, &id1), "{rows:?}");

    // Key rotation: key2 current, key1 previous; migrate re-encrypts with key2.
    migrate(&[
        ("HOOKFLEET_WEBHOOK__SECRET_KEY", &key2),
        (
            "HOOKFLEET_WEBHOOK__PREVIOUS_SECRET_KEYS",
            &format!("[\"{key1}\"]"),
        ),
    ]);
    let k2 = keyring(&key2, &[]);
    let rows = stored_secrets(&db.pool).await;
    assert!(sealed_with(&rows, k2.current_id().unwrap()), "{rows:?}");
    let opened: Vec<String> = rows
        .iter()
        .flat_map(|(_, s, p)| [s, p])
        .flatten()
        .map(|v| k2.open(v).unwrap())
        .collect();
    assert_eq!(
        opened,
        ["legacy-plain-secret", "legacy-old-secret", whsec.as_str()]
    );
    assert!(
        rows.iter()
            .all(|(_, s, _)| k1.open(s.as_ref().unwrap()).is_err())
    );

    // A worker with key2 alone delivers, signed correctly (checked independently).
    let env = Env::start_on(db, |c| c.webhook.secret_key = SecretString::new(&key2)).await;
    env.push_event().await;
    let got = rx.wait_for(2).await;
    let gh = got
        .iter()
        .find(|g| g.headers.contains_key("x-hub-signature-256"))
        .unwrap();
    verify("github", "legacy-plain-secret", gh).await.unwrap();
    let std = got
        .iter()
        .find(|g| g.headers.contains_key("webhook-signature"))
        .unwrap();
    verify("standard", &whsec, std).await.unwrap();
    let db = env.stop().await;

    // A worker missing the key refuses to sign rather than sign with garbage.
    let env = Env::start_on(db, |_| {}).await;
    env.push_event().await;
    let errors: Vec<Option<String>> = eventually(WAIT, "two refused attempts", || async {
        let e: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT error FROM webhook_attempts WHERE outcome = 'failed' ORDER BY id",
        )
        .fetch_all(&env.db.pool)
        .await
        .unwrap();
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert!(
        errors
            .iter()
            .all(|e| e.as_deref().unwrap_or("").contains("webhook.secret_key")),
        "{errors:?}"
    );
    assert_eq!(rx.got().len(), 2, "no request without the key");
    env.stop().await;
}

#[test]
fn config_check_refuses_a_malformed_key_without_showing_it() {
    let check = |key: &str| {
        let mut c = hookfleet("postgres://postgres@127.0.0.1:5432/unused");
        c.env("HOOKFLEET_WEBHOOK__SECRET_KEY", key)
            .args(["config", "check"]);
        run(c)
    };
    for bad in ["not-base64-at-all!", "c2hvcnQ="] {
        let (code, out, err) = check(bad);
        assert_eq!(code, Some(2), "{out}{err}");
        assert!(err.contains("webhook.secret_key"), "{err}");
        assert!(!err.contains(bad) && !out.contains(bad), "{err}");
    }
    let good = random_key();
    let (code, out, err) = check(&good);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("secret_key = \"***\""), "{out}");
    assert!(!out.contains(&good));
}
