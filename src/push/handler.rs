//! The push handler (queue `<prefix>.push`): git data in (read first, holding no
//! connection), effects and events out, in one statement that commits as it ends.
//!
//! Owns what a push *means* for the database: under `pg_advisory_xact_lock` on the
//! repository (so pushes to one repository apply one at a time; the lock lives in
//! the transaction, never on a pooled session) it claims the message in the
//! inbox, records the push, moves the ref-state rows forward, and enqueues the
//! events and webhook deliveries through the outbox. Ref state only moves
//! forward: a push older than the one that last set a ref (push ids are
//! time-ordered UUID v7) does not overwrite it, so two pushes handled out of
//! order still end at the last push.
//!
//! Why one statement and not the inbox's generic transaction
//! (`inbox::Transactional`: BEGIN, claim, writes, COMMIT): pushes to one
//! repository serialize on its lock, and in a transaction the lock is held from
//! the locking statement until COMMIT, so the reply to that statement, the wake-up
//! of this task and the COMMIT's round trip were paid by every push of the
//! repository in turn. Run outside an explicit transaction, the statement is its
//! own transaction: the lock is taken and released inside the server, around the
//! writes and the commit only. Same guarantees: the inbox claim and every write
//! commit together or not at all, and the delivery is acked only after the
//! statement (and so its commit) has returned.
//!
//! A repository or object that does not exist is a permanent error; a read that
//! times out is transient. It never publishes to the broker itself.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use sqlx::{PgExecutor, PgPool};

use super::classify::{self, RefData};
use super::git::{GitError, GitRepo, RepoCache};
use super::job::{PUSH_KIND, PushJob};
use super::payload;
use super::update::is_zero;
use crate::amqp::topology::Names;
use crate::config::Config;
use crate::inbox::{self, Claim};
use crate::job::{Done, Handler, Job, JobError};
use crate::outbox::Event;
use crate::outbox::storage::{EVENT_PARAMS, EventArrays};
use crate::webhook::storage::{DeliveryArrays, NewDelivery};

/// Handles `push` jobs.
pub struct PushHandler {
    config: Arc<Config>,
    names: Names,
    repos: Arc<RepoCache>,
    pool: PgPool,
    queue: String,
}

impl PushHandler {
    /// A handler for `config` writing through `pool`.
    pub fn new(config: Arc<Config>, pool: PgPool) -> Self {
        let names = Names::new(&config.amqp.prefix);
        let repos = Arc::new(
            RepoCache::new(config.push.open_repositories)
                .with_object_cache(config.push.object_cache_bytes),
        );
        let queue = names.queue(PUSH_KIND);
        Self {
            config,
            names,
            repos,
            pool,
            queue,
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
struct ReadPush {
    push: PushJob,
    events: Vec<Event>,
}

impl PushHandler {
    /// Decodes the push and reads its refs and commits from the repository,
    /// before any database connection is taken (the read of a large push can take
    /// seconds). It has no effects: it also runs for a redelivery that the inbox
    /// then skips.
    async fn read(&self, job: &Job) -> Result<ReadPush, JobError> {
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
}

#[async_trait::async_trait]
impl Handler for PushHandler {
    fn kind(&self) -> &str {
        PUSH_KIND
    }

    async fn handle(&self, job: Job) -> Result<Done, JobError> {
        let claim = Claim {
            message_id: job.envelope.message_id,
            queue: self.queue.clone(),
        };
        let ReadPush { push, mut events } = match self.read(&job).await {
            Ok(read) => read,
            Err(e) => return inbox::skip_if_handled(&self.pool, claim.message_id, e).await,
        };
        let (pool, names) = (self.pool.clone(), self.names.clone());
        inbox::run_to_completion(async move {
            let mut conn = inbox::timed_acquire(pool.acquire()).await?;
            // Reading subscriptions needs no lock: before the statement.
            let deliveries =
                crate::webhook::deliveries_for_push(&mut conn, &names, &push, &events).await?;
            let (events_count, webhooks) = (events.len(), deliveries.jobs.len());
            events.extend(deliveries.jobs);
            if !record(&mut *conn, &claim, &push, &events, &deliveries.rows).await? {
                return Ok(inbox::duplicate());
            }
            tracing::info!(
                repository = %push.repository,
                refs = push.updates.len(),
                events = events_count,
                webhooks,
                "push recorded"
            );
            Ok(Done::Handled)
        })
        .await
    }
}

/// Claims the message in the inbox, locks the repository, records the push,
/// moves ref state forward and enqueues `events` and `deliveries`: one
/// statement. `false` (and nothing written) when the inbox already had the
/// message. Run on a plain connection it is its own transaction and commits
/// before it returns; in a transaction, the lock is held until that commits.
///
/// The claim is the first CTE and the lock reads from it, and every insert reads
/// from the lock: nothing is written for a duplicate, and no row is written (and
/// no outbox id drawn) before the lock is held, so outbox ids of one repository
/// follow commit order.
pub async fn record<'c>(
    conn: impl PgExecutor<'c>,
    claim: &Claim,
    push: &PushJob,
    events: &[Event],
    deliveries: &[NewDelivery],
) -> Result<bool, sqlx::Error> {
    let updates = serde_json::to_value(&push.updates).unwrap_or(serde_json::Value::Null);
    let refs: Vec<&str> = push.updates.iter().map(|u| u.refname.as_str()).collect();
    let shas: Vec<&str> = push.updates.iter().map(|u| u.after.as_str()).collect();
    let deleted: Vec<bool> = push.updates.iter().map(|u| is_zero(&u.after)).collect();
    const CLAIM: usize = 10;
    const EVENTS: usize = CLAIM + 2;
    const DELIVERIES: usize = EVENTS + EVENT_PARAMS;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH claim AS ({}),
             lock AS MATERIALIZED (
                 SELECT pg_advisory_xact_lock(hashtextextended($2, 0)) FROM claim
             ),
             p AS (
                 INSERT INTO pushes (push_id, repository, pusher, pushed_at, ref_count, updates)
                 SELECT $1, $2, $3, $4, $5, $6 FROM lock
                 ON CONFLICT (push_id) DO NOTHING
             ),
             r AS (
                 INSERT INTO ref_state (repository, ref, sha, deleted, push_id)
                 SELECT $2, r, s, d, $1
                 FROM lock, unnest($7::text[], $8::text[], $9::bool[]) AS u(r, s, d)
                 ON CONFLICT (repository, ref) DO UPDATE
                     SET sha = EXCLUDED.sha, deleted = EXCLUDED.deleted,
                         push_id = EXCLUDED.push_id, updated_at = now()
                     WHERE ref_state.push_id < EXCLUDED.push_id
             ),
             o AS ({}),
             d AS ({})
             SELECT 1 FROM lock",
            Claim::insert_sql(CLAIM),
            EventArrays::insert_sql(EVENTS, "lock, "),
            DeliveryArrays::insert_sql(DELIVERIES, "lock, "),
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
        .bind(&deleted)
        .bind(claim.message_id)
        .bind(&claim.queue);
    let q = DeliveryArrays::new(deliveries).bind(EventArrays::new(events).bind(q));
    // All rows, not the first: the statement's writes finish and it commits
    // only after its row is sent, and an error there must reach the caller.
    let rows = q.fetch_all(conn).await?;
    Ok(!rows.is_empty())
}
