//! hookfleet: a fleet of workers that turns git pushes into reliable, observable work.
//!
//! # Layout
//! - [`config`]: typed configuration, layered defaults < file < environment, validated once.
//! - [`cli`]: the `hookfleet` command line; `main.rs` only calls [`cli::main`].
//! - [`db`]: the PostgreSQL pool (bounded, with timeouts), the embedded migrations and
//!   [`db::ping`], the one database probe of every liveness and readiness check.
//! - [`amqp`]: broker connections, topology, confirmed publishing, queue depths.
//! - [`consumer`]: the supervisor (reconnect + redeclare), the task pool, outcomes, acks.
//! - [`dlq`]: listing and requeueing dead letters.
//! - [`inbox`]: the handler transaction with inbox dedupe (one owner of deduplication).
//! - [`alloc`]: returning freed heap to the OS after a giant push.
//! - [`backoff`]: reconnect delays (exponential, full jitter, unlimited) and the one
//!   retry-forever loop ([`backoff::retry_forever`]) every reconnecting part runs.
//! - [`worker`]: the `worker` role, wiring everything together under one shutdown token;
//!   [`relay_role`]: the `relay` role (relay, pruner, admin HTTP); [`role`]: what both
//!   share (admin server, upkeep tasks, the bounded shutdown).
//! - [`error`]: one-line rendering of an error and its causes.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`, `/info`, `/jobs`),
//!   its connection bounds ([`admin::conn`]) and the operator console under `/console`
//!   ([`admin::console`]).
//! - [`health`]: readiness flags shared by the parts that know and the parts that ask.
//! - [`shutdown`]: signals to a cancellation token (first drains, second exits).
//! - [`job`]: the handler API (`Handler`, `JobError`); [`message`]: the
//!   AMQP message contract (properties and `x-` headers).
//! - [`metrics`]: every Prometheus metric; [`inflight`]: what is being handled now (`/jobs`).
//! - [`outbox`]: the transactional outbox: enqueue, relay, pruning, status, replay.
//! - [`hook`]: the git server side: the post-receive hook, its spool, the queue a
//!   push goes to (fairness), publishing.
//! - [`push`]: the worker side: reading git, push payloads, the push handler;
//!   [`push_job`]: the `push` job body and its ref updates, shared by the hook, the
//!   handler and webhooks.
//! - [`webhook`]: webhook subscriptions, delivery jobs, the guarded HTTP POST, attempts.
//! - [`ratelimit`]: optional token buckets per repository and per subscription
//!   (postpone, never drop); [`repository`]: repository names' owners and the
//!   patterns that select them (subscriptions, rate limits).
//! - [`telemetry`]: log setup; [`build_info`]: version, git SHA, build time.
//!
//! # Visibility
//! `pub` marks what another crate uses: the `hookfleet` binary, the test kit
//! (`testkit/`), the integration tests and the bench. Everything else is
//! `pub(crate)` (or `pub(super)` inside a folder), and modules nothing outside
//! uses are private, so the compiler tells a dead item from an API one.
//! `scripts/narrow-pub` redoes this after a change: it narrows every `pub` item in
//! `src/` and widens back exactly what the other crates fail to compile without.

pub mod admin;
mod alloc;
pub mod amqp;
mod backoff;
mod build_info;
pub mod cli;
pub mod config;
pub mod config_reference;
mod consumer;
pub mod db;
pub mod dlq;
mod error;
mod guard;
pub mod health;
pub mod hook;
pub mod inbox;
pub mod inflight;
pub mod job;
pub mod message;
pub mod metrics;
pub mod otel;
pub mod outbox;
pub mod push;
pub mod push_job;
mod ratelimit;
pub mod relay_role;
mod repository;
pub mod role;
mod shutdown;
pub mod telemetry;
mod tls;
pub mod webhook;
pub mod worker;
