//! One HTTP POST to a webhook endpoint, through the SSRF guard.
//!
//! Owns the webhook HTTP client: reqwest (HTTP/1.1, rustls with ring; the
//! platform's roots plus `webhook.ca_file`'s), with the SSRF guard as its DNS
//! resolver and as a check of each connection's peer address
//! ([`super::guarded`]); IP-literal URLs are checked here before the request.
//! Proxies are off (an environment `HTTPS_PROXY` would bypass the guard),
//! redirects are never followed, and each phase is bounded: name resolution
//! and the TCP connect by `webhook.connect_timeout`, the whole attempt
//! (connect, TLS, request, reading the response) by `webhook.timeout`, which
//! also bounds the read phase (no separate read timeout: a receiver may take
//! its time to answer, up to `webhook.timeout`). At most [`MAX_RESPONSE_BYTES`]
//! of the response body are read. A per-host semaphore bounds attempts in
//! flight per host; idle connections are kept (reqwest's pool) and reused, so a
//! busy host is not reconnected for every delivery. It never touches the
//! database and never sees the secret (it gets the signed headers ready-made).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;
use url::Url;

use super::guarded::{Exempt, GuardResolver, PeerCheckLayer};
use super::ssrf::{Guard, SsrfError};
use crate::config::WebhookConfig;

/// Response bytes read at most (the rest is dropped with the connection).
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Response headers kept at most, for the attempt record (a receiver could
/// send thousands; the operator needs the first few).
pub(crate) const MAX_RESPONSE_HEADERS: usize = 64;
/// Characters of one response header value kept at most.
pub(crate) const MAX_HEADER_VALUE_CHARS: usize = 512;
/// Response headers whose values are not kept: the receiver's session
/// credentials are none of ours to store or show.
const UNRECORDED_HEADERS: [&str; 2] = ["set-cookie", "www-authenticate"];

/// Why an attempt got no HTTP response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    /// Refused by the guard or a bad URL (permanent) or unresolvable (transient).
    #[error(transparent)]
    Ssrf(#[from] SsrfError),
    /// TCP connect failed on every validated address.
    #[error("connect failed: {0}")]
    Connect(String),
    /// TLS handshake failed.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// HTTP protocol error.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The attempt took longer than `webhook.timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The per-host limit stayed full for the whole timeout.
    #[error("too many attempts in flight to {0}")]
    HostBusy(String),
}

impl DeliverError {
    /// Whether a later attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DeliverError::Ssrf(e) => e.is_transient(),
            _ => true,
        }
    }
}

/// The response, as far as it was read.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Retry-After`, when present and parseable.
    pub(crate) retry_after: Option<Duration>,
    /// The first [`MAX_RESPONSE_BYTES`] of the body.
    pub body: Bytes,
    /// The first [`MAX_RESPONSE_HEADERS`] headers, values cut at
    /// [`MAX_HEADER_VALUE_CHARS`] (cookies left out), for the attempt record.
    pub(crate) headers: Vec<(String, String)>,
}

/// The client: policy, HTTP client and per-host limits, shared by all attempts.
pub struct Client {
    guard: Arc<Guard>,
    /// `Err`: reqwest refused the configuration (logged; every attempt fails).
    http: Result<reqwest::Client, String>,
    timeout: Duration,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Client {
    /// A client for `cfg`. TLS roots are the platform's plus those of
    /// `webhook.ca_file`; without any, https attempts fail (transiently) and are
    /// logged.
    pub fn new(cfg: &WebhookConfig) -> Self {
        // Checked when the config loaded; a file changed since then is logged
        // and the platform's roots still apply.
        let extra = match crate::tls::configured_ca(&cfg.ca_file) {
            Ok(ca) => ca.map(|ca| ca.certs).unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "webhook.ca_file unusable; using the platform's roots only");
                Vec::new()
            }
        };
        let guard = Arc::new(Guard::new(cfg));
        let http = tls_config(extra).and_then(|tls| http_client(cfg, guard.clone(), tls));
        if let Err(e) = &http {
            tracing::error!(error = %e, "webhook HTTP client unusable; deliveries will fail");
        }
        Self {
            guard,
            http,
            timeout: cfg.timeout,
            per_host: usize::try_from(cfg.per_host_concurrency)
                .unwrap_or(1)
                .max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    fn host_limit(&self, host: &str) -> Arc<Semaphore> {
        let mut map = match self.hosts.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone()
    }

    /// POSTs `body` with `headers` to `url`. Waiting for the per-host limit and
    /// the attempt itself are each bounded by `webhook.timeout`.
    pub async fn post(
        &self,
        url: &Url,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Response, DeliverError> {
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let limit = self.host_limit(&host);
        let _permit = match tokio::time::timeout(self.timeout, limit.acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(DeliverError::HostBusy(host)),
        };
        match tokio::time::timeout(self.timeout, self.attempt(url, headers, body)).await {
            Ok(r) => r,
            Err(_) => Err(DeliverError::Timeout(self.timeout)),
        }
    }

    async fn attempt(
        &self,
        url: &Url,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Response, DeliverError> {
        // Names are checked by the resolver; literals never reach it.
        if matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))) {
            self.guard.resolve(url).await?;
        }
        let http = self
            .http
            .as_ref()
            .map_err(|e| DeliverError::Http(e.clone()))?;
        let mut req = http.post(url.as_str()).body(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| self.classify(&e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let headers = recorded_headers(resp.headers());
        Ok(Response {
            status,
            retry_after,
            headers,
            body: read_capped(resp).await,
        })
    }

    /// The [`DeliverError`] of a failed request: the guard's refusal (from the
    /// resolver or the peer check), a TLS failure, or what reqwest says.
    fn classify(&self, e: &reqwest::Error) -> DeliverError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(ssrf) = s.downcast_ref::<SsrfError>() {
                return DeliverError::Ssrf(ssrf.clone());
            }
            if is_tls(s) {
                return DeliverError::Tls(chain(e));
            }
            source = s.source();
        }
        if e.is_connect() {
            DeliverError::Connect(chain(e))
        } else if e.is_timeout() {
            DeliverError::Timeout(self.timeout)
        } else {
            DeliverError::Http(chain(e))
        }
    }
}

/// Whether `e` is a rustls error, also when wrapped in (nested) io::Errors,
/// whose `source()` skips the error they wrap.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    e.downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .is_some_and(|inner| is_tls(inner))
}

/// The error and its causes, `: `-separated (reqwest's own message is terse).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Response headers as the attempt record keeps them (see [`Response::headers`]).
fn recorded_headers(h: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .take(MAX_RESPONSE_HEADERS)
        .map(|(k, v)| {
            let value = if UNRECORDED_HEADERS.contains(&k.as_str()) {
                "(not recorded)".to_string()
            } else {
                String::from_utf8_lossy(v.as_bytes())
                    .chars()
                    .take(MAX_HEADER_VALUE_CHARS)
                    .collect()
            };
            (k.as_str().to_string(), value)
        })
        .collect()
}

/// The first [`MAX_RESPONSE_BYTES`] of the body; a body cut short still leaves
/// a status worth recording, so a read error ends the body.
async fn read_capped(mut resp: reqwest::Response) -> Bytes {
    let mut buf = Vec::new();
    while buf.len() < MAX_RESPONSE_BYTES {
        match resp.chunk().await {
            Ok(Some(data)) => {
                let take = data.len().min(MAX_RESPONSE_BYTES - buf.len());
                buf.extend_from_slice(&data[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Bytes::from(buf)
}

/// The reqwest client of `cfg`: the guard as resolver and peer check, no
/// proxies, no redirects, the connect and whole-request timeouts, our TLS.
fn http_client(
    cfg: &WebhookConfig,
    guard: Arc<Guard>,
    tls: rustls::ClientConfig,
) -> Result<reqwest::Client, String> {
    let exempt = Exempt::default();
    reqwest::Client::builder()
        .dns_resolver(GuardResolver::new(guard.clone(), exempt.clone()))
        .connector_layer(PeerCheckLayer::new(guard, exempt))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.timeout)
        .tcp_nodelay(true)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| chain(&e))
}

/// rustls with ring, trusting the platform's roots plus `extra` (with none,
/// every https handshake fails, transiently, and a warning says why).
fn tls_config(extra: Vec<CertificateDer<'static>>) -> Result<rustls::ClientConfig, String> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    for cert in loaded.certs.into_iter().chain(extra) {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!("no TLS root certificates found; https webhooks will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_headers_are_capped_and_leave_cookies_out() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("set-cookie", "session=abc".parse().unwrap());
        h.insert("x-long", "v".repeat(2000).parse().unwrap());
        let r = recorded_headers(&h);
        let get = |k: &str| r.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("set-cookie").as_deref(), Some("(not recorded)"));
        assert_eq!(get("x-long").map(|v| v.len()), Some(MAX_HEADER_VALUE_CHARS));
        let mut many = reqwest::header::HeaderMap::new();
        for i in 0..100 {
            let name = format!("x-{i}");
            many.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        assert_eq!(recorded_headers(&many).len(), MAX_RESPONSE_HEADERS);
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
