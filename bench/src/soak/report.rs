//! What the drill found, printed as a markdown table: counts, losses, chaos
//! done, and in cluster mode each node loss with how long consumption paused.

use std::time::{Duration, Instant};

/// What the drill found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) jobs: usize,
    pub(crate) republished_jobs: u64,
    pub(crate) cuts: usize,
    pub(crate) kills: usize,
    pub(crate) broker_restarts: usize,
    pub(crate) db_restarts: usize,
    pub(crate) processed: usize,
    pub(crate) lost_jobs: usize,
    pub(crate) dead_lettered: usize,
    pub(crate) inbox_rows: i64,
    pub(crate) effects_duplicated: usize,
    pub(crate) outbox_rows: usize,
    pub(crate) outbox_unpublished: i64,
    pub(crate) events_short: usize,
    pub(crate) sink_deliveries: usize,
    pub(crate) events_missing: usize,
    pub(crate) events_duplicated: usize,
    pub(crate) events_unknown: usize,
    pub(crate) converged_after: Option<Duration>,
    pub(crate) wall: Duration,
    /// Cluster mode only (none of it printed otherwise).
    pub(crate) cluster: Option<ClusterReport>,
}

/// What cluster mode adds to the report.
#[derive(Debug, Default)]
pub(crate) struct ClusterReport {
    pub(crate) workers: usize,
    pub(crate) relays: usize,
    pub(crate) losses: Vec<NodeLoss>,
}

/// One node stopped and started again.
#[derive(Debug)]
pub(crate) struct NodeLoss {
    /// Node number (1..=3).
    pub(crate) node: u8,
    /// Its name (`hf2@localhost`).
    pub(crate) name: String,
    /// The push work queue's leader before the stop, when known.
    pub(crate) leader_before: Option<u8>,
    /// ... and after the node was started again.
    pub(crate) leader_after: Option<u8>,
    /// Since the chaos began.
    pub(crate) at: Duration,
    /// `stop N` began.
    pub(crate) stop_at: Instant,
    /// `stop N` returned (the VM gone, its port closed).
    pub(crate) stopped_at: Instant,
    /// `start N` returned (the node running in the cluster again).
    pub(crate) started_at: Instant,
    /// Our processes connected to the node when it was stopped (workers by their
    /// consumer connection, relays by their relay connection), each with how long
    /// after the stop it was connected to another node (`None`: not within 60 s).
    pub(crate) moved: Vec<(String, Option<Duration>)>,
    /// The soak's job publisher was connected to the node.
    pub(crate) publisher_there: bool,
    /// Jobs confirmed by the broker and not yet processed, at the stop
    /// (approximate: the publisher counts a confirm when its window is full).
    pub(crate) backlog: i64,
    /// The publisher still had jobs to publish at the stop.
    pub(crate) publishing: bool,
    /// From the stop until the processed count next rose after `stopped_at`: the
    /// longest stretch without progress in between (`None`: it never rose again).
    pub(crate) pause: Option<Duration>,
    /// It never rose again because every job was processed by then.
    pub(crate) nothing_left: bool,
    /// The longest stretch without a rise from the stop until the count first
    /// rose after `started_at` (the node down, then rejoining).
    pub(crate) stall: Option<Duration>,
    /// The same for the publisher's confirmed count (`None` once it is done).
    pub(crate) publish_pause: Option<Duration>,
    /// As `stall`, for the events the relays published (`outbox_published`).
    pub(crate) relay_stall: Option<Duration>,
}

impl NodeLoss {
    pub(crate) fn held_leader(&self) -> bool {
        self.leader_before == Some(self.node)
    }

    /// `worker 2 (0.1 s); relay 0 (1.3 s); soak publisher`.
    pub(crate) fn connected(&self) -> String {
        let mut parts: Vec<String> = self
            .moved
            .iter()
            .map(|(who, d)| {
                format!(
                    "{who} ({})",
                    d.map_or("not reconnected within 60 s".into(), |d| format!(
                        "{:.1} s",
                        d.as_secs_f64()
                    ))
                )
            })
            .collect();
        if self.publisher_there {
            parts.push("soak publisher".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("; ")
        }
    }
}

pub(crate) fn fmt_secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

pub(crate) fn fmt_node(n: Option<u8>) -> String {
    n.map_or("?".into(), |n| format!("node {n}"))
}

impl ClusterReport {
    /// Pauses of the node losses that ended, sorted (the others are counted
    /// apart: never resumed, or nothing left to process).
    pub(crate) fn pauses(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.losses.iter().filter_map(|l| l.pause).collect();
        v.sort();
        v
    }

    pub(crate) fn print_losses(&self) {
        println!(
            "node losses. Consumption paused: the longest stretch without a rise of the processed \
             count (rows in `pushes`, sampled every 100 ms, so 0.1 s means no pause seen) from the \
             stop until the count rose after the node was gone; longest stall until it was back: the \
             same until the count rose after the node ran in the cluster again. Reconnected: from \
             the stop until the process's connection named another node (`/info`). Relays' longest \
             stall: as the consumption's, for the rows in `outbox_published`.\n"
        );
        println!(
            "| # | t | node | held the push queue's leader | leader after | stop took | down for | \
             connected to it (reconnected after) | backlog at stop | \
             **consumption paused** | longest stall until it was back | relays' longest stall | \
             publisher paused |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for (i, l) in self.losses.iter().enumerate() {
            let leader = match l.leader_before {
                None => "? (leader unknown)".to_string(),
                Some(n) if n == l.node => "yes".into(),
                Some(n) => format!("no (node {n})"),
            };
            let backlog = if l.publishing {
                l.backlog.to_string()
            } else {
                format!("{} (publishing over)", l.backlog)
            };
            println!(
                "| {} | {:.1} s | {} | {} | {} | {:.1} s | {:.1} s | {} | {} | {} | {} | {} | {} |",
                i + 1,
                l.at.as_secs_f64(),
                l.name,
                leader,
                fmt_node(l.leader_after),
                (l.stopped_at - l.stop_at).as_secs_f64(),
                (l.started_at - l.stop_at).as_secs_f64(),
                l.connected(),
                backlog,
                match l.pause {
                    Some(d) => format!("{:.1} s", d.as_secs_f64()),
                    None if l.nothing_left => "- (nothing left to process)".into(),
                    None => "never resumed".into(),
                },
                fmt_secs(l.stall),
                fmt_secs(l.relay_stall),
                fmt_secs(l.publish_pause),
            );
        }
        println!();
    }
}

impl Report {
    pub(crate) fn failed(&self) -> bool {
        self.lost_jobs > 0
            || self.dead_lettered > 0
            || self.effects_duplicated > 0
            || self.events_short > 0
            || self.events_missing > 0
            || self.outbox_unpublished > 0
            || self.processed < self.jobs
    }

    pub(crate) fn print(&self) {
        if let Some(c) = &self.cluster {
            c.print_losses();
        }
        println!("| check | value |");
        println!("| --- | --- |");
        let mut rows: Vec<(&str, String)> = vec![
            ("push jobs published", self.jobs.to_string()),
            (
                "jobs republished (unconfirmed when a connection broke)",
                self.republished_jobs.to_string(),
            ),
            (
                "chaos: connection cuts / worker SIGKILLs / broker restarts / db restarts",
                format!(
                    "{} / {} / {} / {}",
                    self.cuts, self.kills, self.broker_restarts, self.db_restarts
                ),
            ),
        ];
        if let Some(c) = &self.cluster {
            let pauses = c.pauses();
            let never = c
                .losses
                .iter()
                .filter(|l| l.pause.is_none() && !l.nothing_left)
                .count();
            rows.extend([
                (
                    "processes: workers (relay off) / `hookfleet relay`",
                    format!("{} / {}", c.workers, c.relays),
                ),
                (
                    "node losses (of them the push queue's leader)",
                    format!(
                        "{} ({})",
                        c.losses.len(),
                        c.losses.iter().filter(|l| l.held_leader()).count()
                    ),
                ),
                (
                    "**consumption pause at a node loss**: max / median",
                    if pauses.is_empty() {
                        "-".into()
                    } else {
                        format!(
                            "{} / {}",
                            fmt_secs(pauses.last().copied()),
                            fmt_secs(Some(pauses[pauses.len() / 2]))
                        )
                    },
                ),
                (
                    "longest consumption stall while a node was down or rejoining",
                    fmt_secs(c.losses.iter().filter_map(|l| l.stall).max()),
                ),
                (
                    "longest relay stall (events published) while a node was down or rejoining",
                    fmt_secs(c.losses.iter().filter_map(|l| l.relay_stall).max()),
                ),
                (
                    "consumption pause at a leader loss: max",
                    fmt_secs(
                        c.losses
                            .iter()
                            .filter(|l| l.held_leader())
                            .filter_map(|l| l.pause)
                            .max(),
                    ),
                ),
                (
                    "node losses after which consumption never resumed",
                    never.to_string(),
                ),
            ]);
        }
        rows.extend([
            (
                "pushes processed (rows in `pushes`)",
                self.processed.to_string(),
            ),
            ("**lost jobs**", self.lost_jobs.to_string()),
            ("**dead-lettered**", self.dead_lettered.to_string()),
            ("inbox rows for the push queue", self.inbox_rows.to_string()),
            (
                "**pushes whose effects were applied twice** (more outbox rows than expected)",
                self.effects_duplicated.to_string(),
            ),
            ("outbox rows", self.outbox_rows.to_string()),
            (
                "pushes with fewer outbox rows than expected",
                self.events_short.to_string(),
            ),
            (
                "outbox rows never published",
                self.outbox_unpublished.to_string(),
            ),
            ("sink deliveries", self.sink_deliveries.to_string()),
            (
                "**events missing at the sink**",
                self.events_missing.to_string(),
            ),
            (
                "events duplicated at the sink (at-least-once)",
                self.events_duplicated.to_string(),
            ),
            (
                "sink events not in the outbox",
                self.events_unknown.to_string(),
            ),
            (
                "converged after",
                self.converged_after.map_or("never (deadline)".into(), |d| {
                    format!("{:.1} s", d.as_secs_f64())
                }),
            ),
            ("wall time", format!("{:.1} s", self.wall.as_secs_f64())),
        ]);
        for (k, v) in rows {
            println!("| {k} | {v} |");
        }
        println!("\nresult: {}", if self.failed() { "FAIL" } else { "PASS" });
    }
}
