//! `pause` and `resume`: stopping and restarting the consumption of a job kind
//! fleet-wide.

use std::process::ExitCode;

use super::invocation::{EXIT_USAGE, local_user};
use super::output;
use crate::config::Config;
use crate::db;

/// `pause <kind> [--reason]` and `pause --list`.
pub(super) async fn pause(
    kind: Option<String>,
    reason: Option<String>,
    list: bool,
    config: Config,
) -> anyhow::Result<ExitCode> {
    use crate::guard::pause::{self, PauseError};
    let kind = match kind {
        Some(k) if !list => k,
        _ => return list_paused(&config).await,
    };
    if let Err(e) = pause::validate_kind(&kind) {
        eprintln!("hookfleet: {e}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let pool = db::connect(&config.database).await?;
    let user = local_user();
    let r = pause::pause(&pool, &kind, user.as_deref(), reason.as_deref()).await;
    pool.close().await;
    match r {
        Ok(true) => println!("paused {kind}: workers stop consuming it within seconds"),
        Ok(false) => println!("{kind} was already paused"),
        Err(PauseError::InvalidKind(_)) => return Ok(ExitCode::from(EXIT_USAGE)),
        Err(e) => return Err(e.into()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `pause --list` (also `pause` with no kind).
async fn list_paused(config: &Config) -> anyhow::Result<ExitCode> {
    let pool = db::connect(&config.database).await?;
    let rows = crate::guard::pause::list(&pool).await;
    pool.close().await;
    output::paused_kinds(rows?);
    Ok(ExitCode::SUCCESS)
}

/// `resume <kind>`.
pub(super) async fn resume(kind: String, config: Config) -> anyhow::Result<ExitCode> {
    use crate::guard::pause;
    if let Err(e) = pause::validate_kind(&kind) {
        eprintln!("hookfleet: {e}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let pool = db::connect(&config.database).await?;
    let r = pause::resume(&pool, &kind).await;
    pool.close().await;
    if r? {
        println!("resumed {kind}: workers consume it again within seconds");
    } else {
        println!("{kind} was not paused");
    }
    Ok(ExitCode::SUCCESS)
}
