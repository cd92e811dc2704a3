//! `webhook ...`: subscriptions (add, list, enable, disable, remove, rotate the
//! secret), their deliveries (list, redeliver) and pings.

use std::process::ExitCode;

use super::args::WebhookCommand;
use super::invocation::{EXIT_USAGE, local_user};
use super::output;
use crate::config::Config;
use crate::db;

/// Printed when a webhook secret is stored without `webhook.secret_key`.
const PLAINTEXT_WARNING: &str = "webhook.secret_key is not set: the secret is stored in \
                                 plaintext (set it and run `hookfleet migrate` to encrypt)";

/// Runs one `webhook` subcommand: refused input is bad usage, an unknown id a
/// failure.
pub(super) async fn command(command: WebhookCommand, config: Config) -> anyhow::Result<ExitCode> {
    use crate::webhook::manage::WebhookManageError;
    // Validate `add` before connecting, so bad input is exit 2 even with no database.
    let add = match &command {
        WebhookCommand::Add {
            repo,
            url,
            secret,
            events,
            content_type,
            style,
        } => match add_request(repo, url, secret, events, content_type, style) {
            Ok(r) => Some(r),
            Err(code) => return Ok(code),
        },
        _ => None,
    };
    let pool = db::connect(&config.database).await?;
    let names = crate::amqp::topology::Names::new(&config.amqp.prefix);
    let result = run_command(command, add, &pool, &names, &config).await;
    pool.close().await;
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(WebhookManageError::Invalid(m)) => {
            eprintln!("hookfleet: {m}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
        Err(WebhookManageError::NotFound(m)) => {
            eprintln!("hookfleet: {m}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// `webhook add`'s arguments as a checked request, or the usage exit code after
/// saying why (before any connection, so bad input is exit 2 without a database).
fn add_request(
    repo: &str,
    url: &str,
    secret: &Option<String>,
    events: &str,
    content_type: &str,
    style: &str,
) -> Result<crate::webhook::manage::AddRequest, ExitCode> {
    use crate::webhook::manage;
    let style = match crate::webhook::subscription::Style::parse(style) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hookfleet: invalid --style: {e}");
            return Err(ExitCode::from(EXIT_USAGE));
        }
    };
    let r = manage::AddRequest {
        repo: repo.to_string(),
        url: url.to_string(),
        secret: secret.clone(),
        events: events.to_string(),
        content_type: content_type.to_string(),
        style,
    };
    if let Err(e) = manage::validate(&r) {
        eprintln!("hookfleet: {e}");
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Ok(r)
}

/// One `webhook` subcommand against the database; `add` is the request
/// [`add_request`] checked before connecting.
async fn run_command(
    command: WebhookCommand,
    add: Option<crate::webhook::manage::AddRequest>,
    pool: &sqlx::PgPool,
    names: &crate::amqp::topology::Names,
    config: &Config,
) -> Result<(), crate::webhook::manage::WebhookManageError> {
    use crate::webhook::manage;
    match command {
        WebhookCommand::Add { .. } => {
            if let Some(r) = add {
                add_subscription(pool, names, &config.webhook, &r).await?;
            }
        }
        WebhookCommand::List { json } => list_subscriptions(pool, json).await?,
        WebhookCommand::Remove { id } => {
            manage::remove(pool, id).await?;
            println!("removed subscription {id}");
        }
        WebhookCommand::Enable { id } => {
            manage::set_active(pool, id, true).await?;
            println!("enabled subscription {id}");
        }
        WebhookCommand::Disable { id } => {
            manage::set_active(pool, id, false).await?;
            println!("disabled subscription {id}");
        }
        WebhookCommand::Deliveries {
            subscription,
            failed,
            limit,
            json,
        } => list_deliveries(pool, subscription, failed, limit, json).await?,
        WebhookCommand::RotateSecret {
            id,
            secret,
            overlap,
        } => rotate_secret(pool, config, id, secret, overlap).await?,
        WebhookCommand::Ping { id } => {
            let delivery = manage::ping(pool, names, id, local_user()).await?;
            println!("ping delivery {delivery} enqueued");
        }
        WebhookCommand::Redeliver { delivery_id } => {
            let id = manage::redeliver(pool, names, delivery_id).await?;
            println!("redelivery of {delivery_id} enqueued (job {id})");
        }
    }
    Ok(())
}

/// `webhook add`: stores the subscription, prints its id (and a generated secret,
/// the one time it is shown), and enqueues a ping.
async fn add_subscription(
    pool: &sqlx::PgPool,
    names: &crate::amqp::topology::Names,
    cfg: &crate::config::WebhookConfig,
    r: &crate::webhook::manage::AddRequest,
) -> Result<(), crate::webhook::manage::WebhookManageError> {
    use crate::webhook::manage;
    let added = manage::add_checked(pool, r, cfg).await?;
    for w in &added.warnings {
        eprintln!("hookfleet: warning: {w}");
    }
    if added.stored_plaintext {
        eprintln!("hookfleet: warning: {PLAINTEXT_WARNING}");
    }
    println!("added subscription {}", added.id);
    if let Some(secret) = &added.generated_secret {
        // The one time it is shown: stdout, for the operator to
        // hand to the receiver.
        println!("secret: {secret}");
    }
    // As GitHub does when a hook is created. On stderr, so
    // stdout stays the one line scripts read the id from.
    let delivery = manage::ping(pool, names, added.id, local_user()).await?;
    eprintln!("hookfleet: ping delivery {delivery} enqueued");
    Ok(())
}

/// `webhook list`: every subscription with its pushes matched in the last day, as
/// tab-separated lines or JSON (URLs redacted either way).
async fn list_subscriptions(
    pool: &sqlx::PgPool,
    json: bool,
) -> Result<(), crate::webhook::manage::WebhookManageError> {
    use crate::webhook::manage;
    let subs = crate::webhook::storage::list_subscriptions(pool).await?;
    let matched = manage::matched_last_day(pool, &subs).await?;
    output::subscriptions(&subs, &matched, json);
    Ok(())
}

/// `webhook deliveries`: recorded attempts (of one subscription, or failed ones, up
/// to `limit`, clamped to 1..=10000) as tab-separated lines or JSON.
async fn list_deliveries(
    pool: &sqlx::PgPool,
    subscription: Option<i64>,
    failed: bool,
    limit: i64,
    json: bool,
) -> Result<(), crate::webhook::manage::WebhookManageError> {
    let rows =
        crate::webhook::storage::list_attempts(pool, subscription, failed, limit.clamp(1, 10_000))
            .await?;
    output::attempts(&rows, json);
    Ok(())
}

/// `webhook rotate-secret`: a new secret, the previous one signing on for the overlap.
async fn rotate_secret(
    pool: &sqlx::PgPool,
    config: &Config,
    id: i64,
    secret: Option<String>,
    overlap: Option<std::time::Duration>,
) -> Result<(), crate::webhook::manage::WebhookManageError> {
    use crate::webhook::manage;
    let keys = manage::keyring(&config.webhook)?;
    let overlap = overlap.unwrap_or(config.webhook.secret_overlap);
    let r = manage::rotate_secret(pool, &keys, id, secret, overlap).await?;
    if r.stored_plaintext {
        eprintln!("hookfleet: warning: {PLAINTEXT_WARNING}");
    }
    println!(
        "rotated the secret of subscription {id}; the previous one stays valid for {}",
        humantime::format_duration(overlap)
    );
    if let Some(secret) = &r.generated_secret {
        println!("secret: {secret}");
    }
    Ok(())
}
