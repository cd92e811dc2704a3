//! `hook post-receive`, `hook install` and `spool flush`: the git server side.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::invocation::EXIT_USAGE;
use crate::config::{Config, ConfigError};
use crate::hook::post_receive::Input;
use crate::{hook, telemetry};

/// `hook post-receive`: exits 0 whatever happens (see `hook::post_receive`), including on
/// an invalid configuration. It installs no log subscriber: its stderr is shown to
/// the pusher, so it prints its own short lines instead.
pub(super) fn post_receive(config_path: Option<&Path>) -> ExitCode {
    let loaded = Config::load(config_path);
    let input = match read_input(&loaded) {
        Ok(input) => input,
        Err(code) => return code,
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "{}",
                hook::post_receive::config_error_message(&e, &input.bytes)
            );
            return ExitCode::SUCCESS;
        }
    };
    if std::env::var_os("GIT_DIR").is_none()
        && let Err(code) = check_run_by_hand(&input)
    {
        return code;
    }
    publish(&config, &input)
}

/// The hook's stdin, within `hook.max_input_bytes`. A bad config still gets its
/// input read (to print the lines to replay), within the default cap.
fn read_input(loaded: &Result<Config, ConfigError>) -> Result<Input, ExitCode> {
    let max_input = match loaded {
        Ok(c) => c.hook.max_input_bytes,
        Err(_) => Config::load_from(None, Vec::new())
            .map(|c| c.hook.max_input_bytes)
            .unwrap_or(4 * 1024 * 1024),
    };
    hook::post_receive::read_input(
        std::io::stdin().lock(),
        usize::try_from(max_input).unwrap_or(usize::MAX),
    )
    .map_err(|e| {
        eprintln!("hookfleet: push NOT recorded: cannot read the hook's stdin: {e}");
        ExitCode::FAILURE
    })
}

/// Run by hand (git always sets GIT_DIR for hooks): the current directory must
/// be the repository, and stdin must name refs; otherwise bad usage.
fn check_run_by_hand(input: &Input) -> Result<(), ExitCode> {
    let cwd = std::env::current_dir().unwrap_or_default();
    if !cwd.join("HEAD").is_file() || !cwd.join("objects").is_dir() {
        eprintln!(
            "hookfleet: GIT_DIR is not set and {} is not a git repository: run \
             `hookfleet hook post-receive` from the repository's directory (git does \
             this for hooks/post-receive)",
            cwd.display()
        );
        return Err(ExitCode::from(EXIT_USAGE));
    }
    if input.bytes.iter().all(u8::is_ascii_whitespace) && input.omitted_lines == 0 {
        eprintln!("hookfleet: no ref lines on stdin (`<old> <new> <ref>`): nothing to publish");
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Ok(())
}

/// Publishes the push (or spools it) on a runtime of its own, flushing its spans
/// within `tracing.flush_timeout`.
fn publish(config: &Config, input: &Input) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hookfleet: push NOT recorded: cannot start the async runtime: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let env = hook::post_receive::HookEnv::from_env(&config.hook);
    let mut stderr = std::io::stderr();
    let exporter = telemetry::init_spans_only(&config.tracing);
    let outcome = runtime.block_on(hook::post_receive::post_receive(
        config,
        &env,
        input,
        &mut stderr,
    ));
    if let Some(e) = exporter {
        // Bounded: a push never waits long for a collector.
        e.shutdown(config.tracing.flush_timeout);
    }
    // The push has happened either way; a non-zero status makes git show the
    // pusher that it was not recorded (the message above says how to replay it).
    if outcome.is_lost() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `hook install`: writes each repository's hooks/post-receive. A path that is
/// not a repository is bad usage (exit 2), like any other bad argument; I/O
/// failures are exit 1.
pub(super) fn install(
    repos: Vec<PathBuf>,
    force: bool,
    config_path: Option<&Path>,
    config: &Config,
) -> anyhow::Result<ExitCode> {
    let binary = std::env::current_exe()?;
    let mut failed = false;
    let mut bad_usage = false;
    for repo in repos {
        match hook::install::install(&repo, &binary, config_path, force) {
            Ok(hook) => {
                let git_dir = std::fs::canonicalize(&repo).unwrap_or(repo.clone());
                let name =
                    hook::post_receive::repository_name(&config.hook.repositories_root, &git_dir);
                println!("installed {} (repository name: {name})", hook.display());
            }
            Err(e) => {
                eprintln!("hookfleet: {}", crate::error::error_chain(&e));
                if matches!(e, hook::install::InstallError::NotARepository(_)) {
                    bad_usage = true;
                }
                failed = true;
            }
        }
    }
    Ok(if bad_usage {
        ExitCode::from(EXIT_USAGE)
    } else if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `spool flush`: republishes spooled pushes and says how many.
pub(super) async fn flush_spool(config: &Config) -> anyhow::Result<ExitCode> {
    let report = hook::spool::flush_spool(&hook::spool::FlushSettings {
        spool: config.spool.clone(),
        amqp: config.amqp.clone(),
        fairness: config.fairness.clone(),
    })
    .await?;
    println!(
        "published {} spooled push(es); {} corrupt file(s) moved aside; {} remaining",
        report.published, report.corrupt, report.remaining
    );
    Ok(ExitCode::SUCCESS)
}
