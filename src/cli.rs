//! The `hookfleet` command line.
//!
//! Owns argument parsing, config loading and exit codes: 0 success, 1 runtime
//! failure, 2 bad usage or bad config. Each subcommand is a thin call into the
//! library; no business logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::{build_info, db, health::Health, hook, outbox, shutdown, telemetry, worker};

/// Printed when a webhook secret is stored without `webhook.secret_key`.
const PLAINTEXT_WARNING: &str = "webhook.secret_key is not set: the secret is stored in \
                                 plaintext (set it and run `hookfleet migrate` to encrypt)";

/// Exit code for bad usage or invalid configuration.
pub const EXIT_USAGE: u8 = 2;
/// How long the runtime's blocking threads get once the command has returned.
pub const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(name = "hookfleet", version = LONG_VERSION.as_str(), about = "Turns git pushes into reliable, observable work")]
struct Cli {
    /// Config file layered over the built-in defaults.
    #[arg(long, global = true, env = "HOOKFLEET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

static LONG_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(build_info::long_version);

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Apply database migrations (creating the database if missing).
    Migrate,
    /// Run the worker: consumers, relay and admin HTTP.
    Worker,
    /// Run only the outbox relay (and retention pruning).
    Relay,
    /// Dead letters: list and requeue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Inspect or replay the transactional outbox.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The git post-receive hook.
    Hook {
        #[command(subcommand)]
        command: HookCommand,
    },
    /// The local spool of pushes the hook could not publish.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Webhook subscriptions and deliveries.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Pause a job kind fleet-wide: every worker stops consuming it within
    /// seconds; its messages stay queued; survives worker restarts.
    Pause {
        /// Job kind (push, webhook, ...).
        #[arg(required_unless_present = "list")]
        kind: Option<String>,
        /// Why (shown by `pause --list`).
        #[arg(long)]
        reason: Option<String>,
        /// List the paused kinds instead.
        #[arg(long, conflicts_with_all = ["kind", "reason"])]
        list: bool,
    },
    /// Resume a paused job kind fleet-wide.
    Resume {
        /// Job kind.
        kind: String,
    },
}

#[derive(Debug, Subcommand)]
enum WebhookCommand {
    /// Subscribe a URL to the events of repositories matching a pattern.
    Add {
        /// Repository name or glob (`org/repo`, `org/*`, `**`).
        #[arg(long)]
        repo: String,
        /// Target URL (http or https, no credentials).
        #[arg(long)]
        url: String,
        /// HMAC-SHA256 secret: any string for
        /// --style github, `whsec_<base64>` for --style standard (generated and
        /// printed once when omitted).
        #[arg(long, env = "HOOKFLEET_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Event categories: push, branch, tag, or * for all.
        #[arg(long, default_value = "push")]
        events: String,
        /// Body format.
        #[arg(long, default_value = "json")]
        content_type: String,
        /// Signature style: github (X-Hub-Signature-256) or standard (Standard
        /// Webhooks: webhook-id, webhook-timestamp, webhook-signature).
        #[arg(long, default_value = "github")]
        style: String,
    },
    /// Give a subscription a new secret; the old one stays valid for the overlap
    /// (standard style: both signatures are sent; github style: the new one).
    RotateSecret {
        /// Subscription id.
        id: i64,
        /// The new secret (env: HOOKFLEET_WEBHOOK_SECRET); generated and printed
        /// once when omitted.
        #[arg(long, env = "HOOKFLEET_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// How long the old secret keeps signing (default: webhook.secret_overlap).
        #[arg(long, value_parser = humantime::parse_duration)]
        overlap: Option<std::time::Duration>,
    },
    /// List subscriptions (secrets are never shown).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a subscription.
    Remove {
        /// Subscription id.
        id: i64,
    },
    /// Turn a subscription back on (resets its failure count).
    Enable {
        /// Subscription id.
        id: i64,
    },
    /// Turn a subscription off; its pending deliveries fail without a request.
    Disable {
        /// Subscription id.
        id: i64,
    },
    /// Recent delivery attempts, newest first.
    Deliveries {
        /// Only this subscription's.
        #[arg(long)]
        subscription: Option<i64>,
        /// Only attempts that did not succeed.
        #[arg(long)]
        failed: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again: same delivery id and body, new job.
    Redeliver {
        /// Delivery id (X-Hookfleet-Delivery).
        delivery_id: uuid::Uuid,
    },
    /// Send a `ping` event (X-GitHub-Event: ping) to a subscription.
    Ping {
        /// Subscription id.
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// Pending rows, oldest pending age, failing rows, recent throughput.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish already published events again (same message_id, x-replayed-from).
    Replay(ReplayArgs),
    /// Put parked rows (set aside after repeated refusals) back in the relay's
    /// queue, after fixing the cause; attempts start again from 0.
    Unpark {
        /// Outbox ids to unpark (repeatable).
        #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Unpark every parked row.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Smallest outbox id (inclusive); also the resume point printed on failure.
    #[arg(long)]
    from_id: Option<i64>,
    /// Largest outbox id (inclusive).
    #[arg(long)]
    to_id: Option<i64>,
    /// Earliest creation time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Latest creation time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Event type or topic pattern (`git.push`, `git.*`, `git.#`).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only events of this correlation (push) id.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Publish to this exchange instead of the original one.
    #[arg(long)]
    to_exchange: Option<String>,
    /// Publish with this routing key instead of the original one.
    #[arg(long)]
    routing_key: Option<String>,
    /// Print the count and a sample; publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Publish at most N events per second.
    #[arg(long)]
    rate: Option<u32>,
    /// Also re-send job rows (e.g. `webhook` jobs, which deliver to receivers
    /// again); without it only events are replayed.
    #[arg(long)]
    include_jobs: bool,
}

#[derive(Debug, Subcommand)]
enum HookCommand {
    /// Run as a bare repository's hooks/post-receive: read `<old> <new> <ref>` lines
    /// from stdin and publish one push job (or spool it). Always exits 0.
    PostReceive,
    /// Write hooks/post-receive into each bare repository, calling this binary.
    Install {
        /// Bare repositories (git dirs).
        #[arg(required = true)]
        repos: Vec<PathBuf>,
        /// Replace a post-receive hook not written by hookfleet.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// Republish spooled pushes (oldest first) and print how many.
    Flush,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Show parked messages of a job kind without removing them.
    List {
        /// Job kind (`push`, `webhook`, ...).
        kind: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move parked messages back to the work queue (attempt reset to 1).
    Requeue {
        /// Job kind.
        kind: String,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
    /// Drop parked messages for good (those matching the filters; all without).
    Discard {
        /// Job kind.
        kind: String,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
}

/// Which dead letters `dlq requeue` and `dlq discard` act on.
#[derive(Debug, Clone, clap::Args)]
struct DlqFilterArgs {
    /// Only the message with this id.
    #[arg(long)]
    message_id: Option<String>,
    /// Only messages of this error class (`permanent`, `transient`, `panic`, `timeout`, `poison`).
    #[arg(long)]
    error_class: Option<String>,
    /// Only messages whose error text contains this (case-insensitive).
    #[arg(long)]
    reason_contains: Option<String>,
}

impl From<DlqFilterArgs> for crate::dlq::Filter {
    fn from(a: DlqFilterArgs) -> Self {
        Self {
            message_id: a.message_id,
            error_class: a.error_class,
            reason_contains: a.reason_contains,
        }
        .normalized()
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective config with secrets redacted.
    Check,
    /// Print the configuration reference (every key, default, allowed values,
    /// environment variable, description) as markdown: docs/CONFIG.md.
    Reference,
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if matches!(cli.command, Command::Worker | Command::Relay) {
        crate::alloc::tune();
    }
    if let Command::Hook {
        command: HookCommand::PostReceive,
    } = cli.command
    {
        return post_receive(cli.config.as_deref());
    }
    if let Command::Config {
        command: ConfigCommand::Reference,
    } = cli.command
    {
        // From the types and built-in defaults only: no file, no environment.
        print!("{}", crate::config_reference::markdown());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hookfleet: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Command::Config {
        command: ConfigCommand::Check,
    } = cli.command
    {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    let exporter = telemetry::init(&config.log, &config.tracing);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookfleet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let flush_timeout = config.tracing.flush_timeout;
    let result = runtime.block_on(run(cli.command, cli.config, config));
    if let Some(e) = exporter {
        e.shutdown(flush_timeout);
    }
    // Dropping a runtime waits for its blocking threads without limit (a DNS lookup
    // or file write stuck on a dead peer would keep a drained process alive).
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, as the README promises: no log line repeating it.
            eprintln!("hookfleet: {}", crate::error::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `hook post-receive`: exits 0 whatever happens (see `hook::post_receive`), including on
/// an invalid configuration. It installs no log subscriber: its stderr is shown to
/// the pusher, so it prints its own short lines instead.
fn post_receive(config_path: Option<&std::path::Path>) -> ExitCode {
    let loaded = Config::load(config_path);
    // A bad config still gets its input read (to print the lines to replay),
    // within the default cap.
    let max_input = match &loaded {
        Ok(c) => c.hook.max_input_bytes,
        Err(_) => Config::load_from(None, Vec::new())
            .map(|c| c.hook.max_input_bytes)
            .unwrap_or(4 * 1024 * 1024),
    };
    let input = match hook::post_receive::read_input(
        std::io::stdin().lock(),
        usize::try_from(max_input).unwrap_or(usize::MAX),
    ) {
        Ok(input) => input,
        Err(e) => {
            eprintln!("hookfleet: push NOT recorded: cannot read the hook's stdin: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "{}",
                hook::post_receive::config_error_message(&e, &input.bytes)
            );
            return ExitCode::SUCCESS;
        }
    };
    if std::env::var_os("GIT_DIR").is_none() {
        // Run by hand (git always sets GIT_DIR for hooks): the current
        // directory must be the repository.
        let cwd = std::env::current_dir().unwrap_or_default();
        if !cwd.join("HEAD").is_file() || !cwd.join("objects").is_dir() {
            eprintln!(
                "hookfleet: GIT_DIR is not set and {} is not a git repository: run \
                 `hookfleet hook post-receive` from the repository's directory (git does \
                 this for hooks/post-receive)",
                cwd.display()
            );
            return ExitCode::from(EXIT_USAGE);
        }
        if input.bytes.iter().all(u8::is_ascii_whitespace) && input.omitted_lines == 0 {
            eprintln!("hookfleet: no ref lines on stdin (`<old> <new> <ref>`): nothing to publish");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookfleet: push NOT recorded: cannot start the async runtime: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let env = hook::post_receive::HookEnv::from_env(&config.hook);
    let mut stderr = std::io::stderr();
    let exporter = telemetry::init_spans_only(&config.tracing);
    let outcome = runtime.block_on(hook::post_receive::post_receive(
        &config,
        &env,
        &input,
        &mut stderr,
    ));
    if let Some(e) = exporter {
        // Bounded: a push never waits long for a collector.
        e.shutdown(config.tracing.flush_timeout);
    }
    // The push has happened either way; a non-zero status makes git show the
    // pusher that it was not recorded (the message above says how to replay it).
    if outcome.is_lost() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `hook post-receive` is dispatched by [`main`] before the config is loaded
/// (it must exit 0 even on a bad config); reaching `run` with it is a bug,
/// answered the hook's way: exit 0.
fn unreachable_post_receive() -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}

async fn run(
    command: Command,
    config_path: Option<PathBuf>,
    config: Config,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Hook {
            command: HookCommand::PostReceive,
        } => unreachable_post_receive(),
        Command::Hook {
            command: HookCommand::Install { repos, force },
        } => {
            let binary = std::env::current_exe()?;
            let mut failed = false;
            let mut bad_usage = false;
            for repo in repos {
                match hook::install::install(&repo, &binary, config_path.as_deref(), force) {
                    Ok(hook) => {
                        let git_dir = std::fs::canonicalize(&repo).unwrap_or(repo.clone());
                        let name = hook::post_receive::repository_name(
                            &config.hook.repositories_root,
                            &git_dir,
                        );
                        println!("installed {} (repository name: {name})", hook.display());
                    }
                    Err(e) => {
                        eprintln!("hookfleet: {}", crate::error::error_chain(&e));
                        // A path that is not a repository is bad usage (exit 2),
                        // like any other bad argument; I/O failures are exit 1.
                        if matches!(e, hook::install::InstallError::NotARepository(_)) {
                            bad_usage = true;
                        }
                        failed = true;
                    }
                }
            }
            Ok(if bad_usage {
                ExitCode::from(EXIT_USAGE)
            } else if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Spool {
            command: SpoolCommand::Flush,
        } => {
            let report = hook::spool::flush_spool(&config).await?;
            println!(
                "published {} spooled push(es); {} corrupt file(s) moved aside; {} remaining",
                report.published, report.corrupt, report.remaining
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { .. } => Ok(ExitCode::SUCCESS),
        Command::Dlq { command } => dlq_command(command, &config).await,
        Command::Migrate => {
            db::ensure_database(&config.database).await?;
            let pool = db::connect(&config.database).await?;
            db::migrate(&pool).await?;
            tracing::info!("migrations applied");
            // Encrypts plaintext secrets and re-encrypts those of a former key
            // (webhook.previous_secret_keys) with webhook.secret_key, if set.
            let keys = crate::webhook::admin::keyring(&config.webhook)?;
            let resealed = crate::webhook::admin::reseal_secrets(&pool, &keys).await;
            pool.close().await;
            let resealed = resealed?;
            if resealed > 0 {
                tracing::info!(
                    subscriptions = resealed,
                    key.id = keys.current_id().unwrap_or(""),
                    "webhook secrets encrypted with webhook.secret_key"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker => {
            let token = shutdown::on_signals();
            worker::run(config, Arc::new(Health::new()), token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay => {
            let token = shutdown::on_signals();
            crate::relay_role::run(config, Arc::new(Health::new()), token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox {
            command: OutboxCommand::Status { json },
        } => {
            let pool = db::connect(&config.database).await?;
            let status = outbox::status::fetch(&pool).await?;
            pool.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Outbox {
            command: OutboxCommand::Replay(args),
        } => replay(args, config).await,
        Command::Outbox {
            command: OutboxCommand::Unpark { ids, all: _ },
        } => {
            let pool = db::connect(&config.database).await?;
            let n = outbox::storage::unpark(&pool, &ids).await?;
            pool.close().await;
            println!("unparked {n}");
            if n == 0 {
                eprintln!("hookfleet: no parked outbox row matched");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhook { command } => webhook_command(command, config).await,
        Command::Pause { kind, reason, list } => pause_command(kind, reason, list, config).await,
        Command::Resume { kind } => resume_command(kind, config).await,
    }
}

/// `pause <kind> [--reason]` and `pause --list`.
async fn pause_command(
    kind: Option<String>,
    reason: Option<String>,
    list: bool,
    config: Config,
) -> anyhow::Result<ExitCode> {
    use crate::guard::pause::{self, PauseError};
    let kind = match kind {
        Some(k) if !list => k,
        _ => {
            let pool = db::connect(&config.database).await?;
            let rows = pause::list(&pool).await;
            pool.close().await;
            let rows = rows?;
            if rows.is_empty() {
                println!("no job kind is paused");
            }
            for r in rows {
                println!(
                    "{}\tpaused {}{}{}",
                    r.kind,
                    r.paused_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.paused_by.map(|b| format!(" by {b}")).unwrap_or_default(),
                    r.reason.map(|x| format!(": {x}")).unwrap_or_default(),
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Err(e) = pause::validate_kind(&kind) {
        eprintln!("hookfleet: {e}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let pool = db::connect(&config.database).await?;
    let user = local_user();
    let r = pause::pause(&pool, &kind, user.as_deref(), reason.as_deref()).await;
    pool.close().await;
    match r {
        Ok(true) => println!("paused {kind}: workers stop consuming it within seconds"),
        Ok(false) => println!("{kind} was already paused"),
        Err(PauseError::InvalidKind(_)) => return Ok(ExitCode::from(EXIT_USAGE)),
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `resume <kind>`.
async fn resume_command(kind: String, config: Config) -> anyhow::Result<ExitCode> {
    use crate::guard::pause;
    if let Err(e) = pause::validate_kind(&kind) {
        eprintln!("hookfleet: {e}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let pool = db::connect(&config.database).await?;
    let r = pause::resume(&pool, &kind).await;
    pool.close().await;
    if r? {
        println!("resumed {kind}: workers consume it again within seconds");
    } else {
        println!("{kind} was not paused");
    }
    Ok(ExitCode::SUCCESS)
}

/// Who runs the command (`$USER`), the `sender` of the pings it asks for.
fn local_user() -> Option<String> {
    std::env::var("USER").ok().filter(|u| !u.is_empty())
}

async fn dlq_command(command: DlqCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let kind = match &command {
        DlqCommand::List { kind, .. }
        | DlqCommand::Requeue { kind, .. }
        | DlqCommand::Discard { kind, .. } => kind.clone(),
    };
    if !config.worker.kinds.contains(&kind) {
        eprintln!(
            "hookfleet: unknown job kind {kind:?}; worker.kinds is {:?}",
            config.worker.kinds
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let names = crate::amqp::topology::Names::new(&config.amqp.prefix);
    let (action, limit, filter) = match command {
        DlqCommand::List { limit, json, .. } => {
            print_dead_letters(&crate::dlq::list(config, &kind, limit).await?, &kind, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        DlqCommand::Requeue { limit, filter, .. } => (crate::dlq::Action::Requeue, limit, filter),
        DlqCommand::Discard { limit, filter, .. } => (crate::dlq::Action::Discard, limit, filter),
    };
    let filter = crate::dlq::Filter::from(filter);
    let n = crate::dlq::apply(config, &kind, &filter, limit, action).await?;
    if n == 0
        && let Some(id) = &filter.message_id
    {
        eprintln!(
            "hookfleet: no dead letter with message id {id} in {}",
            names.dead_queue(&kind)
        );
        return Ok(ExitCode::FAILURE);
    }
    tracing::info!(user = local_user().as_deref().unwrap_or("-"), dlq.kind = %kind, dlq.action = ?action, dlq.filter = ?filter, dlq.moved = n, "dlq action");
    match action {
        crate::dlq::Action::Requeue => {
            println!("requeued {n} message(s) to {}", names.queue(&kind));
        }
        crate::dlq::Action::Discard => {
            println!("discarded {n} message(s) from {}", names.dead_queue(&kind));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_dead_letters(
    letters: &[crate::dlq::DeadLetter],
    kind: &str,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(letters)?);
    } else if letters.is_empty() {
        println!("no dead letters for {kind}");
    } else {
        for d in letters {
            println!(
                "{}  attempt {}  {}: {}",
                d.message_id.as_deref().unwrap_or("(no message id)"),
                d.attempt
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.error_class.as_deref().unwrap_or("-"),
                d.error.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

async fn webhook_command(command: WebhookCommand, config: Config) -> anyhow::Result<ExitCode> {
    use crate::webhook::admin::AdminError;
    // Validate `add` before connecting, so bad input is exit 2 even with no database.
    let add = match &command {
        WebhookCommand::Add {
            repo,
            url,
            secret,
            events,
            content_type,
            style,
        } => match webhook_add_request(repo, url, secret, events, content_type, style) {
            Ok(r) => Some(r),
            Err(code) => return Ok(code),
        },
        _ => None,
    };
    let pool = db::connect(&config.database).await?;
    let names = crate::amqp::topology::Names::new(&config.amqp.prefix);
    let result = run_webhook_command(command, add, &pool, &names, &config).await;
    pool.close().await;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(AdminError::Invalid(m)) => {
            eprintln!("hookfleet: {m}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
        Err(AdminError::NotFound(m)) => {
            eprintln!("hookfleet: {m}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// `webhook add`'s arguments as a checked request, or the usage exit code after
/// saying why (before any connection, so bad input is exit 2 without a database).
fn webhook_add_request(
    repo: &str,
    url: &str,
    secret: &Option<String>,
    events: &str,
    content_type: &str,
    style: &str,
) -> Result<crate::webhook::admin::AddRequest, ExitCode> {
    use crate::webhook::admin;
    let style = match crate::webhook::subscription::Style::parse(style) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hookfleet: invalid --style: {e}");
            return Err(ExitCode::from(EXIT_USAGE));
        }
    };
    let r = admin::AddRequest {
        repo: repo.to_string(),
        url: url.to_string(),
        secret: secret.clone(),
        events: events.to_string(),
        content_type: content_type.to_string(),
        style,
    };
    if let Err(e) = admin::validate(&r) {
        eprintln!("hookfleet: {e}");
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Ok(r)
}

/// One `webhook` subcommand against the database; `add` is the request
/// [`webhook_add_request`] checked before connecting.
async fn run_webhook_command(
    command: WebhookCommand,
    add: Option<crate::webhook::admin::AddRequest>,
    pool: &sqlx::PgPool,
    names: &crate::amqp::topology::Names,
    config: &Config,
) -> Result<(), crate::webhook::admin::AdminError> {
    use crate::webhook::admin;
    match command {
        WebhookCommand::Add { .. } => {
            if let Some(r) = add {
                webhook_add(pool, names, &config.webhook, &r).await?;
            }
        }
        WebhookCommand::List { json } => webhook_list(pool, json).await?,
        WebhookCommand::Remove { id } => {
            admin::remove(pool, id).await?;
            println!("removed subscription {id}");
        }
        WebhookCommand::Enable { id } => {
            admin::set_active(pool, id, true).await?;
            println!("enabled subscription {id}");
        }
        WebhookCommand::Disable { id } => {
            admin::set_active(pool, id, false).await?;
            println!("disabled subscription {id}");
        }
        WebhookCommand::Deliveries {
            subscription,
            failed,
            limit,
            json,
        } => webhook_deliveries(pool, subscription, failed, limit, json).await?,
        WebhookCommand::RotateSecret {
            id,
            secret,
            overlap,
        } => webhook_rotate_secret(pool, config, id, secret, overlap).await?,
        WebhookCommand::Ping { id } => {
            let delivery = admin::ping(pool, names, id, local_user()).await?;
            println!("ping delivery {delivery} enqueued");
        }
        WebhookCommand::Redeliver { delivery_id } => {
            let id = admin::redeliver(pool, names, delivery_id).await?;
            println!("redelivery of {delivery_id} enqueued (job {id})");
        }
    }
    Ok(())
}

/// `webhook add`: stores the subscription, prints its id (and a generated secret,
/// the one time it is shown), and enqueues a ping.
async fn webhook_add(
    pool: &sqlx::PgPool,
    names: &crate::amqp::topology::Names,
    cfg: &crate::config::WebhookConfig,
    r: &crate::webhook::admin::AddRequest,
) -> Result<(), crate::webhook::admin::AdminError> {
    use crate::webhook::admin;
    let added = admin::add_checked(pool, r, cfg).await?;
    for w in &added.warnings {
        eprintln!("hookfleet: warning: {w}");
    }
    if added.stored_plaintext {
        eprintln!("hookfleet: warning: {PLAINTEXT_WARNING}");
    }
    println!("added subscription {}", added.id);
    if let Some(secret) = &added.generated_secret {
        // The one time it is shown: stdout, for the operator to
        // hand to the receiver.
        println!("secret: {secret}");
    }
    // As GitHub does when a hook is created. On stderr, so
    // stdout stays the one line scripts read the id from.
    let delivery = admin::ping(pool, names, added.id, local_user()).await?;
    eprintln!("hookfleet: ping delivery {delivery} enqueued");
    Ok(())
}

/// `webhook list`: every subscription with its pushes matched in the last day, as
/// tab-separated lines or JSON (URLs redacted either way).
async fn webhook_list(
    pool: &sqlx::PgPool,
    json: bool,
) -> Result<(), crate::webhook::admin::AdminError> {
    use crate::webhook::admin;
    let subs = crate::webhook::storage::list_subscriptions(pool).await?;
    let matched = admin::matched_last_day(pool, &subs).await?;
    if json {
        let rows: Vec<serde_json::Value> = subs
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    m.insert("url".into(), crate::config::redact_url(&s.url).into());
                    let n = matched.get(&s.id).copied().unwrap_or(0);
                    m.insert("pushes_24h".into(), n.into());
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        for s in subs {
            let rotating = match s.previous_secret_expires_at {
                Some(t) if t > chrono::Utc::now() && s.previous_secret.is_some() => {
                    format!("\tprevious secret valid until {}", t.to_rfc3339())
                }
                _ => String::new(),
            };
            println!(
                "{}\t{}\t{}\t{}\t{}\tevents={}\tstyle={}\tsecret={}\tfailures={}\tpushes_24h={}{}{}",
                s.id,
                if s.active { "active" } else { "disabled" },
                s.repository_pattern,
                crate::config::redact_url(&s.url),
                s.content_type,
                s.events.join(","),
                s.style.as_str(),
                if s.secret.is_some() { "yes" } else { "no" },
                s.consecutive_failures,
                matched.get(&s.id).copied().unwrap_or(0),
                s.disabled_reason
                    .as_deref()
                    .map(|r| format!("\tdisabled: {r}"))
                    .unwrap_or_default(),
                rotating
            );
        }
    }
    Ok(())
}

/// `webhook deliveries`: recorded attempts (of one subscription, or failed ones, up
/// to `limit`, clamped to 1..=10000) as tab-separated lines or JSON.
async fn webhook_deliveries(
    pool: &sqlx::PgPool,
    subscription: Option<i64>,
    failed: bool,
    limit: i64,
    json: bool,
) -> Result<(), crate::webhook::admin::AdminError> {
    let rows =
        crate::webhook::storage::list_attempts(pool, subscription, failed, limit.clamp(1, 10_000))
            .await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        for r in rows {
            println!(
                "{}\t{}\tsub={}\t{}\tattempt={}\t{}\tstatus={}\t{}ms\t{}",
                r.created_at.to_rfc3339(),
                r.delivery_id,
                r.subscription_id,
                r.event_type.as_deref().unwrap_or("-"),
                r.attempt,
                r.outcome,
                r.status.map_or("-".to_string(), |s| s.to_string()),
                r.duration_ms,
                r.error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `webhook rotate-secret`: a new secret, the previous one signing on for the overlap.
async fn webhook_rotate_secret(
    pool: &sqlx::PgPool,
    config: &Config,
    id: i64,
    secret: Option<String>,
    overlap: Option<std::time::Duration>,
) -> Result<(), crate::webhook::admin::AdminError> {
    use crate::webhook::admin;
    let keys = admin::keyring(&config.webhook)?;
    let overlap = overlap.unwrap_or(config.webhook.secret_overlap);
    let r = admin::rotate_secret(pool, &keys, id, secret, overlap).await?;
    if r.stored_plaintext {
        eprintln!("hookfleet: warning: {PLAINTEXT_WARNING}");
    }
    println!(
        "rotated the secret of subscription {id}; the previous one stays valid for {}",
        humantime::format_duration(overlap)
    );
    if let Some(secret) = &r.generated_secret {
        println!("secret: {secret}");
    }
    Ok(())
}

async fn replay(args: ReplayArgs, config: Config) -> anyhow::Result<ExitCode> {
    use crate::outbox::replay::{self, Progress, ReplayError, ReplayRequest};
    let request = ReplayRequest {
        from_id: args.from_id,
        to_id: args.to_id,
        since: args.since,
        until: args.until,
        event_type: args.event_type,
        correlation_id: args.correlation_id,
        to_exchange: args.to_exchange,
        routing_key: args.routing_key,
        dry_run: args.dry_run,
        rate: args.rate,
        exclude_exchange: (!args.include_jobs)
            .then(|| crate::amqp::topology::Names::new(&config.amqp.prefix).jobs_exchange()),
    };
    let jobs = if args.include_jobs {
        "job rows included"
    } else {
        "job rows left out; --include-jobs adds them"
    };
    let plan = match replay::plan(&request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hookfleet: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let token = shutdown::on_signals();
    let pool = db::connect(&config.database).await?;
    let started = std::time::Instant::now();
    let result = replay::run(&pool, &config.amqp, &plan, &Progress::for_stderr(), &token).await;
    let secs = started.elapsed().as_secs_f64();
    pool.close().await;
    let report = match result {
        Ok(r) => r,
        Err(ReplayError::BadFilter(m)) => {
            eprintln!("hookfleet: invalid replay filter: {m}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => return Err(e.into()),
    };
    if plan.dry_run {
        println!(
            "{} events match (dry run, nothing published; {jobs})",
            report.selected
        );
        for r in &report.sample {
            println!(
                "  id {} {} {} correlation {} created {}",
                r.id,
                r.event_type,
                r.message_id,
                r.correlation_id.as_deref().unwrap_or("-"),
                r.created_at.to_rfc3339()
            );
        }
    } else {
        println!(
            "replayed {} of {} events in {secs:.1}s ({:.0}/s; {jobs})",
            report.published,
            report.selected,
            report.published as f64 / secs.max(0.001)
        );
    }
    Ok(ExitCode::SUCCESS)
}
