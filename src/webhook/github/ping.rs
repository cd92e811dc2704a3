//! The `ping` event: what a ping delivery stores ([`PingFacts`]) and the body
//! GitHub sends when a hook is created or pinged.

use serde_json::{Map, Value, json};

use super::accounts::user;
use super::site::Site;
use super::values::rfc3339;

/// GitHub's zen sayings; a ping carries one, picked by the hook's id.
const ZEN: [&str; 8] = [
    "Design for failure.",
    "Keep it logically awesome.",
    "Speak like a human.",
    "Non-blocking is better than blocking.",
    "Responsive is better than fast.",
    "Practicality beats purity.",
    "Favor focus over features.",
    "Mind your words, they are important.",
];

/// What a ping delivery stores: the subscription as it was when the ping was
/// enqueued (never its secret, only whether it has one) and who asked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PingFacts {
    /// Subscription id (`hook_id`).
    pub(crate) id: i64,
    /// Repository pattern.
    pub(crate) repository_pattern: String,
    /// Target URL.
    pub(crate) url: String,
    /// Event categories.
    pub(crate) events: Vec<String>,
    /// Body format.
    pub(crate) content_type: String,
    /// Whether deliveries are made.
    pub(crate) active: bool,
    /// Whether deliveries are signed.
    pub(crate) has_secret: bool,
    /// When the subscription was created.
    pub(crate) created_at: chrono::DateTime<chrono::Utc>,
    /// When it last changed.
    pub(crate) updated_at: chrono::DateTime<chrono::Utc>,
    /// Who asked for the ping, if known.
    pub(crate) sender: Option<String>,
}

/// The stored payload of a ping delivery.
pub(crate) fn ping_payload(facts: &PingFacts) -> Value {
    // Serialising a struct of strings, numbers and timestamps cannot fail.
    serde_json::to_value(facts).unwrap_or_default()
}

/// GitHub's `events` of a hook with hookfleet's categories: `push` → `push`,
/// `branch` and `tag` → `create`, `delete`; `*` → `["*"]`.
fn hook_events(categories: &[String]) -> Vec<&'static str> {
    if categories.iter().any(|c| c == "*") {
        return vec!["*"];
    }
    let mut out = Vec::new();
    for c in categories {
        let names: &[&'static str] = match c.as_str() {
            "push" => &["push"],
            "branch" | "tag" => &["create", "delete"],
            _ => &[],
        };
        for n in names {
            if !out.contains(n) {
                out.push(*n);
            }
        }
    }
    out
}

/// GitHub's `ping` body for stored [`PingFacts`]; a payload that is not one is
/// sent as stored.
pub(super) fn ping(payload: &Value, site: &Site) -> Value {
    let Ok(f) = serde_json::from_value::<PingFacts>(payload.clone()) else {
        // Not a ping we stored: send what was stored rather than nothing.
        return payload.clone();
    };
    let hook_url = format!("{}/hooks/{}", site.api, f.id);
    let kind = if f.repository_pattern.contains(['*', '?']) {
        "Organization"
    } else {
        "Repository"
    };
    let mut config = json!({
        "content_type": f.content_type,
        "url": f.url,
        "insecure_ssl": "0",
    });
    if f.has_secret
        && let Some(c) = config.as_object_mut()
    {
        // GitHub masks the secret the same way.
        c.insert("secret".into(), json!("********"));
    }
    let zen = ZEN[usize::try_from(f.id.unsigned_abs() % ZEN.len() as u64).unwrap_or(0)];
    let mut m = Map::new();
    m.insert("zen".into(), json!(zen));
    m.insert("hook_id".into(), json!(f.id));
    m.insert(
        "hook".into(),
        json!({
            "type": kind,
            "id": f.id,
            "name": "web",
            "active": f.active,
            "events": hook_events(&f.events),
            "config": config,
            "updated_at": rfc3339(f.updated_at),
            "created_at": rfc3339(f.created_at),
            "url": hook_url,
            "test_url": format!("{hook_url}/test"),
            "ping_url": format!("{hook_url}/pings"),
            "deliveries_url": format!("{hook_url}/deliveries"),
            "last_response": { "code": null, "status": "unused", "message": null },
        }),
    );
    if let Some(s) = f.sender.as_deref().filter(|s| !s.is_empty()) {
        m.insert("sender".into(), user(site, s, "User"));
    }
    Value::Object(m)
}
