//! What one delivery attempt came to ([`Outcome`]), from the endpoint's answer
//! or from the error that stands for one: its label, the job's result, what the
//! attempt record keeps, and whether it counts against the host's breaker.

use bytes::Bytes;

use super::deliver::{DeliverError, Response};
use super::storage;
use crate::job::{Done, JobError};

/// Response characters kept in the attempt record.
pub(crate) const EXCERPT_CHARS: usize = 1024;

/// What one attempt came to.
pub(super) struct Outcome {
    /// `success`, `retry`, `failed`.
    pub(super) label: &'static str,
    pub(super) status: Option<i32>,
    pub(super) excerpt: Option<String>,
    pub(super) error: Option<String>,
    pub(super) result: Result<Done, JobError>,
    /// Disable the subscription now, for this reason (410 Gone).
    pub(super) disable: Option<&'static str>,
}

/// The outcome of an answered request: 2xx success; 410 Gone fails and disables;
/// 408, 429 and 5xx are transient (`retry_label`), with `Retry-After` honoured for
/// 429/503; anything else (3xx, 4xx) fails.
pub(super) fn classify_response(resp: &Response, retry_label: &'static str) -> Outcome {
    let excerpt = Some(excerpt(&resp.body));
    let status = Some(i32::from(resp.status));
    let s = resp.status;
    if (200..300).contains(&s) {
        return Outcome {
            label: "success",
            status,
            excerpt,
            error: None,
            result: Ok(Done::Handled),
            disable: None,
        };
    }
    let error = format!("HTTP {s}");
    if s == 410 {
        return Outcome {
            label: "failed",
            status,
            excerpt,
            error: Some(format!("HTTP 410: {}", storage::REASON_GONE)),
            result: Err(JobError::permanent(
                "webhook endpoint answered 410 Gone; subscription disabled",
            )),
            disable: Some(storage::REASON_GONE),
        };
    }
    if s == 408 || s == 429 || s >= 500 {
        let e = anyhow::anyhow!("webhook endpoint answered {s}");
        let result = match resp.retry_after {
            Some(d) if s == 429 || s == 503 => Err(JobError::RetryAfter(d, e)),
            _ => Err(JobError::Transient(e)),
        };
        Outcome {
            label: retry_label,
            status,
            excerpt,
            error: Some(error),
            result,
            disable: None,
        }
    } else {
        let why = if (300..400).contains(&s) {
            format!("webhook endpoint answered {s} (redirects are not followed)")
        } else {
            format!("webhook endpoint answered {s}")
        };
        Outcome {
            label: "failed",
            status,
            excerpt,
            error: Some(error),
            result: Err(JobError::permanent(why)),
            disable: None,
        }
    }
}

/// The outcome of a request that got no answer: transient (`retry_label`) or
/// failed, as the error says.
pub(super) fn classify_error(e: DeliverError, retry_label: &'static str) -> Outcome {
    let msg = e.to_string();
    if e.is_transient() {
        Outcome {
            label: retry_label,
            status: None,
            excerpt: None,
            error: Some(msg),
            result: Err(JobError::transient(e)),
            disable: None,
        }
    } else {
        Outcome {
            label: "failed",
            status: None,
            excerpt: None,
            error: Some(msg.clone()),
            result: Err(JobError::permanent(msg)),
            disable: None,
        }
    }
}

/// Whether an attempt's result says the host is unwell: no answer (timeout,
/// connection or TLS error, unresolvable) or 408/429/5xx. Other statuses (a
/// 404, a 410) are answers: the host is up.
pub(super) fn host_failed(r: &Result<Response, DeliverError>) -> bool {
    match r {
        Ok(resp) => resp.status == 408 || resp.status == 429 || resp.status >= 500,
        Err(e) => e.is_transient(),
    }
}

/// The start of a response body, as text, for the attempt record.
fn excerpt(body: &Bytes) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(EXCERPT_CHARS)
        .collect()
}
