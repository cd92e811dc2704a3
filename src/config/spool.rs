//! `[spool]`: where the hook keeps pushes it could not publish (nothing to
//! validate: a directory that cannot be written fails when the hook spools).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Local spool for pushes the hook could not publish.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of spooled jobs (one fsynced JSON file each).
    pub dir: PathBuf,
    /// How often the worker tries to flush it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) flush_interval: Duration,
}
