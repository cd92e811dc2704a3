//! The message contract (see `docs/ARCHITECTURE.md`): AMQP properties and headers
//! every hookfleet message carries, and how they are read back.
//!
//! Owns header names and the mapping between [`Envelope`] and lapin's
//! `BasicProperties`. It never touches the network.

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use uuid::Uuid;

/// 1-based attempt number.
pub(crate) const H_ATTEMPT: &str = "x-attempt";
/// Epoch milliseconds of the first attempt.
pub(crate) const H_FIRST_ATTEMPT_AT: &str = "x-first-attempt-at";
/// Why the last attempt failed (retries and dead letters).
pub const H_ERROR: &str = "x-error";
/// `transient`, `permanent`, `panic`, `timeout` or `poison`.
pub const H_ERROR_CLASS: &str = "x-error-class";
/// The queue a retried or dead-lettered message came from.
pub(crate) const H_ORIGIN_QUEUE: &str = "x-origin-queue";
/// Set on replays: the outbox id the message was replayed from.
pub const H_REPLAYED_FROM: &str = "x-replayed-from";
/// Times a guard postponed the message (its attempt counter unchanged).
pub(crate) const H_POSTPONED: &str = "x-postponed";
/// Why the message was last postponed (`breaker_open`, ...).
pub(crate) const H_POSTPONE_REASON: &str = "x-postpone-reason";
/// Schema version of the body.
pub const H_SCHEMA_VERSION: &str = "x-schema-version";
/// Current schema version written by this build.
pub(crate) const SCHEMA_VERSION: i64 = 1;
/// The only content type hookfleet accepts.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The metadata of one message, independent of AMQP types.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Stable across retries, replays and redeliveries; the inbox key.
    pub message_id: Uuid,
    /// The push id, carried to every event a push causes.
    pub correlation_id: Option<String>,
    /// Event or job type name (`git.push`, `push`...).
    pub event_type: Option<String>,
    /// Creation time, epoch seconds.
    pub timestamp: Option<u64>,
    /// Extra headers (string or integer values), including the `x-` ones above.
    pub headers: BTreeMap<String, HeaderValue>,
}

/// A header value hookfleet writes: strings and integers only, so they map
/// cleanly to JSON (outbox rows) and back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    /// Integer header.
    Int(i64),
    /// String header.
    Str(String),
}

impl Envelope {
    /// A new envelope with a fresh UUID v7 and the current time.
    pub fn new(event_type: impl Into<String>, correlation_id: Option<String>) -> Self {
        Self {
            message_id: Uuid::now_v7(),
            correlation_id,
            event_type: Some(event_type.into()),
            timestamp: Some(chrono::Utc::now().timestamp().max(0) as u64),
            headers: BTreeMap::from([(
                H_SCHEMA_VERSION.to_string(),
                HeaderValue::Int(SCHEMA_VERSION),
            )]),
        }
    }

    #[cfg(test)]
    /// Sets a header.
    pub(crate) fn with_header(mut self, k: &str, v: HeaderValue) -> Self {
        self.headers.insert(k.to_string(), v);
        self
    }

    /// The attempt number (1 when absent).
    pub(crate) fn attempt(&self) -> u32 {
        match self.headers.get(H_ATTEMPT) {
            Some(HeaderValue::Int(n)) if *n >= 1 => u32::try_from(*n).unwrap_or(u32::MAX),
            Some(HeaderValue::Str(s)) => s.parse().ok().filter(|n| *n >= 1).unwrap_or(1),
            _ => 1,
        }
    }

    /// Persistent JSON properties carrying this envelope.
    pub fn to_properties(&self) -> BasicProperties {
        let mut props = BasicProperties::default()
            .with_message_id(self.message_id.to_string().into())
            .with_content_type(CONTENT_TYPE_JSON.into())
            .with_delivery_mode(2)
            .with_headers(headers_to_table(&self.headers));
        if let Some(c) = &self.correlation_id {
            props = props.with_correlation_id(c.as_str().into());
        }
        if let Some(t) = &self.event_type {
            props = props.with_type(t.as_str().into());
        }
        if let Some(ts) = self.timestamp {
            props = props.with_timestamp(ts);
        }
        props
    }

    /// Reads an envelope back; `Err` names what makes the message poison.
    pub fn from_properties(props: &BasicProperties) -> Result<Self, String> {
        let raw_id = props
            .message_id()
            .as_ref()
            .ok_or_else(|| "missing message_id property".to_string())?;
        let message_id = Uuid::parse_str(raw_id.as_str())
            .map_err(|e| format!("message_id {:?} is not a UUID: {e}", raw_id.as_str()))?;
        let headers = props
            .headers()
            .as_ref()
            .map(table_to_headers)
            .unwrap_or_default();
        Ok(Self {
            message_id,
            correlation_id: props.correlation_id().as_ref().map(|s| s.to_string()),
            event_type: props.kind().as_ref().map(|s| s.to_string()),
            timestamp: *props.timestamp(),
            headers,
        })
    }
}

/// Converts hookfleet headers to an AMQP table.
pub(crate) fn headers_to_table(h: &BTreeMap<String, HeaderValue>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in h {
        let value = match v {
            HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
            HeaderValue::Str(s) => AMQPValue::LongString(s.as_str().into()),
        };
        t.insert(ShortString::from(k.as_str()), value);
    }
    t
}

/// Converts an AMQP table to hookfleet headers, keeping string and integer values.
pub fn table_to_headers(t: &FieldTable) -> BTreeMap<String, HeaderValue> {
    let mut out = BTreeMap::new();
    for (k, v) in t.inner() {
        let value = match v {
            AMQPValue::LongString(s) => {
                HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            AMQPValue::ShortString(s) => HeaderValue::Str(s.to_string()),
            AMQPValue::ShortShortInt(n) => HeaderValue::Int((*n).into()),
            AMQPValue::ShortShortUInt(n) => HeaderValue::Int((*n).into()),
            AMQPValue::ShortInt(n) => HeaderValue::Int((*n).into()),
            AMQPValue::ShortUInt(n) => HeaderValue::Int((*n).into()),
            AMQPValue::LongInt(n) => HeaderValue::Int((*n).into()),
            AMQPValue::LongUInt(n) => HeaderValue::Int((*n).into()),
            AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
            AMQPValue::Timestamp(n) => HeaderValue::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
            _ => continue,
        };
        out.insert(k.to_string(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_through_properties() {
        let e = Envelope::new("git.push", Some("push-1".into()))
            .with_header(H_ATTEMPT, HeaderValue::Int(3))
            .with_header(H_ERROR, HeaderValue::Str("boom".into()));
        let back = Envelope::from_properties(&e.to_properties()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.attempt(), 3);
    }

    #[test]
    fn missing_or_bad_message_id_is_poison() {
        assert!(Envelope::from_properties(&BasicProperties::default()).is_err());
        let p = BasicProperties::default().with_message_id("nope".into());
        assert!(
            Envelope::from_properties(&p)
                .unwrap_err()
                .contains("not a UUID")
        );
    }
}
