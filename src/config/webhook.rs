//! `[webhook]`: delivery timeouts, the per-host breaker, the SSRF allow-list,
//! retention and the keys that seal subscription secrets.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::{positive, range};
use super::error::ConfigError;
use super::outbox::PRUNE_BATCH_SIZE_RANGE;
use super::secret::SecretString;
use super::worker::WorkerConfig;

/// Webhook delivery (the `webhook` job kind).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Upper bound on one delivery attempt: resolve + connect + TLS + request +
    /// reading the response. Exceeding it is a transient failure (retried).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub timeout: Duration,
    /// Upper bound on the TCP connect to one resolved address.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) connect_timeout: Duration,
    /// Attempts running at once against one host, so a slow endpoint cannot
    /// take the whole `worker.kind_concurrency.webhook` pool.
    pub(crate) per_host_concurrency: u32,
    /// A subscription is disabled after this many consecutive failed attempts
    /// (a success resets the count); `webhook enable` turns it back on.
    pub disable_after_failures: u32,
    /// Consecutive failed attempts (timeouts, connection errors, 408/429/5xx)
    /// against one host (`host:port`) that open its circuit breaker: its
    /// deliveries are then postponed without a request until
    /// `breaker_open_for` has passed. 0 turns the breaker off. Keep it below
    /// `disable_after_failures` so a dead host is postponed before its
    /// subscriptions are disabled.
    pub breaker_failures: u32,
    /// How long an open breaker postpones deliveries before letting probes through.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub breaker_open_for: Duration,
    /// Attempts let through at once to a host whose breaker is half-open (after
    /// `breaker_open_for`); one success closes it, one failure reopens it.
    pub(crate) breaker_probes: u32,
    /// Host names, IP addresses or CIDRs a webhook may reach even though they
    /// are private, loopback, link-local or cloud-metadata addresses.
    pub allowed_hosts: Vec<String>,
    /// Allow private, loopback, link-local, unique-local and CGNAT addresses
    /// (cloud-metadata addresses still need an `allowed_hosts` entry).
    pub allow_private: bool,
    /// A PEM file of root certificates trusted for `https` webhooks besides the
    /// platform's (a private CA of internal receivers); empty for none. Checked
    /// when the config loads, so a bad file stops the worker at start rather
    /// than failing every delivery.
    pub ca_file: String,
    /// Delivery and attempt records are kept this long, then pruned (every
    /// `prune_interval`). Redelivery needs the record.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) retention: Duration,
    /// How often delivery and attempt records past `retention` are pruned.
    #[serde(with = "humantime_serde", default = "webhook_prune_interval")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub prune_interval: Duration,
    /// Rows deleted per pruning statement (attempts, then deliveries).
    #[serde(default = "webhook_prune_batch_size")]
    pub prune_batch_size: u32,
    /// Base64 of 32 bytes: the AES-256-GCM key subscription secrets are stored
    /// under, so a database dump shows none. Empty: secrets are stored in
    /// plaintext (as before this key existed). Changing it: put the old key in
    /// `previous_secret_keys`, run `hookfleet migrate` (re-encrypts every secret
    /// with this key), then drop the old key.
    pub secret_key: SecretString,
    /// Former `secret_key`s, used only to decrypt secrets not yet re-encrypted
    /// by `hookfleet migrate`.
    pub previous_secret_keys: Vec<SecretString>,
    /// How long `webhook rotate-secret` keeps the old secret signing next to the
    /// new one (Standard Webhooks style sends both signatures), unless
    /// `--overlap` says otherwise; receivers switch secrets within it.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "crate::config_reference::HumanDuration")]
    pub(crate) secret_overlap: Duration,
}

/// Default of `webhook.prune_interval` (as `outbox.prune_interval`).
pub const WEBHOOK_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Default of `webhook.prune_batch_size` (as `outbox.prune_batch_size`).
pub const WEBHOOK_PRUNE_BATCH_SIZE: u32 = 1000;

fn webhook_prune_interval() -> Duration {
    WEBHOOK_PRUNE_INTERVAL
}

fn webhook_prune_batch_size() -> u32 {
    WEBHOOK_PRUNE_BATCH_SIZE
}

/// Bytes of a `webhook.secret_key` (AES-256).
pub const SECRET_KEY_BYTES: usize = 32;

/// The bytes of `webhook.secret_key` and `webhook.previous_secret_keys`, decoded. No
/// `Debug`: key material is never formatted.
pub struct SecretKeyBytes {
    /// `secret_key`, or `None` when it is empty.
    pub(crate) current: Option<Vec<u8>>,
    /// `previous_secret_keys`, in their order.
    pub(crate) previous: Vec<Vec<u8>>,
}

impl WebhookConfig {
    /// The `[webhook]` checks: timeouts (within `worker.handler_timeout`), the
    /// breaker, the CA file, the secret keys and the allow-list.
    pub(super) fn validate(&self, worker: &WorkerConfig) -> Result<(), ConfigError> {
        positive("webhook.timeout", self.timeout)?;
        positive("webhook.connect_timeout", self.connect_timeout)?;
        positive("webhook.retention", self.retention)?;
        positive("webhook.prune_interval", self.prune_interval)?;
        range(
            "webhook.prune_batch_size",
            self.prune_batch_size.into(),
            PRUNE_BATCH_SIZE_RANGE,
        )?;
        // One job may wait up to `timeout` for the per-host limit and then run an
        // attempt of up to `timeout`; the handler timeout must leave room for both.
        if self.timeout.saturating_mul(2) >= worker.handler_timeout {
            return Err(ConfigError::Invalid {
                key: "webhook.timeout".into(),
                message: format!(
                    "must be less than half of worker.handler_timeout ({}), got {}",
                    humantime::format_duration(worker.handler_timeout),
                    humantime::format_duration(self.timeout)
                ),
            });
        }
        self.validate_breaker()?;
        self.validate_trust()
    }

    /// The per-host limit, the disabling of failing subscriptions and the breaker.
    fn validate_breaker(&self) -> Result<(), ConfigError> {
        range(
            "webhook.per_host_concurrency",
            self.per_host_concurrency.into(),
            1..=1_000,
        )?;
        range(
            "webhook.disable_after_failures",
            self.disable_after_failures.into(),
            1..=1_000,
        )?;
        range(
            "webhook.breaker_failures",
            self.breaker_failures.into(),
            0..=1_000,
        )?;
        positive("webhook.breaker_open_for", self.breaker_open_for)?;
        range(
            "webhook.breaker_probes",
            self.breaker_probes.into(),
            1..=1_000,
        )?;
        Ok(())
    }

    /// What the worker trusts and may reach: the CA file, the secret keys and the
    /// allow-list, each checked at load rather than at the first delivery.
    fn validate_trust(&self) -> Result<(), ConfigError> {
        crate::tls::configured_ca(&self.ca_file).map_err(|message| ConfigError::Invalid {
            key: "webhook.ca_file".into(),
            message,
        })?;
        // Checked here so a bad key stops `config check` and the worker at start
        // rather than failing deliveries; the message never shows the value.
        self.secret_key_bytes()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        for entry in &self.allowed_hosts {
            if let Err(message) = Allowed::parse(entry) {
                return Err(ConfigError::Invalid {
                    key: "webhook.allowed_hosts".into(),
                    message,
                });
            }
        }
        Ok(())
    }

    /// The decoded secret keys, current first; the error names the config key, never
    /// its value. Here, beside the keys, so [`Config::validate`](super::Config::validate)
    /// and the keyring that seals secrets (`webhook::secrets`) accept exactly the same
    /// values.
    pub(crate) fn secret_key_bytes(&self) -> Result<SecretKeyBytes, (String, String)> {
        let current = match self.secret_key.expose() {
            "" => None,
            k => Some(decode_secret_key(k).map_err(|m| ("webhook.secret_key".to_string(), m))?),
        };
        let previous = self
            .previous_secret_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                decode_secret_key(k.expose())
                    .map_err(|m| (format!("webhook.previous_secret_keys[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SecretKeyBytes { current, previous })
    }
}

/// The bytes of one secret key: standard base64 of [`SECRET_KEY_BYTES`] bytes.
fn decode_secret_key(b64: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "must be standard base64 (e.g. `openssl rand -base64 32`)".to_string())?;
    if bytes.len() != SECRET_KEY_BYTES {
        return Err(format!(
            "must be the base64 of {SECRET_KEY_BYTES} bytes (e.g. `openssl rand -base64 32`), \
             got {} bytes",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// One `webhook.allowed_hosts` entry. Beside its config because
/// [`Config::validate`](super::Config::validate) rejects a bad entry at load and the
/// SSRF guard (`webhook::ssrf`) builds its policy from the same parse: one definition
/// of what an entry may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A host name (case-insensitive): every address it resolves to is allowed.
    Host(String),
    /// An address or network.
    Net(ipnet::IpNet),
}

impl Allowed {
    /// Parses an entry: a CIDR, an IP, or a host name.
    pub(crate) fn parse(entry: &str) -> Result<Allowed, String> {
        let e = entry.trim();
        if let Ok(net) = e.parse::<ipnet::IpNet>() {
            return Ok(Allowed::Net(net));
        }
        let bare = e.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return Ok(Allowed::Net(ipnet::IpNet::from(ip)));
        }
        let name_ok = !e.is_empty()
            && e.len() <= 253
            && e.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
        if name_ok {
            Ok(Allowed::Host(e.to_ascii_lowercase()))
        } else {
            Err(format!(
                "entries must be host names, IP addresses or CIDRs, got {entry:?}"
            ))
        }
    }
}
