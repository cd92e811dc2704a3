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
use crate::{build_info, db, health::Health, outbox, push, shutdown, telemetry, worker};

/// Exit code for bad usage or invalid configuration.
pub const EXIT_USAGE: u8 = 2;
/// How long the runtime's blocking threads get once the command has returned.
pub const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(name = "hookfleet", version = LONG_VERSION.as_str(), about = "Turns git pushes into reliable, observable work")]
struct Cli {
    /// Config file layered over the built-in defaults (env: HOOKFLEET_CONFIG).
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
        /// HMAC-SHA256 secret for X-Hub-Signature-256 (env: HOOKFLEET_WEBHOOK_SECRET).
        #[arg(long, env = "HOOKFLEET_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Event categories: push, branch, tag, or * for all.
        #[arg(long, default_value = "push")]
        events: String,
        /// Body format.
        #[arg(long, default_value = "json")]
        content_type: String,
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
        /// Only the message with this id.
        #[arg(long)]
        message_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective config with secrets redacted.
    Check,
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
    telemetry::init(&config.log);
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
    let result = runtime.block_on(run(cli.command, cli.config, config));
    // Dropping a runtime waits for its blocking threads without limit (a DNS lookup
    // or file write stuck on a dead peer would keep a drained process alive).
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(code) => code,
        Err(e) => {
            let message = error_chain(e.as_ref());
            tracing::error!(error = %message, "hookfleet failed");
            eprintln!("hookfleet: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `hook post-receive`: exits 0 whatever happens (see `push::hook`), including on
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
    let input = match push::hook::read_input(
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
            eprintln!("{}", push::hook::config_error_message(&e, &input.bytes));
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
    let env = push::hook::HookEnv::from_env(&config.hook);
    let mut stderr = std::io::stderr();
    let outcome = runtime.block_on(push::hook::post_receive(&config, &env, &input, &mut stderr));
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
            for repo in repos {
                match push::install::install(&repo, &binary, config_path.as_deref(), force) {
                    Ok(hook) => println!("installed {}", hook.display()),
                    Err(e) => {
                        eprintln!("hookfleet: {}", error_chain(&e));
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Spool {
            command: SpoolCommand::Flush,
        } => {
            let report = push::spool::flush_spool(&config).await?;
            println!(
                "published {} spooled push(es); {} corrupt file(s) moved aside; {} remaining",
                report.published, report.corrupt, report.remaining
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { .. } => Ok(ExitCode::SUCCESS),
        Command::Dlq { command } => {
            let kind = match &command {
                DlqCommand::List { kind, .. } | DlqCommand::Requeue { kind, .. } => kind.clone(),
            };
            if !config.worker.kinds.contains(&kind) {
                eprintln!(
                    "hookfleet: unknown job kind {kind:?}; worker.kinds is {:?}",
                    config.worker.kinds
                );
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            match command {
                DlqCommand::List { limit, json, .. } => {
                    let letters = crate::dlq::list(&config, &kind, limit).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&letters)?);
                    } else if letters.is_empty() {
                        println!("no dead letters for {kind}");
                    } else {
                        for d in &letters {
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
                }
                DlqCommand::Requeue {
                    limit, message_id, ..
                } => {
                    let n =
                        crate::dlq::requeue(&config, &kind, limit, message_id.as_deref()).await?;
                    println!(
                        "requeued {n} message(s) to {}",
                        crate::amqp::topology::Names::new(&config.amqp.prefix).queue(&kind)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            db::ensure_database(&config.database).await?;
            let pool = db::connect(&config.database).await?;
            db::migrate(&pool).await?;
            pool.close().await;
            tracing::info!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker => {
            let token = shutdown::on_signals();
            worker::run(config, Arc::new(Health::new()), token).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Relay => {
            let token = shutdown::on_signals();
            let pool = db::connect(&config.database).await?;
            // Probes need the admin server; a relay has no consumers, so its
            // readiness is the database alone.
            let health = Arc::new(Health::new());
            health.set_consuming(true);
            health.set_database_ok(true);
            let listener = crate::admin::bind(config.admin.listen).await?;
            let admin_stop = tokio_util::sync::CancellationToken::new();
            let admin_task = tokio::spawn(crate::admin::serve(
                listener,
                crate::admin::AdminState {
                    health,
                    inflight: Arc::default(),
                    pool: Some(pool.clone()),
                },
                admin_stop.clone(),
            ));
            let pruner = tokio::spawn(outbox::run_pruner(
                pool.clone(),
                config.outbox.clone(),
                token.clone(),
            ));
            let janitor = tokio::spawn(crate::alloc::run_janitor(pool.clone(), token.clone()));
            outbox::run_relay(config.amqp, config.outbox, pool.clone(), token).await?;
            pruner.await??;
            let _ = janitor.await;
            admin_stop.cancel();
            let _ = admin_task.await;
            pool.close().await;
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
    }
}

/// Who runs the command (`$USER`), the `sender` of the pings it asks for.
fn local_user() -> Option<String> {
    std::env::var("USER").ok().filter(|u| !u.is_empty())
}

async fn webhook_command(command: WebhookCommand, config: Config) -> anyhow::Result<ExitCode> {
    use crate::webhook::admin::{self, AdminError};
    // Validate `add` before connecting, so bad input is exit 2 even with no database.
    let add = match &command {
        WebhookCommand::Add {
            repo,
            url,
            secret,
            events,
            content_type,
        } => {
            let r = admin::AddRequest {
                repo: repo.clone(),
                url: url.clone(),
                secret: secret.clone(),
                events: events.clone(),
                content_type: content_type.clone(),
            };
            if let Err(e) = admin::validate(&r) {
                eprintln!("hookfleet: {e}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            Some(r)
        }
        _ => None,
    };
    let pool = db::connect(&config.database).await?;
    let names = crate::amqp::topology::Names::new(&config.amqp.prefix);
    let result: Result<(), AdminError> = async {
        match command {
            WebhookCommand::Add { .. } => {
                if let Some(r) = add {
                    let added = admin::add_checked(&pool, &r, &config.webhook).await?;
                    for w in &added.warnings {
                        eprintln!("hookfleet: warning: {w}");
                    }
                    println!("added subscription {}", added.id);
                    // As GitHub does when a hook is created. On stderr, so
                    // stdout stays the one line scripts read the id from.
                    let delivery = admin::ping(&pool, &names, added.id, local_user()).await?;
                    eprintln!("hookfleet: ping delivery {delivery} enqueued");
                }
            }
            WebhookCommand::List { json } => {
                let subs = crate::webhook::storage::list_subscriptions(&pool).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&subs).unwrap_or_default()
                    );
                } else {
                    for s in subs {
                        println!(
                            "{}\t{}\t{}\t{}\t{}\tevents={}\tsecret={}\tfailures={}",
                            s.id,
                            if s.active { "active" } else { "disabled" },
                            s.repository_pattern,
                            s.url,
                            s.content_type,
                            s.events.join(","),
                            if s.secret.is_some() { "yes" } else { "no" },
                            s.consecutive_failures
                        );
                    }
                }
            }
            WebhookCommand::Remove { id } => {
                admin::remove(&pool, id).await?;
                println!("removed subscription {id}");
            }
            WebhookCommand::Enable { id } => {
                admin::set_active(&pool, id, true).await?;
                println!("enabled subscription {id}");
            }
            WebhookCommand::Disable { id } => {
                admin::set_active(&pool, id, false).await?;
                println!("disabled subscription {id}");
            }
            WebhookCommand::Deliveries {
                subscription,
                failed,
                limit,
                json,
            } => {
                let rows = crate::webhook::storage::list_attempts(
                    &pool,
                    subscription,
                    failed,
                    limit.clamp(1, 10_000),
                )
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
            }
            WebhookCommand::Ping { id } => {
                let delivery = admin::ping(&pool, &names, id, local_user()).await?;
                println!("ping delivery {delivery} enqueued");
            }
            WebhookCommand::Redeliver { delivery_id } => {
                let id = admin::redeliver(&pool, &names, delivery_id).await?;
                println!("redelivery of {delivery_id} enqueued (job {id})");
            }
        }
        Ok(())
    }
    .await;
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
    let result = replay::run(&pool, &config.amqp, &plan, &Progress::for_stderr(), &token).await;
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
            "{} events match (dry run, nothing published)",
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
            "replayed {} of {} events",
            report.published, report.selected
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders an error and its causes on one line, skipping a cause whose text the
/// message already contains (sqlx and lapin repeat their sources in `Display`).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}
