//! hookfleet's own facts of a delivery, sent as `X-Hookfleet-*` headers
//! beside GitHub's body (never as body fields).

use serde_json::Value;

use super::values::{flag, header_safe, pct};

/// hookfleet's facts of a delivery, as `X-Hookfleet-*` headers: `Push-Id`,
/// `Pushed-At`, `Push-Options` (each option percent-encoded, comma-separated),
/// `Total-Commits`, `Commits-Omitted` (when the list was cut),
/// `Paths-Truncated`, and for bulk events `Total-Refs` and `Refs-Omitted`.
/// Only those the stored payload has; values are made header-safe.
pub(crate) fn hookfleet_headers(payload: &Value) -> Vec<(String, String)> {
    let mut h = Vec::new();
    let mut put = |name: &str, v: String| h.push((format!("X-Hookfleet-{name}"), header_safe(&v)));
    let text = |k: &str| match payload.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if let Some(v) = text("push_id") {
        put("Push-Id", v);
    }
    if let Some(v) = text("pushed_at") {
        put("Pushed-At", v);
    }
    let options: Vec<String> = payload
        .get("push_options")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(pct).collect())
        .unwrap_or_default();
    if !options.is_empty() {
        put("Push-Options", options.join(","));
    }
    if let Some(v) = text("total_commits_count") {
        put("Total-Commits", v);
    }
    if flag(payload, "commits_truncated") {
        put(
            "Commits-Omitted",
            text("commits_omitted").unwrap_or_default(),
        );
    }
    if flag(payload, "paths_truncated") {
        put("Paths-Truncated", "true".into());
    }
    if let Some(v) = text("total_refs_count") {
        put("Total-Refs", v);
    }
    if flag(payload, "refs_truncated") {
        put("Refs-Omitted", text("refs_omitted").unwrap_or_default());
    }
    h
}
