//! Reading a bare repository in process (gitoxide), with a deadline.
//!
//! Why in process and not the git CLI: the handler used to run two to four git
//! processes per push (`for-each-ref`, `log`, `merge-base`, `rev-list`). On a
//! 2-core machine each costs about 2 ms of CPU to start, which made process
//! creation the largest cost of a small push. gitoxide reads refs, walks history
//! and diffs trees without a process, for loose objects and packs, SHA-1 and
//! SHA-256 alike.
//!
//! Owns the repository boundary: the repository is opened isolated (no global or
//! system git config, no `GIT_*` environment), read on a blocking thread, never
//! written. `push.git_timeout` bounds one whole read: the caller stops waiting at
//! the deadline, and the reader checks the deadline between the commits it walks
//! and reads, so an abandoned read stops soon after (one step, such as a single
//! tree diff or gitoxide's marking of the hidden history before a walk, is not
//! interrupted). The error taxonomy: a missing repository or object is
//! [`GitError::NotFound`] and a reftable repository (gitoxide does not read its
//! refs) [`GitError::Unsupported`], both permanent; a deadline passed
//! [`GitError::Timeout`] (transient); anything else [`GitError::Failed`].
//!
//! # Why one file
//! Its length is one boundary: [`Reader`]'s fields (the open handle, the
//! deadline, the work counted toward [`HEAVY_READ`]) are private to this file,
//! so nothing else in `push` can read the repository without the deadline
//! checks and the work count; the tree-diff visitor that fills a
//! [`CommitInfo`]'s paths counts the same work. Split, those fields would have
//! to be visible to the whole folder.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::revision::walk::Sorting;
use gix::traverse::commit::simple::CommitTimeOrder;

pub use super::repo_cache::RepoCache;
use super::repo_cache::{Identity, OBJECT_CACHE_BYTES, handle, trim_buffers};
use crate::config::PushConfig;
use serde::{Deserialize, Serialize};

/// Git failures, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitError {
    /// The repository or an object does not exist: retrying cannot help.
    #[error("not found: {0}")]
    NotFound(String),
    /// The repository uses a format this reader cannot read correctly (reftable
    /// refs): retrying cannot help.
    #[error("unsupported repository: {0}")]
    Unsupported(String),
    /// Reading took longer than `push.git_timeout`: may succeed later.
    #[error("reading the repository timed out after {timeout:?} ({step})")]
    Timeout {
        /// What was being read when the deadline passed.
        step: String,
        /// Deadline.
        timeout: Duration,
    },
    /// The repository could not be read (corrupt, unreadable, unsupported).
    #[error("reading the repository failed ({step}): {message}")]
    Failed {
        /// What was being read.
        step: String,
        /// The underlying error.
        message: String,
    },
}

impl GitError {
    /// `true` for errors that retrying cannot fix (a dead letter at once).
    pub fn is_permanent(&self) -> bool {
        matches!(self, GitError::NotFound(_) | GitError::Unsupported(_))
    }
}

/// An author or committer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Name.
    pub name: String,
    /// Email.
    pub email: String,
}

/// One commit as the payload lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// Commit id.
    pub id: String,
    /// Tree id.
    pub tree_id: String,
    /// Full message, without the trailing newline.
    pub message: String,
    /// Author date, RFC 3339 with offset.
    pub timestamp: String,
    /// Author.
    pub author: Person,
    /// Committer.
    pub committer: Person,
    /// Paths added (merges: compared to the first parent).
    pub added: Vec<String>,
    /// Paths removed.
    pub removed: Vec<String>,
    /// Paths modified (content or type).
    pub modified: Vec<String>,
    /// Paths changed beyond `push.max_paths_per_commit` (counted, not listed).
    #[serde(default)]
    pub paths_omitted: u64,
    /// Not reachable from any other ref of the repository.
    pub distinct: bool,
}

/// A bare repository on disk and the deadline for one read of it.
#[derive(Clone)]
pub struct GitRepo {
    /// Upper bound on one [`GitRepo::read`].
    pub(crate) timeout: Duration,
    /// Paths listed per commit (`push.max_paths_per_commit`); the rest are counted.
    pub(crate) max_paths: usize,
    /// The git dir.
    pub(crate) path: PathBuf,
    /// Where the open repository is kept between reads (none: opened per read).
    cache: Option<Arc<RepoCache>>,
}

impl GitRepo {
    /// The repository at `path`, with the timeout from `cfg`, opened per read.
    pub fn new(cfg: &PushConfig, path: impl Into<PathBuf>) -> GitRepo {
        GitRepo {
            timeout: cfg.git_timeout,
            max_paths: usize::try_from(cfg.max_paths_per_commit).unwrap_or(usize::MAX),
            path: path.into(),
            cache: None,
        }
    }

    /// The same repository, kept open in `cache` between reads.
    pub fn cached(self, cache: Arc<RepoCache>) -> GitRepo {
        GitRepo {
            cache: Some(cache),
            ..self
        }
    }

    /// Opens the repository and runs `read` on a blocking thread, within the
    /// deadline. Reads are CPU and disk work with no await points, so they must
    /// not run on the async workers.
    pub(crate) async fn read<T, F>(&self, read: F) -> Result<T, GitError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader) -> Result<T, GitError> + Send + 'static,
    {
        let path = self.path.clone();
        let cache = self.cache.clone();
        let timeout = self.timeout;
        let max_paths = self.max_paths;
        let deadline = Instant::now() + timeout;
        let task = tokio::task::spawn_blocking(move || {
            let mut reader = Reader::open(path, cache.as_deref(), deadline, timeout)?;
            reader.max_paths = max_paths;
            let result = read(&reader);
            // A heavy read (a giant push) leaves big caches in its handle and
            // maps the repository's packs: the repository is closed rather than
            // kept, so memory returns to its level before the push.
            if let Some(cache) = cache.as_deref() {
                if reader.work.get() < HEAVY_READ {
                    reader.give_back(cache);
                } else {
                    cache.forget(&reader.path);
                }
            }
            result
        });
        match tokio::time::timeout(timeout, task).await {
            Err(_) => Err(GitError::Timeout {
                step: "waiting for the read".into(),
                timeout,
            }),
            Ok(Err(e)) => Err(failed("read task")(e)),
            Ok(Ok(result)) => result,
        }
    }
}

/// An open repository plus the deadline of the read in progress.
pub(crate) struct Reader {
    repo: gix::Repository,
    /// Where the handle came from, to give it back to the cache after the read.
    path: PathBuf,
    identity: Identity,
    deadline: Instant,
    timeout: Duration,
    /// Paths kept per commit; the rest are counted (`CommitInfo::paths_omitted`).
    max_paths: usize,
    /// Commits walked and paths diffed so far (see [`HEAVY_READ`]).
    work: std::cell::Cell<u64>,
}

/// Commits walked plus paths diffed from which a read counts as heavy: its
/// repository handle is not kept for the next push.
pub const HEAVY_READ: u64 = 10_000;

/// Another ref of the repository and the commit it peels to.
#[derive(Debug, Clone)]
pub(crate) struct PeeledRef {
    /// Full ref name.
    pub(crate) name: String,
    /// The commit it points to, through annotated tags.
    pub(crate) commit: ObjectId,
}

/// Maps an error of reading `step` to [`GitError::Failed`].
fn failed<E: std::fmt::Display>(step: &str) -> impl FnOnce(E) -> GitError + '_ {
    move |e| GitError::Failed {
        step: step.to_string(),
        message: e.to_string(),
    }
}

impl Reader {
    fn open(
        path: PathBuf,
        cache: Option<&RepoCache>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Reader, GitError> {
        let dir = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.is_dir())
            .ok_or_else(|| {
                GitError::NotFound(format!("repository {} does not exist", path.display()))
            })?;
        let identity = Identity::of(&path, &dir);
        let repo = match cache.and_then(|c| c.get(&path, identity)) {
            Some(repo) => repo,
            None => {
                let shared = Self::open_checked(&path)?;
                let bytes = cache.map_or(OBJECT_CACHE_BYTES, |c| c.object_cache_bytes);
                let repo = handle(&shared, bytes);
                crate::metrics::metrics().git_repository_opens_total.inc();
                if let Some(c) = cache {
                    c.put(path.clone(), identity, shared);
                }
                repo
            }
        };
        Ok(Reader {
            repo,
            path,
            identity,
            deadline,
            timeout,
            max_paths: usize::MAX,
            work: std::cell::Cell::new(0),
        })
    }

    /// Gives the handle, its object cache warm, back to `cache` for the next read.
    fn give_back(self, cache: &RepoCache) {
        let mut repo = self.repo;
        if trim_buffers(&mut repo) {
            // A large object was read: the object cache keeps a copy of one that
            // did not fit in its own list of spare buffers. Start it afresh.
            repo.object_cache_size(cache.object_cache_bytes);
        }
        cache.give_back(&self.path, self.identity, repo);
    }

    /// Opens the repository at `path` isolated, refusing formats it cannot read.
    fn open_checked(path: &Path) -> Result<gix::ThreadSafeRepository, GitError> {
        let repo = gix::ThreadSafeRepository::open_opts(path, gix::open::Options::isolated())
            .map_err(|e| {
                GitError::NotFound(format!("not a git repository: {}: {e}", path.display()))
            })?;
        // gitoxide opens a reftable repository but sees none of its refs: every
        // commit would look new and `distinct`. Refuse it rather than report that.
        let ref_storage = repo
            .to_thread_local()
            .config_snapshot()
            .string("extensions.refStorage");
        if let Some(storage) = ref_storage.filter(|s| !s.eq_ignore_ascii_case(b"files")) {
            return Err(GitError::Unsupported(format!(
                "{}: refs stored as {storage} (extensions.refStorage); only the files format is read",
                path.display()
            )));
        }
        Ok(repo)
    }

    /// Fails with [`GitError::Timeout`] once the deadline has passed.
    fn check_deadline(&self, step: &str) -> Result<(), GitError> {
        if Instant::now() >= self.deadline {
            return Err(GitError::Timeout {
                step: step.to_string(),
                timeout: self.timeout,
            });
        }
        Ok(())
    }

    /// The id written as `hex`, which must name an object of this repository.
    pub(crate) fn object_id(&self, hex: &str) -> Result<ObjectId, GitError> {
        let id = ObjectId::from_hex(hex.as_bytes())
            .map_err(|e| GitError::NotFound(format!("object {hex}: {e}")))?;
        if id.kind() != self.repo.object_hash() {
            return Err(GitError::NotFound(format!(
                "object {hex} is not a {} id",
                self.repo.object_hash()
            )));
        }
        let exists = self
            .repo
            .try_find_header(id)
            .map_err(failed("object header"))?
            .is_some();
        if !exists {
            return Err(GitError::NotFound(format!("object {hex} does not exist")));
        }
        Ok(id)
    }

    /// The branch `HEAD` names (`main` for `refs/heads/main`), even when it has
    /// no commit yet: the repository's default branch, as GitHub reports it in
    /// `default_branch` and `master_branch`. `None` for a detached HEAD or one
    /// naming something other than a branch.
    pub(crate) fn default_branch(&self) -> Result<Option<String>, GitError> {
        let name = self.repo.head_name().map_err(failed("HEAD"))?;
        Ok(name.and_then(|n| {
            n.as_bstr()
                .to_str_lossy()
                .strip_prefix("refs/heads/")
                .map(str::to_string)
        }))
    }

    /// Every ref under `refs/` that leads to a commit (through annotated tags),
    /// like `for-each-ref`: `HEAD` is not a ref here, broken refs are skipped.
    pub(crate) fn refs(&self) -> Result<Vec<PeeledRef>, GitError> {
        let platform = self.repo.references().map_err(failed("refs"))?;
        let iter = platform.all().map_err(failed("refs"))?;
        let mut out = Vec::new();
        for r in iter {
            let Ok(mut r) = r else { continue };
            let name = r.name().as_bstr().to_str_lossy().into_owned();
            if !name.starts_with("refs/") {
                continue;
            }
            // A direct ref's target is peeled with one object read (peeling a
            // ref, then checking the kind, read every target twice: a cost per
            // ref of the repository, paid on every push that creates a branch).
            let target = match r.target().try_id() {
                Some(id) => id.to_owned(),
                None => match r.peel_to_id() {
                    Ok(id) => id.detach(),
                    Err(_) => continue,
                },
            };
            if let Ok(Some(commit)) = self.peel_commit(target) {
                out.push(PeeledRef { name, commit });
            }
        }
        Ok(out)
    }

    /// The commit `id` peels to (through annotated tags), or `None` for a tree
    /// or blob.
    pub(crate) fn peel_commit(&self, id: ObjectId) -> Result<Option<ObjectId>, GitError> {
        let object = self
            .repo
            .find_object(id)
            .map_err(failed("object"))?
            .peel_tags_to_end()
            .map_err(failed("peel tag"))?;
        Ok((object.kind == gix::object::Kind::Commit).then_some(object.id))
    }

    /// Walks `tip` without the history of `hidden`, newest commit first (by
    /// committer date, like `git log`), returning the first `max` ids and the
    /// true count.
    pub(crate) fn walk(
        &self,
        tip: ObjectId,
        hidden: &[ObjectId],
        max: usize,
    ) -> Result<(Vec<ObjectId>, u64), GitError> {
        let walk = self
            .repo
            .rev_walk([tip])
            .with_hidden(hidden.iter().copied())
            .sorting(Sorting::ByCommitTime(CommitTimeOrder::NewestFirst))
            .all()
            .map_err(failed("walk"))?;
        let mut kept = Vec::new();
        let mut total = 0u64;
        for info in walk {
            let info = info.map_err(failed("walk"))?;
            if total.is_multiple_of(256) {
                self.check_deadline("walking history")?;
            }
            total += 1;
            if kept.len() < max {
                kept.push(info.id);
            }
        }
        self.work.set(self.work.get() + total);
        Ok((kept, total))
    }

    /// Every commit of `tip` without the history of `hidden`.
    pub(crate) fn reachable(
        &self,
        tip: ObjectId,
        hidden: &[ObjectId],
    ) -> Result<HashSet<ObjectId>, GitError> {
        let (ids, _) = self.walk(tip, hidden, usize::MAX)?;
        Ok(ids.into_iter().collect())
    }

    /// `true` when `a` is an ancestor of (or equal to) `b`: nothing of `a`'s
    /// history is outside `b`'s.
    pub(crate) fn is_ancestor(&self, a: ObjectId, b: ObjectId) -> Result<bool, GitError> {
        if a == b {
            return Ok(true);
        }
        let (first, _) = self.walk(a, &[b], 1)?;
        Ok(first.is_empty())
    }

    /// One commit with its changed paths against its first parent (a root commit
    /// against the empty tree; renames as add + remove). `distinct` is `true`.
    pub(crate) fn commit(&self, id: ObjectId) -> Result<CommitInfo, GitError> {
        self.check_deadline("reading commits")?;
        let commit = self.repo.find_commit(id).map_err(failed("commit"))?;
        let c = commit.decode().map_err(failed("commit"))?;
        let author = c.author().map_err(failed("commit author"))?;
        let committer = c.committer().map_err(failed("commit committer"))?;
        let time = author.time().map_err(failed("commit date"))?;
        let tree_id = c.tree();
        let parent = c.parents().next();
        let mut info = CommitInfo {
            id: id.to_string(),
            tree_id: tree_id.to_string(),
            message: c.message.to_str_lossy().trim_end_matches('\n').to_string(),
            timestamp: iso_strict(time.seconds, time.offset),
            author: person(author),
            committer: person(committer),
            added: Vec::new(),
            removed: Vec::new(),
            modified: Vec::new(),
            paths_omitted: 0,
            distinct: true,
        };
        let parent_tree = match parent {
            Some(p) => Some(
                self.repo
                    .find_commit(p)
                    .map_err(failed("parent commit"))?
                    .tree_id()
                    .map_err(failed("parent commit"))?
                    .detach(),
            ),
            None => None,
        };
        self.diff(parent_tree, tree_id, &mut info)?;
        Ok(info)
    }

    /// Paths changed from `old` (or the empty tree) to `new`, sorted as git
    /// lists them. Trees are descended into, never listed themselves. At most
    /// `max_paths` are kept (in walk order, then sorted); the rest are only
    /// counted, so a commit touching 100,000 files costs a walk, not a list.
    fn diff(
        &self,
        old: Option<ObjectId>,
        new: ObjectId,
        info: &mut CommitInfo,
    ) -> Result<(), GitError> {
        let tree_data = |id: Option<ObjectId>| -> Result<Vec<u8>, GitError> {
            match id {
                None => Ok(Vec::new()),
                Some(id) => Ok(self
                    .repo
                    .find_tree(id)
                    .map_err(failed("tree"))?
                    .detach()
                    .data),
            }
        };
        let (old_data, new_data) = (tree_data(old)?, tree_data(Some(new))?);
        let hash = self.repo.object_hash();
        let mut paths = CappedPaths {
            recorder: gix::diff::tree::Recorder::default(),
            info,
            max: self.max_paths,
        };
        gix::diff::tree(
            gix::objs::TreeRefIter::from_bytes(&old_data, hash),
            gix::objs::TreeRefIter::from_bytes(&new_data, hash),
            gix::diff::tree::State::default(),
            &self.repo.objects,
            &mut paths,
        )
        .map_err(failed("tree diff"))?;
        let seen = info.added.len() + info.removed.len() + info.modified.len();
        self.work
            .set(self.work.get() + seen as u64 + info.paths_omitted);
        for list in [&mut info.added, &mut info.removed, &mut info.modified] {
            list.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        }
        Ok(())
    }
}

/// A tree-diff visitor that files each change into a [`CommitInfo`] as it is
/// seen (gix's recorder tracks the path; its record is taken at once, so it
/// never holds more than one), keeping at most `max` paths and counting the
/// rest.
struct CappedPaths<'a> {
    recorder: gix::diff::tree::Recorder,
    info: &'a mut CommitInfo,
    max: usize,
}

impl CappedPaths<'_> {
    fn file(&mut self, change: gix::diff::tree::recorder::Change) {
        use gix::diff::tree::recorder::Change;
        let (list, p) = match change {
            Change::Addition {
                entry_mode, path, ..
            } if !entry_mode.is_tree() => (0, path),
            Change::Deletion {
                entry_mode, path, ..
            } if !entry_mode.is_tree() => (1, path),
            Change::Modification {
                previous_entry_mode,
                entry_mode,
                path,
                ..
            } => match (previous_entry_mode.is_tree(), entry_mode.is_tree()) {
                (false, false) => (2, path),
                // A directory became a file: its entries are listed as removed.
                (true, false) => (0, path),
                // A file became a directory: its entries are listed as added.
                (false, true) => (1, path),
                (true, true) => return,
            },
            _ => return,
        };
        let info = &mut *self.info;
        let kept = info.added.len() + info.removed.len() + info.modified.len();
        if kept >= self.max {
            info.paths_omitted += 1;
            return;
        }
        let path = p.to_str_lossy().into_owned();
        match list {
            0 => info.added.push(path),
            1 => info.removed.push(path),
            _ => info.modified.push(path),
        }
    }
}

impl gix::diff::tree::Visit for CappedPaths<'_> {
    fn pop_front_tracked_path_and_set_current(&mut self) {
        self.recorder.pop_front_tracked_path_and_set_current();
    }
    fn push_back_tracked_path_component(&mut self, component: &gix::bstr::BStr) {
        self.recorder.push_back_tracked_path_component(component);
    }
    fn push_path_component(&mut self, component: &gix::bstr::BStr) {
        self.recorder.push_path_component(component);
    }
    fn pop_path_component(&mut self) {
        self.recorder.pop_path_component();
    }
    fn visit(&mut self, change: gix::diff::tree::visit::Change) -> gix::diff::tree::visit::Action {
        let action = self.recorder.visit(change);
        while let Some(record) = self.recorder.records.pop() {
            self.file(record);
        }
        action
    }
}

fn person(sig: gix::actor::SignatureRef<'_>) -> Person {
    let sig = sig.trim();
    Person {
        name: sig.name.to_str_lossy().into_owned(),
        email: sig.email.to_str_lossy().into_owned(),
    }
}

/// `git log --format=%aI`: RFC 3339 to the second, `Z` for UTC.
fn iso_strict(seconds: i64, offset: i32) -> String {
    use chrono::{FixedOffset, Offset, SecondsFormat, TimeZone};
    // git writes offsets within a day; anything else is shown in UTC.
    let tz = FixedOffset::east_opt(offset).unwrap_or(chrono::Utc.fix());
    match tz.timestamp_opt(seconds, 0).single() {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => seconds.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::repo_cache::MAX_KEPT_BUFFER;

    #[test]
    fn an_idle_handle_keeps_only_small_read_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("git")
            .args(["init", "-q", "--bare"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let shared = Reader::open_checked(dir.path()).unwrap();
        let mut repo = handle(&shared, OBJECT_CACHE_BYTES);
        let small = Vec::<u8>::with_capacity(100);
        let large = Vec::<u8>::with_capacity(MAX_KEPT_BUFFER + 1);
        repo.set_freelist(Some(vec![small, large]));
        assert!(trim_buffers(&mut repo), "a large buffer was dropped");
        assert!(!trim_buffers(&mut repo), "nothing more to drop");
        let kept = repo.set_freelist(None).unwrap();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].capacity() <= MAX_KEPT_BUFFER);
    }

    #[test]
    fn dates_are_printed_as_git_prints_them() {
        assert_eq!(iso_strict(1_714_557_600, 7200), "2024-05-01T12:00:00+02:00");
        assert_eq!(iso_strict(1_714_564_800, 0), "2024-05-01T12:00:00Z");
        assert_eq!(
            iso_strict(1_714_566_600, -1800),
            "2024-05-01T12:00:00-00:30"
        );
    }
}
