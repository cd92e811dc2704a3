//! The SSRF guard plugged into the webhook HTTP client (reqwest).
//!
//! Owns the two hooks through which [`super::ssrf::Guard`] decides where a
//! webhook connection may go:
//! - [`GuardResolver`], reqwest's DNS resolver: a host name resolves (bounded by
//!   `webhook.connect_timeout`) to the addresses the guard allows, and to an
//!   error naming each refused address when none is. reqwest connects only to
//!   what its resolver returned, so a name is resolved once per connection (no
//!   DNS rebinding between check and connect). IP-literal URLs never reach a
//!   resolver: [`super::deliver::Client::post`] checks them before the request.
//! - [`PeerCheckLayer`], a layer on reqwest's connector: once a connection is
//!   established it reads the peer address (hyper's `HttpInfo`) and drops the
//!   connection when the guard refuses it, before any request byte is written.
//!   This is defence in depth against a path that skips the two checks above
//!   (proxies are off, so none is known). Its limit: the layer wraps the whole
//!   connector, so for `https` the TLS handshake with the peer has happened by
//!   then (a ClientHello reached it; no request, header or body did).
//!
//! An `allowed_hosts` entry naming a host lifts the policy for the addresses
//! that name resolves to; the connector sees no host name, so the resolver
//! records those addresses ([`Exempt`]) for the peer check to accept.

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::ssrf::{Guard, SsrfError};

/// Addresses of exempt host names remembered at most; past it the set starts
/// over (a name is resolved again for each new connection, so it refills).
const EXEMPT_MAX: usize = 4096;

/// Addresses resolved for host names that `allowed_hosts` exempts.
#[derive(Debug, Default, Clone)]
pub(crate) struct Exempt(Arc<Mutex<HashSet<IpAddr>>>);

impl Exempt {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<IpAddr>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn add(&self, addrs: &[SocketAddr]) {
        let mut set = self.lock();
        if set.len() + addrs.len() > EXEMPT_MAX {
            set.clear();
        }
        set.extend(addrs.iter().map(SocketAddr::ip));
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.lock().contains(&ip)
    }
}

/// reqwest's DNS resolver: the guard's resolution (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct GuardResolver {
    guard: Arc<Guard>,
    exempt: Exempt,
}

impl GuardResolver {
    /// A resolver for `guard`, recording exempt names' addresses in `exempt`.
    pub(crate) fn new(guard: Arc<Guard>, exempt: Exempt) -> Self {
        Self { guard, exempt }
    }
}

impl Resolve for GuardResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let exempt = self.exempt.clone();
        Box::pin(async move {
            let host = name.as_str();
            // Port 0: reqwest puts the URL's port in.
            let addrs = guard.resolve_host(host, 0).await?;
            if guard.is_host_exempt(host) {
                exempt.add(&addrs);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The connector layer that checks each new connection's peer address.
#[derive(Debug, Clone)]
pub(crate) struct PeerCheckLayer {
    guard: Arc<Guard>,
    exempt: Exempt,
}

impl PeerCheckLayer {
    /// A layer for `guard`, accepting the addresses recorded in `exempt`.
    pub(crate) fn new(guard: Arc<Guard>, exempt: Exempt) -> Self {
        Self { guard, exempt }
    }
}

impl<S> tower::Layer<S> for PeerCheckLayer {
    type Service = PeerCheck<S>;

    fn layer(&self, inner: S) -> PeerCheck<S> {
        PeerCheck {
            inner,
            guard: self.guard.clone(),
            exempt: self.exempt.clone(),
        }
    }
}

/// [`PeerCheckLayer`]'s service.
#[derive(Debug, Clone)]
pub(crate) struct PeerCheck<S> {
    inner: S,
    guard: Arc<Guard>,
    exempt: Exempt,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R, C> tower::Service<R> for PeerCheck<S>
where
    S: tower::Service<R, Response = C, Error = BoxError>,
    S::Future: Send + 'static,
    C: Connection,
{
    type Response = C;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let connecting = self.inner.call(req);
        let guard = self.guard.clone();
        let exempt = self.exempt.clone();
        Box::pin(async move {
            let conn = connecting.await?;
            check_peer(&guard, &exempt, peer_of(&conn))?;
            Ok(conn)
        })
    }
}

/// The remote address of an established connection, when hyper knows it.
fn peer_of<C: Connection>(conn: &C) -> Option<SocketAddr> {
    let mut extensions = axum::http::Extensions::new();
    conn.connected().get_extras(&mut extensions);
    extensions.get::<HttpInfo>().map(HttpInfo::remote_addr)
}

/// Refuses a peer the guard refuses (fails closed when the address is unknown).
fn check_peer(guard: &Guard, exempt: &Exempt, peer: Option<SocketAddr>) -> Result<(), SsrfError> {
    let Some(peer) = peer else {
        return Err(SsrfError::Peer("peer address unknown".into()));
    };
    match guard.refusal("", peer.ip()) {
        Some(r) if !exempt.contains(peer.ip()) => {
            Err(SsrfError::Peer(format!("{} ({r})", peer.ip())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(f: impl FnOnce(&mut crate::config::WebhookConfig)) -> Guard {
        let mut cfg = crate::config::Config::load_from(None, Vec::new())
            .expect("default config")
            .webhook;
        f(&mut cfg);
        Guard::new(&cfg)
    }

    #[test]
    fn the_peer_check_refuses_what_the_guard_refuses_and_unknown_peers() {
        let g = guard(|_| {});
        let exempt = Exempt::default();
        for peer in [
            "127.0.0.1:80",
            "[::ffff:127.0.0.1]:80",
            "169.254.169.254:80",
            "0.0.0.0:80",
        ] {
            let e = check_peer(&g, &exempt, Some(peer.parse().unwrap())).unwrap_err();
            assert!(matches!(e, SsrfError::Peer(_)), "{peer}");
            assert!(!e.is_transient(), "{peer}");
        }
        assert!(check_peer(&g, &exempt, None).is_err(), "unknown peer");
        assert!(check_peer(&g, &exempt, Some("8.8.8.8:443".parse().unwrap())).is_ok());
    }

    #[test]
    fn addresses_of_an_exempt_name_pass_the_peer_check() {
        let g = guard(|c| c.allowed_hosts = vec!["internal.example".into()]);
        let exempt = Exempt::default();
        let peer: SocketAddr = "10.1.2.3:443".parse().unwrap();
        assert!(check_peer(&g, &exempt, Some(peer)).is_err());
        exempt.add(&[peer]);
        assert!(check_peer(&g, &exempt, Some(peer)).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_blocked_addresses() {
        let r = GuardResolver::new(Arc::new(guard(|_| {})), Exempt::default());
        let e = r.resolve("localhost".parse().unwrap()).await.err().unwrap();
        let e = e.downcast_ref::<SsrfError>().expect("an SSRF error");
        assert!(matches!(e, SsrfError::Blocked { .. }), "{e}");
    }
}
