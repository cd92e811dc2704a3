//! The push handler (queue `<prefix>.push`): git data in (read first, holding no
//! connection), effects and events out through the group commit
//! ([`super::group_commit`], [`super::record`]: one statement, its own
//! transaction, for the pushes ready at the same time).
//!
//! A repository or object that does not exist is a permanent error; a read that
//! times out is transient. It never publishes to the broker itself.

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::PgPool;

use super::classify::{self, RefData};
use super::git::{GitError, GitRepo, HEAVY_READ, RepoCache};
use super::group_commit::{GroupCommit, Written};
use super::payload;
use crate::amqp::topology::Names;
use crate::config::Config;
use crate::inbox;
use crate::job::{Done, Handler, Job, JobError};
use crate::outbox::Event;
use crate::push_job::{PUSH_KIND, PushJob};
use crate::ratelimit::RateLimits;

/// Handles `push` jobs.
pub struct PushHandler {
    config: Arc<Config>,
    names: Names,
    repos: Arc<RepoCache>,
    pool: PgPool,
    writer: Arc<GroupCommit>,
    /// The bulk queue's own group commit (one writer): a storm's pushes all
    /// take its repository's lock, and sharing statements with them would make
    /// other repositories' pushes wait for that lock.
    bulk_writer: Arc<GroupCommit>,
    limits: RateLimits,
}

/// The one field a rate limit needs, decoded without the rest of the job.
#[derive(serde::Deserialize)]
struct RepositoryOnly {
    repository: String,
}

impl PushHandler {
    /// A handler for `config` writing through `pool`.
    pub fn new(config: Arc<Config>, pool: PgPool) -> Self {
        let names = Names::new(&config.amqp.prefix);
        let repos = Arc::new(
            RepoCache::new(config.push.open_repositories)
                .with_object_cache(config.push.object_cache_bytes),
        );
        let writer = Arc::new(GroupCommit::new(
            pool.clone(),
            names.clone(),
            names.queue(PUSH_KIND),
            config.push.group_writers as usize,
            config.push.group_max as usize,
        ));
        let bulk_writer = Arc::new(GroupCommit::new(
            pool.clone(),
            names.clone(),
            names.queue(PUSH_KIND),
            1,
            config.bulk_permits() as usize,
        ));
        let rl = &config.rate_limit;
        let overrides: Vec<(String, f64)> = rl
            .repositories
            .iter()
            .map(|(p, r)| (p.clone(), *r))
            .collect();
        let limits = RateLimits::new(rl.push_per_repository, rl.push_burst, &overrides);
        Self {
            config,
            names,
            repos,
            pool,
            writer,
            bulk_writer,
            limits,
        }
    }

    /// Where the repository a job locates (its `path`, else its name) lives on
    /// disk: its canonical path, if [`super::confine`] allows reading it (else a
    /// permanent error).
    pub(crate) fn repository_path(&self, repository: &str) -> Result<PathBuf, JobError> {
        super::confine::resolve(&self.config.hook, repository).map_err(JobError::permanent)
    }
}

fn git_error(e: GitError) -> JobError {
    if e.is_permanent() {
        JobError::permanent(e)
    } else {
        JobError::transient(e)
    }
}

/// A push read from its repository, ready to be recorded.
struct ReadPush {
    push: PushJob,
    events: Vec<Event>,
    /// The read walked or diffed at least [`HEAVY_READ`] commits and paths.
    heavy: bool,
}

impl PushHandler {
    /// Decodes the push and reads its refs and commits from the repository,
    /// before any database connection is taken (the read of a large push can take
    /// seconds). It has no effects: it also runs for a redelivery that the inbox
    /// then skips.
    async fn read(&self, job: &Job) -> Result<ReadPush, JobError> {
        let mut push: PushJob = job.decode()?;
        push.validate().map_err(JobError::permanent)?;
        // A job not made by the hook may carry any number of refs.
        push.cap_refs(usize::try_from(self.config.hook.max_refs).unwrap_or(usize::MAX));
        let cfg = &self.config.push;
        let repo =
            GitRepo::new(cfg, self.repository_path(push.location())?).cached(self.repos.clone());
        let read = classify::read_push(&repo, payload::refs_to_read(&push, cfg), cfg.max_commits)
            .await
            .map_err(git_error)?;
        let data: Vec<RefData> = read.refs;
        let work: u64 = data
            .iter()
            .map(|d| {
                d.total_commits
                    + d.commits
                        .iter()
                        .map(|c| {
                            (c.added.len() + c.removed.len() + c.modified.len()) as u64
                                + c.paths_omitted
                        })
                        .sum::<u64>()
            })
            .sum();
        let events: Vec<Event> = payload::events_for_push(&push, &data, &read.repo, cfg)
            .into_iter()
            .map(|(event_type, body)| {
                Event::new(
                    &self.names,
                    event_type,
                    Some(push.push_id.to_string()),
                    body,
                )
            })
            .collect();
        Ok(ReadPush {
            push,
            events,
            heavy: work >= HEAVY_READ,
        })
    }
}

#[async_trait::async_trait]
impl Handler for PushHandler {
    fn kind(&self) -> &str {
        PUSH_KIND
    }

    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        self.admit(&job)?;
        let message_id = job.envelope.message_id;
        let ReadPush {
            push,
            events,
            heavy,
        } = match self.read(&job).await {
            Ok(read) => read,
            Err(e) => return inbox::skip_if_handled(&self.pool, message_id, e).await,
        };
        let done = self.record(message_id, push, events, job.bulk).await;
        if heavy {
            // What the giant push allocated is freed by now: give it back.
            crate::alloc::request_release();
        }
        done
    }
}

impl PushHandler {
    /// The repository's rate limit, before any work: over it, the job is
    /// postponed (attempt unchanged). A body without a repository is left to
    /// the handler to refuse.
    fn admit(&self, job: &Job) -> Result<(), JobError> {
        if !self.limits.enabled() {
            return Ok(());
        }
        let Ok(RepositoryOnly { repository }) = serde_json::from_slice(&job.raw) else {
            return Ok(());
        };
        let rate = self.limits.rate_for(&repository);
        self.limits
            .take(&repository, rate)
            .map_err(JobError::Postpone)
    }

    /// Writes the push through the group commit and logs the outcome.
    async fn record(
        &self,
        message_id: uuid::Uuid,
        push: PushJob,
        events: Vec<Event>,
        bulk: bool,
    ) -> Result<Done, JobError> {
        let (repository, refs, events_count) =
            (push.repository.clone(), push.updates.len(), events.len());
        let writer = if bulk {
            &self.bulk_writer
        } else {
            &self.writer
        };
        match writer.write(message_id, push, events).await? {
            Written::Duplicate => Ok(inbox::duplicate()),
            Written::Recorded { webhooks } => {
                tracing::info!(
                    repository = %repository,
                    refs,
                    events = events_count,
                    webhooks,
                    "push recorded"
                );
                Ok(Done::Handled)
            }
        }
    }
}
