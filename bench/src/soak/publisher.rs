//! The jobs, and publishing them as the hook does (confirmed, a window of
//! `WINDOW` in flight), republishing what a broken connection left unconfirmed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;
use hookfleet::amqp::{self, publish, topology};
use hookfleet::config::Config;
use hookfleet::push_job::update::RefUpdate;
use hookfleet::push_job::{PUSH_KIND, PushJob};
use hookfleet_testkit::gitrepo::TinyRepo;
use uuid::Uuid;

pub(crate) const ZERO: &str = "0000000000000000000000000000000000000000";

/// Unconfirmed publishes in flight from the job publisher.
pub(crate) const WINDOW: usize = 64;

pub(crate) fn jobs(repo: &TinyRepo, n: usize) -> Vec<(PushJob, usize)> {
    (0..n)
        .map(|i| {
            // Three shapes: an update of main (git.push), a new branch (git.push +
            // git.branch.created), a new tag (git.push + git.tag.created).
            let (refname, before, after, events) = match i % 3 {
                0 => (
                    "refs/heads/main".to_string(),
                    repo.c1.clone(),
                    repo.c2.clone(),
                    1,
                ),
                1 => (
                    format!("refs/heads/soak-{i}"),
                    ZERO.to_string(),
                    repo.c2.clone(),
                    2,
                ),
                _ => (
                    format!("refs/tags/soak-{i}"),
                    ZERO.to_string(),
                    repo.c1.clone(),
                    2,
                ),
            };
            let job = PushJob {
                push_id: Uuid::now_v7(),
                repository: repo.name.clone(),
                path: None,
                pusher: Some("soak".into()),
                push_options: Vec::new(),
                pushed_at: Utc::now(),
                refs_omitted: 0,
                updates: vec![RefUpdate {
                    refname,
                    before,
                    after,
                }],
            };
            (job, events)
        })
        .collect()
}

/// Publishes `jobs` as the hook does (jobs exchange, routing key `push`,
/// mandatory, confirmed), paced evenly over `span`, pipelined; jobs unconfirmed
/// when a connection breaks are published again (same message id). Returns how
/// many were republished; counts the confirmed ones in `confirmed`.
pub(crate) async fn publish_jobs(
    cfg: Config,
    jobs: Vec<PushJob>,
    span: Duration,
    deadline: Instant,
    confirmed: Arc<AtomicU64>,
    end: Option<PublishEnd>,
) -> anyhow::Result<u64> {
    let exchange = topology::Names::new(&cfg.amqp.prefix).jobs_exchange();
    let start = Instant::now();
    let per_job = span.div_f64(jobs.len().max(1) as f64);
    // With a movable end: each job after the last one by an even share of the
    // time left.
    let mut last_due = start;
    // Cluster mode: a connection that broke is closed in the background (on a
    // node that was killed, the close waits out `bounded`), so the publisher does
    // not stall for 5 s and pass that off as a consumption pause.
    let background_close = end.is_some();
    let mut next = 0usize;
    let mut republished = 0u64;
    // Jobs sent on the current channel and not yet confirmed, in order.
    let mut pending: VecDeque<(usize, lapin::PublisherConfirm)> = VecDeque::new();
    let mut retry: VecDeque<usize> = VecDeque::new();
    'connect: loop {
        if Instant::now() > deadline {
            bail!("job publisher gave up at the deadline");
        }
        let conn = match amqp::connect(&cfg.amqp, "soak-publisher").await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let Some(Ok(ch)) = bounded(publish::confirm_channel(&conn)).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        loop {
            let item = if let Some(i) = retry.pop_front() {
                Some(i)
            } else if next < jobs.len() {
                let due = match &end {
                    None => start + per_job.mul_f64(next as f64),
                    Some(end) => {
                        let left = (jobs.len() - next) as f64;
                        last_due += end.get().saturating_duration_since(last_due).div_f64(left);
                        last_due
                    }
                };
                tokio::time::sleep_until(due.into()).await;
                next += 1;
                Some(next - 1)
            } else {
                None
            };
            if let Some(i) = item {
                let job = &jobs[i];
                match bounded(publish::send(
                    &ch,
                    &exchange,
                    PUSH_KIND,
                    &job.to_json(),
                    job.envelope().to_properties(),
                    true,
                ))
                .await
                {
                    Some(Ok(c)) => pending.push_back((i, c)),
                    _ => {
                        retry.push_back(i);
                        republished += requeue(&mut pending, &mut retry);
                        drop_connection(conn, background_close).await;
                        continue 'connect;
                    }
                }
            }
            let drain_all = item.is_none();
            while pending.len() >= WINDOW || (drain_all && !pending.is_empty()) {
                let Some((i, c)) = pending.pop_front() else {
                    break;
                };
                if publish::confirmed(c, Duration::from_secs(10))
                    .await
                    .is_err()
                {
                    retry.push_back(i);
                    republished += requeue(&mut pending, &mut retry);
                    drop_connection(conn, background_close).await;
                    continue 'connect;
                }
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
            if drain_all && retry.is_empty() && pending.is_empty() {
                let _ = bounded(conn.close(200, "done".into())).await;
                return Ok(republished);
            }
        }
    }
}

/// Closes a connection that broke: inline as always, or (`background`) in a task
/// of its own, so the caller can reconnect at once.
pub(crate) async fn drop_connection(conn: lapin::Connection, background: bool) {
    if background {
        tokio::spawn(async move {
            let _ = bounded(conn.close(200, "reconnect".into())).await;
        });
    } else {
        let _ = bounded(conn.close(200, "reconnect".into())).await;
    }
}

/// `f`, or `None` after 5 s: a broker restarted under the publisher can leave a
/// lapin call (opening a channel, sending, closing) waiting on a connection that
/// will not answer, and the publisher must go on to reconnect.
pub(crate) async fn bounded<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(5), f).await.ok()
}

pub(crate) fn requeue(
    pending: &mut VecDeque<(usize, lapin::PublisherConfirm)>,
    retry: &mut VecDeque<usize>,
) -> u64 {
    let n = pending.len() as u64 + 1;
    retry.extend(pending.drain(..).map(|(i, _)| i));
    n
}

/// When the job publisher is to send its last job. Cluster mode moves it later
/// while node losses remain, so that every one of them happens under load.
#[derive(Clone)]
pub(crate) struct PublishEnd {
    pub(crate) base: Instant,
    /// Milliseconds after `base`.
    pub(crate) ms: Arc<AtomicU64>,
}

impl PublishEnd {
    pub(crate) fn new(base: Instant, span: Duration) -> PublishEnd {
        PublishEnd {
            base,
            ms: Arc::new(AtomicU64::new(span.as_millis() as u64)),
        }
    }

    pub(crate) fn get(&self) -> Instant {
        self.base + Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set(&self, t: Instant) {
        let ms = t.saturating_duration_since(self.base).as_millis() as u64;
        self.ms.store(ms, Ordering::Relaxed);
    }
}
