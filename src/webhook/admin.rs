//! What `hookfleet webhook add|list|remove|enable|disable|deliveries|redeliver|ping`
//! does, as library calls (the CLI only parses and prints).
//!
//! Owns input validation for subscriptions (URL through [`ssrf::check_url`], event
//! categories, repository pattern, content type) with errors the CLI maps to exit
//! 2, the warnings of [`add_checked`] for a URL the SSRF guard would refuse (the
//! subscription is still added), redelivery (a new job through the outbox with
//! the same delivery id) and pings (a new `webhook.ping` delivery and its job,
//! as GitHub sends when a hook is added or on request). It never prints and never reveals a subscription's secret.

use std::net::IpAddr;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::github::{self, PingFacts};
use super::handler::WebhookJob;
use super::ssrf;
use super::storage::{self, NewSubscription};
use super::subscription;
use crate::amqp::topology::Names;
use crate::config::{WebhookConfig, redact_url};
use crate::outbox;

/// Content types a subscription may ask for.
pub const CONTENT_TYPES: [&str; 1] = ["json"];

/// How long [`delivery_warnings`] waits for a name to resolve.
pub const WARN_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a webhook command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Bad input (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// No such subscription or delivery (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// `webhook add` input.
#[derive(Debug, Clone)]
pub struct AddRequest {
    /// Repository glob.
    pub repo: String,
    /// Target URL.
    pub url: String,
    /// HMAC secret.
    pub secret: Option<String>,
    /// `push,tag,branch` (or `*`).
    pub events: String,
    /// `json`.
    pub content_type: String,
}

/// What [`add_checked`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The new subscription's id.
    pub id: i64,
    /// Why deliveries will fail as configured (see [`delivery_warnings`]); the
    /// subscription was added anyway. For stderr, after `hookfleet: warning: `.
    pub warnings: Vec<String>,
}

/// Validates and inserts a subscription; returns its id.
pub async fn add(pool: &PgPool, r: &AddRequest) -> Result<i64, AdminError> {
    let new = validate(r)?;
    Ok(storage::insert_subscription(pool, &new).await?)
}

/// [`add`], plus warnings when the SSRF guard of `cfg` refuses every address
/// the URL leads to (the subscription is added all the same).
pub async fn add_checked(
    pool: &PgPool,
    r: &AddRequest,
    cfg: &WebhookConfig,
) -> Result<Added, AdminError> {
    let new = validate(r)?;
    let warnings = delivery_warnings(cfg, &new.url).await;
    let id = storage::insert_subscription(pool, &new).await?;
    Ok(Added { id, warnings })
}

/// Why deliveries to `url` will fail under the SSRF guard of `cfg`: one warning
/// when its host is an IP literal the guard refuses, or a name that resolves
/// (within [`WARN_RESOLVE_TIMEOUT`]) only to refused addresses. Nothing for an
/// invalid URL, a name that does not resolve (maybe not yet, or not from here),
/// or one with any allowed address. The URL is shown redacted.
pub async fn delivery_warnings(cfg: &WebhookConfig, url: &str) -> Vec<String> {
    let Ok(parsed) = ssrf::check_url(url) else {
        return Vec::new();
    };
    let guard = ssrf::Guard::new(cfg).with_resolve_timeout(WARN_RESOLVE_TIMEOUT);
    let Ok(checked) = guard.check(&parsed).await else {
        return Vec::new();
    };
    if checked.iter().any(|(_, r)| r.is_none()) {
        return Vec::new();
    }
    let mut refused: Vec<(IpAddr, ssrf::Refusal)> = Vec::new();
    for (addr, r) in checked {
        if let Some(r) = r
            && !refused.iter().any(|(ip, _)| *ip == addr.ip())
        {
            refused.push((addr.ip(), r));
        }
    }
    let (addrs, why) = match refused.as_slice() {
        [] => return Vec::new(),
        [(ip, r)] => (ip.to_string(), format!(" ({r})")),
        many => (
            many.iter()
                .map(|(ip, r)| format!("{ip} ({r})"))
                .collect::<Vec<_>>()
                .join(", "),
            String::new(),
        ),
    };
    let unless = if refused.iter().any(|(_, r)| r.is_metadata()) {
        "unless webhook.allowed_hosts allows it (webhook.allow_private never lifts cloud-metadata addresses)"
    } else {
        "unless webhook.allowed_hosts or webhook.allow_private allow it"
    };
    vec![format!(
        "{} resolves to {addrs}, which the SSRF guard refuses{why}; deliveries will fail {unless}",
        redact_url(parsed.as_str())
    )]
}

/// Checks `webhook add` input without touching the database.
pub fn validate(r: &AddRequest) -> Result<NewSubscription, AdminError> {
    let url =
        ssrf::check_url(&r.url).map_err(|e| AdminError::Invalid(format!("invalid --url: {e}")))?;
    subscription::check_pattern(&r.repo)
        .map_err(|e| AdminError::Invalid(format!("invalid --repo: {e}")))?;
    let events = subscription::parse_events(&r.events)
        .map_err(|e| AdminError::Invalid(format!("invalid --events: {e}")))?;
    if !CONTENT_TYPES.contains(&r.content_type.as_str()) {
        return Err(AdminError::Invalid(format!(
            "invalid --content-type {:?} (allowed: {})",
            r.content_type,
            CONTENT_TYPES.join(", ")
        )));
    }
    Ok(NewSubscription {
        repository_pattern: r.repo.clone(),
        url: url.to_string(),
        secret: r.secret.clone().filter(|s| !s.is_empty()),
        events,
        content_type: r.content_type.clone(),
    })
}

/// Deletes a subscription.
pub async fn remove(pool: &PgPool, id: i64) -> Result<(), AdminError> {
    if storage::remove_subscription(pool, id).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("no subscription {id}")))
    }
}

/// Enables (failure count reset) or disables a subscription.
pub async fn set_active(pool: &PgPool, id: i64, active: bool) -> Result<(), AdminError> {
    if storage::set_active(pool, id, active).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("no subscription {id}")))
    }
}

/// Enqueues a delivery again (same delivery id, same stored body, new job
/// message id); returns the new job's message id.
pub async fn redeliver(
    pool: &PgPool,
    names: &Names,
    delivery_id: Uuid,
) -> Result<Uuid, AdminError> {
    let Some(d) = storage::load_delivery(pool, delivery_id).await? else {
        return Err(AdminError::NotFound(format!(
            "no delivery {delivery_id} (unknown or pruned)"
        )));
    };
    let job = WebhookJob {
        delivery_id: d.delivery_id,
        subscription_id: d.subscription_id,
        event_type: d.event_type,
        redelivery: true,
    };
    let ev = super::job_event(names, &job, d.correlation_id);
    let mut tx = pool.begin().await?;
    outbox::enqueue(&mut tx, &ev).await?;
    tx.commit().await?;
    Ok(ev.envelope.message_id)
}

/// Enqueues a `ping` delivery to subscription `id` (a delivery row and its
/// `webhook` job, in one transaction, so the ping is sent if and only if it
/// was recorded); returns the delivery id. `sender` is who asked, if known.
/// The row stores the subscription as it is now, so a redelivery of the ping
/// sends the same body. Sent to a disabled subscription too: it then fails
/// as "subscription disabled", as every delivery to it does.
pub async fn ping(
    pool: &PgPool,
    names: &Names,
    id: i64,
    sender: Option<String>,
) -> Result<Uuid, AdminError> {
    let Some((sub, created_at, updated_at)) = storage::load_subscription_times(pool, id).await?
    else {
        return Err(AdminError::NotFound(format!("no subscription {id}")));
    };
    let facts = PingFacts {
        id: sub.id,
        repository_pattern: sub.repository_pattern,
        url: sub.url,
        events: sub.events,
        content_type: sub.content_type,
        active: sub.active,
        has_secret: sub.secret.is_some_and(|s| !s.is_empty()),
        created_at,
        updated_at,
        sender,
    };
    let row = storage::NewDelivery {
        delivery_id: Uuid::now_v7(),
        subscription_id: id,
        event_type: github::EV_PING.to_string(),
        correlation_id: None,
        payload: github::ping_payload(&facts),
    };
    let job = WebhookJob {
        delivery_id: row.delivery_id,
        subscription_id: id,
        event_type: row.event_type.clone(),
        redelivery: false,
    };
    let ev = super::job_event(names, &job, None);
    let mut tx = pool.begin().await?;
    storage::insert_deliveries(&mut tx, std::slice::from_ref(&row)).await?;
    outbox::enqueue(&mut tx, &ev).await?;
    tx.commit().await?;
    Ok(row.delivery_id)
}
