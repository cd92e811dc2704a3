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
//! CIDR) lifts everything for what it names. It never performs the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

use crate::config::WebhookConfig;

/// Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack; AWS IPv6).
const METADATA: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

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

/// One `webhook.allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// A host name (case-insensitive): every address it resolves to is allowed.
    Host(String),
    /// An address or network.
    Net(IpNet),
}

impl Allowed {
    /// Parses an entry: a CIDR, an IP, or a host name.
    pub fn parse(entry: &str) -> Result<Allowed, String> {
        let e = entry.trim();
        if let Ok(net) = e.parse::<IpNet>() {
            return Ok(Allowed::Net(net));
        }
        let bare = e.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Allowed::Net(IpNet::from(ip)));
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

/// Whether `ip` is in a range refused by default (before exemptions).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link local fe80::/10
                || (seg0 & 0xffc0) == 0xfec0 // site local (deprecated)
                || seg0 == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || seg0 == 0x0064 && v6.segments()[1] == 0xff9b // NAT64 to anything
        }
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// Whether `ip` is a cloud-metadata address (IPv4-mapped forms included).
pub fn is_metadata(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    METADATA.contains(&ip)
}

/// The address policy, from `[webhook]`.
#[derive(Debug, Clone)]
pub struct Guard {
    allowed: Vec<Allowed>,
    allow_private: bool,
    resolve_timeout: Duration,
}

impl Guard {
    /// The policy of `cfg` (entries were validated with the config; a bad one is skipped).
    pub fn new(cfg: &WebhookConfig) -> Self {
        Self {
            allowed: cfg
                .allowed_hosts
                .iter()
                .filter_map(|e| Allowed::parse(e).ok())
                .collect(),
            allow_private: cfg.allow_private,
            resolve_timeout: cfg.connect_timeout,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed
            .iter()
            .any(|a| matches!(a, Allowed::Host(h) if *h == host))
    }

    /// Whether one resolved address may be connected to.
    pub fn address_allowed(&self, host: &str, ip: IpAddr) -> bool {
        if self.host_allowed(host)
            || self
                .allowed
                .iter()
                .any(|a| matches!(a, Allowed::Net(n) if n.contains(&ip)))
        {
            return true;
        }
        if is_metadata(ip) {
            return false;
        }
        self.allow_private || !is_private(ip)
    }

    /// Resolves `url`'s host (an IP literal is used as is) and returns the
    /// addresses that pass, to connect to directly.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, SsrfError> {
        let host = url.host_str().ok_or(SsrfError::NoHost)?;
        let port = url.port_or_known_default().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let lookup = tokio::net::lookup_host((bare, port));
                match tokio::time::timeout(self.resolve_timeout, lookup).await {
                    Ok(Ok(it)) => it.collect(),
                    Ok(Err(e)) => {
                        return Err(SsrfError::Resolve {
                            host: host.to_string(),
                            reason: e.to_string(),
                        });
                    }
                    Err(_) => {
                        return Err(SsrfError::Resolve {
                            host: host.to_string(),
                            reason: format!("timed out after {:?}", self.resolve_timeout),
                        });
                    }
                }
            }
        };
        if addrs.is_empty() {
            return Err(SsrfError::Resolve {
                host: host.to_string(),
                reason: "no addresses".into(),
            });
        }
        let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
            .into_iter()
            .partition(|a| self.address_allowed(bare, a.ip()));
        if ok.is_empty() {
            let addrs = refused
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SsrfError::Blocked {
                host: host.to_string(),
                addrs,
            });
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_ranges() {
        for a in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip(a)), "{a}");
        }
        for a in ["8.8.8.8", "100.128.0.1", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_private(ip(a)), "{a}");
        }
    }

    #[test]
    fn metadata_needs_an_explicit_entry() {
        let mut cfg = crate::config::Config::load_from(None, Vec::new())
            .unwrap()
            .webhook;
        cfg.allow_private = true;
        let g = Guard::new(&cfg);
        assert!(g.address_allowed("x", ip("10.0.0.1")));
        assert!(!g.address_allowed("x", ip("169.254.169.254")));
        assert!(!g.address_allowed("x", ip("fd00:ec2::254")));
        cfg.allowed_hosts = vec!["169.254.169.254".into()];
        assert!(Guard::new(&cfg).address_allowed("x", ip("169.254.169.254")));
    }

    #[test]
    fn allowed_entries() {
        assert_eq!(
            Allowed::parse("10.0.0.0/8").unwrap(),
            Allowed::Net("10.0.0.0/8".parse().unwrap())
        );
        assert!(matches!(Allowed::parse("127.0.0.1"), Ok(Allowed::Net(_))));
        assert!(matches!(Allowed::parse("[::1]"), Ok(Allowed::Net(_))));
        assert_eq!(
            Allowed::parse("Hooks.Local").unwrap(),
            Allowed::Host("hooks.local".into())
        );
        assert!(Allowed::parse("a b").is_err());
    }

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
