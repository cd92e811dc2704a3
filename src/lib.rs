//! hookfleet: a fleet of workers that turns git pushes into reliable, observable work.
//!
//! # Layout
//! - [`config`]: typed configuration, layered defaults < file < environment, validated once.
//! - [`cli`]: the `hookfleet` command line; `main.rs` only calls [`cli::main`].
//! - [`db`]: the PostgreSQL pool (bounded, with timeouts) and the embedded migrations.
//! - [`amqp`]: broker connections, topology, confirmed publishing and the consuming supervisor.
//! - [`worker`]: the `worker` role, wiring everything together under one shutdown token.
//! - [`admin`]: the admin HTTP server (`/metrics`, `/healthz`, `/readyz`, `/info`, `/jobs`).
//! - [`health`]: readiness flags shared by the parts that know and the parts that ask.
//! - [`shutdown`]: signals to a cancellation token (first drains, second exits).
//! - [`job`]: the handler API (`Handler`, `TxHandler`, `JobError`); [`message`]: the
//!   AMQP message contract (properties and `x-` headers).
//! - [`metrics`]: every Prometheus metric; [`inflight`]: what is being handled now (`/jobs`).
//! - [`telemetry`]: log setup; [`build_info`]: version, git SHA, build time.

pub mod admin;
pub mod amqp;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod db;
pub mod health;
pub mod inflight;
pub mod job;
pub mod message;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod worker;
