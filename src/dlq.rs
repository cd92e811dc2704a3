//! Dead letters: list what is parked in `<prefix>.<kind>.dead`, open one, and
//! requeue or discard those matching a [`Filter`].
//!
//! Owns the operator's view of the dead queues, shared by the CLI (`dlq list`,
//! `dlq requeue`, `dlq discard`) and the console. Listing takes messages without
//! acknowledging them and closes the channel, so the broker puts every one back
//! (they are marked redelivered; nothing is lost). Requeueing publishes a copy to
//! the work queue with `x-attempt` reset to 1 (confirmed) and only then acks the
//! dead copy, so a crash in between duplicates at worst, which the inbox absorbs.
//! Discarding acks the dead copy: it is gone for good.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, ShortString};

use crate::amqp::topology::Names;
use crate::amqp::{self, AmqpError, publish};
use crate::config::Config;
use crate::message::{self, HeaderValue};

/// A scan stops after looking at this many messages, so a filter that matches
/// little in a huge queue cannot hold a channel (and the messages) forever.
pub(crate) const MAX_SCAN: usize = 100_000;
/// [`show`] returns at most this many bytes of a body.
pub(crate) const BODY_CAP: usize = 64 * 1024;
/// Upper bound on closing the dlq connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One parked message as `dlq list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Message id, if it had one.
    pub(crate) message_id: Option<String>,
    /// Correlation id, if any.
    pub(crate) correlation_id: Option<String>,
    /// Attempts made.
    pub(crate) attempt: Option<i64>,
    /// Error class (`permanent`, `transient`, `panic`, `timeout`, `poison`).
    pub error_class: Option<String>,
    /// Last error.
    pub error: Option<String>,
    /// When the first attempt started (`x-first-attempt-at`), as sent.
    pub(crate) first_attempt_at: Option<String>,
    /// Body size in bytes.
    pub(crate) bytes: usize,
}

/// One parked message opened: its description, every header, and its body
/// (capped at [`BODY_CAP`]; pretty JSON when it parses).
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Opened {
    /// What the list shows.
    pub(crate) letter: DeadLetter,
    /// All string and integer headers.
    pub(crate) headers: BTreeMap<String, String>,
    /// The body, pretty-printed when it is JSON, cut at [`BODY_CAP`].
    pub(crate) body: String,
    /// Whether the body was cut.
    pub(crate) truncated: bool,
}

/// Which dead letters an action applies to. Every given field must match;
/// the default matches everything.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct Filter {
    /// Only the message with this id.
    #[serde(default)]
    pub(crate) message_id: Option<String>,
    /// Only messages of this error class (`permanent`, `poison`, ...).
    #[serde(default)]
    pub(crate) error_class: Option<String>,
    /// Only messages whose error text contains this (case-insensitive).
    #[serde(default)]
    pub(crate) reason_contains: Option<String>,
}

impl Filter {
    /// Only the message with `id`.
    pub(crate) fn message(id: impl Into<String>) -> Self {
        Self {
            message_id: Some(id.into()),
            ..Self::default()
        }
    }

    /// Empty strings (an untouched form field) mean "any".
    pub(crate) fn normalized(self) -> Self {
        let keep = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Self {
            message_id: keep(self.message_id),
            error_class: keep(self.error_class),
            reason_contains: keep(self.reason_contains),
        }
    }

    /// Whether `d` is selected.
    pub(crate) fn matches(&self, d: &DeadLetter) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| have.as_deref() == Some(w.as_str()))
        };
        let contains = self.reason_contains.as_ref().is_none_or(|needle| {
            d.error
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains(&needle.to_lowercase()))
        });
        eq(&self.message_id, &d.message_id) && eq(&self.error_class, &d.error_class) && contains
    }
}

/// What to do with the selected dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Publish back to the work queue with the attempt reset to 1.
    Requeue,
    /// Drop for good.
    Discard,
}

fn headers_of(m: &BasicGetMessage) -> BTreeMap<String, HeaderValue> {
    m.delivery
        .properties
        .headers()
        .as_ref()
        .map(message::table_to_headers)
        .unwrap_or_default()
}

fn describe(m: &BasicGetMessage) -> DeadLetter {
    let p = &m.delivery.properties;
    let h = headers_of(m);
    let s = |k: &str| match h.get(k) {
        Some(HeaderValue::Str(v)) => Some(v.clone()),
        Some(HeaderValue::Int(n)) => Some(n.to_string()),
        None => None,
    };
    DeadLetter {
        message_id: p.message_id().as_ref().map(|v| v.to_string()),
        correlation_id: p.correlation_id().as_ref().map(|v| v.to_string()),
        attempt: match h.get(message::H_ATTEMPT) {
            Some(HeaderValue::Int(n)) => Some(*n),
            _ => None,
        },
        error_class: s(message::H_ERROR_CLASS),
        error: s(message::H_ERROR),
        first_attempt_at: s(message::H_FIRST_ATTEMPT_AT),
        bytes: m.delivery.data.len(),
    }
}

fn open(m: &BasicGetMessage) -> Opened {
    let headers = headers_of(m)
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                HeaderValue::Str(s) => s,
                HeaderValue::Int(n) => n.to_string(),
            };
            (k, v)
        })
        .collect();
    let data = &m.delivery.data;
    let pretty = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    let full = pretty.unwrap_or_else(|| String::from_utf8_lossy(data).into_owned());
    let truncated = full.len() > BODY_CAP;
    let mut cut = BODY_CAP.min(full.len());
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    Opened {
        letter: describe(m),
        headers,
        body: full[..cut].to_string(),
        truncated,
    }
}

/// Looks at up to `limit` messages of `kind`'s dead queue without removing any,
/// and applies `f` to each; stops early when `f` returns `false`.
async fn peek(
    config: &Config,
    kind: &str,
    limit: usize,
    mut f: impl FnMut(&BasicGetMessage) -> bool,
) -> Result<(), AmqpError> {
    let queue = Names::new(&config.amqp.prefix).dead_queue(kind);
    let conn = amqp::connect(&config.amqp, "dlq").await?;
    let ch = conn.create_channel().await?;
    let mut seen = 0;
    while seen < limit {
        match ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            Some(m) => {
                seen += 1;
                if !f(&m) {
                    break;
                }
            }
            None => break,
        }
    }
    // Closing without acking returns every message to the queue.
    amqp::close(&[&ch], &conn, CLOSE_TIMEOUT).await;
    Ok(())
}

/// Lists up to `limit` dead letters of `kind` without removing them.
pub async fn list(config: &Config, kind: &str, limit: usize) -> Result<Vec<DeadLetter>, AmqpError> {
    list_matching(config, kind, &Filter::default(), limit).await
}

/// Lists up to `limit` dead letters of `kind` matching `filter`, without
/// removing any (scans at most [`MAX_SCAN`]).
pub(crate) async fn list_matching(
    config: &Config,
    kind: &str,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DeadLetter>, AmqpError> {
    let mut out = Vec::new();
    peek(config, kind, MAX_SCAN, |m| {
        let d = describe(m);
        if filter.matches(&d) {
            out.push(d);
        }
        out.len() < limit
    })
    .await?;
    Ok(out)
}

/// Opens the dead letter with `message_id` (headers and capped body), if parked.
pub(crate) async fn show(
    config: &Config,
    kind: &str,
    message_id: &str,
) -> Result<Option<Opened>, AmqpError> {
    let filter = Filter::message(message_id);
    let mut found = None;
    peek(config, kind, MAX_SCAN, |m| {
        if filter.matches(&describe(m)) {
            found = Some(open(m));
            return false;
        }
        true
    })
    .await?;
    Ok(found)
}

/// Moves up to `limit` dead letters of `kind` (only `message_id` when given) back
/// to the work queue; returns how many.
pub async fn requeue(
    config: &Config,
    kind: &str,
    limit: usize,
    message_id: Option<&str>,
) -> Result<usize, AmqpError> {
    let filter = message_id.map(Filter::message).unwrap_or_default();
    apply(config, kind, &filter, limit, Action::Requeue).await
}

/// Requeues or discards up to `limit` dead letters of `kind` matching `filter`
/// (scanning at most [`MAX_SCAN`]); returns how many it moved.
pub(crate) async fn apply(
    config: &Config,
    kind: &str,
    filter: &Filter,
    limit: usize,
    action: Action,
) -> Result<usize, AmqpError> {
    let names = Names::new(&config.amqp.prefix);
    let queue = names.dead_queue(kind);
    let conn = amqp::connect(&config.amqp, "dlq").await?;
    let get = conn.create_channel().await?;
    let publisher = publish::confirm_channel(&conn).await?;
    let mut moved = 0;
    let mut scanned = 0;
    while moved < limit && scanned < MAX_SCAN {
        let Some(m) = get
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        scanned += 1;
        if !filter.matches(&describe(&m)) {
            continue;
        }
        if action == Action::Requeue {
            republish(config, &names, &publisher, kind, &m).await?;
        }
        get.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        moved += 1;
    }
    // Messages skipped by the filter go back when the channel closes.
    amqp::close(&[&get, &publisher], &conn, CLOSE_TIMEOUT).await;
    Ok(moved)
}

/// Publishes a copy of dead letter `m` to `kind`'s work queue, attempt reset
/// to 1, and waits for the confirm.
async fn republish(
    config: &Config,
    names: &Names,
    publisher: &lapin::Channel,
    kind: &str,
    m: &BasicGetMessage,
) -> Result<(), AmqpError> {
    let mut headers = m.delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(message::H_ATTEMPT),
        AMQPValue::LongLongInt(1),
    );
    headers.insert(
        ShortString::from("x-requeued-from"),
        AMQPValue::LongString(names.dead_queue(kind).as_str().into()),
    );
    let props = m.delivery.properties.clone().with_headers(headers);
    publish::publish_confirmed(
        publisher,
        &names.jobs_exchange(),
        kind,
        &m.delivery.data,
        props,
        true,
        config.amqp.publish_timeout,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str, class: &str, error: &str) -> DeadLetter {
        DeadLetter {
            message_id: Some(id.into()),
            correlation_id: None,
            attempt: Some(1),
            error_class: Some(class.into()),
            error: Some(error.into()),
            first_attempt_at: None,
            bytes: 2,
        }
    }

    #[test]
    fn filters_combine_and_blank_fields_match_anything() {
        let d = letter("a", "permanent", "Downstream schema mismatch");
        assert!(Filter::default().matches(&d));
        let blank = Filter {
            message_id: Some(" ".into()),
            error_class: Some(String::new()),
            reason_contains: None,
        }
        .normalized();
        assert!(blank.matches(&d));
        let by_text = Filter {
            reason_contains: Some("SCHEMA".into()),
            ..Filter::default()
        };
        assert!(by_text.matches(&d));
        let both = Filter {
            error_class: Some("poison".into()),
            ..by_text.clone()
        };
        assert!(!both.matches(&d));
        assert!(Filter::message("a").matches(&d));
        assert!(!Filter::message("b").matches(&d));
    }
}
