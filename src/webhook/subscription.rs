//! Subscriptions as values: the repository pattern, the event categories, and the
//! names receivers see.
//!
//! Owns which events a subscription wants (`push`, `branch`, `tag`, `*`) and the
//! signing [`Style`]; how its repository pattern matches is
//! [`crate::repository`]'s, shared with the rate limits. GitHub's event names are
//! `github`'s. Pure: no I/O.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// How deliveries of a subscription are shaped and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// GitHub's: the body as rendered, `X-GitHub-*` headers and
    /// `X-Hub-Signature-256` (one signature, the current secret's).
    #[default]
    Github,
    /// Standard Webhooks (Svix, Convoy...): the body wrapped as
    /// `{"type","timestamp","data"}`, `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` (one `v1,` signature per valid secret).
    Standard,
}

impl Style {
    /// Names accepted by `--style`.
    pub(crate) const NAMES: [&str; 2] = ["github", "standard"];

    /// The stored and CLI name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Style::Github => "github",
            Style::Standard => "standard",
        }
    }

    /// Parses `--style` (or the stored column).
    pub(crate) fn parse(raw: &str) -> Result<Style, String> {
        match raw {
            "github" => Ok(Style::Github),
            "standard" => Ok(Style::Standard),
            other => Err(format!(
                "unknown style {other:?} (allowed: {})",
                Style::NAMES.join(", ")
            )),
        }
    }
}

/// Event categories a subscription may ask for.
pub(crate) const CATEGORIES: [&str; 4] = ["push", "branch", "tag", "*"];

/// The category of a hookfleet event type, if webhooks carry it.
pub(crate) fn category(event_type: &str) -> Option<&'static str> {
    if event_type == "git.push" || event_type == "git.push.bulk" {
        Some("push")
    } else if event_type.starts_with("git.branch.") {
        Some("branch")
    } else if event_type.starts_with("git.tag.") {
        Some("tag")
    } else {
        None
    }
}

/// Parses `--events push,tag,branch`: known categories, deduplicated, in order.
pub(crate) fn parse_events(raw: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for e in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if !CATEGORIES.contains(&e) {
            return Err(format!(
                "unknown event {e:?} (allowed: {})",
                CATEGORIES.join(", ")
            ));
        }
        if !out.iter().any(|o| o == e) {
            out.push(e.to_string());
        }
    }
    if out.is_empty() {
        return Err("at least one event is needed".into());
    }
    Ok(out)
}

/// One subscription row.
#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    /// Id (`webhook remove|enable|disable <id>`).
    pub id: i64,
    /// Repository glob.
    pub(crate) repository_pattern: String,
    /// Target URL.
    pub url: String,
    /// HMAC secret as stored (sealed when `webhook.secret_key` is set; see
    /// [`super::secrets`]); never printed or logged.
    #[serde(skip)]
    pub(crate) secret: Option<String>,
    /// The secret before the last `webhook rotate-secret`, as stored; it signs
    /// too until `previous_secret_expires_at`. Never printed or logged.
    #[serde(skip)]
    pub(crate) previous_secret: Option<String>,
    /// When the previous secret stops signing.
    pub(crate) previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Body shape and signature headers.
    pub(crate) style: Style,
    /// Event categories.
    pub(crate) events: Vec<String>,
    /// Body format (`json`).
    pub(crate) content_type: String,
    /// Deliveries are made only while active.
    pub(crate) active: bool,
    /// Failed attempts in a row.
    pub(crate) consecutive_failures: i32,
    /// Why it was disabled, if it was.
    pub(crate) disabled_reason: Option<String>,
}

impl Subscription {
    /// Whether this subscription wants `event_type`.
    pub(crate) fn wants(&self, event_type: &str) -> bool {
        match category(event_type) {
            Some(c) => self.events.iter().any(|e| e == c || e == "*"),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        assert_eq!(parse_events("push, tag,push").unwrap(), vec!["push", "tag"]);
        assert!(parse_events("pull").is_err());
        assert_eq!(category("git.tag.created"), Some("tag"));
        assert_eq!(category("webhook.disabled"), None);
    }
}
