//! Pushes: from git's `post-receive` to the facts the push handler turns into events.
//!
//! # Layout
//! - The `push` job body, its envelope and its ref updates are
//!   [`crate::push_job`]'s, below this module and webhooks alike.
//! - [`hook`]: `hookfleet hook post-receive` (publish within `hook.timeout`, else spool;
//!   always exit 0); [`install`]: `hookfleet hook install`.
//! - [`fairness`]: which queue a push goes to (the push queue, or the bulk
//!   queue while its repository or owner is over its rate);
//!   [`publish`]: a push job on the wire; [`spool`]: the fsynced local spool and its flusher.
//! - [`git`]: reading a bare repository in process (gitoxide) with a deadline;
//!   [`repo_cache`]: repositories kept open between reads; [`confine`]: which
//!   repositories a job may name; [`classify`]: what a ref update means (created,
//!   deleted, forced, commits, distinct).
//! - [`payload`]: GitHub-compatible event payloads, `events_for_push` (pure).
//! - [`handler`]: the push job; [`record`]: its writes as one statement for a
//!   group of pushes; [`group_commit`]: which pushes are written together.

pub mod classify;
pub mod confine;
pub mod fairness;
pub mod git;
pub mod group_commit;
pub mod handler;
pub mod hook;
pub mod install;
pub mod payload;
pub mod publish;
pub mod record;
pub mod repo_cache;
pub mod spool;
