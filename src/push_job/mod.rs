//! The `push` job: the message body the hook publishes and the push handler
//! consumes, and the AMQP envelope that goes with it.
//!
//! # Layout
//! - this file: [`PushJob`] and its envelope (message id = push id);
//! - [`update`]: one stdin line of `post-receive`, `<old> <new> <ref>`, validated;
//!   [`refname`]: `git check-ref-format` rules.
//!
//! Below the hook, the push handler (`push`) and webhooks (`webhook`, which plan
//! deliveries from a job), so none of those has to import another for the job's shape.
//!
//! Owns the body's shape and the rule that the envelope is derived from the job
//! alone (message id = push id), so publishing the same job twice (hook, then
//! `spool flush`) yields the same message id and the inbox drops the duplicate.
//! It never performs I/O.

pub(crate) mod refname;
pub mod update;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::update::RefUpdate;
use crate::message::{Envelope, H_SCHEMA_VERSION, HeaderValue, SCHEMA_VERSION};

/// Job kind: routing key on the jobs exchange and the queue's suffix.
pub const PUSH_KIND: &str = "push";

/// One push, as received by `post-receive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushJob {
    /// UUID v7 minted by the hook; message id and correlation id of everything
    /// this push causes.
    pub push_id: Uuid,
    /// Repository name, the one events, webhooks and patterns use: the git dir
    /// relative to `hook.repositories_root` when it lies under the root, else
    /// `owner/name` from its last two path components without `.git` (the layout
    /// of Gitea, GitLab and most hosts). Jobs from before `path` existed carry
    /// the git dir's absolute path here.
    pub repository: String,
    /// Where the repository lives when its name does not say so (no root set,
    /// or a git dir outside the root): the git dir's absolute path. The worker
    /// reads the repository from here (see [`PushJob::location`]) after the
    /// same confinement check as a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Who pushed (first non-empty `hook.pusher_env` variable), if known.
    pub pusher: Option<String>,
    /// `git push -o` options, in order.
    #[serde(default)]
    pub push_options: Vec<String>,
    /// When the hook ran.
    pub pushed_at: DateTime<Utc>,
    /// The ref updates, in the order git reported them: at most
    /// `hook.max_refs` (the hook keeps the first, the worker cuts a longer list).
    pub updates: Vec<RefUpdate>,
    /// Refs of the push left out of `updates` by a cap (stdin bytes, refs per
    /// job, job bytes): counted, named in the bulk event, never stored.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refs_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl PushJob {
    /// The envelope to publish this job with: message id and correlation id are
    /// the push id, type is `push`, timestamp is `pushed_at`.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            message_id: self.push_id,
            correlation_id: Some(self.push_id.to_string()),
            event_type: Some(PUSH_KIND.to_string()),
            timestamp: Some(self.pushed_at.timestamp().max(0) as u64),
            headers: BTreeMap::from([(
                H_SCHEMA_VERSION.to_string(),
                HeaderValue::Int(SCHEMA_VERSION),
            )]),
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, ids and a timestamp cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and validates a body (from the spool or the queue).
    pub fn from_json(bytes: &[u8]) -> Result<PushJob, String> {
        let job: PushJob = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        job.validate()?;
        Ok(job)
    }

    /// Checks every update and that there is at least one.
    /// Keeps the first `max` updates, counting the rest in `refs_omitted`.
    pub(crate) fn cap_refs(&mut self, max: usize) {
        if self.updates.len() > max {
            let cut = self.updates.len() - max;
            self.updates.truncate(max);
            self.refs_omitted = self.refs_omitted.saturating_add(cut as u64);
        }
    }

    /// Halves the updates until the body fits in `max_bytes` (at least one
    /// update stays), so the worker never refuses a job the hook made.
    pub(crate) fn fit_within(&mut self, max_bytes: usize) {
        while self.updates.len() > 1 && self.to_json().len() > max_bytes {
            let keep = self.updates.len() / 2;
            self.cap_refs(keep);
        }
    }

    /// What the worker resolves to find the repository on disk: `path` when
    /// the job has one, else the name (relative to the root, or an absolute path
    /// in jobs made before `path` existed).
    pub(crate) fn location(&self) -> &str {
        self.path.as_deref().unwrap_or(&self.repository)
    }

    /// The push's ref count before any cap.
    pub(crate) fn total_refs(&self) -> u64 {
        (self.updates.len() as u64).saturating_add(self.refs_omitted)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.updates.is_empty() {
            return Err("push has no updates".into());
        }
        if self.repository.is_empty() {
            return Err("push has an empty repository".into());
        }
        for (i, u) in self.updates.iter().enumerate() {
            u.validate().map_err(|e| format!("updates[{i}]: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_derived_from_the_push_id() {
        let job = PushJob {
            push_id: Uuid::now_v7(),
            repository: "team/app.git".into(),
            path: None,
            pusher: Some("alice".into()),
            push_options: vec!["ci.skip".into()],
            pushed_at: Utc::now(),
            refs_omitted: 0,
            updates: vec![RefUpdate {
                refname: "refs/heads/main".into(),
                before: "0".repeat(40),
                after: "a".repeat(40),
            }],
        };
        let e = job.envelope();
        assert_eq!(e.message_id, job.push_id);
        assert_eq!(e.correlation_id, Some(job.push_id.to_string()));
        assert_eq!(e.event_type.as_deref(), Some("push"));
        assert_eq!(job.envelope(), e, "stable across calls");
        let back = PushJob::from_json(&job.to_json()).unwrap();
        assert_eq!(back, job);
        let v: serde_json::Value = serde_json::from_slice(&job.to_json()).unwrap();
        assert_eq!(v["updates"][0]["ref"], "refs/heads/main");
    }
}
