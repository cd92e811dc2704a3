//! The `webhook` job kind (queue `<prefix>.webhook`): one delivery attempt per job.
//!
//! No inbox transaction around the attempt: the attempt record must survive a
//! failed attempt, and a handler transaction rolls back on error. So the handler
//! writes each attempt (and the subscription's failure count, auto-disable and the
//! `webhook.disabled` event) in a short transaction of its own after the POST.
//!
//! Dedupe instead of the inbox: before POSTing, a delivery that already has a
//! successful attempt is skipped (`Done::Duplicate`), so a broker redelivery after
//! a crash does not POST twice once the success was recorded. A manual redelivery
//! (`webhook redeliver`) carries `redelivery: true` and dedupes on its own message
//! id only, so it is sent even though the original succeeded. Delivery is at least
//! once: a crash between the POST and the record sends again.
//!
//! Outcomes: 2xx success; 408, 429, 5xx, timeouts and connection errors are
//! transient (429/503 with `Retry-After` become `JobError::RetryAfter`); other
//! statuses (3xx: redirects are not followed, 4xx) and refused addresses are
//! permanent. 410 Gone also disables the subscription at once (Standard
//! Webhooks' rule: the receiver's way to say "stop"), with the reason in the
//! attempt record and the `webhook.disabled` event. An inactive subscription's
//! pending deliveries fail permanently ("subscription disabled") without a
//! request, as do those whose secret cannot be decrypted (a missing
//! `webhook.secret_key`: never a request signed with the wrong key).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use super::breaker::{Breakers, Ticket};
use super::deliver::{Client, DeliverError, Response};
use super::github::Site;
use super::outcome::{Outcome, classify_error, classify_response, host_failed};
use super::secrets::{self, Keyring};
use super::ssrf;
use super::storage::{self, DeliveryRow, NewAttempt};
use super::subscription::Subscription;
use crate::amqp::topology::Names;
use crate::config::Config;
use crate::job::{Done, Handler, Job, JobError};
use crate::outbox::{self, Event};
use crate::ratelimit::RateLimits;

/// Job kind: routing key on the jobs exchange and the queue's suffix.
pub(crate) const WEBHOOK_KIND: &str = "webhook";
/// Event sent through the outbox when a subscription is auto-disabled.
pub(crate) const EV_WEBHOOK_DISABLED: &str = "webhook.disabled";
/// Request body bytes kept in the attempt record: enough to see what was sent
/// (the whole payload stays in `webhook_deliveries`), bounded per attempt.
pub(crate) const RECORDED_BODY_BYTES: usize = 16 * 1024;

/// The body of a `webhook` job. The payload itself lives in `webhook_deliveries`,
/// so every retry and redelivery sends the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WebhookJob {
    /// Stable across retries and redeliveries (`X-Hookfleet-Delivery`).
    pub(crate) delivery_id: Uuid,
    /// Target subscription (for logs; the delivery row is authoritative).
    pub(crate) subscription_id: i64,
    /// hookfleet event type.
    pub(crate) event_type: String,
    /// Set by `webhook redeliver`: send even if the delivery succeeded before.
    #[serde(default)]
    pub(crate) redelivery: bool,
}

/// Handles `webhook` jobs.
pub(crate) struct WebhookHandler {
    config: Arc<Config>,
    pool: PgPool,
    client: Client,
    breakers: Breakers,
    limits: RateLimits,
    names: Names,
    keys: Keyring,
    site: Site,
}

/// Where the checks before a request leave a job.
enum Checked {
    /// Send the request.
    Send(Box<Ready>),
    /// Done without a request (already delivered, or refused and recorded).
    Ended(Done),
}

/// What a request needs, once the checks passed.
struct Ready {
    delivery: DeliveryRow,
    sub: Subscription,
    url: url::Url,
    /// The secrets to sign with (two while a rotated secret overlaps).
    signing: Vec<String>,
    /// One clock reading: which secrets are valid and the attempt's timestamp agree.
    now: chrono::DateTime<chrono::Utc>,
}

/// A request made, and what came back.
struct Sent {
    request_headers: Vec<(String, String)>,
    request_body: String,
    result: Result<Response, DeliverError>,
    duration: Duration,
}

impl WebhookHandler {
    /// A handler for `config` on `pool`.
    pub(crate) fn new(config: Arc<Config>, pool: PgPool) -> Self {
        let client = Client::new(&config.webhook);
        let breakers = Breakers::new(&config.webhook);
        let rl = &config.rate_limit;
        let limits = RateLimits::new(rl.webhook_per_subscription, rl.webhook_burst, &[]);
        let names = Names::new(&config.amqp.prefix);
        // `Config::validate` refused malformed keys already; a config built by
        // hand that skips it gets no keys (sealed secrets then refuse to sign).
        let keys = Keyring::from_config(&config.webhook).unwrap_or_else(|(key, message)| {
            tracing::error!(key = %key, "{message}; encrypted webhook secrets cannot be read");
            Keyring::default()
        });
        let site = Site::new(&config);
        Self {
            config,
            pool,
            client,
            breakers,
            limits,
            names,
            keys,
            site,
        }
    }

    fn last_attempt(&self, job: &Job) -> bool {
        job.attempt >= self.config.retry.max_attempts
    }

    fn classify(&self, job: &Job, r: Result<Response, DeliverError>) -> Outcome {
        let retry_label = if self.last_attempt(job) {
            "failed"
        } else {
            "retry"
        };
        match r {
            Ok(resp) => classify_response(&resp, retry_label),
            Err(e) => classify_error(e, retry_label),
        }
    }

    /// Records an attempt in its own transaction; on auto-disable (after too
    /// many failures, or at once with `disable`'s reason) also writes the
    /// `webhook.disabled` event. Returns whether the subscription was disabled now.
    async fn record(
        &self,
        attempt: &NewAttempt,
        counts: bool,
        sub: Option<&Subscription>,
        disable: Option<&str>,
    ) -> Result<bool, JobError> {
        let mut tx = self.pool.begin().await?;
        let rec = storage::record_attempt(
            &mut tx,
            attempt,
            counts,
            self.config.webhook.disable_after_failures,
            disable,
        )
        .await?;
        let reason = disable.unwrap_or(storage::REASON_FAILURES);
        if rec.disabled_now {
            let ev = Event::new(
                &self.names,
                EV_WEBHOOK_DISABLED,
                None,
                json!({
                    "subscription_id": attempt.subscription_id,
                    "repository_pattern": sub.map(|s| s.repository_pattern.clone()),
                    "url": attempt.url,
                    "consecutive_failures": rec.consecutive_failures,
                    "last_delivery_id": attempt.delivery_id,
                    "last_error": attempt.error,
                    "reason": reason,
                }),
            );
            outbox::enqueue(&mut tx, &ev).await?;
        }
        tx.commit().await?;
        if rec.disabled_now {
            tracing::warn!(
                subscription.id = attempt.subscription_id,
                failures = rec.consecutive_failures,
                reason,
                "webhook subscription disabled"
            );
        }
        Ok(rec.disabled_now)
    }

    /// The checks before a request: skipped when the delivery already succeeded,
    /// failed without a request when its subscription is gone or disabled, its URL
    /// refused or its secret unreadable; else what the request needs.
    async fn check(&self, job: &Job, wj: &WebhookJob) -> Result<Checked, JobError> {
        let own_message = wj.redelivery.then_some(job.envelope.message_id);
        if storage::succeeded(&self.pool, wj.delivery_id, own_message).await? {
            tracing::info!(delivery.id = %wj.delivery_id, "webhook already delivered; skipped");
            count("duplicate");
            return Ok(Checked::Ended(Done::Duplicate));
        }
        let Some(delivery) = storage::load_delivery(&self.pool, wj.delivery_id).await? else {
            count("failed");
            return Err(JobError::permanent(format!(
                "delivery {} not found (pruned?)",
                wj.delivery_id
            )));
        };
        let Some(sub) = storage::load_subscription(&self.pool, delivery.subscription_id).await?
        else {
            return self
                .refuse(job, &delivery, "", "subscription removed", "failed")
                .await
                .map(Checked::Ended);
        };
        if !sub.active {
            return self
                .refuse(
                    job,
                    &delivery,
                    &sub.url,
                    "subscription disabled",
                    "disabled",
                )
                .await
                .map(Checked::Ended);
        }
        let url = match ssrf::check_url(&sub.url) {
            Ok(u) => u,
            Err(e) => {
                return self
                    .refuse(job, &delivery, &sub.url, &e.to_string(), "failed")
                    .await
                    .map(Checked::Ended);
            }
        };
        let now = chrono::Utc::now();
        let signing = match secrets::signing_secrets(&sub, &self.keys, now) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .refuse(job, &delivery, &sub.url, &e.to_string(), "failed")
                    .await
                    .map(Checked::Ended);
            }
        };
        Ok(Checked::Send(Box::new(Ready {
            delivery,
            sub,
            url,
            signing,
            now,
        })))
    }

    /// Proceed or postpone: a ticket of the host's breaker and the subscription's
    /// rate, or the postponement that costs neither an attempt nor a request.
    fn admit(&self, ready: &Ready) -> Result<Ticket, JobError> {
        // Before the request: an open breaker or a busy host costs neither an
        // attempt nor a pool permit while it lasts.
        let host = breaker_key(&ready.url);
        let ticket = match self.breakers.admit(&host) {
            Ok(t) => t,
            Err(p) => {
                count("postponed");
                return Err(JobError::Postpone(p));
            }
        };
        // Then the subscription's rate (the ticket, if dropped here, only frees its slot).
        let rate = self.limits.rate_for("");
        if let Err(p) = self.limits.take(&ready.sub.id.to_string(), rate) {
            count("postponed");
            return Err(JobError::Postpone(p));
        }
        Ok(ticket)
    }

    /// Records the attempt (and disables the subscription if it must), counts and
    /// logs it, and gives the job's result.
    async fn conclude(&self, job: &Job, ready: &Ready, sent: Sent) -> Result<Done, JobError> {
        let Sent {
            request_headers: headers,
            request_body,
            result,
            duration,
        } = sent;
        let (delivery, sub) = (&ready.delivery, &ready.sub);
        let response_headers = result.as_ref().ok().map(|r| {
            serde_json::Value::Object(
                r.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            )
        });
        let outcome = self.classify(job, result);
        let recorded_headers = serde_json::Value::Object(
            headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        );
        let attempt = NewAttempt {
            delivery_id: delivery.delivery_id,
            subscription_id: sub.id,
            message_id: job.envelope.message_id,
            url: sub.url.clone(),
            request_headers: recorded_headers,
            outcome: outcome.label,
            status: outcome.status,
            duration,
            response_excerpt: outcome.excerpt,
            request_body: Some(request_body),
            response_headers,
            error: outcome.error,
        };
        let disabled_now = self
            .record(&attempt, true, Some(sub), outcome.disable)
            .await?;
        count(outcome.label);
        crate::metrics::metrics()
            .webhook_delivery_duration_seconds
            .with_label_values(&[outcome.label])
            .observe(duration.as_secs_f64());
        tracing::info!(
            delivery.id = %delivery.delivery_id,
            subscription.id = sub.id,
            outcome = outcome.label,
            status = outcome.status,
            duration_ms = duration.as_millis() as u64,
            "webhook attempt"
        );
        match outcome.result {
            Err(e) if disabled_now && outcome.disable.is_none() => Err(JobError::permanent(
                format!("{e}; subscription disabled after consecutive failures"),
            )),
            r => r,
        }
    }

    async fn refuse(
        &self,
        job: &Job,
        delivery: &DeliveryRow,
        url: &str,
        why: &str,
        metric: &str,
    ) -> Result<Done, JobError> {
        let attempt = NewAttempt {
            delivery_id: delivery.delivery_id,
            subscription_id: delivery.subscription_id,
            message_id: job.envelope.message_id,
            url: url.to_string(),
            request_headers: json!({}),
            outcome: "failed",
            status: None,
            duration: Duration::ZERO,
            response_excerpt: None,
            request_body: None,
            response_headers: None,
            error: Some(why.to_string()),
        };
        self.record(&attempt, false, None, None).await?;
        count(metric);
        Err(JobError::permanent(why))
    }
}

/// The breaker's key for `url`: `host:port` (two receivers on one machine are
/// two hosts; the label stays bounded by the subscriptions' URLs).
fn breaker_key(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

fn count(outcome: &str) {
    crate::metrics::metrics()
        .webhook_deliveries_total
        .with_label_values(&[outcome])
        .inc();
}

/// The first `max` bytes of `body` as text, saying how long it was when cut.
fn capped_text(body: &Bytes, max: usize) -> String {
    let mut text = String::from_utf8_lossy(&body[..body.len().min(max)]).into_owned();
    if body.len() > max {
        text.push_str(&format!("\n… ({} bytes in all)", body.len()));
    }
    text
}

#[async_trait::async_trait]
impl Handler for WebhookHandler {
    fn kind(&self) -> &str {
        WEBHOOK_KIND
    }

    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        let wj: WebhookJob = job.decode()?;
        let ready = match self.check(&job, &wj).await? {
            Checked::Send(ready) => ready,
            Checked::Ended(done) => return Ok(done),
        };
        let ticket = self.admit(&ready)?;
        // The HTTP client span: its context is the request's `traceparent`.
        let span = crate::otel::span::http_client("POST", ready.url.host_str().unwrap_or_default());
        let request = span.in_scope(|| {
            super::render::request(
                &ready.delivery,
                &ready.sub,
                &self.site,
                &ready.signing,
                ready.now,
            )
        });
        let (body, headers) = (Bytes::from(request.body), request.headers);
        let request_body = capped_text(&body, RECORDED_BODY_BYTES);
        let started = Instant::now();
        let result = self
            .client
            .post(&ready.url, &headers, body)
            .instrument(span.clone())
            .await;
        if let Ok(r) = &result {
            span.record("http.response.status_code", r.status);
        }
        if let Err(DeliverError::HostBusy(_)) = &result {
            // No request was made: not an attempt, not the endpoint's fault.
            // (The breaker's own cap makes this rare: other workers' attempts.)
            count("host_busy");
            return Err(JobError::Postpone(crate::job::Postpone {
                after: Duration::from_secs(1),
                reason: super::breaker::REASON_BUSY,
            }));
        }
        let duration = started.elapsed();
        if host_failed(&result) {
            ticket.failure();
        } else {
            ticket.success();
        }
        let sent = Sent {
            request_headers: headers,
            request_body,
            result,
            duration,
        };
        self.conclude(&job, &ready, sent).await
    }
}
