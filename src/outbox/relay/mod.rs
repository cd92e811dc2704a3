//! The relay: publishes committed outbox rows to the broker with confirms.
//!
//! Owns the loop LISTEN → claim (`outbox_pending`, `FOR UPDATE SKIP LOCKED`, id
//! order) → publish the batch pipelined with `mandatory` → await confirms → mark
//! confirmed rows published (their `outbox_pending` rows move to
//! `outbox_published`) and failed rows backed off → COMMIT (batches overlapped,
//! see below), and the relay's own broker connection (role `relay`), reconnected
//! with exponential backoff and jitter when it closes. It never publishes anything
//! that is not an outbox row, never deletes an outbox row (see [`super::prune`])
//! and never drops a transaction mid-commit: shutdown is only observed between
//! batches.
//!
//! Pipelining: three stages joined by bounded channels, each batch in its own
//! transaction. A claimer claims batches (SKIP LOCKED skips rows still locked by
//! earlier batches), up to [`CLAIM_AHEAD`] ahead of the sender; the sender
//! publishes each batch; a settler awaits each sent batch's confirms, marks it and
//! commits, in order, at most [`PIPELINE_DEPTH`] batches behind. So the broker
//! always has work: the next batch's claim (a database round trip carrying its
//! payloads) happens while this one is being published, not between the two,
//! and the database settles in parallel. Sends stay in id order on one channel.
//!
//! Wake-ups: `LISTEN hookfleet_outbox` is registered before the first claim, so no
//! notification for a row committed after that can be missed; notifications sent
//! while the listener was disconnected are lost, which the `outbox.poll_interval`
//! poll covers.
//!
//! Failure handling: one bad row never blocks the others. A nacked or returned
//! (unroutable) row, one aimed at an exchange that does not exist (checked
//! passively before publishing, because a publish to a missing exchange would
//! close the channel for every row) and one bigger than `amqp.max_message_bytes`
//! (never sent) get `publish_attempts + 1`, `last_error` and
//! `next_attempt_at = now + backoff` (doubling from [`ROW_BACKOFF_BASE`], capped
//! by `outbox.max_backoff`); after `outbox.park_after_attempts` failures (an
//! oversized row at once: it cannot succeed until the limit changes) the row is
//! parked, set aside until `outbox unpark`.
//!
//! A row the broker refuses by closing the channel (RabbitMQ's own size limit,
//! any per-message channel error: a *soft* AMQP error) cannot be told from the
//! rows pipelined around it: every unconfirmed confirm fails alike. So the
//! unconfirmed rows of such a batch become *suspects*, and the next pass (at
//! once, on a new channel) publishes each suspect alone and awaits its confirm:
//! the one that closes the channel again is the culprit and is failed as above,
//! with the broker's reason; the others are published in the same pass. A
//! closed connection, a timeout or a database error is not a row's fault:
//! confirmed rows are still marked, unconfirmed rows stay untouched (and
//! unpublished), and the relay reconnects after a backoff
//! ([`crate::backoff::retry_forever`], one drain an attempt, never interrupted
//! mid-batch).
//!
//! # Layout
//!
//! [`run_relay`] and the drain's three stages are in `runner.rs`; claiming and
//! sending batches in `pipeline.rs` (one batch's publish in `send.rs`); the
//! settler's work in `settle.rs`, confirms in `confirm.rs` and returned messages
//! in `returns.rs`; refusals and parking in `policy.rs`; the broker connection in
//! `broker.rs`; sampled statistics in `stats.rs`.

/// The target of every log line of the relay, whichever of its files writes it:
/// the module path it had as one file, which operators filter on
/// (`RUST_LOG=hookfleet::outbox::relay=debug`) and log pipelines match.
const LOG_TARGET: &str = "hookfleet::outbox::relay";

mod broker;
mod confirm;
mod pipeline;
mod policy;
mod returns;
mod runner;
mod send;
mod settle;
mod stats;

pub use runner::run_relay;
