//! The operator console in a real browser: headless Debian chromium driven
//! through chromedriver (started here on a free port) by fantoccini.
//!
//! Dead letters, outbox rows and webhook deliveries are made by the real
//! worker and relay; the test then clicks through the console as an operator
//! would and checks the effect in the broker and the database. Screenshots of
//! every page land in `target/console-screenshots/` (not committed).
use hookfleet_testkit as common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::receiver::{Receiver, Reply};
use common::{Broker, EventSink, RunningWorker, TestDb, eventually, test_config, unique_prefix};
use fantoccini::{Client, ClientBuilder, Locator};
use hookfleet::amqp::topology::Names;
use hookfleet::config::{Config, SecretString};
use hookfleet::job::{Done, Handler, Job, JobError};
use hookfleet::outbox::{self, Event};
use hookfleet::push_job::PushJob;
use hookfleet::webhook::{self, manage};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "console-test-token";

/// Fails permanently on `{"junk": true}` always, and on anything else while
/// `broken`; counts what it handles.
struct Fickle {
    broken: Arc<AtomicBool>,
    handled: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Handler for Fickle {
    fn kind(&self) -> &str {
        "work"
    }
    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        let body: serde_json::Value = serde_json::from_slice(&job.raw).unwrap_or_default();
        if body["junk"] == json!(true) {
            return Err(JobError::permanent("unparseable junk from the importer"));
        }
        if self.broken.load(Ordering::SeqCst) {
            return Err(JobError::permanent("downstream schema mismatch"));
        }
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(Done::Handled)
    }
}

/// The default handlers plus [`Fickle`] on `broken` and `handled`.
fn factory(
    broken: &Arc<AtomicBool>,
    handled: &Arc<AtomicUsize>,
) -> hookfleet::worker::HandlerFactory {
    let fickle: Arc<dyn Handler> = Arc::new(Fickle {
        broken: broken.clone(),
        handled: handled.clone(),
    });
    Box::new(move |c, p| {
        let mut hs = (hookfleet::worker::default_handlers())(c, p);
        hs.push(fickle);
        hs
    })
}

/// chromedriver on a free port, killed on drop, and a headless session.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (scripts/services installs chromium-driver)");
        eventually(WAIT, "chromedriver listening", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        // fantoccini's rustls and the crate's both compiled in: pick ring, as the crate does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1100,900"]}),
        );
        let client = ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("webdriver session");
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            _driver: driver,
            shots,
        }
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The element's text; found again when the live refresh replaced it
    /// between finding and reading (a stale element reference).
    async fn text(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let el = self
                .client
                .wait()
                .at_most(WAIT)
                .for_element(Locator::Css(css))
                .await
                .unwrap();
            match el.text().await {
                Ok(t) => return t,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "element replaced; finding it again")
                }
                Err(e) => panic!("text of {css}: {e}"),
            }
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn fill(&self, css: &str, value: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(value).await.unwrap();
    }

    /// Signs in as `user` and lands on the overview.
    async fn login(&self, base: &str, user: &str) {
        self.client
            .goto(&format!("{base}/console/login"))
            .await
            .unwrap();
        self.fill("#token", TOKEN).await;
        self.fill("#user", user).await;
        self.click("#signin").await;
        // The click may return before the browser has followed the redirect.
        let c = &self.client;
        eventually(WAIT, "signed in: the overview", || async move {
            let h1 = c.find(Locator::Css("h1")).await.ok()?.text().await.ok()?;
            (h1 == "Overview").then_some(())
        })
        .await;
    }

    /// Clicks `css`, which loads another page (accepting the confirmation
    /// first when `confirm`), and waits until that page has loaded: a click
    /// may return before the browser has left the page it was on.
    async fn load_by(&self, css: &str, confirm: bool) {
        let c = &self.client;
        c.execute("window.__left = false; return null;", vec![])
            .await
            .unwrap();
        self.click(css).await;
        if confirm {
            c.accept_alert().await.unwrap();
        }
        eventually(WAIT, &format!("the page {css} loads"), || async move {
            let v = c
                .execute(
                    "return window.__left === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await
                .ok()?;
            (v == json!(true)).then_some(())
        })
        .await;
    }

    /// The page's HTML as the browser has it.
    async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    /// Waits until the page's flash message contains `want`.
    async fn flash(&self, want: &str) -> String {
        let c = &self.client;
        eventually(WAIT, &format!("flash {want:?}"), || async move {
            let t = c.find(Locator::Id("flash")).await.ok()?.text().await.ok()?;
            t.contains(want).then_some(t)
        })
        .await
    }
}

struct Env {
    db: TestDb,
    cfg: Config,
    broker: Broker,
    worker: RunningWorker,
    relay_stop: CancellationToken,
    relay: tokio::task::JoinHandle<anyhow::Result<()>>,
    names: Names,
    base: String,
    broken: Arc<AtomicBool>,
    handled: Arc<AtomicUsize>,
}

impl Env {
    async fn start() -> Env {
        Env::start_with(|_| {}).await
    }

    /// [`Env::start`] with `tweak` applied to the worker's config.
    async fn start_with(tweak: impl FnOnce(&mut Config)) -> Env {
        let db = TestDb::new().await;
        let mut cfg = test_config(&db.url, &unique_prefix());
        cfg.worker.kinds = vec!["push".into(), "webhook".into(), "work".into()];
        cfg.webhook.allowed_hosts = vec!["127.0.0.1".into()];
        cfg.outbox.poll_interval = Duration::from_millis(100);
        cfg.admin.console_token = SecretString::new(TOKEN);
        cfg.admin.queue_depth_interval = Duration::from_millis(500);
        tweak(&mut cfg);
        let broker = Broker::new(&cfg).await;
        let broken = Arc::new(AtomicBool::new(true));
        let handled = Arc::new(AtomicUsize::new(0));
        let worker = RunningWorker::start_with(cfg.clone(), factory(&broken, &handled));
        worker.ready().await;
        let relay_stop = CancellationToken::new();
        let relay = tokio::spawn(outbox::run_relay(
            cfg.amqp.clone(),
            cfg.outbox.clone(),
            db.pool.clone(),
            relay_stop.clone(),
        ));
        let addr = *worker.state.admin_addr.get().expect("admin bound");
        Env {
            names: Names::new(&cfg.amqp.prefix),
            base: format!("http://{addr}"),
            db,
            cfg,
            broker,
            worker,
            relay_stop,
            relay,
            broken,
            handled,
        }
    }

    /// A restart, as a rolling update does it: a new worker (with its own
    /// console, on a new port) comes up, then the old one stops.
    async fn restart_worker(&mut self) {
        let new = RunningWorker::start_with(self.cfg.clone(), factory(&self.broken, &self.handled));
        new.ready().await;
        let old = std::mem::replace(&mut self.worker, new);
        old.stop().await.unwrap();
        let addr = *self.worker.state.admin_addr.get().expect("admin bound");
        self.base = format!("http://{addr}");
    }

    async fn stop(self) {
        self.relay_stop.cancel();
        let _ = self.relay.await;
        self.worker.stop().await.unwrap();
        self.broker.cleanup(&self.cfg).await;
        drop(self.db);
    }

    async fn dead_depth(&self, n: u32) {
        let q = self.names.dead_queue("work");
        let b = &self.broker;
        eventually(WAIT, &format!("{n} dead letters"), || {
            let q = q.clone();
            async move { (b.depth(&q).await == n).then_some(()) }
        })
        .await;
    }

    /// One synthetic push event fanned out to webhook deliveries (as the push
    /// handler writes them).
    async fn push_event(&self, repo: &str) {
        let push = PushJob {
            push_id: Uuid::now_v7(),
            repository: repo.into(),
            path: None,
            pusher: Some("ann".into()),
            push_options: vec![],
            pushed_at: chrono::Utc::now(),
            refs_omitted: 0,
            updates: vec![],
        };
        let ev = Event::new(
            &self.names,
            "git.push",
            Some(push.push_id.to_string()),
            json!({ "ref": "refs/heads/main", "push_id": push.push_id }),
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
    }

    async fn attempts(&self, n: i64) {
        let pool = &self.db.pool;
        eventually(WAIT, &format!("{n} webhook attempts"), || async move {
            let c: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_attempts")
                .fetch_one(pool)
                .await
                .ok()?;
            (c >= n).then_some(())
        })
        .await;
    }
}

/// Without the token every page is 401; with it but without the CSRF token
/// every action is 403 and changes nothing.
async fn refusals(env: &Env) {
    let http = common::http_client().build().unwrap();
    let url = format!("{}/console/dlq?kind=work", env.base);
    let anon = http.get(&url).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    let wrong = http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // The other admin endpoints stay open.
    let health = http
        .get(format!("{}/healthz", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let discard_all = "kind=work&do=discard-matching";
    let no_csrf = http
        .post(format!("{}/console/dlq/action", env.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(discard_all)
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), 403);
    let bad_csrf = http
        .post(format!("{}/console/dlq/action", env.base))
        .bearer_auth(TOKEN)
        .header("x-csrf-token", "00")
        .body(discard_all)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_csrf.status(), 403);
    // A logged-in session cookie alone is not enough either.
    let login = common::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/console/login", env.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}&user=mallory"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookies: Vec<String> = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    assert!(
        login
            .headers()
            .get_all("set-cookie")
            .iter()
            .all(|v| v.to_str().unwrap().contains("HttpOnly; SameSite=Strict"))
    );
    let with_cookie = http
        .post(format!("{}/console/dlq/action", env.base))
        .header("cookie", cookies.join("; "))
        .body(discard_all)
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), 403);
    env.dead_depth(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_console_in_a_browser() {
    let env = Env::start().await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;

    // Dead letters: one the fix will cure, two junk ones.
    let fixable = env.broker.publish_job("work", &json!({"n": 1})).await;
    env.broker.publish_job("work", &json!({"junk": true})).await;
    env.broker.publish_job("work", &json!({"junk": true})).await;
    env.dead_depth(3).await;
    refusals(&env).await;

    // Outbox rows: three events, published by the relay.
    let sink = EventSink::new(&env.broker).await;
    let mut tx = env.db.pool.begin().await.unwrap();
    let events: Vec<Event> = (0..3)
        .map(|i| Event::new(&env.names, "console.test", None, json!({ "i": i })))
        .collect();
    outbox::enqueue_many(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();

    // A webhook delivery.
    let sub = manage::add(
        &env.db.pool,
        &manage::AddRequest {
            repo: "org/*".into(),
            url: rx.url(),
            secret: Some("k".into()),
            events: "push".into(),
            content_type: "json".into(),
            style: Default::default(),
        },
        &Default::default(),
    )
    .await
    .unwrap()
    .id;
    env.push_event("org/app").await;
    rx.wait_for(1).await;
    env.attempts(1).await;

    let b = Browser::start().await;
    let c = &b.client;

    // Without the token: the sign-in page, not the console.
    c.goto(&format!("{}/console/dlq", env.base)).await.unwrap();
    assert!(b.text("#denied").await.contains("needs the console token"));
    c.goto(&format!("{}/console/login", env.base))
        .await
        .unwrap();
    b.fill("#token", "wrong").await;
    b.click("#signin").await;
    assert_eq!(b.text("#error").await, "wrong token");
    b.shot("login").await;
    b.fill("#token", TOKEN).await;
    b.fill("#user", "ann").await;
    b.click("#signin").await;
    assert_eq!(b.text("h1").await, "Overview");

    // Overview refreshes by itself: the outbox drains to 0 without a reload.
    eventually(WAIT, "overview shows an empty outbox", || async move {
        let t = c
            .find(Locator::Css("[data-f=outbox_pending]"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (t == "0").then_some(())
    })
    .await;
    assert!(b.text("#kinds").await.contains("work"));
    b.shot("overview").await;

    // Dead letters: open one, requeue the fixable one and see it handled.
    c.goto(&format!("{}/console/dlq?kind=work", env.base))
        .await
        .unwrap();
    assert!(b.text("#shown").await.starts_with("3 shown"));
    b.shot("dead-letters").await;
    b.click(&format!("a[href$='/{fixable}']")).await;
    assert!(b.text("#body").await.contains("\"n\": 1"));
    assert!(
        b.text("#headers")
            .await
            .contains("downstream schema mismatch")
    );
    b.shot("dead-letter").await;
    env.broken.store(false, Ordering::SeqCst);
    b.click(&format!("button[value='requeue-one:{fixable}']"))
        .await;
    b.flash("requeued 1 message(s)").await;
    let h = &env.handled;
    eventually(WAIT, "requeued dead letter handled", || async move {
        (h.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    env.dead_depth(2).await;

    // Bulk: filter by reason, discard all matching after confirming.
    b.fill("#reason_contains", "JUNK").await;
    b.click("#apply").await;
    assert!(b.text("#shown").await.starts_with("2 shown"));
    b.click("#discard-matching").await;
    c.accept_alert().await.unwrap();
    b.flash("discarded 2 message(s)").await;
    env.dead_depth(0).await;
    assert_eq!(env.handled.load(Ordering::SeqCst), 1);

    // Outbox: dry run first, then the replay in the background.
    c.goto(&format!("{}/console/outbox", env.base))
        .await
        .unwrap();
    b.fill("#r-event_type", "console.test").await;
    b.click("#replay-dry").await;
    assert!(b.text("#dry-count").await.starts_with("3 events match"));
    assert_eq!(
        c.find_all(Locator::Css("#sample tbody tr"))
            .await
            .unwrap()
            .len(),
        3
    );
    b.shot("outbox-dry-run").await;
    b.click("#replay-run").await;
    c.accept_alert().await.unwrap();
    eventually(WAIT, "replay done on the page", || async move {
        let t = c
            .find(Locator::Id("replay-state"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (t == "done").then_some(())
    })
    .await;
    assert_eq!(b.text("#replay-done").await, "3");
    assert_eq!(b.text("#replay-total").await, "3");
    let mut got = Vec::new();
    sink.wait_for(&mut got, 6, "three events and their three replays")
        .await;
    b.shot("outbox").await;

    // Webhooks: redeliver and see the new attempt; disable the subscription.
    c.goto(&format!("{}/console/webhooks", env.base))
        .await
        .unwrap();
    assert_eq!(
        c.find_all(Locator::Css("#deliveries tbody tr"))
            .await
            .unwrap()
            .len(),
        1
    );
    b.click("button.redeliver").await;
    b.flash("redelivery of").await;
    rx.wait_for(2).await;
    env.attempts(2).await;
    c.refresh().await.unwrap();
    assert_eq!(
        c.find_all(Locator::Css("#deliveries tbody tr"))
            .await
            .unwrap()
            .len(),
        2
    );
    b.click(&format!("#sub-{sub}-toggle")).await;
    b.flash(&format!("disabled subscription {sub}")).await;
    assert_eq!(b.text(&format!("#sub-{sub}-state")).await, "disabled");
    b.shot("webhooks").await;

    c.goto(&format!("{}/console/jobs", env.base)).await.unwrap();
    assert_eq!(b.text("h1").await, "In-flight jobs");
    b.shot("jobs").await;

    b.client.clone().close().await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_and_resumes_a_kind_from_the_guards_page() {
    let env = Env::start().await;
    let b = Browser::start().await;
    let c = &b.client;
    b.login(&env.base, "ann").await;

    // The page shows the breakers this process's gauge holds (the breaker
    // itself is tested with a blackholed host in tests/guards.rs).
    hookfleet::metrics::metrics()
        .webhook_breaker_state
        .with_label_values(&["dead.example:443"])
        .set(2);
    c.goto(&format!("{}/console/webhooks", env.base))
        .await
        .unwrap();
    assert!(b.text("#breakers").await.contains("dead.example:443 open"));
    c.goto(&format!("{}/console/guards", env.base))
        .await
        .unwrap();
    assert!(b.text("#breakers").await.contains("dead.example:443 open"));
    assert_eq!(b.text("#killswitch").await, "closed");
    assert_eq!(b.text("#kind-work-state").await, "consuming");
    b.fill("#kind-work-reason", "schema migration").await;
    b.click("#kind-work-pause").await;
    b.flash("paused work on every worker").await;
    assert_eq!(b.text("#kind-work-state").await, "paused");
    assert!(b.text("#paused").await.contains("by ann: schema migration"));
    b.shot("guards").await;

    // The worker stops consuming the kind; what is published stays queued.
    let (broker, queue) = (&env.broker, env.names.queue("work"));
    let q = &queue;
    eventually(WAIT, "no consumer on the paused queue", || async move {
        (broker.consumers(q).await == 0).then_some(())
    })
    .await;
    env.broken.store(false, Ordering::SeqCst);
    broker.publish_job("work", &json!({"n": 1})).await;
    assert_eq!(broker.depth(q).await, 1);
    assert_eq!(env.handled.load(Ordering::SeqCst), 0);

    b.click("#kind-work-resume").await;
    b.flash("resumed work on every worker").await;
    assert_eq!(b.text("#kind-work-state").await, "consuming");
    let h = &env.handled;
    eventually(WAIT, "the queued job handled after resume", || async move {
        (h.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    b.client.clone().close().await.unwrap();
    env.stop().await;
}

/// The subscriptions of the database: (id, secret, previous secret).
async fn stored_subscriptions(env: &Env) -> Vec<(i64, Option<String>, Option<String>)> {
    sqlx::query_as("SELECT id, secret, previous_secret FROM webhook_subscriptions ORDER BY id")
        .fetch_all(&env.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_webhook_subscriptions_in_a_browser() {
    // The outbox is relayed by the test's own relay task, not the worker.
    let env = Env::start_with(|cfg| cfg.outbox.relay = false).await;
    let rx = Receiver::start(vec![], Reply::Status(200)).await;
    let b = Browser::start().await;
    let c = &b.client;
    b.login(&env.base, "ann").await;
    assert_eq!(b.text("[data-f=relay_rate]").await, "not running here");

    // Add, standard style without a secret: one is generated and shown once,
    // and the ping `webhook add` sends arrives signed with it.
    c.goto(&format!("{}/console/webhooks", env.base))
        .await
        .unwrap();
    b.click("#add-subscription summary").await;
    b.fill("#a-repo", "org/*").await;
    b.fill("#a-url", &rx.url()).await;
    c.find(Locator::Css("#a-style option[value=standard]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.load_by("#a-add", false).await;
    assert_eq!(b.text("h1").await, "Subscription added");
    let secret = b.text("#new-secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    b.shot("webhooks-added").await;
    let subs = stored_subscriptions(&env).await;
    assert_eq!(subs.len(), 1);
    let sub = subs[0].0;
    let ping = rx.wait_for(1).await;
    assert_eq!(
        ping[0].headers.get("x-hookfleet-event").map(String::as_str),
        Some("webhook.ping")
    );
    assert!(ping[0].headers.contains_key("webhook-signature"));
    env.attempts(1).await;

    // Secrets never on the page again.
    b.load_by("#continue", false).await;
    assert_eq!(b.text("h1").await, "Webhooks");
    assert!(!b.source().await.contains(&secret));

    // A push: its delivery's request and response, headers and bodies.
    env.push_event("org/app").await;
    rx.wait_for(2).await;
    env.attempts(2).await;
    c.refresh().await.unwrap();
    b.click("#deliveries tbody tr:first-child details summary")
        .await;
    let req_body = b.text("#deliveries tbody tr:first-child .req-body").await;
    assert!(req_body.contains("\"type\": \"git.push\""), "{req_body}");
    assert!(req_body.contains("refs/heads/main"), "{req_body}");
    let req_headers = b
        .text("#deliveries tbody tr:first-child .req-headers")
        .await;
    assert!(req_headers.contains("webhook-signature"), "{req_headers}");
    assert!(!req_headers.contains(&secret));
    let resp_headers = b
        .text("#deliveries tbody tr:first-child .resp-headers")
        .await;
    assert!(
        resp_headers.contains("\"x-receiver\": \"hookfleet-test\""),
        "{resp_headers}"
    );
    assert_eq!(
        b.text("#deliveries tbody tr:first-child .resp-body").await,
        "receiver says hi"
    );
    b.shot("webhook-delivery").await;

    // Filters: by event, by status, by subscription.
    b.fill("#f-event", "webhook.ping").await;
    b.load_by("#f-apply", false).await;
    let rows = c
        .find_all(Locator::Css("#deliveries tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains("webhook.ping"));
    b.fill("#f-event", "").await;
    c.find(Locator::Css("#f-status option[value=failed]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.load_by("#f-apply", false).await;
    assert!(b.text("#deliveries").await.contains("nothing here"));
    c.goto(&format!(
        "{}/console/webhooks?subscription={}",
        env.base,
        sub + 1
    ))
    .await
    .unwrap();
    assert!(b.text("#deliveries").await.contains("nothing here"));
    c.goto(&format!("{}/console/webhooks?subscription={sub}", env.base))
        .await
        .unwrap();
    assert_eq!(
        c.find_all(Locator::Css("#deliveries tbody tr"))
            .await
            .unwrap()
            .len(),
        2
    );

    // Rotate without a secret: a new one, shown once; the old one kept for the overlap.
    b.click(&format!("#sub-{sub}-manage")).await;
    b.load_by(&format!("#sub-{sub}-rotate"), true).await;
    assert_eq!(b.text("h1").await, "Secret rotated");
    let rotated = b.text("#new-secret").await;
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    let subs = stored_subscriptions(&env).await;
    assert_eq!(subs[0].1.as_deref(), Some(rotated.as_str()));
    assert_eq!(subs[0].2.as_deref(), Some(secret.as_str()));
    b.shot("webhooks-rotated").await;

    // Without the CSRF token, remove is refused and changes nothing.
    let http = common::http_client().build().unwrap();
    let refused = http
        .post(format!("{}/console/webhooks/remove", env.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id={sub}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(stored_subscriptions(&env).await.len(), 1);

    // Remove, after confirming.
    b.load_by("#continue", false).await;
    b.click(&format!("#sub-{sub}-manage")).await;
    b.load_by(&format!("#sub-{sub}-remove"), true).await;
    b.flash(&format!("removed subscription {sub}")).await;
    assert!(stored_subscriptions(&env).await.is_empty());
    assert!(b.text("#subscriptions").await.contains("nothing here"));

    b.client.clone().close().await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_stopped_by_a_restart_resumes_from_the_page() {
    let mut env = Env::start().await;
    const N: usize = 12;
    // The relay publishes events only where they route.
    let _sink = EventSink::new(&env.broker).await;
    let mut tx = env.db.pool.begin().await.unwrap();
    let events: Vec<Event> = (0..N)
        .map(|i| Event::new(&env.names, "resume.test", None, json!({ "i": i })))
        .collect();
    outbox::enqueue_many(&mut tx, &events).await.unwrap();
    tx.commit().await.unwrap();
    // And one row set aside (parked) as the relay parks one, for `unpark --all`.
    let mut tx = env.db.pool.begin().await.unwrap();
    let parked = Event::new(&env.names, "parked.test", None, json!({}));
    outbox::enqueue(&mut tx, &parked).await.unwrap();
    let parked_id: i64 = sqlx::query_scalar(
        "UPDATE outbox_pending SET parked_at = now(), last_error = 'refused', \
             publish_attempts = 5, next_attempt_at = 'infinity' \
         WHERE id = (SELECT max(id) FROM outbox) RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM outbox WHERE event_type = 'resume.test' ORDER BY id")
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(ids.len(), N);
    let (pool, want) = (&env.db.pool, &ids);
    eventually(WAIT, "the relay published the events", || async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_published WHERE id = ANY($1)")
            .bind(want)
            .fetch_one(pool)
            .await
            .ok()?;
        (n as usize == N).then_some(())
    })
    .await;

    // Replays go to an exchange of their own (--to-exchange), into one queue.
    let ch = env.broker.conn.create_channel().await.unwrap();
    let target = format!("{}.replay-target", env.names.prefix);
    ch.exchange_declare(
        target.as_str().into(),
        lapin::ExchangeKind::Fanout,
        lapin::options::ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        target.as_str().into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        target.as_str().into(),
        target.as_str().into(),
        "".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();

    let b = Browser::start().await;
    let c = &b.client;
    b.login(&env.base, "ann").await;
    // Overview: consumers per kind from the broker, in flight labelled as this
    // process's, and the relay rate of this process.
    assert!(b.text("#kinds thead").await.contains("In flight here"));
    let consumers = "[data-k=\"work.consumers\"]";
    eventually(WAIT, "one consumer on the work queue", || async move {
        let t = c
            .find(Locator::Css(consumers))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (t == "1").then_some(())
    })
    .await;
    // The worker relays (outbox.relay): after two refreshes the rate is measured.
    assert!(env.cfg.outbox.relay);
    eventually(WAIT, "the relay rate measured", || async move {
        let t = c
            .find(Locator::Css("[data-f=relay_rate]"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        t.ends_with("/s").then_some(())
    })
    .await;
    assert!(
        b.text("[data-f=relay_window]")
            .await
            .starts_with("over the last")
    );
    b.shot("overview-queues").await;

    c.goto(&format!("{}/console/outbox", env.base))
        .await
        .unwrap();
    b.load_by("#unpark-all", true).await;
    b.flash("unparked 1").await;
    let pool = &env.db.pool;
    eventually(WAIT, "the unparked row published", || async move {
        sqlx::query_scalar::<_, i64>("SELECT id FROM outbox_published WHERE id = $1")
            .bind(parked_id)
            .fetch_optional(pool)
            .await
            .ok()?
    })
    .await;
    b.fill("#r-event_type", "resume.test").await;
    b.fill("#r-to_exchange", &target).await;
    b.fill("#r-rate", "4").await;
    b.load_by("#replay-dry", false).await;
    let dry = b.text("main").await;
    assert!(dry.contains(&format!("{N} events match")), "{dry}");
    b.load_by("#replay-run", true).await;
    b.flash("started").await;
    let replay: i64 = sqlx::query_scalar("SELECT max(id) FROM console_replays")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    let (br, q) = (&env.broker, target.clone());
    eventually(WAIT, "a few replayed events", || {
        let q = q.clone();
        async move { (br.depth(&q).await >= 3).then_some(()) }
    })
    .await;
    b.shot("outbox-replay-running").await;

    // The restart: the old worker's stop returns once its replay has
    // stored where it stopped.
    env.restart_worker().await;
    let (state, next_id, published): (String, i64, i64) =
        sqlx::query_as("SELECT state, next_id, published FROM console_replays WHERE id = $1")
            .bind(replay)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    let before = env.broker.depth(&target).await as usize;
    assert!(before < N, "the replay finished before the restart");
    assert_eq!(state, "interrupted");
    assert_eq!(published as usize, before);
    assert_eq!(next_id, ids[before]);

    // The new process's page shows it and resumes it from its cursor.
    b.login(&env.base, "ann").await;
    c.goto(&format!("{}/console/outbox", env.base))
        .await
        .unwrap();
    assert_eq!(
        b.text(&format!("#replay-{replay}-state")).await,
        "interrupted"
    );
    b.shot("outbox-replay-interrupted").await;
    b.load_by(&format!("#resume-{replay}"), true).await;
    b.flash(&format!("resumed from id {next_id}")).await;
    eventually(WAIT, "the resumed replay done on the page", || async move {
        c.refresh().await.ok()?;
        let t = c
            .find(Locator::Id("replay-state"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (t == "done").then_some(())
    })
    .await;
    assert_eq!(b.text("#replay-done").await, N.to_string());
    assert_eq!(b.text("#replay-total").await, N.to_string());
    b.shot("outbox-replay-resumed").await;

    // Every event exactly once at the target: nothing skipped, nothing twice.
    let mut seen = Vec::new();
    while let Some(m) = ch
        .basic_get(
            target.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let from = m
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-replayed-from").cloned());
        match from {
            Some(lapin::types::AMQPValue::LongLongInt(id)) => seen.push(id),
            other => panic!("x-replayed-from: {other:?}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, ids);

    // A process killed outright leaves its replay `running`; once its
    // heartbeat is stale the page shows it interrupted and resumes it from
    // the last stored cursor.
    let killed: i64 = sqlx::query_scalar(
        "INSERT INTO console_replays (request, started_by, state, owner, next_id, published, \
             total, heartbeat_at) \
         VALUES ($1, 'bob', 'running', $2, $3, 6, $4, now() - interval '1 minute') RETURNING id",
    )
    .bind(json!({"event_type": "resume.test", "to_exchange": target}))
    .bind(Uuid::now_v7())
    .bind(ids[6])
    .bind(N as i64)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    c.goto(&format!("{}/console/outbox", env.base))
        .await
        .unwrap();
    assert_eq!(
        b.text(&format!("#replay-{killed}-state")).await,
        "interrupted"
    );
    b.load_by(&format!("#resume-{killed}"), true).await;
    b.flash(&format!("resumed from id {}", ids[6])).await;
    let (br, q) = (&env.broker, target.clone());
    eventually(WAIT, "the rest of the killed replay", || {
        let q = q.clone();
        async move { (br.depth(&q).await as usize == N - 6).then_some(()) }
    })
    .await;
    let pool = &env.db.pool;
    eventually(WAIT, "the killed replay done", || async move {
        let (state, published): (String, i64) =
            sqlx::query_as("SELECT state, published FROM console_replays WHERE id = $1")
                .bind(killed)
                .fetch_one(pool)
                .await
                .ok()?;
        (state == "done" && published == N as i64).then_some(())
    })
    .await;

    b.client.clone().close().await.unwrap();
    env.stop().await;
}
