//! One HTTP POST to a webhook endpoint, through the SSRF guard.
//!
//! Owns the connection: resolve and validate with [`Guard::resolve`], connect
//! (bounded by `webhook.connect_timeout`) to a validated address only, TLS with
//! rustls (ring; the platform's roots plus `webhook.ca_file`'s) for https, one HTTP/1.1 request, and reading at most
//! [`MAX_RESPONSE_BYTES`] of the response; the whole attempt is bounded by
//! `webhook.timeout`. Redirects are never followed (hyper's connection-level client
//! does not follow them). A per-host semaphore bounds attempts in flight per host.
//! It never touches the database and never sees the secret (it gets the signed
//! headers ready-made).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use url::Url;

use super::ssrf::{Guard, SsrfError};
use crate::config::WebhookConfig;

/// Response bytes read at most (the rest is dropped with the connection).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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
    pub retry_after: Option<Duration>,
    /// The first [`MAX_RESPONSE_BYTES`] of the body.
    pub body: Bytes,
}

/// The client: policy, TLS config and per-host limits, shared by all attempts.
pub struct Client {
    guard: Guard,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
    connect_timeout: Duration,
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
        Self {
            guard: Guard::new(cfg),
            tls: tls_connector(extra),
            timeout: cfg.timeout,
            connect_timeout: cfg.connect_timeout,
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
        let addrs = self.guard.resolve(url).await?;
        let tcp = self.connect(&addrs).await?;
        let host = url.host_str().unwrap_or_default();
        match url.scheme() {
            "https" => {
                let tls = self
                    .tls
                    .as_ref()
                    .ok_or_else(|| DeliverError::Tls("no TLS root certificates".into()))?;
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(bare.to_string())
                    .map_err(|e| DeliverError::Tls(e.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| DeliverError::Tls(e.to_string()))?;
                send(stream, url, headers, body).await
            }
            _ => send(tcp, url, headers, body).await,
        }
    }

    async fn connect(&self, addrs: &[SocketAddr]) -> Result<TcpStream, DeliverError> {
        let mut last = String::from("no address");
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: timed out after {:?}", self.connect_timeout),
            }
        }
        Err(DeliverError::Connect(last))
    }
}

fn tls_connector(extra: Vec<CertificateDer<'static>>) -> Option<tokio_rustls::TlsConnector> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    for cert in loaded.certs.into_iter().chain(extra) {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!("no TLS root certificates found; https webhooks will fail");
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn send<S>(
    stream: S,
    url: &Url,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<Response, DeliverError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| DeliverError::Http(e.to_string()))?;
    // The connection task ends when the response is done or dropped.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut path = url.path().to_string();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let host_header = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let mut req = hyper::Request::post(path).header(hyper::header::HOST, host_header);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| DeliverError::Http(e.to_string()))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| DeliverError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while buf.len() < MAX_RESPONSE_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let take = data.len().min(MAX_RESPONSE_BYTES - buf.len());
                        buf.extend_from_slice(&data[..take]);
                    }
                }
                // A body cut short still leaves a status worth recording.
                Some(Err(_)) | None => break,
            }
        }
        Ok(Response {
            status,
            retry_after,
            body: Bytes::from(buf),
        })
    }
    .await;
    driver.abort();
    result
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
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
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
