//! The push handler (queue `<prefix>.push`): git data in (read before the
//! transaction, holding no connection), effects and events out, in one
//! transaction.
//!
//! Owns what a push *means* for the database: under `pg_advisory_xact_lock` on the
//! repository (so pushes to one repository apply one at a time; the lock lives in
//! the transaction, never on a pooled session) it records the push, moves the
//! ref-state rows forward, and enqueues the events through the outbox. Ref state
//! only moves forward: a push older than the one that last set a ref (push ids
//! are time-ordered UUID v7) does not overwrite it, so two pushes handled out of
//! order still end at the last push.
//!
//! A repository or object that does not exist is a permanent error; a read that
//! times out is transient. It never publishes to the broker itself.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use sqlx::{Postgres, Transaction};

use super::classify::{self, RefData};
use super::git::{GitError, GitRepo, RepoCache};
use super::job::{PUSH_KIND, PushJob};
use super::payload;
use super::update::is_zero;
use crate::amqp::topology::Names;
use crate::config::Config;
use crate::job::{Job, JobError, TxHandler};
use crate::outbox::Event;
use crate::outbox::storage::EventArrays;

/// Handles `push` jobs.
pub struct PushHandler {
    config: Arc<Config>,
    names: Names,
    repos: Arc<RepoCache>,
}

impl PushHandler {
    /// A handler for `config`.
    pub fn new(config: Arc<Config>) -> Self {
        let names = Names::new(&config.amqp.prefix);
        let repos = Arc::new(RepoCache::new(config.push.open_repositories));
        Self {
            config,
            names,
            repos,
        }
    }

    /// Where the repository named in a job lives on disk.
    pub fn repository_path(&self, repository: &str) -> Result<PathBuf, JobError> {
        let root = self.config.hook.repositories_root.trim();
        let path = PathBuf::from(repository);
        if root.is_empty() || path.is_absolute() {
            return Ok(path);
        }
        // A relative name must stay under the root.
        if path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(JobError::permanent(format!(
                "repository {repository:?} escapes the repositories root"
            )));
        }
        Ok(PathBuf::from(root).join(path))
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
pub struct ReadPush {
    push: PushJob,
    events: Vec<Event>,
}

#[async_trait::async_trait]
impl TxHandler for PushHandler {
    type Prepared = ReadPush;

    fn kind(&self) -> &str {
        PUSH_KIND
    }

    /// Decodes the push and reads its refs and commits from the repository,
    /// before any database connection is taken (the read of a large push can take
    /// seconds).
    async fn prepare(&self, job: &Job) -> Result<ReadPush, JobError> {
        let push: PushJob = job.decode()?;
        push.validate().map_err(JobError::permanent)?;
        let cfg = &self.config.push;
        let repo =
            GitRepo::new(cfg, self.repository_path(&push.repository)?).cached(self.repos.clone());
        let data: Vec<RefData> =
            classify::read_refs(&repo, payload::refs_to_read(&push, cfg), cfg.max_commits)
                .await
                .map_err(git_error)?;
        let events: Vec<Event> = payload::events_for_push(&push, &data, cfg)
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
        Ok(ReadPush { push, events })
    }

    async fn handle(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        _job: &Job,
        read: ReadPush,
    ) -> Result<(), JobError> {
        let ReadPush { push, mut events } = read;
        // Deliveries first: reading subscriptions and inserting deliveries needs no
        // repository lock, so the lock is held for one statement and the COMMIT.
        let jobs = crate::webhook::deliveries_for_push(tx, &self.names, &push, &events).await?;
        let (events_count, webhooks) = (events.len(), jobs.len());
        events.extend(jobs);
        record(tx, &push, &events).await?;
        tracing::info!(
            repository = %push.repository,
            refs = push.updates.len(),
            events = events_count,
            webhooks,
            "push recorded"
        );
        Ok(())
    }
}

/// Locks the repository for this transaction, records the push, moves ref state
/// forward and enqueues `events` in the outbox: one statement, one round trip.
///
/// Why one statement: pushes to one repository serialize on the lock, which is
/// held until COMMIT, so every round trip after it is taken is paid by every
/// push of that repository in turn. Here the lock is the first CTE and every
/// insert reads from it, so no row is written (and no outbox id drawn) before
/// the lock is held: outbox ids of one repository still follow commit order.
pub async fn record(
    tx: &mut Transaction<'static, Postgres>,
    push: &PushJob,
    events: &[Event],
) -> Result<(), sqlx::Error> {
    let updates = serde_json::to_value(&push.updates).unwrap_or(serde_json::Value::Null);
    let refs: Vec<&str> = push.updates.iter().map(|u| u.refname.as_str()).collect();
    let shas: Vec<&str> = push.updates.iter().map(|u| u.after.as_str()).collect();
    let deleted: Vec<bool> = push.updates.iter().map(|u| is_zero(&u.after)).collect();
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH lock AS MATERIALIZED (
                 SELECT pg_advisory_xact_lock(hashtextextended($2, 0))
             ),
             p AS (
                 INSERT INTO pushes (push_id, repository, pusher, pushed_at, ref_count, updates)
                 SELECT $1, $2, $3, $4, $5, $6 FROM lock
                 ON CONFLICT (push_id) DO NOTHING
             ),
             o AS ({})
             INSERT INTO ref_state (repository, ref, sha, deleted, push_id)
             SELECT $2, r, s, d, $1 FROM lock, unnest($7::text[], $8::text[], $9::bool[]) AS u(r, s, d)
             ON CONFLICT (repository, ref) DO UPDATE
                 SET sha = EXCLUDED.sha, deleted = EXCLUDED.deleted,
                     push_id = EXCLUDED.push_id, updated_at = now()
                 WHERE ref_state.push_id < EXCLUDED.push_id",
            EventArrays::insert_sql(10, "lock, ")
        )
    });
    let q = sqlx::query(&SQL)
        .bind(push.push_id)
        .bind(&push.repository)
        .bind(&push.pusher)
        .bind(push.pushed_at)
        .bind(i32::try_from(push.updates.len()).unwrap_or(i32::MAX))
        .bind(updates)
        .bind(&refs)
        .bind(&shas)
        .bind(&deleted);
    EventArrays::new(events).bind(q).execute(&mut **tx).await?;
    Ok(())
}
