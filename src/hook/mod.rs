//! The git server side: what runs in a repository's `post-receive` hook.
//!
//! A program of its own (`hookfleet hook ...`), short-lived, run by git once per
//! push: it must never block a push for long nor lose one. The worker side of
//! pushes is [`crate::push`]; both share the job types of [`crate::push_job`].
//!
//! # Layout
//! - [`post_receive`]: `hookfleet hook post-receive` (publish within
//!   `hook.timeout`, else spool; always exit 0); [`install`]: `hookfleet hook install`.
//! - [`fairness`]: which queue a push goes to (the push queue, or the bulk queue
//!   while its repository or owner is over its rate).
//! - [`publish`]: a push job on the wire; [`spool`]: the fsynced local spool and
//!   its flusher (run by the worker, on the git server).

pub mod fairness;
pub mod install;
pub mod post_receive;
pub mod publish;
pub mod spool;
