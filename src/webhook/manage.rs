//! What `hookfleet webhook add|list|remove|enable|disable|deliveries|redeliver|
//! rotate-secret|ping` does, as library calls (the CLI only parses and prints).
//!
//! Owns input validation for subscriptions (URL through [`ssrf::check_url`], event
//! categories, repository pattern, content type, style and the secret's form)
//! with errors the CLI maps to exit 2, the warnings of [`add_checked`] for a URL
//! the SSRF guard would refuse or a pattern no pushed repository matches (the
//! subscription is still added), secret generation and rotation (secrets are
//! sealed with `webhook.secret_key` before they are stored), redelivery (a new
//! job through the outbox with the same delivery id), pings (a new
//! `webhook.ping` delivery and its job, as GitHub sends when a hook is added or
//! on request), and re-encrypting stored secrets ([`reseal_secrets`], run by
//! `hookfleet migrate`). It never prints; it returns a secret only when it
//! generated it, for the CLI to show once.

use std::net::IpAddr;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::github::{self, PingFacts};
use super::handler::WebhookJob;
use super::secrets::{self, Keyring};
use super::ssrf;
use super::storage::{self, NewSubscription};
use super::subscription::{self, Style};
use crate::amqp::topology::Names;
use crate::config::{WebhookConfig, redact_url};
use crate::outbox;
use crate::repository;

/// Content types a subscription may ask for.
pub(crate) const CONTENT_TYPES: [&str; 1] = ["json"];

/// How long [`delivery_warnings`] waits for a name to resolve.
pub(crate) const WARN_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a webhook command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookManageError {
    /// Bad input (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// No such subscription or delivery (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored secret cannot be decrypted with the configured keys.
    #[error("subscription {id}: {source}")]
    Secret {
        /// The subscription.
        id: i64,
        /// Why.
        source: secrets::SecretError,
    },
}

/// `webhook add` input.
#[derive(Debug, Clone)]
pub struct AddRequest {
    /// Repository glob.
    pub repo: String,
    /// Target URL.
    pub url: String,
    /// HMAC secret (`whsec_...` for the standard style); `None` for the
    /// standard style generates one.
    pub secret: Option<String>,
    /// `push,tag,branch` (or `*`).
    pub events: String,
    /// `json`.
    pub content_type: String,
    /// Body shape and signature headers.
    pub style: Style,
}

/// What [`add_checked`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The new subscription's id.
    pub id: i64,
    /// Why deliveries will fail as configured (see [`delivery_warnings`]); the
    /// subscription was added anyway. For stderr, after `hookfleet: warning: `.
    pub warnings: Vec<String>,
    /// The secret generated for it (standard style without `--secret`): shown
    /// once, never stored in the clear when a key is configured.
    pub generated_secret: Option<String>,
    /// A secret was stored in plaintext (no `webhook.secret_key`).
    pub stored_plaintext: bool,
}

/// Validates and inserts a subscription, generating a secret for the standard
/// style when none is given and sealing the secret with `keys`.
pub async fn add(
    pool: &PgPool,
    r: &AddRequest,
    keys: &Keyring,
) -> Result<Added, WebhookManageError> {
    let mut new = validate(r)?;
    let generated = match (&new.secret, new.style) {
        (None, Style::Standard) => Some(secrets::generate(Style::Standard)),
        _ => None,
    };
    if let Some(g) = &generated {
        new.secret = Some(g.clone());
    }
    let stored_plaintext = new.secret.is_some() && !keys.encrypts();
    new.secret = new.secret.as_deref().map(|s| keys.seal(s));
    let id = storage::insert_subscription(pool, &new).await?;
    Ok(Added {
        id,
        warnings: Vec::new(),
        generated_secret: generated,
        stored_plaintext,
    })
}

/// [`add`] with the keys of `cfg`, plus warnings when the SSRF guard of `cfg`
/// refuses every address the URL leads to (the subscription is added all the
/// same).
pub async fn add_checked(
    pool: &PgPool,
    r: &AddRequest,
    cfg: &WebhookConfig,
) -> Result<Added, WebhookManageError> {
    let keys = keyring(cfg)?;
    let new = validate(r)?;
    let mut warnings = delivery_warnings(cfg, &new.url).await;
    warnings.extend(pattern_warning(pool, &new.repository_pattern).await?);
    let added = add(pool, r, &keys).await?;
    Ok(Added { warnings, ..added })
}

/// The keys of `cfg` (validated with the config, so an error here is a config
/// built by hand).
pub fn keyring(cfg: &WebhookConfig) -> Result<Keyring, WebhookManageError> {
    Keyring::from_config(cfg).map_err(|(k, m)| WebhookManageError::Invalid(format!("{k} {m}")))
}

/// What [`rotate_secret`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new secret when it was generated, to show once.
    pub generated_secret: Option<String>,
    /// The new secret was stored in plaintext (no `webhook.secret_key`).
    pub(crate) stored_plaintext: bool,
}

/// Gives subscription `id` a new secret (`new`, or a generated one of its
/// style); the old one keeps signing for `overlap` (Standard Webhooks style:
/// both signatures are sent; GitHub style: only the new one, as GitHub's one
/// header carries one signature).
pub async fn rotate_secret(
    pool: &PgPool,
    keys: &Keyring,
    id: i64,
    new: Option<String>,
    overlap: Duration,
) -> Result<Rotated, WebhookManageError> {
    let Some(sub) = storage::load_subscription(pool, id).await? else {
        return Err(WebhookManageError::NotFound(format!(
            "no subscription {id}"
        )));
    };
    let new = new.filter(|s| !s.is_empty());
    if let Some(s) = &new {
        secrets::check_form(sub.style, s)
            .map_err(|e| WebhookManageError::Invalid(format!("invalid --secret: {e}")))?;
    }
    let generated = new.is_none().then(|| secrets::generate(sub.style));
    let secret = new.or_else(|| generated.clone()).unwrap_or_default();
    if !storage::rotate_secret(pool, id, &keys.seal(&secret), overlap).await? {
        return Err(WebhookManageError::NotFound(format!(
            "no subscription {id}"
        )));
    }
    Ok(Rotated {
        generated_secret: generated,
        stored_plaintext: !keys.encrypts(),
    })
}

/// Re-encrypts every stored secret that is plaintext or sealed with a key other
/// than the current `webhook.secret_key`, in one transaction (so concurrent
/// runs serialise on the row locks); returns how many subscriptions changed.
/// Without a key it changes nothing. Fails, changing nothing, when a secret is
/// sealed with a key that is not configured.
pub(crate) async fn reseal_secrets(
    pool: &PgPool,
    keys: &Keyring,
) -> Result<u64, WebhookManageError> {
    if !keys.encrypts() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let mut changed = 0;
    for (id, secret, previous) in storage::stored_secrets_for_update(&mut tx).await? {
        let stale = |v: &Option<String>| v.as_deref().is_some_and(|s| keys.needs_reseal(s));
        if !stale(&secret) && !stale(&previous) {
            continue;
        }
        let reseal = |v: Option<String>| -> Result<Option<String>, WebhookManageError> {
            match v {
                Some(s) if keys.needs_reseal(&s) => {
                    let open = keys
                        .open(&s)
                        .map_err(|source| WebhookManageError::Secret { id, source })?;
                    Ok(Some(keys.seal(&open)))
                }
                other => Ok(other),
            }
        };
        let (secret, previous) = (reseal(secret)?, reseal(previous)?);
        storage::set_stored_secrets(&mut tx, id, secret.as_deref(), previous.as_deref()).await?;
        changed += 1;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Repositories [`pattern_warning`] compares a pattern with (the most recently
/// pushed first), and how many of them its warning names.
const PATTERN_SAMPLE: i64 = 10_000;
const PATTERN_EXAMPLES: usize = 5;

/// A warning when `pattern` matches none of the repositories pushes have named
/// so far, listing a few that exist (a pattern written for one naming scheme,
/// e.g. an absolute path, never fires and nothing else would say so). Nothing
/// before the first push.
pub(crate) async fn pattern_warning(
    pool: &PgPool,
    pattern: &str,
) -> Result<Option<String>, WebhookManageError> {
    let known = storage::pushed_repositories(pool, None, PATTERN_SAMPLE).await?;
    if known.is_empty() || known.iter().any(|(r, _)| repository::matches(pattern, r)) {
        return Ok(None);
    }
    let examples: Vec<&str> = known
        .iter()
        .take(PATTERN_EXAMPLES)
        .map(|(r, _)| r.as_str())
        .collect();
    Ok(Some(format!(
        "repository pattern {pattern:?} matches none of the {} repositories pushed so far \
         (some that exist: {}); `*` or `**` matches every repository",
        known.len(),
        examples.join(", ")
    )))
}

/// How many pushes of the last day each subscription's pattern matched, by
/// subscription id (`webhook list`).
pub(crate) async fn matched_last_day(
    pool: &PgPool,
    subs: &[subscription::Subscription],
) -> Result<std::collections::HashMap<i64, i64>, WebhookManageError> {
    let recent =
        storage::pushed_repositories(pool, Some(Duration::from_secs(86_400)), PATTERN_SAMPLE)
            .await?;
    Ok(subs
        .iter()
        .map(|s| {
            let n = recent
                .iter()
                .filter(|(r, _)| repository::matches(&s.repository_pattern, r))
                .map(|(_, n)| n)
                .sum();
            (s.id, n)
        })
        .collect())
}

/// Why deliveries to `url` will fail under the SSRF guard of `cfg`: one warning
/// when its host is an IP literal the guard refuses, or a name that resolves
/// (within [`WARN_RESOLVE_TIMEOUT`]) only to refused addresses. Nothing for an
/// invalid URL, a name that does not resolve (maybe not yet, or not from here),
/// or one with any allowed address. The URL is shown redacted.
pub(crate) async fn delivery_warnings(cfg: &WebhookConfig, url: &str) -> Vec<String> {
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
pub(crate) fn validate(r: &AddRequest) -> Result<NewSubscription, WebhookManageError> {
    let url = ssrf::check_url(&r.url)
        .map_err(|e| WebhookManageError::Invalid(format!("invalid --url: {e}")))?;
    repository::check_pattern(&r.repo)
        .map_err(|e| WebhookManageError::Invalid(format!("invalid --repo: {e}")))?;
    let events = subscription::parse_events(&r.events)
        .map_err(|e| WebhookManageError::Invalid(format!("invalid --events: {e}")))?;
    if !CONTENT_TYPES.contains(&r.content_type.as_str()) {
        return Err(WebhookManageError::Invalid(format!(
            "invalid --content-type {:?} (allowed: {})",
            r.content_type,
            CONTENT_TYPES.join(", ")
        )));
    }
    let secret = r.secret.clone().filter(|s| !s.is_empty());
    if let Some(s) = &secret {
        secrets::check_form(r.style, s)
            .map_err(|e| WebhookManageError::Invalid(format!("invalid --secret: {e}")))?;
    }
    Ok(NewSubscription {
        repository_pattern: r.repo.clone(),
        url: url.to_string(),
        secret,
        events,
        content_type: r.content_type.clone(),
        style: r.style,
    })
}

/// Deletes a subscription.
pub(crate) async fn remove(pool: &PgPool, id: i64) -> Result<(), WebhookManageError> {
    if storage::remove_subscription(pool, id).await? {
        Ok(())
    } else {
        Err(WebhookManageError::NotFound(format!(
            "no subscription {id}"
        )))
    }
}

/// Enables (failure count reset) or disables a subscription.
pub async fn set_active(pool: &PgPool, id: i64, active: bool) -> Result<(), WebhookManageError> {
    if storage::set_active(pool, id, active).await? {
        Ok(())
    } else {
        Err(WebhookManageError::NotFound(format!(
            "no subscription {id}"
        )))
    }
}

/// Enqueues a delivery again (same delivery id, same stored body, new job
/// message id); returns the new job's message id.
pub async fn redeliver(
    pool: &PgPool,
    names: &Names,
    delivery_id: Uuid,
) -> Result<Uuid, WebhookManageError> {
    let Some(d) = storage::load_delivery(pool, delivery_id).await? else {
        return Err(WebhookManageError::NotFound(format!(
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
pub(crate) async fn ping(
    pool: &PgPool,
    names: &Names,
    id: i64,
    sender: Option<String>,
) -> Result<Uuid, WebhookManageError> {
    let Some((sub, created_at, updated_at)) = storage::load_subscription_times(pool, id).await?
    else {
        return Err(WebhookManageError::NotFound(format!(
            "no subscription {id}"
        )));
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
