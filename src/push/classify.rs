//! What a ref update means, read from the repository: branch or tag, created,
//! deleted, forced, and the commits it brought.
//!
//! Owns the rules of the push payload's git facts:
//! - `forced`: a branch whose old tip is not an ancestor of the new one; a tag
//!   (or other non-branch ref) that moved (git requires `--force` to move a tag).
//! - commits of an updated branch: `before..after` (for a forced push, the
//!   commits of the new history not in the old). Of a created branch: the commits
//!   of `after` not reachable from any other ref. The hook runs after the ref
//!   moved, and the handler maybe much later, so ranges use object ids, never the
//!   pushed ref's name, and "other refs" are every ref under `refs/` except the
//!   pushed one (not `HEAD`, usually an alias of the pushed branch).
//! - `distinct`: the commit is not reachable from another ref (as of reading).
//! - tags, deletions and refs outside `refs/heads/`: no commit list; a tag's
//!   `head_commit` is the commit it peels to.
//! - at most `push.max_commits` commits are listed (the newest, oldest first, in
//!   `git log` order: committer date); `total_commits` is the true count.
//!
//! All updates of one push are read in one [`GitRepo::read`]: the repository is
//! opened and its refs listed once. It never writes to the repository.

use serde::{Deserialize, Serialize};

use gix::ObjectId;

use super::git::{CommitInfo, GitError, GitRepo, PeeledRef, Reader};
use crate::push_job::update::RefUpdate;

/// What kind of ref was updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefKind {
    /// `refs/heads/*`.
    Branch,
    /// `refs/tags/*`.
    Tag,
    /// Anything else (`refs/notes/*`, `refs/changes/*`...).
    Other,
}

impl RefKind {
    /// The kind of `refname`.
    pub(crate) fn of(refname: &str) -> RefKind {
        if refname.starts_with("refs/heads/") {
            RefKind::Branch
        } else if refname.starts_with("refs/tags/") {
            RefKind::Tag
        } else {
            RefKind::Other
        }
    }
}

/// The git facts of one ref update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefData {
    /// The update itself.
    pub(crate) update: RefUpdate,
    /// Branch, tag or other.
    pub kind: RefKind,
    /// The ref did not exist before.
    pub created: bool,
    /// The ref was deleted.
    pub deleted: bool,
    /// History was rewritten (see the module doc).
    pub forced: bool,
    /// For a created ref whose target is the tip of another branch: that branch.
    pub base_ref: Option<String>,
    /// Listed commits, oldest first, at most `max_commits`.
    pub commits: Vec<CommitInfo>,
    /// True number of commits in the range.
    pub total_commits: u64,
    /// The commit `after` points to (peeled); `None` when deleted or not a commit.
    pub head_commit: Option<CommitInfo>,
}

/// What one read of a push learns: its refs' facts and the repository's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushRead {
    /// The facts of each update, in order.
    pub(crate) refs: Vec<RefData>,
    /// Facts of the repository itself.
    pub(crate) repo: RepoFacts,
}

/// Facts of the repository (not of one ref) that events carry, so a webhook
/// body can be rendered from the stored event alone, without the repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoFacts {
    /// The branch `HEAD` names (see `Reader::default_branch`).
    pub(crate) default_branch: Option<String>,
}

/// Reads every update of a push (in order) and the repository's facts, in
/// one read. `max_commits` caps each ref's list.
pub(crate) async fn read_push(
    repo: &GitRepo,
    updates: &[RefUpdate],
    max_commits: u32,
) -> Result<PushRead, GitError> {
    let updates = updates.to_vec();
    repo.read(move |r| {
        let refs = r.refs()?;
        let refs = updates
            .iter()
            .map(|u| read_with(r, u, &refs, max_commits))
            .collect::<Result<Vec<_>, _>>()?;
        // A HEAD that cannot be read costs the body its default branch, not
        // the push its events.
        let default_branch = r.default_branch().unwrap_or_default();
        Ok(PushRead {
            refs,
            repo: RepoFacts { default_branch },
        })
    })
    .await
}

/// Reads every update of a push (in order). `max_commits` caps each ref's list.
pub async fn read_refs(
    repo: &GitRepo,
    updates: &[RefUpdate],
    max_commits: u32,
) -> Result<Vec<RefData>, GitError> {
    Ok(read_push(repo, updates, max_commits).await?.refs)
}

/// Reads one update.
pub async fn read_ref(
    repo: &GitRepo,
    update: &RefUpdate,
    max_commits: u32,
) -> Result<RefData, GitError> {
    let mut data = read_refs(repo, std::slice::from_ref(update), max_commits).await?;
    data.pop().ok_or_else(|| GitError::Failed {
        step: "read".into(),
        message: "no result for the update".into(),
    })
}

/// Reads one update with `r`; `refs` (the repository's refs) tell which commits
/// it brought and which branch a new ref was made from.
fn read_with(
    r: &Reader,
    update: &RefUpdate,
    refs: &[PeeledRef],
    max_commits: u32,
) -> Result<RefData, GitError> {
    let kind = RefKind::of(&update.refname);
    let created = update.is_created();
    let deleted = update.is_deleted();
    let mut data = RefData {
        update: update.clone(),
        kind,
        created,
        deleted,
        forced: false,
        base_ref: None,
        commits: Vec::new(),
        total_commits: 0,
        head_commit: None,
    };
    if deleted {
        return Ok(data);
    }
    let others: Vec<&PeeledRef> = refs.iter().filter(|o| o.name != update.refname).collect();
    let after = r.object_id(&update.after)?;
    let head = match kind {
        RefKind::Branch => after,
        RefKind::Tag | RefKind::Other => match r.peel_commit(after)? {
            Some(c) => c,
            None => return Ok(data),
        },
    };
    if created {
        data.base_ref = others
            .iter()
            .find(|o| o.name.starts_with("refs/heads/") && o.commit == head)
            .map(|o| o.name.clone());
    }
    if kind != RefKind::Branch {
        data.forced = !created;
        data.head_commit = Some(r.commit(head)?);
        return Ok(data);
    }
    read_branch(r, update, head, &others, max_commits, &mut data)?;
    Ok(data)
}

/// Fills in a branch update's commits, their true count, whether it was forced
/// and its head commit; `others` are the repository's other refs.
fn read_branch(
    r: &Reader,
    update: &RefUpdate,
    head: ObjectId,
    others: &[&PeeledRef],
    max_commits: u32,
    data: &mut RefData,
) -> Result<(), GitError> {
    // Many refs share a commit (tags of a release, merged branches): walk each once.
    let mut hidden: Vec<ObjectId> = others.iter().map(|o| o.commit).collect();
    hidden.sort_unstable();
    hidden.dedup();
    let max = max_commits as usize;
    let created = data.created;
    if created && others.iter().any(|o| o.commit == head) {
        // The tip of another ref (a branch made from one): everything it reaches is
        // reachable from that ref, so it brought no commits. Saves a walk.
    } else if created {
        // New commits are exactly those not on any other ref: all distinct.
        let (ids, total) = r.walk(head, &hidden, max)?;
        data.commits = commits_oldest_first(r, ids, |_| true)?;
        data.total_commits = total;
    } else {
        let before = r.object_id(&update.before)?;
        data.forced = !r.is_ancestor(before, head)?;
        let (ids, total) = r.walk(head, &[before], max)?;
        hidden.push(before);
        let new_ids = r.reachable(head, &hidden)?;
        data.commits = commits_oldest_first(r, ids, |id| new_ids.contains(id))?;
        data.total_commits = total;
    }
    let head_hex = head.to_string();
    data.head_commit = match data.commits.iter().find(|c| c.id == head_hex) {
        Some(c) => Some(c.clone()),
        None => {
            let mut c = r.commit(head)?;
            c.distinct = false;
            Some(c)
        }
    };
    Ok(())
}

/// Reads the commits of a walk (newest first) and lists them oldest first,
/// each marked `distinct` as `distinct(id)` says.
fn commits_oldest_first(
    r: &Reader,
    ids: Vec<ObjectId>,
    distinct: impl Fn(&ObjectId) -> bool,
) -> Result<Vec<CommitInfo>, GitError> {
    ids.into_iter()
        .rev()
        .map(|id| {
            let mut c = r.commit(id)?;
            c.distinct = distinct(&id);
            Ok(c)
        })
        .collect()
}
