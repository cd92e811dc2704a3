//! Typed configuration: loading, layering, validation and redaction.
//!
//! Owns the one place where settings enter the program. Layers, lowest first:
//! the embedded `config/default.toml`, a file given with `--config`, then
//! `HOOKFLEET_<SECTION>__<KEY>` environment variables (double underscore for each
//! level of nesting). Only variables containing `__` are config, so variables such
//! as `HOOKFLEET_PUSHER` (read by the hook) never collide with it.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and
//! every error names where the bad value came from: the file and position, or the
//! environment variable. This module must never log a secret: URLs are held in
//! [`SecretUrl`], whose `Debug`, `Display` and `Serialize` all redact the password.
//!
//! # Why not figment
//!
//! Considered for issue 26, judged by which names the key and the source more
//! clearly. Ours blames the exact layer that set the bad key: `config file
//! x.toml: worker.concurrency: invalid type...`, or `environment variable
//! HOOKFLEET_WORKER__CONCURRENCY: ...` — the variable as the operator wrote it.
//! figment tags values with their provider, but its `Env` provider reports a key
//! as the provider's name plus an interpolated path (`WORKER.CONCURRENCY` in
//! "`HOOKFLEET_` environment variable(s)"), not the variable to fix; its TOML
//! provider keeps no line and column (ours reports them for syntax errors, as
//! `toml` does); and our env rules (comma lists for `amqp.urls`, only `__`
//! variables are config) would need a custom provider anyway. The layering it
//! would replace is ~100 lines (`merge`, `set_path`, `blame`) with tests, so
//! the change would buy a dependency and less precise errors: kept.
//!
//! # Layout
//!
//! One file per section (`amqp.rs` for `[amqp]`, ...): its struct, its
//! defaults and its own `validate`. [`Config`] (`root.rs`) holds the sections
//! and its [`Config::validate`] calls each section's in turn, passing a section
//! the others it is checked against. Loading and layering are in `load.rs`, the
//! checks the sections share in `check.rs`, the redacting types in `secret.rs`.
//! Every public item is re-exported here, so its path is `crate::config::Item`.

mod admin;
mod amqp;
mod check;
mod database;
mod error;
mod fairness;
mod guard;
mod hook;
mod load;
mod log;
mod outbox;
mod push;
mod rate_limit;
mod retry;
mod root;
mod secret;
mod site;
mod spool;
mod tracing;
mod webhook;
mod worker;

pub use amqp::{AmqpConfig, CONSUMERS_RANGE, MAX_MESSAGE_BYTES_RANGE, QueueType};
pub(crate) use database::DatabaseConfig;
pub use error::ConfigError;
pub(crate) use fairness::FairnessConfig;
pub(crate) use guard::GuardConfig;
pub use hook::HookConfig;
pub use load::{DEFAULT_TOML, ENV_PREFIX};
pub(crate) use log::{LogConfig, LogFormat};
pub(crate) use outbox::OutboxConfig;
pub use push::{MAX_COMMITS_RANGE, PushConfig};
pub use root::Config;
pub use secret::{SecretString, SecretUrl, redact_url};
pub(crate) use spool::SpoolConfig;
pub use tracing::TracingConfig;
pub use webhook::{
    Allowed, SECRET_KEY_BYTES, SecretKeyBytes, WEBHOOK_PRUNE_BATCH_SIZE, WEBHOOK_PRUNE_INTERVAL,
    WebhookConfig,
};
pub(crate) use worker::WorkerConfig;
