//! `[hook]`: the git `post-receive` hook's timeout, repositories and input caps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{positive, range};
use super::error::ConfigError;

/// The git `post-receive` hook.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Upper bound on connect + publish + confirm before the hook spools instead.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) timeout: Duration,
    /// Repository names are paths relative to this root; empty = the git dir itself.
    pub repositories_root: String,
    /// Without a root: directories under which repositories named by absolute
    /// path may be read. Empty: only repositories where `hook install` put the
    /// hook (see `push::confine`).
    pub allowed_dirs: Vec<String>,
    /// Environment variables naming the pusher, first non-empty wins.
    pub(crate) pusher_env: Vec<String>,
    /// Bytes of stdin the hook keeps (git's ref lines); the rest is counted,
    /// not stored (`refs_omitted` in the job).
    pub(crate) max_input_bytes: u32,
    /// Refs one push job carries (the hook keeps the first, the worker
    /// truncates a job that has more); the rest are counted in `refs_omitted`.
    pub max_refs: u32,
}

impl HookConfig {
    /// The `[hook]` checks: the publish timeout and the input caps.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("hook.timeout", self.timeout)?;
        range(
            "hook.max_input_bytes",
            self.max_input_bytes.into(),
            4_096..=1_073_741_824,
        )?;
        range("hook.max_refs", self.max_refs.into(), 1..=1_000_000)?;
        Ok(())
    }
}
