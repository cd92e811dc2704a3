//! The drill: workers (and relays) started, jobs published while the chaos
//! runs, then waiting for the backlog to drain before the verification.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use hookfleet::amqp::topology;
use hookfleet::push_job::PUSH_KIND;
use hookfleet_testkit::gitrepo::TinyRepo;
use hookfleet_testkit::procs::free_port;
use hookfleet_testkit::proxy::TcpProxy;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::chaos::{schedule, single_chaos};
use crate::cluster::cluster_chaos;
use crate::env::{Env, RETRY_TIERS};
use crate::opts::{CLUSTER_CYCLE, Opts};
use crate::publisher::{PublishEnd, jobs, publish_jobs};
use crate::report::{ClusterReport, Report};
use crate::sampler::{Samples, pause, sample, samples_of};
use crate::verify::{queue_depth, verify};

pub(crate) async fn drill(
    o: &Opts,
    env: &mut Env,
    started: Instant,
    budget: Duration,
) -> anyhow::Result<Report> {
    let deadline = started + budget;
    let repo = TinyRepo::create(&env.dir)?;
    // Single node: the workers reach the broker through a proxy that cuts their
    // connections. Cluster: they get every node (`amqp.urls`) and connect directly,
    // so a stopped node really cuts them.
    let (proxy, broker) = if let Some(cluster) = &env.cluster {
        (
            None,
            ("HOOKFLEET_AMQP__URLS".to_string(), cluster.urls.join(",")),
        )
    } else {
        let broker_target = {
            let u = url::Url::parse(&o.amqp_url).context("--amqp-url")?;
            let host = u.host_str().unwrap_or("127.0.0.1").to_string();
            let port = u.port().unwrap_or(5672);
            tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .context("broker address does not resolve")?
        };
        let proxy = TcpProxy::start(broker_target).await?;
        let mut via_proxy = url::Url::parse(&o.amqp_url)?;
        via_proxy
            .set_host(Some("127.0.0.1"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        via_proxy
            .set_port(Some(proxy.addr.port()))
            .map_err(|_| anyhow::anyhow!("cannot set port"))?;
        (
            Some(proxy),
            ("HOOKFLEET_AMQP__URL".to_string(), via_proxy.to_string()),
        )
    };
    env.worker_env = vec![
        broker,
        ("HOOKFLEET_AMQP__PREFIX".into(), env.cfg.amqp.prefix.clone()),
        ("HOOKFLEET_AMQP__RECONNECT_MAX".into(), "1s".into()),
        (
            "HOOKFLEET_DATABASE__URL".into(),
            env.cfg.database.url.expose().to_string(),
        ),
        ("HOOKFLEET_DATABASE__AUTO_MIGRATE".into(), "false".into()),
        ("HOOKFLEET_WORKER__KINDS".into(), "[\"push\"]".into()),
        // Short tiers and more attempts: a database restart fails a few attempts.
        (
            "HOOKFLEET_RETRY__TIERS".into(),
            format!(
                "[{}]",
                RETRY_TIERS
                    .iter()
                    .map(|ms| format!("\"{ms}ms\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        ("HOOKFLEET_RETRY__MAX_ATTEMPTS".into(), "12".into()),
        ("HOOKFLEET_OUTBOX__POLL_INTERVAL".into(), "500ms".into()),
        (
            "HOOKFLEET_HOOK__REPOSITORIES_ROOT".into(),
            repo.root.display().to_string(),
        ),
        (
            "HOOKFLEET_SPOOL__DIR".into(),
            env.dir.join("spool").display().to_string(),
        ),
        ("HOOKFLEET_LOG__LEVEL".into(), "warn".into()),
        ("HOOKFLEET_LOG__FORMAT".into(), "pretty".into()),
    ];
    if env.cluster.is_some() {
        // The relay runs in separate processes: the same settings, relay on.
        env.relay_env = env.worker_env.clone();
        env.worker_env
            .push(("HOOKFLEET_OUTBOX__RELAY".into(), "false".into()));
    }
    env.ports = (0..o.workers)
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    env.relay_ports = (0..env.relays.len())
        .map(|_| free_port())
        .collect::<anyhow::Result<_>>()?;
    for i in 0..o.workers {
        env.spawn_worker(i)?;
    }
    for i in 0..env.relays.len() {
        env.spawn_relay(i)?;
    }
    for w in env.workers.iter_mut().flatten() {
        w.wait_ready(Duration::from_secs(60)).await?;
    }
    for r in env.relays.iter_mut().flatten() {
        r.wait_ready(Duration::from_secs(60)).await?;
    }
    if env.relays.is_empty() {
        eprintln!("soak: {} workers ready", o.workers);
    } else {
        eprintln!(
            "soak: {} workers (relay off) and {} relays ready",
            o.workers,
            env.relays.len()
        );
    }

    let plan = schedule(o);
    let span = if o.cluster {
        o.publish_over.unwrap_or_else(|| {
            o.node_every
                .max(CLUSTER_CYCLE)
                .mul_f64(o.node_stops as f64 + 1.0)
        })
    } else {
        o.event_every.mul_f64(plan.len() as f64 + 1.0)
    };
    let all = jobs(&repo, o.jobs);
    let expected: HashMap<Uuid, usize> = all.iter().map(|(j, n)| (j.push_id, *n)).collect();
    let confirmed = Arc::new(AtomicU64::new(0));
    let publish_end = PublishEnd::new(Instant::now(), span);
    let publisher = tokio::spawn(publish_jobs(
        env.cfg.clone(),
        all.into_iter().map(|(j, _)| j).collect(),
        span,
        deadline,
        confirmed.clone(),
        o.cluster.then(|| publish_end.clone()),
    ));
    if o.cluster {
        eprintln!(
            "soak: publishing {} jobs over {:.0} s; chaos: {} node losses (at most one node down, \
             one every {:?} at the most), between them {plan:?}",
            o.jobs,
            span.as_secs_f64(),
            o.node_stops,
            o.node_every
        );
    } else {
        eprintln!(
            "soak: publishing {} jobs over {:.0} s; chaos: {plan:?}, cuts every {:?}",
            o.jobs,
            span.as_secs_f64(),
            o.cut_every
        );
    }

    let mut report = Report {
        jobs: o.jobs,
        ..Report::default()
    };
    let t0 = Instant::now();
    let sampling = CancellationToken::new();
    let mut sampler = None;
    if o.cluster {
        let samples: Samples = Arc::default();
        sampler = Some((
            samples.clone(),
            tokio::spawn(sample(
                env.cfg.database.url.expose().to_string(),
                confirmed.clone(),
                samples.clone(),
                sampling.clone(),
            )),
        ));
        let losses = cluster_chaos(
            o,
            env,
            &mut report,
            plan,
            &samples,
            &confirmed,
            &publish_end,
            t0,
        )
        .await?;
        report.cluster = Some(ClusterReport {
            workers: o.workers,
            relays: env.relays.len(),
            losses,
        });
    } else {
        single_chaos(o, env, &mut report, plan, proxy.as_ref(), span, t0).await?;
    }
    report.republished_jobs = publisher.await.context("publisher task")??;
    eprintln!(
        "soak: all jobs published at t={:.1}s; waiting for convergence",
        t0.elapsed().as_secs_f64()
    );

    // Converged: every push recorded (or dead-lettered) and the outbox empty.
    let pool = hookfleet::db::connect(&env.cfg.database).await?;
    let dead_queue = topology::Names::new(&env.cfg.amqp.prefix).dead_queue(PUSH_KIND);
    loop {
        let state: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pushes), \
                    (SELECT count(*) FROM outbox_pending)",
        )
        .fetch_one(&pool)
        .await;
        let dead = queue_depth(&env.cfg, &dead_queue).await.unwrap_or(0);
        if let Ok((pushes, unpublished)) = state
            && pushes as usize + dead as usize >= o.jobs
            && unpublished == 0
        {
            report.converged_after = Some(t0.elapsed());
            break;
        }
        if Instant::now() + Duration::from_secs(20) > deadline {
            eprintln!("soak: not converged before the deadline; verifying what there is");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some((samples, task)) = sampler {
        sampling.cancel();
        let _ = task.await;
        let samples = samples_of(&samples);
        if env.keep_logs {
            let mut csv =
                String::from("t_seconds,processed,events_published,publisher_confirmed\n");
            for s in &samples {
                let t = s.t.saturating_duration_since(t0).as_secs_f64();
                csv.push_str(&format!(
                    "{t:.3},{},{},{}\n",
                    s.processed, s.published, s.confirmed
                ));
            }
            let _ = std::fs::write(env.dir.join("samples.csv"), csv);
        }
        if let Some(c) = report.cluster.as_mut() {
            let last = samples.last().map_or(0, |s| s.processed);
            for l in &mut c.losses {
                l.pause = pause(&samples, l.stop_at, l.stopped_at, |s| s.processed as u64);
                l.stall = pause(&samples, l.stop_at, l.started_at, |s| s.processed as u64);
                l.relay_stall = pause(&samples, l.stop_at, l.started_at, |s| s.published as u64);
                let then = samples
                    .iter()
                    .rev()
                    .find(|s| s.t <= l.stopped_at)
                    .map_or(0, |s| s.processed);
                l.nothing_left = l.pause.is_none() && then >= last;
                l.publish_pause = if l.publishing {
                    pause(&samples, l.stop_at, l.stopped_at, |s| s.confirmed)
                } else {
                    None
                };
            }
        }
    }
    for w in env.workers.iter_mut().flatten() {
        w.terminate(Duration::from_secs(15)).await;
    }
    for r in env.relays.iter_mut().flatten() {
        r.terminate(Duration::from_secs(15)).await;
    }
    drop(proxy);

    verify(env, &pool, &expected, &mut report).await?;
    pool.close().await;
    report.wall = started.elapsed();
    Ok(report)
}
