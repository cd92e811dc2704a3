//! Values that must never be logged: [`SecretUrl`] and [`SecretString`], and
//! [`redact_url`], which masks the password and secret query parameters of a URL
//! (or of anything that is not one, such as a `key=value` DSN).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A URL holding credentials. Displays, debugs and serializes with the password
/// and the values of secret query parameters (`password`, `sslpassword`, ...)
/// replaced by `***`; [`SecretUrl::expose`] gives the real value to the one
/// place that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The real URL, for connecting only. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URL with its password (if any) replaced by `***`.
    pub(crate) fn redacted(&self) -> String {
        redact_url(&self.0)
    }
    /// `host:port` (or the host alone), for error messages that must name the address.
    pub fn address(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(u) => match (u.host_str(), u.port_or_known_default().or(u.port())) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_string(),
                _ => self.redacted(),
            },
            Err(_) => self.redacted(),
        }
    }
}

/// Replaces the password in a URL with `***`. A string that does not parse as a
/// URL is redacted from the last `:` before `@`, so a malformed URL cannot leak.
pub fn redact_url(raw: &str) -> String {
    // Also replaced by `***`: the value of every query parameter whose name is
    // secret (see `is_secret_param`). A URL that parses (with a host) stays one.
    if let Ok(mut u) = url::Url::parse(raw)
        && u.has_host()
    {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        if let Some(query) = u.query() {
            let masked = mask_ranges(query, &secret_param_values(query));
            if masked != query {
                u.set_query(Some(&masked));
            }
        }
        return u.to_string();
    }
    // Anything else (no host, or not a URL at all, e.g. a `key=value` DSN): mask
    // from the first `:` of the userinfo to the LAST `@`, and every secret
    // parameter's value anywhere, so no delimiter inside a secret can leak a part.
    let mut ranges = secret_param_values(raw);
    let start = raw.find("://").map_or(0, |s| s + 3);
    if let Some(at) = raw.rfind('@').filter(|&at| at >= start)
        && let Some(colon) = raw[start..at].find(':')
    {
        ranges.push(start + colon + 1..at);
    }
    mask_ranges(raw, &ranges)
}

/// Whether a query parameter (or DSN keyword) holds a secret, by its name
/// (percent-decoded, case-insensitive): `pass`, `pwd`, or ending in `password`
/// (`password`, `sslpassword`), `passwd`, `secret`, `token`, `apikey` or
/// `api_key`. File paths such as `sslkey` or `keyfile` are not secrets.
fn is_secret_param(name: &str) -> bool {
    let decoded = url::form_urlencoded::parse(name.as_bytes())
        .next()
        .map(|(k, _)| k.trim().to_ascii_lowercase())
        .unwrap_or_default();
    decoded == "pass"
        || decoded == "pwd"
        || ["password", "passwd", "secret", "token", "apikey", "api_key"]
            .iter()
            .any(|suffix| decoded.ends_with(suffix))
}

/// Byte ranges of the values of secret parameters in `s`: a name starts at the
/// beginning or after `?`, `&`, `;` or whitespace and ends at `=`; a secret's
/// value runs to the next `&` or the end (whatever else it holds).
fn secret_param_values(s: &str) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut name_start = Some(0);
    let mut i = 0;
    while i < s.len() {
        match s.as_bytes()[i] {
            b'?' | b'&' | b';' | b' ' | b'\t' | b'\r' | b'\n' => name_start = Some(i + 1),
            b'=' => {
                if let Some(start) = name_start.take()
                    && is_secret_param(&s[start..i])
                {
                    let end = s[i + 1..].find('&').map_or(s.len(), |e| i + 1 + e);
                    ranges.push(i + 1..end);
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    ranges
}

/// `s` with each of `ranges` (merged where they overlap) replaced by `***`.
fn mask_ranges(s: &str, ranges: &[std::ops::Range<usize>]) -> String {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    let mut iter = sorted.into_iter().peekable();
    while let Some(mut r) = iter.next() {
        while let Some(next) = iter.next_if(|n| n.start <= r.end) {
            r.end = r.end.max(next.end);
        }
        let start = r.start.max(pos);
        out.push_str(&s[pos..start]);
        out.push_str("***");
        pos = r.end.max(start);
    }
    out.push_str(&s[pos..]);
    out
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}
impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}
impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl)
    }
}

/// A secret value (an encryption key). Displays, debugs and serializes as
/// `***` when set and as the empty string when not, so `config check` shows
/// whether a key is configured without showing it; [`SecretString::expose`]
/// gives the real value to the one place that uses it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The real value, for use only. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    fn shown(&self) -> &'static str {
        if self.0.is_empty() { "" } else { "***" }
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}
impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}
impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_malformed_urls_too() {
        assert_eq!(
            redact_url("amqp://u:pw@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert!(!redact_url("amqp://u:p w@[bad/").contains("p w"));
    }
}
