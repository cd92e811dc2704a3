//! The local spool: push jobs the hook could not publish, one fsynced JSON file
//! each, republished later by `hookfleet spool flush` or the worker's flusher.
//!
//! Owns the file layout (`<dir>/<timestamp>-<push_id>.json`, written as a hidden
//! temp file, fsynced, renamed, directory fsynced, so a crash never leaves a
//! half-written job under a final name) and the flush rules: oldest first by
//! name, each file deleted only after its publish is confirmed, a file that does
//! not parse moved to `<dir>/corrupt/` and never deleted; the flusher's
//! retries are [`crate::backoff::retry_forever`]'s. It never drops a job:
//! two flushers racing on one file publish it twice with the same message id,
//! which the inbox deduplicates.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::publish::publish_job;
use crate::amqp::publish::confirm_channel;
use crate::amqp::{self, AmqpError};
use crate::backoff::{Attempt, Delays, Event, retry_forever};
use crate::config::{AmqpConfig, FairnessConfig, SpoolConfig};
use crate::metrics::metrics;
use crate::push_job::PushJob;

/// Subdirectory where unreadable spool files are moved.
pub const CORRUPT_DIR: &str = "corrupt";
/// Extension of spooled jobs.
const EXT: &str = "json";
/// Prefix of files being written (never flushed).
const TMP_PREFIX: &str = ".tmp-";

/// What flushing the spool reads: its directory and interval, the broker it
/// publishes to, and the lane rules a flushed push follows as the hook's does.
/// Only these sections, built by the caller, so the flusher depends on what it
/// uses and not on the whole configuration.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    /// `spool`: the directory and how often the worker flushes it.
    pub spool: SpoolConfig,
    /// `amqp`: the broker, the exchange prefix and the publish timeout.
    pub amqp: AmqpConfig,
    /// `fairness`: which queue each flushed push goes to.
    pub fairness: FairnessConfig,
}

/// Spool failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file or directory operation failed.
    #[error("spool {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The broker could not be reached or did not confirm.
    #[error("{0}")]
    Amqp(#[from] AmqpError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one flush did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FlushReport {
    /// Jobs published (confirmed) and deleted.
    pub(crate) published: usize,
    /// Files moved to `corrupt/`.
    pub(crate) corrupt: usize,
    /// Jobs still waiting (a publish failed midway, or files appeared meanwhile).
    pub(crate) remaining: usize,
}

/// Writes `job` durably into `dir` (created if missing) and returns the final path.
pub fn write_job(dir: &Path, job: &PushJob) -> Result<PathBuf, SpoolError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let name = format!("{stamp}-{}.{EXT}", job.push_id);
    let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
    let path = dir.join(&name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(&job.to_json())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        SpoolError::Io {
            path: path.clone(),
            source: e,
        }
    })?;
    Ok(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Spooled job files, oldest first (names start with a UTC timestamp). A missing
/// directory is an empty spool.
pub fn pending(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && !name.starts_with('.') && name.ends_with(&format!(".{EXT}")) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

fn move_to_corrupt(dir: &Path, file: &Path) -> Result<PathBuf, SpoolError> {
    let corrupt = dir.join(CORRUPT_DIR);
    std::fs::create_dir_all(&corrupt).map_err(io(&corrupt))?;
    let target = corrupt.join(file.file_name().unwrap_or_default());
    std::fs::rename(file, &target).map_err(io(file))?;
    sync_dir(dir).map_err(io(dir))?;
    Ok(target)
}

/// Republishes every spooled job, oldest first, on one connection (role `spool`).
/// Stops at the first publish failure (the broker is likely down again), keeping
/// that file and the ones after it. Updates `spool_files_pending`.
pub(crate) async fn flush_spool(config: &FlushSettings) -> Result<FlushReport, SpoolError> {
    let dir = &config.spool.dir;
    let files = pending(dir)?;
    let mut report = FlushReport::default();
    if files.is_empty() {
        metrics().spool_files_pending.set(0);
        return Ok(report);
    }
    let result = flush_files(config, &files, &mut report).await;
    let left = pending(dir).map(|f| f.len()).unwrap_or(report.remaining);
    report.remaining = left;
    metrics()
        .spool_files_pending
        .set(i64::try_from(left).unwrap_or(i64::MAX));
    result.map(|()| report)
}

async fn flush_files(
    config: &FlushSettings,
    files: &[PathBuf],
    report: &mut FlushReport,
) -> Result<(), SpoolError> {
    let dir = &config.spool.dir;
    let conn = amqp::connect(&config.amqp, "spool").await?;
    let mut channel_slot = None;
    let result = async {
        let channel = &*channel_slot.insert(confirm_channel(&conn).await?);
        for file in files {
            let bytes = match std::fs::read(file) {
                Ok(b) => b,
                // Another flusher took it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(file)(e)),
            };
            let job = match PushJob::from_json(&bytes) {
                Ok(job) => job,
                Err(reason) => {
                    let target = move_to_corrupt(dir, file)?;
                    tracing::error!(file = %file.display(), moved_to = %target.display(), %reason,
                        "spool file is not a valid push job; moved aside");
                    report.corrupt += 1;
                    continue;
                }
            };
            // A flush after an outage is a burst: its lane is chosen as the
            // hook's is, so it does not queue ahead of fresh pushes.
            let lane = super::fairness::choose(&config.fairness, dir, &job.repository);
            publish_job(
                channel,
                &config.amqp.prefix,
                &job,
                lane,
                config.amqp.publish_timeout,
            )
            .await?;
            match std::fs::remove_file(file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(file)(e)),
            }
            sync_dir(dir).map_err(io(dir))?;
            tracing::info!(push.id = %job.push_id, "spooled push published");
            report.published += 1;
        }
        Ok(())
    }
    .await;
    let channels: Vec<&lapin::Channel> = channel_slot.iter().collect();
    amqp::close(&channels, &conn, Duration::from_secs(1)).await;
    result
}

/// Flushes the spool once at start and then every `spool.flush_interval` until
/// `shutdown` is cancelled. A failed flush is retried at that same interval
/// ([`retry_forever`] with fixed delays): logged once at warn, then at debug
/// until one works.
pub async fn run_spool_flusher(config: FlushSettings, shutdown: CancellationToken) {
    let every = Delays::fixed(config.spool.flush_interval);
    let (config, stop) = (&config, &shutdown);
    loop {
        // Cancelling midway is safe: a file is deleted only after its confirm, and a
        // job published but not yet deleted is deduplicated by its message id.
        let flushed = retry_forever(
            every,
            stop,
            "spool",
            move |_| Attempt::unless_stopped(stop, flush_spool(config)),
            report_flush,
        )
        .await;
        let Some(r) = flushed else { return };
        if r.published > 0 || r.corrupt > 0 {
            tracing::info!(
                published = r.published,
                corrupt = r.corrupt,
                remaining = r.remaining,
                "spool flushed"
            );
        }
        if stop
            .run_until_cancelled(tokio::time::sleep(every.min))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// Reports what the flusher's retry loop hears: an outage once, its end.
fn report_flush(event: Event<'_, SpoolError>) {
    match event {
        Event::Done { failures } if failures > 0 => {
            tracing::info!(failures, "spool flush working again");
        }
        Event::Done { .. } => {}
        Event::Failed {
            error, failures, ..
        } => {
            let error = crate::error::error_chain(error);
            if failures == 1 {
                tracing::warn!(%error, "spool flush failed; will retry");
            } else {
                tracing::debug!(%error, failures, "spool flush still failing");
            }
        }
    }
}
