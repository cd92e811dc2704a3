//! Where the URLs in bodies point: the host's web, API and clone bases.

use crate::config::Config;

/// The bases of the URLs in bodies, resolved from `[site]` once (empty keys
/// derived, see `SiteConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Web pages.
    pub(crate) html: String,
    /// API.
    pub(crate) api: String,
    /// `clone_url` base.
    pub(crate) clone: String,
    /// `user@host` of `ssh_url`.
    pub(crate) ssh_host: String,
    /// Host of `git_url`.
    pub(crate) host: String,
}

impl Site {
    /// The site of `config` (`[site]`, falling back to `push.compare_base_url`).
    pub fn new(config: &Config) -> Site {
        let s = &config.site;
        let or = |v: &str, d: String| {
            if v.is_empty() {
                d
            } else {
                v.trim_end_matches('/').to_string()
            }
        };
        let html = or(&s.html_url, config.push.compare_base_url.clone());
        let host = url::Url::parse(&html)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "localhost".to_string());
        Site {
            api: or(&s.api_url, format!("{html}/api/v3")),
            clone: or(&s.clone_url, html.clone()),
            ssh_host: or(&s.ssh_host, format!("git@{host}")),
            html,
            host,
        }
    }
}
