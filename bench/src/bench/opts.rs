//! The command line (`--quick`, `--only`, `--rounds`, `--latency-rate`, `--out`)
//! and the sizes of a quick or a full run.

use std::time::Duration;

pub struct Opts {
    pub quick: bool,
    /// `--only consume|relay|e2e|resume|outage|rss|giant|gitpush`: just that group of rows
    /// (for repeated runs of a noisy figure, or profiling one path).
    pub only: Option<String>,
    /// `--rounds N`: overrides the mode's number of alternating throughput rounds.
    pub rounds: Option<usize>,
    /// `--latency-rate N`: the paced end-to-end latency run at N pushes/s
    /// instead of half the full-load rate, to compare two builds at one rate.
    pub latency_rate: Option<f64>,
    pub out: String,
}

/// The groups `--only` accepts.
pub const GROUPS: [&str; 11] = [
    "consume", "relay", "e2e", "tracing", "resume", "outage", "rss", "giant", "gitpush",
    "deadhost", "noisy",
];

/// Parses the arguments; a bad one is an error naming it (never silently ignored:
/// a typo in `--only` would otherwise run the whole 4-minute bench).
pub fn opts() -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        only: None,
        rounds: None,
        latency_rate: None,
        out: "bench-results/bench.json".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => o.quick = true,
            // Kept for scripts written before `--only`.
            "--consume-only" => o.only = Some("consume".into()),
            "--only" => {
                let g = value("--only")?;
                if !GROUPS.contains(&g.as_str()) {
                    return Err(format!(
                        "--only must be one of {}, got {g:?}",
                        GROUPS.join("|")
                    ));
                }
                o.only = Some(g);
            }
            "--rounds" => {
                let n = value("--rounds")?;
                o.rounds = match n.parse::<usize>() {
                    Ok(n) if (1..=100).contains(&n) => Some(n),
                    _ => return Err(format!("--rounds must be 1..=100, got {n:?}")),
                };
            }
            "--latency-rate" => {
                let n = value("--latency-rate")?;
                o.latency_rate = match n.parse::<f64>() {
                    Ok(r) if (1.0..=100_000.0).contains(&r) => Some(r),
                    _ => return Err(format!("--latency-rate must be 1..=100000, got {n:?}")),
                };
            }
            "--out" => o.out = value("--out")?,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: [--quick] [--only GROUP] [--rounds N] [--latency-rate N] [--out FILE])"
                ));
            }
        }
    }
    Ok(o)
}

/// Sizes of one run.
pub struct Sizes {
    /// Alternating baseline/hookfleet rounds of the throughput rows (medians reported).
    pub rounds: usize,
    pub consume: u64,
    pub relay: u64,
    pub latency_rate: u64,
    pub latency_secs: u64,
    pub txn_secs: u64,
    pub e2e_full: usize,
    pub e2e_half_secs: u64,
    pub resume_trials: usize,
    /// Jobs published during the database outage, and its length.
    pub outage_jobs: usize,
    pub outage: Duration,
    pub backlog: usize,
    pub rss_sample: Duration,
    pub git_pushes: usize,
    /// The noisy neighbour's storm, and how long the quiet load runs per phase.
    pub noisy_storm: usize,
    pub noisy_secs: u64,
}

pub fn sizes(quick: bool) -> Sizes {
    if quick {
        Sizes {
            rounds: 1,
            consume: 20_000,
            relay: 10_000,
            latency_rate: 200,
            latency_secs: 3,
            txn_secs: 3,
            e2e_full: 1_000,
            e2e_half_secs: 3,
            resume_trials: 2,
            outage_jobs: 500,
            outage: Duration::from_secs(5),
            backlog: 20_000,
            rss_sample: Duration::from_secs(3),
            git_pushes: 5,
            noisy_storm: 5_000,
            noisy_secs: 4,
        }
    } else {
        Sizes {
            rounds: 5,
            consume: 100_000,
            relay: 50_000,
            latency_rate: 500,
            latency_secs: 10,
            txn_secs: 6,
            e2e_full: 5_000,
            e2e_half_secs: 10,
            resume_trials: 3,
            outage_jobs: 5_000,
            outage: Duration::from_secs(30),
            backlog: 100_000,
            rss_sample: Duration::from_secs(10),
            git_pushes: 20,
            noisy_storm: 20_000,
            noisy_secs: 10,
        }
    }
}
