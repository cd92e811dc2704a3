//! Cluster mode: the 3-node RabbitMQ cluster of `scripts/rabbit-cluster`
//! (nodes stopped or killed and started again), where queue leaders and the
//! fleet's connections are, and the node-loss chaos.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hookfleet::amqp::{self, topology};
use hookfleet::config::SecretUrl;
use hookfleet::push_job::PUSH_KIND;

use crate::chaos::{Chaos, run_chaos};
use crate::env::Env;
use crate::opts::{CLUSTER_CYCLE, Opts};
use crate::publisher::PublishEnd;
use crate::report::{NodeLoss, Report, fmt_node};
use crate::sampler::{Samples, samples_of, wait_flow};

/// The 3-node cluster, driven through `scripts/rabbit-cluster`.
pub(crate) struct Cluster {
    pub(crate) script: PathBuf,
    /// AMQP URLs of nodes 1..=3, in order.
    pub(crate) urls: Vec<String>,
}

impl Cluster {
    pub(crate) fn new(script: &Path) -> Cluster {
        Cluster {
            script: script.to_path_buf(),
            urls: Vec::new(),
        }
    }

    /// Runs the script with `args`, returning its stdout; its stderr (progress
    /// lines) is kept for the error. Not killed when dropped: a stop or start cut
    /// short by `--max-seconds` finishes, and the cleanup's `up` waits for its lock.
    pub(crate) async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new(&self.script)
                .args(args)
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .with_context(|| format!("rabbit-cluster {args:?} timed out"))?
        .with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "rabbit-cluster {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    pub(crate) async fn up(&self) -> anyhow::Result<()> {
        self.run(&["up"]).await.map(drop)
    }

    pub(crate) async fn fetch_urls(&self) -> anyhow::Result<Vec<String>> {
        let urls: Vec<String> = self
            .run(&["urls"])
            .await?
            .trim()
            .split(',')
            .map(str::to_string)
            .collect();
        if urls.len() != 3 {
            bail!("rabbit-cluster urls printed {} URLs, not 3", urls.len());
        }
        Ok(urls)
    }

    pub(crate) async fn stop(&self, n: u8) -> anyhow::Result<()> {
        self.run(&["stop", &n.to_string()]).await.map(drop)
    }

    pub(crate) async fn kill(&self, n: u8) -> anyhow::Result<()> {
        self.run(&["kill", &n.to_string()]).await.map(drop)
    }

    pub(crate) async fn start(&self, n: u8) -> anyhow::Result<()> {
        self.run(&["start", &n.to_string()]).await.map(drop)
    }

    /// `host:port` of node `n`.
    pub(crate) fn address(&self, n: u8) -> String {
        SecretUrl::new(&self.urls[usize::from(n) - 1]).address()
    }

    /// True when every node's AMQP port accepts a connection.
    pub(crate) async fn all_listening(&self) -> bool {
        for n in 1..=3u8 {
            let ok = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(self.address(n)),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if !ok {
                return false;
            }
        }
        true
    }

    /// The node (1..=3) holding `queue`'s leader, asked of node `via`; `None`
    /// when the answer has none (an election under way) or the call failed.
    pub(crate) async fn leader(&self, via: u8, queue: &str) -> Option<u8> {
        self.leaders(via, &[queue]).await[0]
    }

    /// [`Cluster::leader`] of each of `queues`, in one call.
    pub(crate) async fn leaders(&self, via: u8, queues: &[&str]) -> Vec<Option<u8>> {
        let Some(out) = self
            .run(&[
                "ctl",
                &via.to_string(),
                "list_queues",
                "name",
                "leader",
                "--quiet",
                "--no-table-headers",
            ])
            .await
            .map_err(|e| eprintln!("soak: looking up queue leaders: {e:#}"))
            .ok()
        else {
            return vec![None; queues.len()];
        };
        let of = |queue: &str| {
            out.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == queue).then_some(())?;
                // `hf2@localhost` -> 2: the digit before the `@`.
                let name = f.next()?;
                let at = name.find('@')?;
                name[..at]
                    .chars()
                    .last()?
                    .to_digit(10)
                    .and_then(|d| u8::try_from(d).ok())
                    .filter(|d| (1..=3).contains(d))
            })
        };
        queues.iter().map(|q| of(q)).collect()
    }
}

/// The node (`host:port`) the process with admin `port` has its `role`
/// connection to, from its `/info` (`None`: no answer, or no such connection yet).
pub(crate) async fn node_of(port: u16, role: &str) -> Option<String> {
    let body = http_get(port, "/info").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(v.get("amqp_nodes")?.get(role)?.as_str()?.to_string())
}

/// Our processes whose main broker connection is on `address`: workers by
/// their consumer connection, relays by their relay connection.
pub(crate) async fn connected_to(env: &Env, address: &str) -> Vec<(String, u16, &'static str)> {
    let mut out = Vec::new();
    let procs = env
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("worker {i}"), *p, "consumer"))
        .chain(
            env.relay_ports
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("relay {i}"), *p, "relay")),
        );
    for (who, port, role) in procs {
        if node_of(port, role).await.as_deref() == Some(address) {
            out.push((who, port, role));
        }
    }
    out
}

/// Which node each process's main connection is on: `worker 0 -> 2, ...`.
pub(crate) async fn placement(env: &Env, cluster: &Cluster) -> String {
    let node = |a: Option<String>| {
        a.and_then(|a| (1..=3u8).find(|n| cluster.address(*n) == a))
            .map_or("?".to_string(), |n| n.to_string())
    };
    let mut parts = Vec::new();
    for (i, p) in env.ports.iter().enumerate() {
        parts.push(format!(
            "worker {i} -> {}",
            node(node_of(*p, "consumer").await)
        ));
    }
    for (i, p) in env.relay_ports.iter().enumerate() {
        parts.push(format!("relay {i} -> {}", node(node_of(*p, "relay").await)));
    }
    parts.push(format!(
        "publisher -> {}",
        node(amqp::node_in_use("soak-publisher"))
    ));
    parts.join(", ")
}

/// For each of `procs` (connected to `address` at `from`), how long after
/// `from` its connection named another node; polls every 100 ms, up to 60 s.
pub(crate) async fn watch_moves(
    procs: Vec<(String, u16, &'static str)>,
    address: String,
    from: Instant,
) -> Vec<(String, Option<Duration>)> {
    let mut out: Vec<(String, Option<Duration>)> =
        procs.iter().map(|(w, _, _)| (w.clone(), None)).collect();
    while from.elapsed() < Duration::from_secs(60) && out.iter().any(|(_, d)| d.is_none()) {
        for (k, (_, port, role)) in procs.iter().enumerate() {
            if out[k].1.is_some() {
                continue;
            }
            if let Some(node) = node_of(*port, role).await
                && node != address
            {
                out[k].1 = Some(from.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// The body of `GET path` on 127.0.0.1:`port`, within a second.
pub(crate) async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (_, body) = text.split_once("\r\n\r\n")?;
        Some(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
}

/// Cluster mode's chaos: `o.node_stops` node losses, never two nodes down at
/// once, the other disruptions (`plan`) between them.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn cluster_chaos(
    o: &Opts,
    env: &mut Env,
    report: &mut Report,
    plan: Vec<Chaos>,
    samples: &Samples,
    confirmed: &AtomicU64,
    publish_end: &PublishEnd,
    t0: Instant,
) -> anyhow::Result<Vec<NodeLoss>> {
    let queue = topology::Names::new(&env.cfg.amqp.prefix).queue(PUSH_KIND);
    let mut events = plan.into_iter();
    let mut losses: Vec<NodeLoss> = Vec::new();
    let mut prev: Option<u8> = None;
    let mut turn: u8 = 0;
    // The next node in turn (1, 2, 3, 1, ...) that is not excluded.
    let mut next_in_turn = |exclude: &[Option<u8>]| -> u8 {
        for _ in 0..3 {
            turn = turn % 3 + 1;
            if !exclude.contains(&Some(turn)) {
                return turn;
            }
        }
        turn % 3 + 1
    };
    let mut next_stop = t0 + o.node_every;
    let settle = Duration::from_secs(60);
    for k in 0..o.node_stops {
        tokio::time::sleep_until(next_stop.into()).await;
        let Some(cluster) = env.cluster.as_ref() else {
            bail!("no cluster");
        };
        // Quorum needs 2 of 3: every node must be back before the next stop.
        if !cluster.all_listening().await {
            cluster.up().await?;
        }
        if !wait_flow(samples, Instant::now(), settle, report.jobs).await {
            eprintln!(
                "soak: t={:.1}s consumption not flowing after {settle:?}; stopping a node anyway",
                t0.elapsed().as_secs_f64()
            );
        }
        // Node losses take longer than planned on a slow machine: keep publishing
        // (at a lower rate) until the remaining ones are over.
        // (A cycle: from one stop to the next, as measured so far.)
        let per_loss = match losses.first() {
            Some(first) if k > 0 => first.stop_at.elapsed().div_f64(k as f64),
            _ => o.node_every.max(CLUSTER_CYCLE),
        };
        if o.publish_over.is_none() {
            // Generous: jobs left when the last loss is over go out within a few
            // seconds (below), while a publisher done too early leaves the last
            // losses without load.
            publish_end.set(
                Instant::now() + per_loss.mul_f64((o.node_stops - k) as f64 * 1.25) + o.node_every,
            );
        }
        eprintln!(
            "soak: t={:.1}s placement: {}",
            t0.elapsed().as_secs_f64(),
            placement(env, cluster).await
        );
        let both = cluster.leaders(1, &[&queue, &env.sink]).await;
        let (leader, sink_leader) = (both[0], both[1]);
        // Every other stop the leader's node (when it is not the one just
        // stopped), else the next follower in turn.
        let node = match leader {
            Some(l) if k % 2 == 0 && Some(l) != prev => l,
            _ => next_in_turn(&[leader, prev]),
        };
        let address = cluster.address(node);
        let name = format!("node {node} ({address})");
        let targets = connected_to(env, &address).await;
        let connected = targets
            .iter()
            .map(|(w, _, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let publisher_there =
            amqp::node_in_use("soak-publisher").as_deref() == Some(address.as_str());
        let processed = samples_of(samples).last().map_or(0, |s| s.processed);
        // Approximate: the publisher counts a confirm when its window is full.
        let backlog = (confirmed.load(Ordering::Relaxed) as i64 - processed).max(0);
        let stop_at = Instant::now();
        let at = stop_at - t0;
        let watch = tokio::spawn(watch_moves(targets, address.clone(), stop_at));
        eprintln!(
            "soak: t={:.1}s {} {name}{}; connected to it: {connected}{}",
            at.as_secs_f64(),
            if o.node_kill { "killing" } else { "stopping" },
            if leader == Some(node) {
                " (the push queue's leader)"
            } else {
                ""
            },
            if publisher_there {
                "; soak publisher"
            } else {
                ""
            }
        );
        eprintln!("soak: (the sink queue's leader: {})", fmt_node(sink_leader));
        if o.node_kill {
            cluster.kill(node).await?;
        } else {
            cluster.stop(node).await?;
        }
        let stopped_at = Instant::now();
        tokio::time::sleep(o.node_down).await;
        cluster.start(node).await?;
        let started_at = Instant::now();
        let leader_after = cluster.leader(node, &queue).await;
        eprintln!(
            "soak: t={:.1}s node {node} running again (stop took {:.1} s, down {:.1} s); leader now {}",
            t0.elapsed().as_secs_f64(),
            (stopped_at - stop_at).as_secs_f64(),
            (started_at - stop_at).as_secs_f64(),
            fmt_node(leader_after),
        );
        // Let consumption resume before anything else happens, so the next
        // disruption does not add to this pause.
        wait_flow(samples, stopped_at, settle, report.jobs).await;
        let moved = watch.await.unwrap_or_default();
        let name = match node_name(cluster, node).await {
            Some(n) => n,
            None => format!("node {node}"),
        };
        losses.push(NodeLoss {
            node,
            name,
            leader_before: leader,
            leader_after,
            at,
            stop_at,
            stopped_at,
            started_at,
            moved,
            publisher_there,
            backlog,
            publishing: stop_at < publish_end.get(),
            pause: None,
            nothing_left: false,
            stall: None,
            relay_stall: None,
            publish_pause: None,
        });
        prev = Some(node);
        next_stop = stop_at + o.node_every;
        if let Some(ev) = events.next() {
            // Half way to the next stop (or at once if that is past).
            let mid = stop_at + o.node_every / 2;
            tokio::time::sleep_until(mid.max(Instant::now()).into()).await;
            eprintln!("soak: t={:.1}s {ev:?}", t0.elapsed().as_secs_f64());
            run_chaos(ev, env, report).await?;
            let done = Instant::now();
            wait_flow(samples, done, settle, report.jobs).await;
            next_stop = next_stop.max(Instant::now() + Duration::from_secs(1));
        }
    }
    // The last loss is over: the rest of the jobs within a few seconds.
    if o.node_stops > 0 && o.publish_over.is_none() {
        publish_end.set(Instant::now() + o.node_every / 2);
    }
    for ev in events {
        tokio::time::sleep_until(next_stop.into()).await;
        eprintln!("soak: t={:.1}s {ev:?}", t0.elapsed().as_secs_f64());
        run_chaos(ev, env, report).await?;
        wait_flow(samples, Instant::now(), settle, report.jobs).await;
        next_stop = Instant::now() + o.node_every / 2;
    }
    Ok(losses)
}

/// `hf<N>@localhost` for node `n`, from the script.
pub(crate) async fn node_name(cluster: &Cluster, n: u8) -> Option<String> {
    let port = cluster.address(n).rsplit(':').next()?.to_string();
    cluster
        .run(&["node-of-port", &port])
        .await
        .ok()
        .map(|s| s.trim().to_string())
}
