//! `hookfleet hook post-receive`: turns git's stdin into one push job and
//! publishes it, or spools it when the broker is out of reach.
//!
//! Owns what the pusher sees. A post-receive hook cannot reject a push (the refs
//! are already updated) and must not hang the pusher's terminal: invalid stdin
//! lines are reported (the first [`BAD_LINES_SHOWN`], then a count) and skipped,
//! a failed publish (connect + publish + confirm bounded by `hook.timeout`)
//! spools the job with one line on stderr, and an invalid configuration only
//! prints a message (see [`config_error_message`]); those exit 0. A push that is
//! not recorded at all (neither published nor spooled, or a repository the
//! worker would refuse) prints the ref lines to replay it and exits 1. Memory is
//! bounded: stdin beyond `hook.max_input_bytes` is counted, not kept. It never logs through `tracing`:
//! its stderr is relayed to the pusher as `remote:` lines, so it writes plain,
//! short sentences there itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::publish::publish_once;
use super::spool;
use crate::config::{Config, ConfigError, HookConfig};
use crate::push_job::PushJob;
use crate::push_job::update::{LineError, parse_input};

/// What git tells the hook through its environment and working directory.
#[derive(Debug, Clone, Default)]
pub(crate) struct HookEnv {
    /// The repository's git dir (absolute when it could be resolved).
    pub(crate) git_dir: PathBuf,
    /// First non-empty variable of `hook.pusher_env`.
    pub(crate) pusher: Option<String>,
    /// `GIT_PUSH_OPTION_0..GIT_PUSH_OPTION_COUNT`.
    pub(crate) push_options: Vec<String>,
}

impl HookEnv {
    /// Reads the environment the way git runs hooks: the git dir is `GIT_DIR`
    /// (relative to the cwd when relative; git sets it to `.` for bare
    /// repositories) or else the cwd.
    pub(crate) fn from_env(cfg: &HookConfig) -> HookEnv {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::from_vars(cfg, &cwd, |k| std::env::var(k).ok())
    }

    /// As [`HookEnv::from_env`], with the variables and cwd given (tests).
    pub(crate) fn from_vars(
        cfg: &HookConfig,
        cwd: &Path,
        var: impl Fn(&str) -> Option<String>,
    ) -> HookEnv {
        let git_dir = match var("GIT_DIR").filter(|v| !v.is_empty()) {
            Some(d) => cwd.join(d),
            None => cwd.to_path_buf(),
        };
        let git_dir = std::fs::canonicalize(&git_dir).unwrap_or(git_dir);
        let pusher = cfg
            .pusher_env
            .iter()
            .filter_map(|k| var(k))
            .map(|v| v.trim().to_string())
            .find(|v| !v.is_empty());
        let count = var("GIT_PUSH_OPTION_COUNT")
            .and_then(|c| c.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let push_options = (0..count)
            .filter_map(|i| var(&format!("GIT_PUSH_OPTION_{i}")))
            .collect();
        HookEnv {
            git_dir,
            pusher,
            push_options,
        }
    }
}

/// The repository name: the git dir relative to `root` when it lies under it,
/// else `owner/name` from the git dir's last two path components, without a
/// trailing `.git` (`/srv/git/acme/app.git` → `acme/app`).
pub(crate) fn repository_name(root: &str, git_dir: &Path) -> String {
    relative_to_root(root, git_dir).unwrap_or_else(|| owner_and_name(git_dir))
}

/// `git_dir` relative to `root`, if a root is set and `git_dir` lies under it.
fn relative_to_root(root: &str, git_dir: &Path) -> Option<String> {
    if root.trim().is_empty() {
        return None;
    }
    let root = Path::new(root.trim());
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let rel = git_dir.strip_prefix(&root).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The last two normal components of `git_dir`, `.git` stripped from the last
/// (a non-bare repository's `.git` directory names its work tree instead).
fn owner_and_name(git_dir: &Path) -> String {
    let mut parts: Vec<String> = git_dir
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if parts.last().is_some_and(|p| p == ".git") {
        parts.pop();
    }
    if let Some(last) = parts.last_mut()
        && let Some(stem) = last.strip_suffix(".git")
        && !stem.is_empty()
    {
        *last = stem.to_string();
    }
    let from = parts.len().saturating_sub(2);
    let name = parts[from..].join("/");
    if name.is_empty() {
        git_dir.to_string_lossy().into_owned()
    } else {
        name
    }
}

/// Where the worker finds the repository when its name does not say: the git
/// dir's path, unless it lies under the root (the name is then its location).
pub(crate) fn repository_path(root: &str, git_dir: &Path) -> Option<String> {
    match relative_to_root(root, git_dir) {
        Some(_) => None,
        None => Some(git_dir.to_string_lossy().into_owned()),
    }
}

/// What the hook read from stdin: at most `hook.max_input_bytes`, cut at a
/// line end, and how many lines were left out beyond that.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// The lines kept.
    pub bytes: Vec<u8>,
    /// Lines beyond the cap (counted while reading on, never stored).
    pub omitted_lines: u64,
}

/// Reads `r` to its end keeping at most `max` bytes, cut after the last
/// complete line within them; the rest is read in 64 KiB chunks and only its
/// lines are counted, so memory stays bounded whatever git sends.
pub fn read_input(mut r: impl std::io::Read, max: usize) -> std::io::Result<Input> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut omitted_lines: u64 = 0;
    let mut over = false;
    // Whether the bytes dropped so far end inside a line (a partial line counts).
    let mut partial = false;
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut data = &chunk[..n];
        if !over {
            let room = max.saturating_sub(bytes.len());
            if data.len() <= room {
                bytes.extend_from_slice(data);
                continue;
            }
            bytes.extend_from_slice(&data[..room]);
            data = &data[room..];
            over = true;
            // Drop the line cut in two.
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let cut = bytes.split_off(keep);
            partial = !cut.is_empty();
        }
        for b in data {
            if *b == b'\n' {
                omitted_lines += 1;
                partial = false;
            } else {
                partial = true;
            }
        }
    }
    if partial {
        omitted_lines += 1;
    }
    Ok(Input {
        bytes,
        omitted_lines,
    })
}

/// Builds the job from stdin: `None` when no line is valid. Skipped lines are
/// returned for reporting. At most `hook.max_refs` updates are kept; the rest,
/// and the lines beyond `hook.max_input_bytes`, are counted in `refs_omitted`.
pub(crate) fn build_job(
    cfg: &HookConfig,
    env: &HookEnv,
    input: &Input,
) -> (Option<PushJob>, Vec<LineError>) {
    let (updates, errors) = parse_input(&input.bytes);
    if updates.is_empty() {
        return (None, errors);
    }
    let mut job = PushJob {
        push_id: Uuid::now_v7(),
        repository: repository_name(&cfg.repositories_root, &env.git_dir),
        path: repository_path(&cfg.repositories_root, &env.git_dir),
        pusher: env.pusher.clone(),
        push_options: env.push_options.clone(),
        pushed_at: Utc::now(),
        updates,
        refs_omitted: input.omitted_lines,
    };
    job.cap_refs(usize::try_from(cfg.max_refs).unwrap_or(usize::MAX));
    (Some(job), errors)
}

/// Bad-line messages printed at most; the rest are counted in one line.
pub(crate) const BAD_LINES_SHOWN: usize = 10;

/// What the hook did with the push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No valid line: nothing to do.
    Nothing,
    /// Published and confirmed.
    Published(Uuid),
    /// Written to this spool file.
    Spooled(Uuid, PathBuf),
    /// Neither published nor spooled (reported on stderr with the ref lines).
    Lost(Uuid),
    /// The repository is one the worker would refuse to read (see
    /// [`super::confine`]): nothing published; reported with the ref lines.
    Refused,
}

impl Outcome {
    /// Whether the push was not recorded (the hook then exits non-zero).
    pub(crate) fn is_lost(&self) -> bool {
        matches!(self, Outcome::Lost(_) | Outcome::Refused)
    }
}

/// Appends the ref lines an administrator needs to replay a push that was not
/// recorded (`hookfleet hook post-receive < lines`), at most 20 of them.
fn push_ref_lines(msg: &mut String, input: &[u8]) {
    let input = String::from_utf8_lossy(input);
    let lines: Vec<&str> = input
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    msg.push_str("\nhookfleet: to replay it, run `hookfleet hook post-receive` in the repository with these lines on stdin:");
    for line in lines.iter().take(20) {
        msg.push_str("\nhookfleet:   ");
        msg.push_str(line);
    }
    if lines.len() > 20 {
        msg.push_str(&format!("\nhookfleet:   ... and {} more", lines.len() - 20));
    }
}

/// Runs the hook: parse `input`, publish within `hook.timeout`, else spool.
/// Messages for the pusher go to `stderr`. Never fails: see the module doc.
pub(crate) async fn post_receive(
    config: &Config,
    env: &HookEnv,
    input: &Input,
    stderr: &mut dyn Write,
) -> Outcome {
    let (job, errors) = build_job(&config.hook, env, input);
    report_bad_lines(&errors, stderr);
    let Some(mut job) = job else {
        return Outcome::Nothing;
    };
    job.fit_within(usize::try_from(config.worker.max_job_bytes).unwrap_or(usize::MAX));
    if job.refs_omitted > 0 {
        let _ = writeln!(
            stderr,
            "hookfleet: push has {} refs; the first {} are recorded one by one, the rest only counted",
            job.total_refs(),
            job.updates.len()
        );
    }
    let input = input.bytes.as_slice();
    if let Err(refused) = crate::push::confine::resolve(&config.hook, job.location()) {
        let mut msg = format!("hookfleet: push NOT recorded: {refused}; tell an administrator");
        push_ref_lines(&mut msg, input);
        let _ = writeln!(stderr, "{msg}");
        return Outcome::Refused;
    }
    let span = hook_span(&job);
    let lane = super::fairness::choose(&config.fairness, &config.spool.dir, &job.repository);
    let publish = publish_once(&config.amqp, "hook", &job, lane, config.hook.timeout)
        .instrument(span)
        .await;
    let publish_error = match publish {
        Ok(()) => return Outcome::Published(job.push_id),
        Err(e) => crate::error::error_chain(&e),
    };
    spool_or_lose(&config.spool.dir, &job, input, &publish_error, stderr)
}

/// Tells the pusher about ref lines the hook could not parse (the first
/// [`BAD_LINES_SHOWN`], then how many more).
fn report_bad_lines(errors: &[LineError], stderr: &mut dyn Write) {
    for e in errors.iter().take(BAD_LINES_SHOWN) {
        let _ = writeln!(stderr, "hookfleet: ignoring line {}: {}", e.line, e.reason);
    }
    if errors.len() > BAD_LINES_SHOWN {
        let _ = writeln!(
            stderr,
            "hookfleet: ... and {} more lines ignored",
            errors.len() - BAD_LINES_SHOWN
        );
    }
}

/// Spools a job the broker did not take (`publish_error` says why), or, when
/// that fails too, tells the pusher the push is lost with the lines to replay it.
fn spool_or_lose(
    dir: &Path,
    job: &PushJob,
    input: &[u8],
    publish_error: &str,
    stderr: &mut dyn Write,
) -> Outcome {
    match spool::write_job(dir, job) {
        Ok(path) => {
            let _ = writeln!(
                stderr,
                "hookfleet: push {} queued locally (broker unavailable: {publish_error}); it will be sent later",
                job.push_id
            );
            Outcome::Spooled(job.push_id, path)
        }
        Err(e) => {
            let mut msg = format!(
                "hookfleet: push {} NOT recorded: broker unavailable ({publish_error}) and {}; tell an administrator",
                job.push_id,
                crate::error::error_chain(&e)
            );
            push_ref_lines(&mut msg, input);
            let _ = writeln!(stderr, "{msg}");
            tracing::error!(push_id = %job.push_id, repository = %job.repository, "hook: push neither published nor spooled");
            Outcome::Lost(job.push_id)
        }
    }
}

/// The push's root span (`git push <repository>`), a child of `TRACEPARENT`
/// when the pusher's environment has one (CI systems set it). Inert with
/// tracing off.
fn hook_span(job: &PushJob) -> tracing::Span {
    let span = tracing::info_span!(
        "post-receive",
        otel.name = format!("git push {}", job.repository),
        otel.kind = "producer",
        hookfleet.push_id = %job.push_id,
        hookfleet.repository = %job.repository,
        hookfleet.refs = job.total_refs(),
    );
    if let Some(parent) = crate::otel::propagate::from_env() {
        let _ = span.set_parent(parent);
    }
    span
}

/// The message printed when the hook's configuration is invalid. The hook then
/// still exits 0: the push has already happened and failing cannot undo it, while
/// a non-zero status would only add git's generic warning. The refs are listed so
/// an administrator can replay them (`hookfleet hook post-receive < lines`) once
/// the configuration is fixed.
pub(crate) fn config_error_message(error: &ConfigError, input: &[u8]) -> String {
    let input = String::from_utf8_lossy(input);
    let mut msg = format!(
        "hookfleet: push NOT recorded: invalid configuration: {error}; tell an administrator"
    );
    for line in input.lines().filter(|l| !l.trim().is_empty()).take(20) {
        msg.push_str("\nhookfleet:   ");
        msg.push_str(line.trim());
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(root: &str) -> HookConfig {
        HookConfig {
            timeout: std::time::Duration::from_secs(1),
            repositories_root: root.into(),
            allowed_dirs: Vec::new(),
            max_input_bytes: 4_194_304,
            max_refs: 10_000,
            pusher_env: vec!["A".into(), "B".into()],
        }
    }

    #[test]
    fn env_gives_git_dir_pusher_and_options() {
        let vars = |k: &str| match k {
            "GIT_DIR" => Some("repo.git".to_string()),
            "A" => Some(" ".to_string()),
            "B" => Some("bob".to_string()),
            "GIT_PUSH_OPTION_COUNT" => Some("2".to_string()),
            "GIT_PUSH_OPTION_0" => Some("ci.skip".to_string()),
            "GIT_PUSH_OPTION_1" => Some("x=y".to_string()),
            _ => None,
        };
        let env = HookEnv::from_vars(&cfg(""), Path::new("/srv/git"), vars);
        assert_eq!(env.git_dir, PathBuf::from("/srv/git/repo.git"));
        assert_eq!(env.pusher.as_deref(), Some("bob"));
        assert_eq!(env.push_options, vec!["ci.skip", "x=y"]);
        let env = HookEnv::from_vars(&cfg(""), Path::new("/srv/x.git"), |_| None);
        assert_eq!(env.git_dir, PathBuf::from("/srv/x.git"));
        assert_eq!(env.pusher, None);
    }

    #[test]
    fn repository_is_relative_to_the_root_when_under_it() {
        let dir = Path::new("/nonexistent-root/team/app.git");
        assert_eq!(repository_name("/nonexistent-root", dir), "team/app.git");
        assert_eq!(repository_path("/nonexistent-root", dir), None);
        assert_eq!(repository_name("/elsewhere", dir), "team/app");
        assert_eq!(repository_name("", dir), "team/app");
        assert_eq!(
            repository_path("", dir).as_deref(),
            Some(dir.to_str().unwrap())
        );
    }

    #[test]
    fn without_a_root_the_name_is_owner_and_name() {
        let name = |p: &str| repository_name("", Path::new(p));
        assert_eq!(name("/srv/git/acme/app.git"), "acme/app");
        assert_eq!(name("/home/me/src/tool/.git"), "src/tool");
        assert_eq!(name("/app.git"), "app");
        assert_eq!(name("/srv/git/acme/app"), "acme/app");
    }
}
