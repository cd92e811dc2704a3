//! The SSRF guard: which webhook URLs are accepted and which addresses may be
//! connected to.
//!
//! Owns URL validation (at `webhook add` and again before each attempt) and the
//! address policy. [`Guard::resolve`] resolves the host itself and returns only
//! addresses that pass; the caller connects to exactly those, so a name is never
//! resolved twice (no DNS rebinding between the check and the connect). Refused by
//! default: loopback, private (RFC 1918), link-local, unique-local, CGNAT
//! (100.64/10), unspecified, broadcast, multicast and documentation ranges, and
//! cloud-metadata addresses. `webhook.allow_private` lifts the private ranges but
//! never the metadata addresses; an `webhook.allowed_hosts` entry (name, IP or
//! CIDR) lifts everything for what it names (an IP or CIDR entry matches the
//! address connected to, as written: `127.0.0.1` does not cover `::ffff:127.0.0.1`).
//! It never performs the request.
//!
//! # IPv6 addresses that carry an IPv4 address
//!
//! These are judged by the IPv4 address they carry, with the same rules as a
//! plain IPv4 address (so `[::ffff:127.0.0.1]` is loopback and `[::8.8.8.8]` is
//! not refused); see [`embedded_ipv4`]:
//! - IPv4-mapped `::ffff:a.b.c.d` and SIIT IPv4-translated `::ffff:0:a.b.c.d`;
//! - IPv4-compatible `::a.b.c.d` (the deprecated `::/96`, other than `::` and `::1`);
//! - NAT64 well-known prefix `64:ff9b::/96` (RFC 6052: the last 32 bits);
//! - 6to4 `2002::/16` (bits 16..48);
//! - Teredo `2001::/32`, which carries two: the server (bits 32..64) and the
//!   client (the last 32 bits, inverted). The address is refused when EITHER is.
//!
//! The NAT64 local-use prefix `64:ff9b:1::/48` (RFC 8215) is refused as a whole,
//! as a private range (`webhook.allow_private` lifts it): where it carries the
//! IPv4 address depends on the operator's prefix length, and a local translator
//! may reach any network. Even with `allow_private` it is refused when any RFC
//! 6052 position (/48, /56, /64, /96) holds a metadata address. The rest of
//! `64:ff9b::/32` is unassigned and refused as reserved. A metadata address
//! carried in any of these forms is refused like the metadata address itself.
//!
//! # Layout
//! - `mod.rs`: URL syntax ([`check_url`]) and the error type;
//! - `address`: the address policy, judging one address ([`refusal`]);
//! - `guard`: [`Guard`], the policy with the configured exemptions, and the
//!   resolution that returns only allowed addresses.

mod address;
mod guard;

use url::Url;

pub(crate) use self::address::Refusal;
pub use self::guard::Guard;

/// Why a URL or an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SsrfError {
    /// The URL does not parse.
    #[error("invalid URL: {0}")]
    Syntax(String),
    /// Not http or https.
    #[error("URL scheme must be http or https, got {0:?}")]
    Scheme(String),
    /// `user:password@` in the URL (credentials belong in the secret).
    #[error("URL must not contain credentials (user or password)")]
    Credentials,
    /// No host.
    #[error("URL has no host")]
    NoHost,
    /// Every address the host resolves to is refused.
    #[error("refused: {host} resolves only to blocked addresses ({addrs})")]
    Blocked {
        /// The host as written.
        host: String,
        /// The refused addresses.
        addrs: String,
    },
    /// A connection reached a refused address (the webhook client's peer
    /// check, `src/webhook/guarded.rs`).
    #[error("refused: connected to a blocked address ({0})")]
    Peer(String),
    /// The name did not resolve (may be temporary).
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
}

impl SsrfError {
    /// Whether retrying could help (only resolution failures).
    pub fn is_transient(&self) -> bool {
        matches!(self, SsrfError::Resolve { .. })
    }
}

/// Checks a webhook URL's syntax: http(s), a host, no credentials.
pub fn check_url(raw: &str) -> Result<Url, SsrfError> {
    let url = Url::parse(raw.trim()).map_err(|e| SsrfError::Syntax(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SsrfError::Scheme(url.scheme().to_string()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(SsrfError::Credentials);
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(url),
        _ => Err(SsrfError::NoHost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_checks() {
        assert!(check_url("https://example.com/hook").is_ok());
        assert_eq!(
            check_url("ftp://x").unwrap_err(),
            SsrfError::Scheme("ftp".into())
        );
        assert_eq!(
            check_url("http://user:pw@host/").unwrap_err(),
            SsrfError::Credentials
        );
        assert!(matches!(
            check_url("http://[::1"),
            Err(SsrfError::Syntax(_))
        ));
        assert!(matches!(check_url("not a url"), Err(SsrfError::Syntax(_))));
    }
}
