//! `[site]`: the git host's URLs as webhook bodies name them.

use serde::{Deserialize, Serialize};

use super::check::http_base_url;
use super::error::ConfigError;

/// The git host that hookfleet stands for, as webhook bodies name it: the
/// bases of the URLs in GitHub-shaped bodies (`html_url`, `url`, `clone_url`,
/// `ssh_url` of repositories, users and organizations). Receivers written for
/// GitHub follow these links, so they must point at the real host. Empty keys
/// are derived, so one setting (or none, on one machine) gives consistent URLs.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteConfig {
    /// Base of web pages (`html_url`); empty: `push.compare_base_url`, so body
    /// links agree with the `compare` and commit URLs of the bus events.
    pub(crate) html_url: String,
    /// Base of API URLs (`url`, `hooks_url`...); empty: `{html_url}/api/v3`,
    /// where GitHub Enterprise Server puts its API.
    pub(crate) api_url: String,
    /// Base of `clone_url` (`{clone_url}/{full_name}.git`); empty: `html_url`.
    pub(crate) clone_url: String,
    /// `user@host` of `ssh_url` (`{ssh_host}:{full_name}.git`); empty:
    /// `git@` and the host of `html_url`.
    pub(crate) ssh_host: String,
}

impl SiteConfig {
    /// The `[site]` checks: absolute http(s) URL bases and the SSH host.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, base) in [
            ("site.html_url", &self.html_url),
            ("site.api_url", &self.api_url),
            ("site.clone_url", &self.clone_url),
        ] {
            http_base_url(key, base, true)?;
        }
        let ssh_ok = self.ssh_host.is_empty()
            || self
                .ssh_host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "@._-[]".contains(c));
        if !ssh_ok {
            return Err(ConfigError::Invalid {
                key: "site.ssh_host".into(),
                message: format!(
                    "must be user@host of [A-Za-z0-9@._-], got {:?}",
                    self.ssh_host
                ),
            });
        }
        Ok(())
    }
}
