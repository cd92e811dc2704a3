//! The guard: the address policy with `[webhook]`'s exemptions applied, and
//! name resolution that returns only the addresses that pass.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use url::Url;

use super::SsrfError;
use super::address::{Refusal, refusal};
use crate::config::{Allowed, WebhookConfig};

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
    pub(crate) fn with_resolve_timeout(mut self, timeout: Duration) -> Self {
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
    pub(crate) fn refusal(&self, host: &str, ip: IpAddr) -> Option<Refusal> {
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

    #[cfg(test)]
    /// Whether one resolved address may be connected to.
    pub(crate) fn address_allowed(&self, host: &str, ip: IpAddr) -> bool {
        self.refusal(host, ip).is_none()
    }

    /// Every address `url`'s host resolves to (an IP literal is used as is),
    /// with the port, each with why it is refused (`None`: allowed). Resolution
    /// is bounded by the resolve timeout.
    pub(crate) async fn check(
        &self,
        url: &Url,
    ) -> Result<Vec<(SocketAddr, Option<Refusal>)>, SsrfError> {
        let host = url.host_str().ok_or(SsrfError::NoHost)?;
        let port = url.port_or_known_default().unwrap_or(80);
        self.check_host(host, port).await
    }

    /// [`Guard::check`] of a host (a name, or an IP literal, brackets allowed)
    /// and port.
    pub(crate) async fn check_host(
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
    pub(crate) async fn resolve_host(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, SsrfError> {
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
    pub(crate) fn is_host_exempt(&self, host: &str) -> bool {
        self.host_allowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::ssrf::address::{is_metadata, is_private};
    use crate::webhook::ssrf::check_url;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
}
