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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::Url;

use crate::config::{Allowed, WebhookConfig};

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

/// How an IPv6 address carries an IPv4 address (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Embedding {
    /// `::ffff:a.b.c.d`.
    Mapped,
    /// `::ffff:0:a.b.c.d` (SIIT).
    Translated,
    /// `::a.b.c.d` (deprecated `::/96`).
    Compatible,
    /// `64:ff9b::a.b.c.d` (NAT64 well-known prefix).
    Nat64,
    /// `2002:aabb:ccdd::/48` (6to4).
    SixToFour,
    /// `2001:0:aabb:ccdd::/64`: the Teredo server.
    TeredoServer,
    /// The last 32 bits of a Teredo address, inverted: the Teredo client.
    TeredoClient,
}

impl std::fmt::Display for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Embedding::Mapped => "IPv4-mapped",
            Embedding::Translated => "IPv4-translated",
            Embedding::Compatible => "IPv4-compatible",
            Embedding::Nat64 => "NAT64",
            Embedding::SixToFour => "6to4",
            Embedding::TeredoServer => "Teredo server",
            Embedding::TeredoClient => "Teredo client",
        })
    }
}

fn v4_at(o: &[u8; 16], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(o[i], o[i + 1], o[i + 2], o[i + 3])
}

/// The IPv4 addresses `v6` carries, with how (none for a plain IPv6 address; two
/// for Teredo). The NAT64 local-use prefix is not included (see the module docs).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Vec<(Embedding, Ipv4Addr)> {
    let s = v6.segments();
    let o = v6.octets();
    let last = v4_at(&o, 12);
    if s[..5] == [0; 5] && s[5] == 0xffff {
        vec![(Embedding::Mapped, last)]
    } else if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        vec![(Embedding::Translated, last)]
    } else if s[..6] == [0; 6] && u32::from(last) > 1 {
        vec![(Embedding::Compatible, last)]
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        vec![(Embedding::Nat64, last)]
    } else if s[0] == 0x2002 {
        vec![(Embedding::SixToFour, v4_at(&o, 2))]
    } else if s[0] == 0x2001 && s[1] == 0 {
        vec![
            (Embedding::TeredoServer, v4_at(&o, 4)),
            (Embedding::TeredoClient, Ipv4Addr::from(!u32::from(last))),
        ]
    } else {
        Vec::new()
    }
}

/// Whether `v6` is in the NAT64 local-use prefix `64:ff9b:1::/48`.
fn is_nat64_local(v6: Ipv6Addr) -> bool {
    v6.segments()[..3] == [0x64, 0xff9b, 1]
}

/// The IPv4 addresses a NAT64 local-use address may carry: one per RFC 6052
/// prefix length that fits in the /48 (48, 56, 64 and 96; bits 64..72 are skipped).
fn nat64_local_candidates(v6: Ipv6Addr) -> [Ipv4Addr; 4] {
    let o = v6.octets();
    [
        Ipv4Addr::new(o[6], o[7], o[9], o[10]),
        Ipv4Addr::new(o[7], o[9], o[10], o[11]),
        v4_at(&o, 9),
        v4_at(&o, 12),
    ]
}

/// Why the default policy refuses an address (before exemptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The refused range: `loopback`, `private`, `link-local`, `cloud metadata`, ...
    pub range: &'static str,
    /// The IPv4 address judged, when the address carries one.
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

/// [`Refusal::range`] of cloud-metadata addresses.
const METADATA_RANGE: &str = "cloud metadata";

impl Refusal {
    fn plain(range: &'static str) -> Self {
        Self {
            range,
            embedded: None,
        }
    }

    /// A cloud-metadata address (never lifted by `webhook.allow_private`).
    pub fn is_metadata(&self) -> bool {
        self.range == METADATA_RANGE
    }
}

/// `loopback`, or `IPv4-compatible 127.0.0.1: loopback` for a carried address.
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.embedded {
            Some((how, v4)) => write!(f, "{how} {v4}: {}", self.range),
            None => f.write_str(self.range),
        }
    }
}

/// Why `ip` is refused by default (before exemptions), or `None` when it is not.
/// A metadata address, carried or not, wins over every other reason.
pub fn refusal(ip: IpAddr) -> Option<Refusal> {
    if METADATA.contains(&ip) {
        return Some(Refusal::plain(METADATA_RANGE));
    }
    let v6 = match ip {
        IpAddr::V4(v4) => return v4_range(v4).map(Refusal::plain),
        IpAddr::V6(v6) => v6,
    };
    let embedded = embedded_ipv4(v6);
    if let Some(&(how, v4)) = embedded
        .iter()
        .find(|(_, v4)| METADATA.contains(&IpAddr::V4(*v4)))
    {
        return Some(Refusal {
            range: METADATA_RANGE,
            embedded: Some((how, v4)),
        });
    }
    if is_nat64_local(v6) {
        let meta = nat64_local_candidates(v6)
            .into_iter()
            .any(|v4| METADATA.contains(&IpAddr::V4(v4)));
        return Some(Refusal::plain(if meta {
            METADATA_RANGE
        } else {
            "NAT64 local-use"
        }));
    }
    if let Some(range) = v6_range(v6) {
        return Some(Refusal::plain(range));
    }
    embedded.into_iter().find_map(|(how, v4)| {
        v4_range(v4).map(|range| Refusal {
            range,
            embedded: Some((how, v4)),
        })
    })
}

/// The refused range a plain IPv6 address is in.
fn v6_range(v6: Ipv6Addr) -> Option<&'static str> {
    let s = v6.segments();
    Some(if v6.is_loopback() {
        "loopback"
    } else if v6.is_unspecified() {
        "unspecified"
    } else if v6.is_multicast() {
        "multicast"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "unique-local" // fc00::/7
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "link-local" // fe80::/10
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "site-local" // deprecated fec0::/10
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation"
    } else if s[0] == 0x64 && s[1] == 0xff9b && embedded_ipv4(v6).is_empty() {
        "reserved" // 64:ff9b::/32 outside the well-known /96 and local-use /48
    } else {
        return None;
    })
}

/// The refused range a plain IPv4 address is in.
fn v4_range(v4: Ipv4Addr) -> Option<&'static str> {
    let o = v4.octets();
    Some(if v4.is_loopback() {
        "loopback"
    } else if v4.is_private() {
        "private"
    } else if v4.is_link_local() {
        "link-local"
    } else if v4.is_unspecified() {
        "unspecified"
    } else if o[0] == 0 {
        "this network" // 0/8
    } else if v4.is_broadcast() {
        "broadcast"
    } else if v4.is_multicast() {
        "multicast"
    } else if v4.is_documentation() {
        "documentation"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "CGNAT" // 100.64/10
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        "IETF protocol assignments"
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        "benchmarking" // 198.18/15
    } else if o[0] >= 240 {
        "reserved"
    } else {
        return None;
    })
}

/// Whether `ip` is in a range refused by default (before exemptions), IPv4
/// addresses carried in IPv6 forms included.
pub fn is_private(ip: IpAddr) -> bool {
    refusal(ip).is_some()
}

/// Whether `ip` is a cloud-metadata address, or an IPv6 form carrying one.
pub fn is_metadata(ip: IpAddr) -> bool {
    refusal(ip).is_some_and(|r| r.is_metadata())
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

    /// The same policy with another bound on name resolution (default
    /// `webhook.connect_timeout`).
    pub fn with_resolve_timeout(mut self, timeout: Duration) -> Self {
        self.resolve_timeout = timeout;
        self
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.allowed
            .iter()
            .any(|a| matches!(a, Allowed::Host(h) if *h == host))
    }

    /// Why one resolved address may not be connected to, or `None` when it may.
    pub fn refusal(&self, host: &str, ip: IpAddr) -> Option<Refusal> {
        if self.host_allowed(host)
            || self
                .allowed
                .iter()
                .any(|a| matches!(a, Allowed::Net(n) if n.contains(&ip)))
        {
            return None;
        }
        let r = refusal(ip)?;
        if self.allow_private && !r.is_metadata() {
            return None;
        }
        Some(r)
    }

    /// Whether one resolved address may be connected to.
    pub fn address_allowed(&self, host: &str, ip: IpAddr) -> bool {
        self.refusal(host, ip).is_none()
    }

    /// Every address `url`'s host resolves to (an IP literal is used as is),
    /// with the port, each with why it is refused (`None`: allowed). Resolution
    /// is bounded by the resolve timeout.
    pub async fn check(&self, url: &Url) -> Result<Vec<(SocketAddr, Option<Refusal>)>, SsrfError> {
        let host = url.host_str().ok_or(SsrfError::NoHost)?;
        let port = url.port_or_known_default().unwrap_or(80);
        self.check_host(host, port).await
    }

    /// [`Guard::check`] of a host (a name, or an IP literal, brackets allowed)
    /// and port.
    pub async fn check_host(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<(SocketAddr, Option<Refusal>)>, SsrfError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                let lookup = tokio::net::lookup_host((bare, port));
                let failed = |reason: String| SsrfError::Resolve {
                    host: host.to_string(),
                    reason,
                };
                match tokio::time::timeout(self.resolve_timeout, lookup).await {
                    Ok(Ok(it)) => it.collect(),
                    Ok(Err(e)) => return Err(failed(e.to_string())),
                    Err(_) => {
                        return Err(failed(format!(
                            "timed out after {:?}",
                            self.resolve_timeout
                        )));
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
        Ok(addrs
            .into_iter()
            .map(|a| (a, self.refusal(bare, a.ip())))
            .collect())
    }

    /// Resolves `url`'s host (an IP literal is used as is) and returns the
    /// addresses that pass, to connect to directly. When none does, the error
    /// names each address with why it is refused (and the IPv4 address an IPv6
    /// form carries).
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, SsrfError> {
        let host = url.host_str().ok_or(SsrfError::NoHost)?;
        let port = url.port_or_known_default().unwrap_or(80);
        self.resolve_host(host, port).await
    }

    /// [`Guard::resolve`] of a host and port: what the webhook client's DNS
    /// resolver returns (`src/webhook/deliver.rs`).
    pub async fn resolve_host(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SsrfError> {
        let checked = self.check_host(host, port).await?;
        let (ok, refused): (Vec<_>, Vec<_>) = checked.into_iter().partition(|(_, r)| r.is_none());
        if ok.is_empty() {
            let addrs = refused
                .iter()
                .map(|(a, r)| match r {
                    Some(r) => format!("{} ({r})", a.ip()),
                    None => a.ip().to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(SsrfError::Blocked {
                host: host.to_string(),
                addrs,
            });
        }
        Ok(ok.into_iter().map(|(a, _)| a).collect())
    }

    /// Whether `host` is named by an `allowed_hosts` entry (its addresses are
    /// then never refused).
    pub fn is_host_exempt(&self, host: &str) -> bool {
        self.host_allowed(host)
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

    fn guard(allow_private: bool, allowed: &[&str]) -> Guard {
        let mut cfg = crate::config::Config::load_from(None, Vec::new())
            .unwrap()
            .webhook;
        cfg.allow_private = allow_private;
        cfg.allowed_hosts = allowed.iter().map(|s| s.to_string()).collect();
        Guard::new(&cfg)
    }

    /// (form, carrying a refused IPv4 address, carrying a public one, the refusal shown).
    const FORMS: [(&str, &str, &str, &str); 7] = [
        (
            "IPv4-mapped",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "IPv4-mapped 127.0.0.1: loopback",
        ),
        (
            "IPv4-translated",
            "::ffff:0:10.1.2.3",
            "::ffff:0:8.8.8.8",
            "IPv4-translated 10.1.2.3: private",
        ),
        (
            "IPv4-compatible",
            "::127.0.0.1",
            "::8.8.8.8",
            "IPv4-compatible 127.0.0.1: loopback",
        ),
        (
            "NAT64",
            "64:ff9b::a00:1",
            "64:ff9b::808:808",
            "NAT64 10.0.0.1: private",
        ),
        (
            "6to4",
            "2002:7f00:1::",
            "2002:808:808::1",
            "6to4 127.0.0.1: loopback",
        ),
        (
            "Teredo client",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            "Teredo client 127.0.0.1: loopback",
        ),
        (
            // Server 100.64.0.1 (CGNAT), client 8.8.8.8.
            "Teredo server",
            "2001:0:6440:1::f7f7:f7f7",
            "2001:0:4136:e378::f7f7:f7f7",
            "Teredo server 100.64.0.1: CGNAT",
        ),
    ];

    #[test]
    fn ipv6_forms_are_judged_by_the_ipv4_they_carry() {
        let strict = guard(false, &[]);
        let lax = guard(true, &[]);
        for (form, bad, good, shown) in FORMS {
            let r = refusal(ip(bad)).unwrap_or_else(|| panic!("{form}: {bad} passed"));
            assert_eq!(r.to_string(), shown, "{form}");
            assert!(!strict.address_allowed("x", ip(bad)), "{form}: {bad}");
            assert!(strict.address_allowed("x", ip(good)), "{form}: {good}");
            assert!(!is_private(ip(good)), "{form}: {good}");
            // allow_private lifts them, and an exact allowed_hosts entry does too.
            assert!(lax.address_allowed("x", ip(bad)), "{form}: {bad}");
            assert!(guard(false, &[bad]).address_allowed("x", ip(bad)), "{form}");
        }
    }

    #[test]
    fn embedded_addresses_are_extracted() {
        use Embedding::*;
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            embedded_ipv4(v6("2001:0:4136:e378:8000:63bf:80ff:fffe")),
            vec![
                (TeredoServer, v4("65.54.227.120")),
                (TeredoClient, v4("127.0.0.1"))
            ]
        );
        assert_eq!(
            embedded_ipv4(v6("::7f00:1")),
            vec![(Compatible, v4("127.0.0.1"))]
        );
        assert_eq!(
            embedded_ipv4(v6("2002:c000:204::1")),
            vec![(SixToFour, v4("192.0.2.4"))]
        );
        assert_eq!(
            embedded_ipv4(v6("64:ff9b::c000:221")),
            vec![(Nat64, v4("192.0.2.33"))]
        );
        // `::` and `::1` are not IPv4-compatible; other ranges carry nothing.
        for a in [
            "::",
            "::1",
            "2001:db8::1",
            "2606:4700::1111",
            "64:ff9b:1::1",
            "2001:10::1",
        ] {
            assert!(embedded_ipv4(v6(a)).is_empty(), "{a}");
        }
        assert_eq!(refusal(ip("::")).unwrap().to_string(), "unspecified");
        assert_eq!(refusal(ip("::1")).unwrap().to_string(), "loopback");
        // An unused Teredo client field (all zeros) inverts to 255.255.255.255.
        assert!(is_private(ip("2001:0:4136:e378::")));
    }

    #[test]
    fn nat64_local_use_is_private_and_the_rest_of_the_prefix_reserved() {
        let strict = guard(false, &[]);
        let lax = guard(true, &[]);
        assert_eq!(
            refusal(ip("64:ff9b:1::808:808")).unwrap().to_string(),
            "NAT64 local-use"
        );
        assert!(!strict.address_allowed("x", ip("64:ff9b:1::808:808")));
        assert!(lax.address_allowed("x", ip("64:ff9b:1::808:808")));
        // Metadata at each RFC 6052 position of the /48: /48, /56, /64, /96.
        for a in [
            "64:ff9b:1:a9fe:a9:fe00::",
            "64:ff9b:1:a9:fe:a9fe::",
            "64:ff9b:1:0:a9:fea9:fe00:0",
            "64:ff9b:1::a9fe:a9fe",
        ] {
            assert!(is_metadata(ip(a)), "{a}");
            assert!(!lax.address_allowed("x", ip(a)), "{a}");
        }
        assert_eq!(refusal(ip("64:ff9b:2::1")).unwrap().range, "reserved");
    }

    #[test]
    fn metadata_in_any_form_needs_an_explicit_entry() {
        let lax = guard(true, &[]);
        for a in [
            "::ffff:169.254.169.254",
            "::ffff:0:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            // Teredo client 169.254.169.254 (inverted: 5601:5601), public server.
            "2001:0:4136:e378::5601:5601",
            // Teredo server 169.254.169.254, client 10.0.0.1: metadata wins.
            "2001:0:a9fe:a9fe::f5ff:fffe",
        ] {
            let r = refusal(ip(a)).unwrap();
            assert!(r.is_metadata(), "{a}: {r}");
            assert!(
                r.to_string().contains("169.254.169.254: cloud metadata"),
                "{r}"
            );
            assert!(is_metadata(ip(a)), "{a}");
            assert!(!lax.address_allowed("x", ip(a)), "{a}");
            assert!(guard(true, &[a]).address_allowed("x", ip(a)), "{a}");
        }
    }

    #[tokio::test]
    async fn refusals_name_the_carried_ipv4_address() {
        let g = guard(false, &[]);
        for (u, shown) in [
            (
                "http://[::127.0.0.1]:8080/",
                "IPv4-compatible 127.0.0.1: loopback",
            ),
            ("http://[2002:7f00:1::]/", "6to4 127.0.0.1: loopback"),
            (
                "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
                "Teredo client 127.0.0.1: loopback",
            ),
            ("http://127.0.0.1:9/", "127.0.0.1 (loopback)"),
        ] {
            let url = check_url(u).unwrap();
            let e = g.resolve(&url).await.unwrap_err();
            assert!(matches!(e, SsrfError::Blocked { .. }), "{u}: {e}");
            assert!(e.to_string().contains(shown), "{u}: {e}");
        }
        let url = check_url("http://[::8.8.8.8]:8080/").unwrap();
        assert_eq!(g.resolve(&url).await.unwrap().len(), 1);
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
