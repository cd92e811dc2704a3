//! The command line's arguments: every command, subcommand and flag, with the
//! help text `--help` prints. Types only; [`super::run`] dispatches them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::build_info;

#[derive(Debug, Parser)]
#[command(name = "hookfleet", version = LONG_VERSION.as_str(), about = "Turns git pushes into reliable, observable work")]
pub(super) struct Cli {
    /// Config file layered over the built-in defaults.
    #[arg(long, global = true, env = "HOOKFLEET_CONFIG")]
    pub(super) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(super) command: Command,
}

static LONG_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(build_info::long_version);

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
pub(super) enum WebhookCommand {
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
pub(super) enum OutboxCommand {
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
pub(super) struct ReplayArgs {
    /// Smallest outbox id (inclusive); also the resume point printed on failure.
    #[arg(long)]
    pub(super) from_id: Option<i64>,
    /// Largest outbox id (inclusive).
    #[arg(long)]
    pub(super) to_id: Option<i64>,
    /// Earliest creation time (RFC 3339).
    #[arg(long)]
    pub(super) since: Option<String>,
    /// Latest creation time (RFC 3339).
    #[arg(long)]
    pub(super) until: Option<String>,
    /// Event type or topic pattern (`git.push`, `git.*`, `git.#`).
    #[arg(long = "type")]
    pub(super) event_type: Option<String>,
    /// Only events of this correlation (push) id.
    #[arg(long)]
    pub(super) correlation_id: Option<String>,
    /// Publish to this exchange instead of the original one.
    #[arg(long)]
    pub(super) to_exchange: Option<String>,
    /// Publish with this routing key instead of the original one.
    #[arg(long)]
    pub(super) routing_key: Option<String>,
    /// Print the count and a sample; publish nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
    /// Publish at most N events per second.
    #[arg(long)]
    pub(super) rate: Option<u32>,
    /// Also re-send job rows (e.g. `webhook` jobs, which deliver to receivers
    /// again); without it only events are replayed.
    #[arg(long)]
    pub(super) include_jobs: bool,
}

#[derive(Debug, Subcommand)]
pub(super) enum HookCommand {
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
pub(super) enum SpoolCommand {
    /// Republish spooled pushes (oldest first) and print how many.
    Flush,
}

#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
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
pub(super) struct DlqFilterArgs {
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
pub(super) enum ConfigCommand {
    /// Validate and print the effective config with secrets redacted.
    Check,
    /// Print the configuration reference (every key, default, allowed values,
    /// environment variable, description) as markdown: docs/CONFIG.md.
    Reference,
}
