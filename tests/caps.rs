//! Every size that comes from outside is capped (issue: "bounded by
//! construction"), and each cap truncates with a flag and counts instead of
//! failing: ref lines the hook reads, refs per job (hook and worker), paths per
//! commit and per event, bytes per event, bulk refs; a job body over
//! `worker.max_job_bytes` is poison without being parsed, and an unknown schema
//! version is permanent. No event or job in these tests exceeds its cap.

use hookfleet_testkit as common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::gitrepo::{Repos, clean_env, git};
use common::{
    Broker, EventSink, RunningWorker, SinkEvent, TestDb, eventually, header, test_config,
    unique_prefix,
};
use hookfleet::config::Config;
use hookfleet::hook::post_receive::read_input;
use hookfleet::message::{H_ERROR, H_ERROR_CLASS, H_SCHEMA_VERSION, HeaderValue};
use serde_json::{Value, json};

const ZERO: &str = "0000000000000000000000000000000000000000";
const WAIT: Duration = Duration::from_secs(60);

/// `lines` ref lines of `line_len` bytes each, produced on the fly (never held).
struct Lines {
    line: Vec<u8>,
    left: usize,
    pos: usize,
}

impl Read for Lines {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() && self.left > 0 {
            let take = (self.line.len() - self.pos).min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&self.line[self.pos..self.pos + take]);
            n += take;
            self.pos += take;
            if self.pos == self.line.len() {
                self.pos = 0;
                self.left -= 1;
            }
        }
        Ok(n)
    }
}

#[test]
fn the_hook_keeps_at_most_max_input_bytes_and_counts_the_other_lines() {
    let line = format!("{ZERO} {} refs/heads/some-branch-name\n", "a".repeat(40)).into_bytes();
    let total = 50 * 1024 * 1024 / line.len();
    let input = read_input(
        Lines {
            line: line.clone(),
            left: total,
            pos: 0,
        },
        4 * 1024 * 1024,
    )
    .unwrap();
    assert!(input.bytes.len() <= 4 * 1024 * 1024);
    assert!(input.bytes.ends_with(b"\n"), "cut at a line end");
    let kept = input.bytes.len() / line.len();
    assert_eq!(input.bytes.len() % line.len(), 0, "whole lines only");
    assert_eq!(kept as u64 + input.omitted_lines, total as u64);

    // A last line without a newline beyond the cap is counted too.
    let mut data = b"x\n".repeat(10);
    data.extend_from_slice(b"tail");
    let input = read_input(&data[..], 5).unwrap();
    assert_eq!(input.bytes, b"x\nx\n");
    assert_eq!(input.omitted_lines, 9);
}

/// Config for a worker on `db` reading `repos`.
fn config(db: &TestDb, repos: &Repos) -> Config {
    let mut cfg = test_config(&db.url, &unique_prefix());
    cfg.worker.kinds = vec!["push".into()];
    cfg.hook.repositories_root = repos.dir.path().display().to_string();
    cfg.spool.dir = repos.dir.path().join("spool");
    cfg.outbox.poll_interval = Duration::from_millis(200);
    cfg
}

/// Runs the installed hook of `repos` by hand with `input` on stdin.
fn run_hook(repos: &Repos, cfg: &Config, input: &[u8], extra: &[(&str, &str)]) -> (i32, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hookfleet"));
    clean_env(&mut c);
    c.args(["hook", "post-receive"])
        .current_dir(&repos.bare)
        .env("GIT_DIR", ".")
        .env("HOOKFLEET_AMQP__PREFIX", &cfg.amqp.prefix)
        .env("HOOKFLEET_HOOK__REPOSITORIES_ROOT", repos.dir.path())
        .env("HOOKFLEET_SPOOL__DIR", &cfg.spool.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_push_of_many_refs_becomes_a_capped_job_and_a_capped_bulk_event() {
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let mut cfg = config(&db, &repos);
    cfg.push.max_bulk_refs = 100;
    let broker = Broker::new(&cfg).await;
    let sink = EventSink::new(&broker).await;
    let head = repos.git(&["rev-parse", "HEAD"]);
    repos.git(&["push", "-q", "origin", "main"]);

    // 30,000 refs through the real hook, capped at 5,000 refs per job, plus 100
    // bad lines (their messages capped at ten).
    let mut input = String::new();
    for i in 0..30_000 {
        input.push_str(&format!("{ZERO} {head} refs/heads/b{i}\n"));
    }
    for i in 0..100 {
        input.push_str(&format!("junk {i}\n"));
    }
    let (code, stderr) = run_hook(
        &repos,
        &cfg,
        input.as_bytes(),
        &[("HOOKFLEET_HOOK__MAX_REFS", "5000")],
    );
    assert_eq!(code, 0, "{stderr}");
    let ignoring = stderr.matches("ignoring line").count();
    assert_eq!(ignoring, 10, "bad-line messages capped: {stderr}");
    assert!(stderr.contains("90 more lines ignored"), "{stderr}");
    assert!(stderr.contains("push has 30000 refs"), "{stderr}");
    let jobs = broker.drain(&broker.names.queue("push")).await;
    assert_eq!(jobs.len(), 1);
    let body = &jobs[0].delivery.data;
    assert!(body.len() as u64 <= u64::from(cfg.worker.max_job_bytes));
    let job: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(job["updates"].as_array().unwrap().len(), 5000);
    assert_eq!(job["refs_omitted"], 25_000);

    // The worker caps a job published straight to the queue (20,000 refs)
    // at hook.max_refs too, and lists at most max_bulk_refs in the bulk event.
    cfg.hook.max_refs = 1000;
    let updates: Vec<Value> = (0..20_000)
        .map(|i| json!({"before": ZERO, "after": head, "ref": format!("refs/heads/x{i}")}))
        .collect();
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    broker
        .publish_job(
            "push",
            &json!({
                "push_id": uuid::Uuid::now_v7(),
                "repository": "repo.git",
                "pusher": "bulk",
                "pushed_at": "2026-12-05T08:00:00Z",
                "updates": updates,
            }),
        )
        .await;
    let bulk = wait_for_type(&sink, "git.push.bulk").await;
    let b = &bulk.body;
    assert_eq!(b["total_refs_count"], 20_000);
    assert_eq!(b["refs"].as_array().unwrap().len(), 100);
    assert_eq!(b["refs_truncated"], true);
    assert_eq!(
        b["refs_omitted"],
        20_000 - u64::from(cfg.push.max_refs) - 100
    );
    assert!(serde_json::to_vec(b).unwrap().len() as u64 <= u64::from(cfg.push.max_event_bytes));
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}

/// Waits for the next event of `event_type` in the sink (others taken meanwhile
/// are dropped).
async fn wait_for_type(sink: &EventSink, event_type: &str) -> SinkEvent {
    sink.wait_for_match(WAIT, &format!("a {event_type} event"), |e| {
        e.event_type == event_type
    })
    .await
}

#[tokio::test]
async fn paths_and_event_bytes_are_capped_with_flags_and_counts() {
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let mut cfg = config(&db, &repos);
    cfg.push.max_paths_per_commit = 100;
    cfg.push.max_paths_per_event = 150;
    cfg.push.max_event_bytes = 65_536;
    let broker = Broker::new(&cfg).await;
    let sink = EventSink::new(&broker).await;
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    // The first push, then one commit of 1,000 files, two of 80, and twenty
    // commits with 8 KB messages.
    repos.push(&cfg, common::AMQP_URL, &["-q", "origin", "main"]);
    let dir = repos.work.join("many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..1000 {
        std::fs::write(dir.join(format!("f{i}.txt")), i.to_string()).unwrap();
    }
    repos.git(&["add", "-A"]);
    repos.git(&["commit", "-q", "-m", "a thousand files"]);
    for c in 0..2 {
        for i in 0..80 {
            std::fs::write(dir.join(format!("g{c}-{i}.txt")), "g").unwrap();
        }
        repos.git(&["add", "-A"]);
        repos.git(&["commit", "-q", "-m", &format!("eighty files {c}")]);
    }
    for i in 0..20 {
        std::fs::write(repos.work.join("msg.txt"), i.to_string()).unwrap();
        let msg = repos.dir.path().join("msg");
        std::fs::write(&msg, format!("commit {i}\n\n{}", "m".repeat(8000))).unwrap();
        repos.git(&["add", "-A"]);
        git(&repos.work, &["commit", "-q", "-F", msg.to_str().unwrap()]);
    }
    let head = repos.git(&["rev-parse", "HEAD"]);
    // Drop the first push's events.
    let _ = wait_for_type(&sink, "git.branch.created").await;
    let _ = sink.take().await;
    repos.push(&cfg, common::AMQP_URL, &["-q", "origin", "main"]);
    let ev = wait_for_type(&sink, "git.push").await;
    let p = &ev.body;
    let size = serde_json::to_vec(p).unwrap().len();
    assert!(size <= 65_536, "event of {size} bytes over its cap");
    assert_eq!(p["after"], head.as_str());
    assert_eq!(p["total_commits_count"], 23);
    assert_eq!(p["commits_truncated"], true, "not every 8 KB commit fits");
    let listed = p["commits"].as_array().unwrap();
    let omitted = p["commits_omitted"].as_u64().unwrap();
    assert_eq!(listed.len() as u64 + omitted, 23);
    assert_eq!(
        listed.last().unwrap()["id"],
        head.as_str(),
        "the newest commits are kept"
    );
    assert_eq!(p["head_commit"]["id"], head.as_str());
    assert_eq!(p["paths_truncated"], true);
    // The big commits left the list, but their caps show on the push of them alone.
    worker.stop().await.unwrap();

    // Paths alone: read the 1,000-file commit's push with a large byte cap.
    let db2 = TestDb::new().await;
    let mut cfg2 = config(&db2, &repos);
    cfg2.push.max_paths_per_commit = 100;
    cfg2.push.max_paths_per_event = 150;
    let broker2 = Broker::new(&cfg2).await;
    let sink2 = EventSink::new(&broker2).await;
    let worker = RunningWorker::start_with(cfg2.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;
    let thousand = repos.git(&["rev-parse", "HEAD~22"]);
    let before = repos.git(&["rev-parse", "HEAD~23"]);
    let eighty = repos.git(&["rev-parse", "HEAD~20"]);
    broker2
        .publish_job(
            "push",
            &json!({
                "push_id": uuid::Uuid::now_v7(),
                "repository": "repo.git",
                "pusher": "paths",
                "pushed_at": "2026-12-05T08:00:00Z",
                "updates": [{"before": before, "after": eighty, "ref": "refs/heads/paths"}],
            }),
        )
        .await;
    let ev = wait_for_type(&sink2, "git.push").await;
    let commits = ev.body["commits"].as_array().unwrap().clone();
    assert_eq!(commits.len(), 3);
    let paths = |c: &Value| {
        ["added", "removed", "modified"]
            .iter()
            .map(|k| c[*k].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    assert_eq!(commits[0]["id"], thousand.as_str());
    assert_eq!(paths(&commits[0]), 100, "per-commit cap");
    assert_eq!(commits[0]["paths_omitted"], 900);
    assert_eq!(paths(&commits[1]), 50, "the event's budget: 150 in all");
    assert_eq!(paths(&commits[2]), 0);
    assert_eq!(commits[2]["paths_omitted"], 80);
    assert_eq!(ev.body["paths_truncated"], true);
    worker.stop().await.unwrap();
    broker2.cleanup(&cfg2).await;
    broker.cleanup(&cfg).await;
}

#[tokio::test]
async fn an_oversized_body_is_poison_unparsed_and_an_unknown_schema_permanent() {
    let db = TestDb::new().await;
    let repos = Repos::new(true);
    let mut cfg = config(&db, &repos);
    cfg.worker.max_job_bytes = 1_048_576;
    let broker = Broker::new(&cfg).await;
    let worker = RunningWorker::start_with(cfg.clone(), hookfleet::worker::default_handlers());
    worker.ready().await;

    // 5 MB that is not even JSON: refused by its length.
    let env = hookfleet::message::Envelope::new("push", Some("big".into()));
    broker
        .publish_raw("push", &vec![b'{'; 5 * 1024 * 1024], env.to_properties())
        .await;
    // A well-formed job from a newer producer.
    let mut env = hookfleet::message::Envelope::new("push", Some("v99".into()));
    env.headers
        .insert(H_SCHEMA_VERSION.to_string(), HeaderValue::Int(99));
    broker
        .publish_raw(
            "push",
            &serde_json::to_vec(&json!({
                "push_id": uuid::Uuid::now_v7(),
                "repository": "repo.git",
                "pusher": null,
                "pushed_at": "2026-12-05T08:00:00Z",
                "updates": [{"before": ZERO, "after": ZERO, "ref": "refs/heads/x"}],
            }))
            .unwrap(),
            env.to_properties(),
        )
        .await;
    let dead_q = broker.names.dead_queue("push");
    eventually(WAIT, "two dead letters", || {
        let (b, q) = (&broker, dead_q.clone());
        async move { (b.depth(&q).await == 2).then_some(()) }
    })
    .await;
    let mut seen: Vec<(String, String)> = broker
        .drain(&dead_q)
        .await
        .iter()
        .map(|m| {
            (
                header(&m.properties, H_ERROR_CLASS).unwrap_or_default(),
                header(&m.properties, H_ERROR).unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen[0].0, "permanent");
    assert!(
        seen[0].1.contains("x-schema-version 99 is not supported"),
        "{seen:?}"
    );
    assert_eq!(seen[1].0, "poison");
    assert!(
        seen[1].1.contains("exceeds worker.max_job_bytes"),
        "{seen:?}"
    );
    worker.stop().await.unwrap();
    broker.cleanup(&cfg).await;
}
