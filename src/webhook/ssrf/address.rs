//! The address policy: which addresses are refused by default and why,
//! IPv4 addresses carried in IPv6 forms included (see the module docs of
//! [`super`]). Pure: no configuration, no resolution.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack; AWS IPv6).
const METADATA: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// How an IPv6 address carries an IPv4 address (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub(crate) enum Embedding {
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
pub(crate) fn embedded_ipv4(v6: Ipv6Addr) -> Vec<(Embedding, Ipv4Addr)> {
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
pub(crate) struct Refusal {
    /// The refused range: `loopback`, `private`, `link-local`, `cloud metadata`, ...
    pub(crate) range: &'static str,
    /// The IPv4 address judged, when the address carries one.
    pub(crate) embedded: Option<(Embedding, Ipv4Addr)>,
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
    pub(crate) fn is_metadata(&self) -> bool {
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
pub(crate) fn refusal(ip: IpAddr) -> Option<Refusal> {
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

#[cfg(test)]
/// Whether `ip` is in a range refused by default (before exemptions), IPv4
/// addresses carried in IPv6 forms included.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    refusal(ip).is_some()
}

#[cfg(test)]
/// Whether `ip` is a cloud-metadata address, or an IPv6 form carrying one.
pub(crate) fn is_metadata(ip: IpAddr) -> bool {
    refusal(ip).is_some_and(|r| r.is_metadata())
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
}
