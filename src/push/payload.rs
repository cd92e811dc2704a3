//! GitHub-compatible event payloads for a push: which events a push causes and
//! their bodies.
//!
//! Owns the mapping from a [`PushJob`] plus the git facts of its refs
//! ([`RefData`]) to `(event_type, payload)` pairs the push handler writes to the
//! outbox. Pure: no I/O, no clock, no ids, so a retried handler computes the same
//! events.
//!
//! Per ref (the first `push.max_refs` refs): `git.push` with GitHub's push
//! payload (`ref`, `before`, `after`, `created`, `deleted`, `forced`, `base_ref`,
//! `compare`, `commits`, `head_commit`, `pusher`, `repository`, `sender`,
//! `total_commits_count`, plus `push_id`, `pushed_at`, `push_options`), followed
//! by the ref's lifecycle event, if any, with the same payload. Refs beyond
//! `max_refs` are summarised in one `git.push.bulk` event.
//!
//! These are the bus events, and they keep hookfleet's own facts (push id,
//! options, totals, truncation flags). `repository` also carries `owner` and
//! `default_branch` (read from the repository's HEAD) so that a webhook body,
//! rendered later from the stored event alone (`webhook::github`), can fill
//! GitHub's fields. What a webhook receiver gets is GitHub's exact shape; that
//! is `webhook::github`'s business, not this module's.

use serde_json::{Value, json};

use super::classify::{RefData, RefKind, RepoFacts};
use super::git::CommitInfo;
use crate::config::PushConfig;
use crate::push_job::PushJob;
use crate::push_job::update::RefUpdate;
use crate::repository::owner_of;

/// Every ref update.
pub(crate) const EV_PUSH: &str = "git.push";
/// Refs beyond `push.max_refs`, summarised.
pub(crate) const EV_PUSH_BULK: &str = "git.push.bulk";
/// A branch was created.
pub(crate) const EV_BRANCH_CREATED: &str = "git.branch.created";
/// A branch was deleted.
pub(crate) const EV_BRANCH_DELETED: &str = "git.branch.deleted";
/// A branch was rewritten.
pub(crate) const EV_BRANCH_FORCE_PUSHED: &str = "git.branch.force_pushed";
/// A tag was created.
pub(crate) const EV_TAG_CREATED: &str = "git.tag.created";
/// A tag was deleted.
pub(crate) const EV_TAG_DELETED: &str = "git.tag.deleted";

/// Repository names in payloads: `full_name` is the repository without a
/// trailing `.git`, `name` its last component.
fn repo_names(repository: &str) -> (String, String) {
    let full = repository
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .trim_start_matches('/')
        .to_string();
    let name = full.rsplit('/').next().unwrap_or(&full).to_string();
    (name, full)
}

fn base_url(cfg: &PushConfig) -> &str {
    cfg.compare_base_url.trim_end_matches('/')
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `{compare_base_url}/{full_name}/compare/{before[..12]}...{after[..12]}`.
pub(crate) fn compare_url(cfg: &PushConfig, repository: &str, update: &RefUpdate) -> String {
    let (_, full) = repo_names(repository);
    format!(
        "{}/{full}/compare/{}...{}",
        base_url(cfg),
        short(&update.before),
        short(&update.after)
    )
}

fn commit_json(cfg: &PushConfig, full: &str, c: &CommitInfo) -> Value {
    let mut v = json!({
        "id": c.id,
        "tree_id": c.tree_id,
        "distinct": c.distinct,
        "message": c.message,
        "timestamp": c.timestamp,
        "url": format!("{}/{full}/commit/{}", base_url(cfg), c.id),
        "author": { "name": c.author.name, "email": c.author.email },
        "committer": { "name": c.committer.name, "email": c.committer.email },
        "added": c.added,
        "removed": c.removed,
        "modified": c.modified,
    });
    if c.paths_omitted > 0
        && let Some(m) = v.as_object_mut()
    {
        m.insert("paths_omitted".into(), json!(c.paths_omitted));
    }
    v
}

/// Empties the path lists of the commits after `budget` paths (oldest first),
/// counting what was dropped in each commit's `paths_omitted`; returns whether
/// anything was dropped.
fn spend_path_budget(commits: &mut [CommitInfo], mut budget: usize) -> bool {
    let mut cut = false;
    for c in commits {
        for list in [&mut c.added, &mut c.removed, &mut c.modified] {
            if list.len() > budget {
                c.paths_omitted += (list.len() - budget) as u64;
                list.truncate(budget);
                cut = true;
            }
            budget -= list.len();
        }
    }
    cut
}

/// Serialized size of `v`.
fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

fn common(job: &PushJob, facts: &RepoFacts, cfg: &PushConfig) -> serde_json::Map<String, Value> {
    let (name, full) = repo_names(&job.repository);
    let pusher = job.pusher.clone().unwrap_or_default();
    let mut m = serde_json::Map::new();
    m.insert("push_id".into(), json!(job.push_id));
    m.insert("pushed_at".into(), json!(job.pushed_at));
    m.insert("push_options".into(), json!(job.push_options));
    m.insert("pusher".into(), json!({ "name": pusher }));
    m.insert("sender".into(), json!({ "login": pusher }));
    m.insert(
        "repository".into(),
        json!({
            "name": name,
            "full_name": full,
            "owner": owner_of(&full),
            "url": format!("{}/{full}", base_url(cfg)),
            "default_branch": facts.default_branch,
        }),
    );
    m
}

/// The `git.push` payload of one ref.
pub(crate) fn push_payload(
    job: &PushJob,
    data: &RefData,
    facts: &RepoFacts,
    cfg: &PushConfig,
) -> Value {
    let (_, full) = repo_names(&job.repository);
    let mut m = common(job, facts, cfg);
    let u = &data.update;
    m.insert("ref".into(), json!(u.refname));
    m.insert("before".into(), json!(u.before));
    m.insert("after".into(), json!(u.after));
    m.insert("created".into(), json!(data.created));
    m.insert("deleted".into(), json!(data.deleted));
    m.insert("forced".into(), json!(data.forced));
    m.insert("base_ref".into(), json!(data.base_ref));
    m.insert(
        "compare".into(),
        json!(compare_url(cfg, &job.repository, u)),
    );
    let mut commits = data.commits.clone();
    let budget = usize::try_from(cfg.max_paths_per_event).unwrap_or(usize::MAX);
    if spend_path_budget(&mut commits, budget) {
        m.insert("paths_truncated".into(), json!(true));
    }
    let head = data.head_commit.as_ref().map(|c| {
        let mut c = c.clone();
        spend_path_budget(std::slice::from_mut(&mut c), budget);
        commit_json(cfg, &full, &c)
    });
    m.insert("head_commit".into(), head.unwrap_or(Value::Null));
    m.insert("total_commits_count".into(), json!(data.total_commits));
    let commits: Vec<Value> = commits.iter().map(|c| commit_json(cfg, &full, c)).collect();
    fit_commits(m, commits, cfg)
}

/// Puts as many of `commits` (the newest) into the event as fit in
/// `push.max_event_bytes`; when some are left out, says so
/// (`commits_truncated`, `commits_omitted`). A head commit too big on its own
/// (a huge message) is dropped last, the same way.
fn fit_commits(
    mut m: serde_json::Map<String, Value>,
    mut commits: Vec<Value>,
    cfg: &PushConfig,
) -> Value {
    let max = usize::try_from(cfg.max_event_bytes).unwrap_or(usize::MAX);
    let listed = commits.len();
    m.insert("commits".into(), Value::Array(Vec::new()));
    let fixed = size(&Value::Object(m.clone()));
    let mut total: usize = fixed + commits.iter().map(|c| size(c) + 1).sum::<usize>();
    let mut dropped = 0;
    // Oldest first: the newest commits are the ones a receiver wants.
    while total > max && dropped < commits.len() {
        total -= size(&commits[dropped]) + 1;
        dropped += 1;
    }
    let kept = commits.split_off(dropped);
    if dropped > 0 {
        m.insert("commits_truncated".into(), json!(true));
        m.insert("commits_omitted".into(), json!(dropped));
    }
    m.insert("commits".into(), Value::Array(kept));
    let mut v = Value::Object(m);
    if size(&v) > max
        && let Some(m) = v.as_object_mut()
    {
        m.insert("head_commit".into(), Value::Null);
        m.insert("commits_truncated".into(), json!(true));
        m.insert("commits_omitted".into(), json!(listed));
        m.insert("commits".into(), Value::Array(Vec::new()));
    }
    v
}

/// The lifecycle event of a ref, if it has one.
pub(crate) fn lifecycle_event(data: &RefData) -> Option<&'static str> {
    match (data.kind, data.created, data.deleted, data.forced) {
        (RefKind::Branch, true, _, _) => Some(EV_BRANCH_CREATED),
        (RefKind::Branch, _, true, _) => Some(EV_BRANCH_DELETED),
        (RefKind::Branch, _, _, true) => Some(EV_BRANCH_FORCE_PUSHED),
        (RefKind::Tag, true, _, _) => Some(EV_TAG_CREATED),
        (RefKind::Tag, _, true, _) => Some(EV_TAG_DELETED),
        _ => None,
    }
}

/// The `git.push.bulk` payload for refs beyond `max_refs`.
pub(crate) fn bulk_payload(
    job: &PushJob,
    rest: &[RefUpdate],
    facts: &RepoFacts,
    cfg: &PushConfig,
) -> Value {
    let mut m = common(job, facts, cfg);
    let max = usize::try_from(cfg.max_bulk_refs).unwrap_or(usize::MAX);
    // The refs beyond this event's list: those past the cap and those the job
    // itself left out (hook or worker caps on refs per job).
    let omitted = (rest.len().saturating_sub(max) as u64).saturating_add(job.refs_omitted);
    m.insert("total_refs_count".into(), json!(job.total_refs()));
    m.insert(
        "refs_count".into(),
        json!((rest.len() as u64).saturating_add(job.refs_omitted)),
    );
    if omitted > 0 {
        m.insert("refs_truncated".into(), json!(true));
        m.insert("refs_omitted".into(), json!(omitted));
    }
    let listed = &rest[..rest.len().min(max)];
    m.insert(
        "refs".into(),
        Value::Array(
            listed
                .iter()
                .map(|u| {
                    json!({
                        "ref": u.refname,
                        "before": u.before,
                        "after": u.after,
                        "created": u.is_created(),
                        "deleted": u.is_deleted(),
                        "compare": compare_url(cfg, &job.repository, u),
                    })
                })
                .collect(),
        ),
    );
    Value::Object(m)
}

/// Every event a push causes, in order: for each of the first `cfg.max_refs`
/// refs, `git.push` then its lifecycle event; then one `git.push.bulk` for the
/// rest. `per_ref` is the git data of `job.updates[..max_refs]` in the same
/// order (read only those: see `classify::read_push`); extra entries are
/// ignored. `facts` are the repository's, from the same read.
pub fn events_for_push(
    job: &PushJob,
    per_ref: &[RefData],
    facts: &RepoFacts,
    cfg: &PushConfig,
) -> Vec<(String, Value)> {
    let max = usize::try_from(cfg.max_refs).unwrap_or(usize::MAX);
    let mut events = Vec::new();
    for data in per_ref.iter().take(max) {
        let payload = push_payload(job, data, facts, cfg);
        if let Some(ev) = lifecycle_event(data) {
            events.push((EV_PUSH.to_string(), payload.clone()));
            events.push((ev.to_string(), payload));
        } else {
            events.push((EV_PUSH.to_string(), payload));
        }
    }
    if job.updates.len() > max || job.refs_omitted > 0 {
        let rest = &job.updates[job.updates.len().min(max)..];
        events.push((
            EV_PUSH_BULK.to_string(),
            bulk_payload(job, rest, facts, cfg),
        ));
    }
    events
}

/// The updates whose git data [`events_for_push`] needs: the first `max_refs`.
pub fn refs_to_read<'a>(job: &'a PushJob, cfg: &PushConfig) -> &'a [RefUpdate] {
    let max = usize::try_from(cfg.max_refs).unwrap_or(usize::MAX);
    &job.updates[..job.updates.len().min(max)]
}
