//! `dlq list|requeue|discard`: dead letters of one job kind.

use std::process::ExitCode;

use super::args::DlqCommand;
use super::invocation::{EXIT_USAGE, local_user};
use super::output;
use crate::config::Config;

/// Runs one `dlq` subcommand; an unknown kind is bad usage, a `--message-id`
/// that matches nothing a failure.
pub(super) async fn command(command: DlqCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let kind = match &command {
        DlqCommand::List { kind, .. }
        | DlqCommand::Requeue { kind, .. }
        | DlqCommand::Discard { kind, .. } => kind.clone(),
    };
    if !config.worker.kinds.contains(&kind) {
        eprintln!(
            "hookfleet: unknown job kind {kind:?}; worker.kinds is {:?}",
            config.worker.kinds
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let names = crate::amqp::topology::Names::new(&config.amqp.prefix);
    let (action, limit, filter) = match command {
        DlqCommand::List { limit, json, .. } => {
            output::dead_letters(&crate::dlq::list(config, &kind, limit).await?, &kind, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        DlqCommand::Requeue { limit, filter, .. } => (crate::dlq::Action::Requeue, limit, filter),
        DlqCommand::Discard { limit, filter, .. } => (crate::dlq::Action::Discard, limit, filter),
    };
    let filter = crate::dlq::Filter::from(filter);
    let n = crate::dlq::apply(config, &kind, &filter, limit, action).await?;
    if n == 0
        && let Some(id) = &filter.message_id
    {
        eprintln!(
            "hookfleet: no dead letter with message id {id} in {}",
            names.dead_queue(&kind)
        );
        return Ok(ExitCode::FAILURE);
    }
    // The audit line keeps the target it had before the CLI became a folder, so
    // filters that select it still do.
    tracing::info!(target: "hookfleet::cli", user = local_user().as_deref().unwrap_or("-"), dlq.kind = %kind, dlq.action = ?action, dlq.filter = ?filter, dlq.moved = n, "dlq action");
    match action {
        crate::dlq::Action::Requeue => {
            println!("requeued {n} message(s) to {}", names.queue(&kind));
        }
        crate::dlq::Action::Discard => {
            println!("discarded {n} message(s) from {}", names.dead_queue(&kind));
        }
    }
    Ok(ExitCode::SUCCESS)
}
