//! The bytes and headers a receiver gets for one delivery.
//!
//! Owns the request a delivery becomes: the body (rendered from the event the
//! push wrote, stored once in `webhook_deliveries`) and the headers that go with
//! it, including the signature. Pure: no I/O, no clock except what the caller
//! passes, so a retry of the same delivery renders the same body.
//!
//! Two styles (see [`Style`]): GitHub's sends [`body`] as it is; Standard
//! Webhooks' wraps it as `{"type", "timestamp", "data"}` and signs
//! `"<webhook-id>.<webhook-timestamp>.<body>"` once per valid secret.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::github::{self, Site};
use super::secrets;
use super::storage::DeliveryRow;
use super::subscription::{Style, Subscription};

/// The JSON body of `delivery`: GitHub's exact body for its event, rendered
/// from the stored event payload and the host's URLs (see [`github`]).
pub(crate) fn body(delivery: &DeliveryRow, site: &Site) -> Vec<u8> {
    let body = github::body(&delivery.event_type, &delivery.payload, site);
    // Serialising a JSON value to bytes cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// One HTTP request of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The bytes POSTed (and signed).
    pub(crate) body: Vec<u8>,
    /// Header names and values; the secrets appear only as signatures.
    pub(crate) headers: Vec<(String, String)>,
}

/// The request of `delivery` to `sub` in the subscription's style, signed with
/// `secrets` (opened, current first; see [`secrets::signing_secrets`]), for an
/// attempt at `now` (Standard Webhooks' `webhook-timestamp`; the body does
/// not depend on it).
pub(crate) fn request(
    delivery: &DeliveryRow,
    sub: &Subscription,
    site: &Site,
    secrets: &[String],
    now: DateTime<Utc>,
) -> Request {
    let data = body(delivery, site);
    match sub.style {
        Style::Github => {
            // GitHub has one signature header: the current secret signs alone.
            let secret = secrets.first().map(String::as_str);
            let headers = github_headers(delivery, sub, secret, &data);
            Request {
                body: data,
                headers,
            }
        }
        Style::Standard => standard(delivery, sub, secrets, now, &data),
    }
}

/// The headers of every delivery, whatever its style: content type, user
/// agent, hookfleet's ids, and hookfleet's facts that GitHub's bodies have no
/// field for ([`github::hookfleet_headers`]).
fn common_headers(delivery: &DeliveryRow, sub: &Subscription) -> Vec<(String, String)> {
    let mut h = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        (
            "User-Agent".to_string(),
            format!("hookfleet/{}", crate::build_info::VERSION),
        ),
        ("X-Hookfleet-Event".to_string(), delivery.event_type.clone()),
        (
            "X-Hookfleet-Delivery".to_string(),
            delivery.delivery_id.to_string(),
        ),
        ("X-Hookfleet-Subscription".to_string(), sub.id.to_string()),
    ];
    h.extend(github::hookfleet_headers(&delivery.payload));
    // W3C trace context of the attempt's HTTP client span (rendered inside it),
    // so the receiver can continue the push's trace; nothing with tracing off.
    h.extend(
        crate::otel::propagate::headers_of(&tracing::Span::current())
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    h
}

/// The GitHub-style request headers of a delivery, signed with `secret` (the
/// secret only as the signature).
fn github_headers(
    delivery: &DeliveryRow,
    sub: &Subscription,
    secret: Option<&str>,
    body: &[u8],
) -> Vec<(String, String)> {
    let mut h = common_headers(delivery, sub);
    h.extend([
        (
            "X-GitHub-Event".to_string(),
            github::event_name(&delivery.event_type).to_string(),
        ),
        (
            "X-GitHub-Delivery".to_string(),
            delivery.delivery_id.to_string(),
        ),
        ("X-GitHub-Hook-ID".to_string(), sub.id.to_string()),
    ]);
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        h.push((
            "X-Hub-Signature-256".to_string(),
            github_signature(secret, body),
        ));
    }
    h
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub(crate) fn github_signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Standard Webhooks payload around `data`, and its headers.
fn standard(
    delivery: &DeliveryRow,
    sub: &Subscription,
    secrets: &[String],
    now: DateTime<Utc>,
    data: &[u8],
) -> Request {
    // Built around the rendered bytes rather than re-serialised, so `data` is
    // byte for byte what the GitHub style would send.
    let ty = serde_json::Value::String(delivery.event_type.clone());
    let ts = serde_json::Value::String(
        delivery
            .created_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    let mut body = format!("{{\"type\":{ty},\"timestamp\":{ts},\"data\":").into_bytes();
    body.extend_from_slice(data);
    body.push(b'}');

    let id = delivery.delivery_id.to_string();
    let timestamp = now.timestamp().to_string();
    let mut headers = common_headers(delivery, sub);
    headers.push(("webhook-id".to_string(), id.clone()));
    headers.push(("webhook-timestamp".to_string(), timestamp.clone()));
    if !secrets.is_empty() {
        let sigs: Vec<String> = secrets
            .iter()
            .map(|s| standard_signature(s, &id, &timestamp, &body))
            .collect();
        headers.push(("webhook-signature".to_string(), sigs.join(" ")));
    }
    Request { body, headers }
}

/// `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, the key being the
/// bytes after `whsec_`. A secret not of that form (refused by `webhook add`
/// and `rotate-secret`, so only one written to the table by hand) signs with
/// its UTF-8 bytes rather than not at all.
pub(crate) fn standard_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = secrets::standard_key(secret).unwrap_or_else(|_| secret.as_bytes().to_vec());
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_github_example() {
        // From GitHub's "Validating webhook deliveries" docs.
        assert_eq!(
            github_signature("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
    use uuid::Uuid;

    #[test]
    fn standard_signature_matches_the_spec_example() {
        // The example of the Standard Webhooks spec (and the reference libraries' tests).
        assert_eq!(
            standard_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    fn sub(style: Style) -> Subscription {
        Subscription {
            id: 7,
            repository_pattern: "org/*".into(),
            url: "https://h/x".into(),
            secret: None,
            previous_secret: None,
            previous_secret_expires_at: None,
            style,
            events: vec!["push".into()],
            content_type: "json".into(),
            active: true,
            consecutive_failures: 0,
            disabled_reason: None,
        }
    }

    #[test]
    fn standard_wraps_the_body_and_signs_once_per_secret() {
        let d = DeliveryRow {
            delivery_id: Uuid::now_v7(),
            subscription_id: 7,
            event_type: "git.push".into(),
            correlation_id: None,
            payload: serde_json::json!({"ref": "refs/heads/main"}),
            created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        };
        let now = DateTime::from_timestamp(1_700_000_100, 0).unwrap_or_default();
        let secrets = vec![
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
            "whsec_AAAA".to_string(),
        ];
        let site = Site::new(&crate::config::Config::load_from(None, Vec::new()).unwrap());
        let r = request(&d, &sub(Style::Standard), &site, &secrets, now);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["type"], "git.push");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.000Z");
        let github: serde_json::Value = serde_json::from_slice(&body(&d, &site)).unwrap();
        assert_eq!(v["data"], github, "data is the github-style body");
        let h = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("webhook-id"), Some(d.delivery_id.to_string()));
        assert_eq!(h("webhook-timestamp").as_deref(), Some("1700000100"));
        let sig = h("webhook-signature").unwrap();
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
        assert_eq!(h("X-Hub-Signature-256"), None);

        let g = request(&d, &sub(Style::Github), &site, &secrets, now);
        assert_eq!(g.body, body(&d, &site));
        let gh = g.headers.iter().find(|(n, _)| n == "X-Hub-Signature-256");
        assert_eq!(
            gh.map(|(_, v)| v.clone()),
            Some(github_signature(&secrets[0], &g.body))
        );
    }
}
