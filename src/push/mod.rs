//! The worker side of pushes: reading the repository and turning a push job into
//! effects and events. The git server side (the `post-receive` hook, its spool
//! and publishing) is [`crate::hook`], a program of its own.
//!
//! # Layout
//! - The `push` job body, its envelope and its ref updates are
//!   [`crate::push_job`]'s, below this module, the hook and webhooks alike.
//! - [`git`]: reading a bare repository in process (gitoxide) with a deadline;
//!   [`repo_cache`]: repositories kept open between reads; [`confine`]: which
//!   repositories a job may name; [`classify`]: what a ref update means (created,
//!   deleted, forced, commits, distinct).
//! - [`payload`]: GitHub-compatible event payloads, `events_for_push` (pure).
//! - [`handler`]: the push job; [`record`]: its writes as one statement for a
//!   group of pushes; [`group_commit`]: which pushes are written together.

pub mod classify;
pub mod confine;
pub mod git;
pub mod group_commit;
pub mod handler;
pub mod payload;
pub mod record;
pub(crate) mod repo_cache;
