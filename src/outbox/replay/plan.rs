//! Validating a replay request (ids, RFC 3339 times, event-type patterns, rate)
//! into a [`ReplayPlan`]: a bad filter is rejected here, before anything is
//! read or published.

use chrono::{DateTime, Utc};

use super::ReplayError;
use crate::outbox::storage::Selection;

/// The selection as given on the command line, before validation.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    /// Smallest outbox id (inclusive).
    pub from_id: Option<i64>,
    /// Largest outbox id (inclusive).
    pub to_id: Option<i64>,
    /// Earliest creation time, RFC 3339.
    pub since: Option<String>,
    /// Latest creation time, RFC 3339.
    pub until: Option<String>,
    /// Event type or topic pattern (`git.push`, `git.*`, `git.#`).
    pub event_type: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Publish to this exchange instead of the row's.
    pub to_exchange: Option<String>,
    /// Publish with this routing key instead of the row's.
    pub routing_key: Option<String>,
    /// Count and sample only.
    pub dry_run: bool,
    /// Events per second at most.
    pub rate: Option<u32>,
    /// Leave out rows published to this exchange (the CLI passes the jobs
    /// exchange unless `--include-jobs`); `None` selects every row.
    pub exclude_exchange: Option<String>,
}

/// A validated replay.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// Rows to replay.
    pub(crate) selection: Selection,
    /// Exchange override.
    pub(crate) to_exchange: Option<String>,
    /// Routing key override.
    pub(crate) routing_key: Option<String>,
    /// Count and sample only.
    pub(crate) dry_run: bool,
    /// Events per second at most.
    pub(crate) rate: Option<u32>,
}

/// Validates an event-type filter and returns `(exact, regex)`: an exact type, or
/// for a topic pattern the PostgreSQL regex `event_type || '.'` must match.
fn type_filter(pattern: &str) -> Result<(Option<String>, Option<String>), ReplayError> {
    let bad = |why: &str| {
        ReplayError::BadFilter(format!(
            "--type {pattern:?} {why} (expected lowercase dotted segments like git.push, \
             with * for one segment or # for any number)"
        ))
    };
    if pattern.is_empty() {
        return Err(bad("is empty"));
    }
    let mut regex = String::from("^");
    let mut wildcard = false;
    for seg in pattern.split('.') {
        match seg {
            "*" => {
                wildcard = true;
                regex.push_str("[^.]+\\.");
            }
            "#" => {
                wildcard = true;
                regex.push_str("([^.]+\\.)*");
            }
            "" => return Err(bad("has an empty segment")),
            s if s
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') =>
            {
                regex.push_str(s);
                regex.push_str("\\.");
            }
            _ => return Err(bad("is not a valid event type")),
        }
    }
    regex.push('$');
    Ok(if wildcard {
        (None, Some(regex))
    } else {
        (Some(pattern.to_string()), None)
    })
}

fn parse_time(flag: &str, v: &str) -> Result<DateTime<Utc>, ReplayError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ReplayError::BadFilter(format!(
                "{flag} {v:?} is not an RFC 3339 time (like 2024-05-01T12:00:00Z): {e}"
            ))
        })
}

/// Validates a request; nothing is read or published yet.
pub fn plan(req: &ReplayRequest) -> Result<ReplayPlan, ReplayError> {
    let since = req
        .since
        .as_deref()
        .map(|v| parse_time("--since", v))
        .transpose()?;
    let until = req
        .until
        .as_deref()
        .map(|v| parse_time("--until", v))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && u < s
    {
        return Err(ReplayError::BadFilter(format!(
            "--until {} is before --since {}",
            u.to_rfc3339(),
            s.to_rfc3339()
        )));
    }
    if let (Some(f), Some(t)) = (req.from_id, req.to_id)
        && t < f
    {
        return Err(ReplayError::BadFilter(format!(
            "--to-id {t} is below --from-id {f}"
        )));
    }
    if req.rate == Some(0) {
        return Err(ReplayError::BadFilter("--rate must be at least 1".into()));
    }
    let (event_type, event_type_regex) = match req.event_type.as_deref() {
        Some(p) => type_filter(p)?,
        None => (None, None),
    };
    Ok(ReplayPlan {
        selection: Selection {
            from_id: req.from_id,
            to_id: req.to_id,
            since,
            until,
            event_type,
            event_type_regex,
            correlation_id: req.correlation_id.clone(),
            exclude_exchange: req.exclude_exchange.clone(),
        },
        to_exchange: req.to_exchange.clone(),
        routing_key: req.routing_key.clone(),
        dry_run: req.dry_run,
        rate: req.rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_types_and_patterns() {
        assert_eq!(
            type_filter("git.push").unwrap(),
            (Some("git.push".into()), None)
        );
        let (_, re) = type_filter("git.*").unwrap();
        assert_eq!(re.unwrap(), "^git\\.[^.]+\\.$");
        let (_, re) = type_filter("git.#").unwrap();
        assert_eq!(re.unwrap(), "^git\\.([^.]+\\.)*$");
        for bad in ["", "Git.Push", "git..push", "git push", "git.push!"] {
            assert!(
                matches!(type_filter(bad), Err(ReplayError::BadFilter(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn plan_rejects_inverted_ranges() {
        let r = ReplayRequest {
            since: Some("2024-05-02T00:00:00Z".into()),
            until: Some("2024-05-01T00:00:00Z".into()),
            ..ReplayRequest::default()
        };
        assert!(matches!(plan(&r), Err(ReplayError::BadFilter(_))));
        let r = ReplayRequest {
            since: Some("yesterday".into()),
            ..ReplayRequest::default()
        };
        assert!(matches!(plan(&r), Err(ReplayError::BadFilter(_))));
        let r = ReplayRequest {
            from_id: Some(5),
            to_id: Some(4),
            ..ReplayRequest::default()
        };
        assert!(matches!(plan(&r), Err(ReplayError::BadFilter(_))));
    }
}
