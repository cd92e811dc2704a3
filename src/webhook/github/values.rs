//! Small pure conversions the bodies and headers share: GitHub's numeric and
//! node ids, percent-encoding, timestamps, and reading a flag of a stored payload.

use serde_json::Value;
use sha2::{Digest, Sha256};

pub(super) fn flag(payload: &Value, key: &str) -> bool {
    payload.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// A stable positive id for `name` in `space` (`user`, `repo`): the first 8
/// bytes of SHA-256, folded into 1..2^53 so JavaScript receivers keep it exact.
/// Users and organizations share the `user` space, as accounts do on GitHub.
pub(crate) fn stable_id(space: &str, name: &str) -> i64 {
    let digest = Sha256::digest(format!("{space}\0{name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let n = u64::from_be_bytes(first) & ((1 << 53) - 1);
    // Masked to 53 bits, so it fits in an i64.
    i64::try_from(n.max(1)).unwrap_or(1)
}

/// GitHub's legacy global node id: base64 of `0{len}:{Type}{id}`.
pub(crate) fn node_id(kind: &str, id: i64) -> String {
    let prefix = match kind {
        "User" | "Bot" => "04",
        "Organization" => "012",
        _ => "010",
    };
    base64(format!("{prefix}:{kind}{id}").as_bytes())
}

pub(super) fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters, so a name with
/// spaces or non-ASCII still makes a valid URL segment.
pub(super) fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Each `/`-separated segment of `path` percent-encoded.
pub(super) fn pct_path(path: &str) -> String {
    path.split('/').map(pct).collect::<Vec<_>>().join("/")
}

/// `v` if it is visible ASCII (a valid header value as is), else percent-encoded.
pub(super) fn header_safe(v: &str) -> String {
    if v.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ') {
        v.to_string()
    } else {
        pct(v)
    }
}

pub(super) fn rfc3339(d: chrono::DateTime<chrono::Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_positive_and_js_safe() {
        let a = stable_id("repo", "org/app");
        assert_eq!(a, stable_id("repo", "org/app"));
        assert_ne!(a, stable_id("repo", "org/app2"));
        assert!(a > 0 && a < (1 << 53));
        assert_eq!(base64(b"04:User1"), "MDQ6VXNlcjE=");
        assert_eq!(node_id("User", 1), "MDQ6VXNlcjE=");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
