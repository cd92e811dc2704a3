//! `[admin]`: the admin HTTP server and the console's token.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::positive;
use super::error::ConfigError;
use super::secret::SecretString;

/// Shortest `admin.console_token` accepted: the token is the console's only
/// credential, so it must not be guessable.
pub(crate) const MIN_CONSOLE_TOKEN_CHARS: usize = 16;

/// Admin HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address (`127.0.0.1:9090` locally, `0.0.0.0:9090` in the chart).
    pub listen: SocketAddr,
    /// How often a worker reads its queues' depths for `/metrics`
    /// (`hookfleet_queue_messages`).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub queue_depth_interval: Duration,
    /// Token for the operator console under `/console` (bearer header or the
    /// login form). Empty (the default): the console is off. A secret: shown
    /// as `***`, never logged; in the chart it comes from the Secret.
    #[serde(default)]
    pub console_token: SecretString,
}

impl AdminConfig {
    /// The `[admin]` checks: the depth interval and the console token's length.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("admin.queue_depth_interval", self.queue_depth_interval)?;
        let token = self.console_token.expose();
        if !token.is_empty() && token.chars().count() < MIN_CONSOLE_TOKEN_CHARS {
            return Err(ConfigError::Invalid {
                key: "admin.console_token".into(),
                message: format!(
                    "must be empty (console off) or at least {MIN_CONSOLE_TOKEN_CHARS} characters \
                     (`openssl rand -hex 24`), got {}",
                    token.chars().count()
                ),
            });
        }
        Ok(())
    }
}
