//! The command line: the drill's sizes, its chaos, and cluster mode's options
//! (bad usage exits 2).

use std::path::PathBuf;
use std::time::Duration;

pub(crate) struct Opts {
    pub(crate) jobs: usize,
    pub(crate) workers: usize,
    pub(crate) kills: usize,
    pub(crate) cuts: Option<usize>,
    pub(crate) cut_every: Duration,
    pub(crate) event_every: Duration,
    pub(crate) broker_restart: bool,
    pub(crate) db_restart: bool,
    pub(crate) max_seconds: u64,
    pub(crate) hookfleet: Option<PathBuf>,
    pub(crate) pg_admin_url: String,
    pub(crate) amqp_url: String,
    /// Against the 3-node cluster of `scripts/rabbit-cluster` (see the module doc).
    pub(crate) cluster: bool,
    /// Cluster mode: separate `hookfleet relay` processes (the workers' relay is off).
    pub(crate) relays: usize,
    /// Cluster mode: node losses (stop, then start again).
    pub(crate) node_stops: usize,
    /// Cluster mode: at least this long between two node stops.
    pub(crate) node_every: Duration,
    /// Cluster mode: how long a stopped node stays down before it is started.
    pub(crate) node_down: Duration,
    /// Cluster mode: the jobs are published evenly over this long. Default: the
    /// publisher's end follows the node losses measured so far (it ends a few
    /// seconds after the last one), starting from `CLUSTER_CYCLE` per loss.
    pub(crate) publish_over: Option<Duration>,
    /// Cluster mode: the `rabbit-cluster` script.
    pub(crate) rabbit_cluster: PathBuf,
    /// Cluster mode: SIGKILL the node (`rabbit-cluster kill N`) instead of stopping it.
    pub(crate) node_kill: bool,
    /// Leave the temp dir (worker and relay logs) in place.
    pub(crate) keep_logs: bool,
}

/// Cluster mode: how long one node loss takes on a small machine under the
/// drill's load (2 cores: 5-7 s to stop, 12-30 s to start and rejoin). Without
/// `--publish-over`, the jobs are published over this long per node loss at
/// first (or `--node-every`, if longer); then the publisher's end follows the
/// losses measured so far.
pub(crate) const CLUSTER_CYCLE: Duration = Duration::from_secs(25);

pub(crate) fn usage(msg: &str) -> ! {
    eprintln!("hookfleet-soak: {msg}");
    eprintln!(
        "usage: hookfleet-soak [--jobs N] [--workers N] [--kills N] [--cuts N] [--cut-every SECS] \
         [--event-every SECS] [--no-broker-restart] [--no-db-restart] [--max-seconds N] [--hookfleet PATH] \
         [--keep-logs]\n       \
         hookfleet-soak --cluster [--jobs N] [--workers N] [--relays N] [--kills N] [--node-stops N] \
         [--node-every SECS] [--node-down SECS] [--node-kill] [--publish-over SECS] [--no-db-restart] \
         [--max-seconds N] [--hookfleet PATH] [--rabbit-cluster PATH] [--keep-logs]\n\
         --cluster: the 3-node cluster of scripts/rabbit-cluster (started with `up`, left running), \
         3 workers (relay off) + 2 `hookfleet relay` processes, quorum queues, no proxy; a node \
         stopped and started again every --node-every (10) s, every other one the push queue's \
         leader, --node-stops (6) in all, plus the SIGKILLs and the PostgreSQL restart; reports how \
         long consumption paused at each node loss (--node-kill: SIGKILL the node, not a graceful stop)"
    );
    std::process::exit(2)
}

pub(crate) fn opts() -> Opts {
    let mut o = Opts {
        jobs: 20_000,
        workers: 2,
        kills: 3,
        cuts: None,
        cut_every: Duration::from_secs(3),
        event_every: Duration::from_secs(6),
        broker_restart: true,
        db_restart: true,
        max_seconds: 600,
        hookfleet: None,
        pg_admin_url: hookfleet_testkit::PG_ADMIN_URL.into(),
        amqp_url: hookfleet_testkit::AMQP_URL.into(),
        cluster: false,
        relays: 2,
        node_stops: 6,
        node_every: Duration::from_secs(10),
        node_down: Duration::from_secs(1),
        publish_over: None,
        rabbit_cluster: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/rabbit-cluster"
        )),
        node_kill: false,
        keep_logs: false,
    };
    // Flags that only one of the two modes takes.
    let mut single_only: Vec<String> = Vec::new();
    let mut cluster_only: Vec<String> = Vec::new();
    let mut workers_set = false;
    let mut args = std::env::args().skip(1);
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&format!("{flag} needs a number")))
    }
    /// Seconds > 0 and finite (`Duration::from_secs_f64` panics otherwise).
    fn secs(flag: &str, v: Option<String>) -> Duration {
        let s: f64 = num(flag, v);
        if !(s.is_finite() && s > 0.0 && s < 1e6) {
            usage(&format!("{flag} needs a positive number of seconds"));
        }
        Duration::from_secs_f64(s)
    }
    while let Some(a) = args.next() {
        match a.as_str() {
            "--jobs" => o.jobs = num(&a, args.next()),
            "--workers" => {
                o.workers = num(&a, args.next());
                workers_set = true;
            }
            "--kills" => o.kills = num(&a, args.next()),
            "--cuts" => {
                o.cuts = Some(num(&a, args.next()));
                single_only.push(a);
            }
            "--cut-every" => {
                o.cut_every = secs(&a, args.next());
                single_only.push(a);
            }
            "--event-every" => {
                o.event_every = secs(&a, args.next());
                single_only.push(a);
            }
            "--no-broker-restart" => o.broker_restart = false,
            "--no-db-restart" => o.db_restart = false,
            "--max-seconds" => o.max_seconds = num(&a, args.next()),
            "--hookfleet" => {
                o.hookfleet = Some(
                    args.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| usage("--hookfleet needs a path")),
                )
            }
            "--pg-admin-url" => {
                o.pg_admin_url = args
                    .next()
                    .unwrap_or_else(|| usage("--pg-admin-url needs a URL"))
            }
            "--amqp-url" => {
                o.amqp_url = args
                    .next()
                    .unwrap_or_else(|| usage("--amqp-url needs a URL"));
                single_only.push(a);
            }
            "--cluster" => o.cluster = true,
            "--relays" => {
                o.relays = num(&a, args.next());
                cluster_only.push(a);
            }
            "--node-stops" => {
                o.node_stops = num(&a, args.next());
                cluster_only.push(a);
            }
            "--node-every" => {
                o.node_every = secs(&a, args.next());
                cluster_only.push(a);
            }
            "--node-down" => {
                o.node_down = secs(&a, args.next());
                cluster_only.push(a);
            }
            "--publish-over" => {
                o.publish_over = Some(secs(&a, args.next()));
                cluster_only.push(a);
            }
            "--rabbit-cluster" => {
                o.rabbit_cluster = args
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| usage("--rabbit-cluster needs a path"));
                cluster_only.push(a);
            }
            "--node-kill" => {
                o.node_kill = true;
                cluster_only.push(a);
            }
            "--keep-logs" => o.keep_logs = true,
            "-h" | "--help" => usage("chaos drill"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if o.jobs == 0 || o.workers == 0 || o.cut_every.is_zero() || o.event_every.is_zero() {
        usage("--jobs, --workers, --cut-every and --event-every must be positive");
    }
    if o.cluster {
        if let Some(f) = single_only.first() {
            usage(&format!(
                "{f} is not for --cluster (no proxy there: the workers connect to the nodes)"
            ));
        }
        if !workers_set {
            o.workers = 3;
        }
        // Node losses replace the connection cuts and the default node's restart.
        o.cuts = Some(0);
        o.broker_restart = false;
        if o.relays == 0 {
            usage("--relays must be positive (the workers' relay is off with --cluster)");
        }
    } else if let Some(f) = cluster_only.first() {
        usage(&format!("{f} needs --cluster"));
    }
    o
}
