//! `[push]`: the push handler's read timeout, caps and group commit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::amqp::AmqpConfig;
use super::check::{http_base_url, positive, range};
use super::database::DatabaseConfig;
use super::error::ConfigError;

/// Allowed range of `push.max_commits`.
pub const MAX_COMMITS_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000;

/// The push handler.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Upper bound on reading one push from its repository; exceeding it is a
    /// transient error.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub git_timeout: Duration,
    /// Commits listed per ref (the true count is kept).
    pub max_commits: u32,
    /// Repositories kept open between pushes (least recently read closed first);
    /// 0 opens each repository per push.
    pub(crate) open_repositories: usize,
    /// Objects cached per repository handle kept between pushes, in bytes (0:
    /// none). Up to 16 handles are kept idle, so 16 times this is the most the
    /// cache holds.
    pub(crate) object_cache_bytes: usize,
    /// Refs with their own events per push; beyond it one bulk event.
    pub max_refs: u32,
    /// Statements writing pushes at once (group commit), each on a pooled
    /// connection. Pushes ready while they run wait and are written together.
    pub(crate) group_writers: u32,
    /// Most pushes written by one statement.
    pub(crate) group_max: u32,
    /// Base of `compare` and repository URLs in payloads.
    pub compare_base_url: String,
    /// Paths listed per commit (`added` + `removed` + `modified`; GitHub lists
    /// 3,000). The reader stops collecting there and counts the rest
    /// (`paths_omitted` on the commit).
    pub max_paths_per_commit: u32,
    /// Paths listed across all commits of one event; later commits' lists are
    /// emptied once it is spent (`paths_truncated` on the event).
    pub max_paths_per_event: u32,
    /// Bytes of one event body (and so the commits of each webhook body, which
    /// is rendered from the event plus a few KiB of GitHub's repository and
    /// user objects): a bigger event keeps its newest commits that fit
    /// (`commits_truncated`, `commits_omitted`). At most `amqp.max_message_bytes`.
    pub max_event_bytes: u32,
    /// Refs listed in a `git.push.bulk` event (`refs_count` keeps the true
    /// number, `refs_omitted` the rest).
    pub max_bulk_refs: u32,
}

impl PushConfig {
    /// The `[push]` checks: the read timeout, caps (some within `database` and
    /// `amqp` values), the group commit and the compare URL base.
    pub(super) fn validate(
        &self,
        database: &DatabaseConfig,
        amqp: &AmqpConfig,
    ) -> Result<(), ConfigError> {
        positive("push.git_timeout", self.git_timeout)?;
        range(
            "push.max_commits",
            self.max_commits.into(),
            MAX_COMMITS_RANGE,
        )?;
        range("push.max_refs", self.max_refs.into(), 1..=10_000)?;
        range(
            "push.group_writers",
            self.group_writers.into(),
            1..=database.max_connections.into(),
        )?;
        range("push.group_max", self.group_max.into(), 1..=1_000)?;
        range(
            "push.max_paths_per_commit",
            self.max_paths_per_commit.into(),
            0..=1_000_000,
        )?;
        range(
            "push.max_paths_per_event",
            self.max_paths_per_event.into(),
            0..=1_000_000,
        )?;
        range(
            "push.max_event_bytes",
            self.max_event_bytes.into(),
            16_384..=u64::from(amqp.max_message_bytes),
        )?;
        range(
            "push.max_bulk_refs",
            self.max_bulk_refs.into(),
            0..=1_000_000,
        )?;
        http_base_url("push.compare_base_url", &self.compare_base_url, false)?;
        Ok(())
    }
}
