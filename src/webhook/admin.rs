//! What `hookfleet webhook add|list|remove|enable|disable|deliveries|redeliver`
//! does, as library calls (the CLI only parses and prints).
//!
//! Owns input validation for subscriptions (URL through [`ssrf::check_url`], event
//! categories, repository pattern, content type) with errors the CLI maps to exit
//! 2, and redelivery (a new job through the outbox with the same delivery id). It
//! never prints and never reveals a subscription's secret.

use sqlx::PgPool;
use uuid::Uuid;

use super::handler::WebhookJob;
use super::ssrf;
use super::storage::{self, NewSubscription};
use super::subscription;
use crate::amqp::topology::Names;
use crate::outbox;

/// Content types a subscription may ask for.
pub const CONTENT_TYPES: [&str; 1] = ["json"];

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

/// Validates and inserts a subscription; returns its id.
pub async fn add(pool: &PgPool, r: &AddRequest) -> Result<i64, AdminError> {
    let new = validate(r)?;
    Ok(storage::insert_subscription(pool, &new).await?)
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
