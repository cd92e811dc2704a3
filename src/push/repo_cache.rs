//! Repositories kept open between reads of the push handler, with warm object
//! caches: what it costs to keep them and why a kept one is still current.
//! [`super::git`] opens repositories through it; it never reads git itself.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Repositories kept open between reads, at most `push.open_repositories` of
/// them (the least recently read is closed first).
///
/// Why: opening a repository (config, refs and object store set-up, mapping the
/// pack indexes) cost more than reading a small push from it (0.16 of 0.39 ms),
/// and under load the unmapping made the kernel flush TLBs on every core.
///
/// Why a kept repository still reads what was pushed since: gitoxide reads loose
/// refs from disk on every lookup, re-reads `packed-refs` when its modification
/// time changes, reads loose objects from disk, and rescans the pack directory
/// when an object is not found in the packs it knows (new packs from a push,
/// repacks). An entry is used only while the git dir is still the same directory
/// (device and inode) with an unchanged `config` file (modification time and
/// size), checked on every read; a repository deleted, replaced or reconfigured
/// is opened afresh (or reported missing), never read through a stale handle.
#[derive(Default)]
pub struct RepoCache {
    capacity: usize,
    pub(crate) object_cache_bytes: usize,
    entries: Mutex<Entries>,
    opened: AtomicU64,
}

#[derive(Default)]
struct Entries {
    by_path: HashMap<PathBuf, Entry>,
    clock: u64,
}

struct Entry {
    repo: gix::ThreadSafeRepository,
    identity: Identity,
    last_used: u64,
    /// Handles not in use, their object caches warm (see [`IDLE_HANDLES`]).
    idle: Vec<gix::Repository>,
}

/// Default object cache of one repository handle, in bytes
/// (`push.object_cache_bytes`).
///
/// Why: git objects never change, and a push reads many objects the previous
/// push to the repository read too: the tips of the other refs (to tell which
/// commits are new to the repository), the parent commit and its trees. Without
/// a cache each of them is a loose-object file opened, mapped, inflated and
/// unmapped again, or a pack entry with its deltas resolved again.
pub(crate) const OBJECT_CACHE_BYTES: usize = 256 * 1024;

/// Handles kept idle across all kept repositories, each with up to
/// `push.object_cache_bytes` cached (4 MiB in all by default) and only read buffers
/// of up to [`MAX_KEPT_BUFFER`] (see [`trim_buffers`]). A read takes an
/// idle handle of its repository or makes a fresh one, and gives it back after;
/// measured on the bench's push (a branch created on a two-commit repository):
/// 0.32 ms of CPU per read without the cache, 0.18 ms with it.
pub(crate) const IDLE_HANDLES: usize = 16;

/// What must not have changed for a kept repository to be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    dev: u64,
    ino: u64,
    config: Option<(SystemTime, u64)>,
}

impl Identity {
    pub(crate) fn of(path: &Path, dir: &std::fs::Metadata) -> Identity {
        let config = std::fs::metadata(path.join("config"))
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        Identity {
            dev: dir.dev(),
            ino: dir.ino(),
            config,
        }
    }
}

impl RepoCache {
    /// A cache of at most `capacity` open repositories (0 keeps none open).
    pub fn new(capacity: usize) -> RepoCache {
        RepoCache {
            capacity,
            object_cache_bytes: OBJECT_CACHE_BYTES,
            entries: Mutex::default(),
            opened: AtomicU64::new(0),
        }
    }

    /// The same cache with `bytes` of object cache per handle (0: none).
    pub(crate) fn with_object_cache(self, bytes: usize) -> RepoCache {
        RepoCache {
            object_cache_bytes: bytes,
            ..self
        }
    }

    /// How many times a repository was opened for a read through this cache
    /// (a read served by a kept repository does not count).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// How many repositories are open.
    pub fn len(&self) -> usize {
        self.lock().by_path.len()
    }

    /// Handles idle in the cache, ready for the next read of their repository.
    pub fn idle_handles(&self) -> usize {
        self.lock().idle_handles()
    }

    /// `true` when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map holds no invariant a panicking holder could break.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, path: &Path, identity: Identity) -> Option<gix::Repository> {
        let mut guard = self.lock();
        let e = &mut *guard;
        e.clock += 1;
        match e.by_path.get_mut(path) {
            Some(entry) if entry.identity == identity => {
                entry.last_used = e.clock;
                // A fresh handle is made under the lock: cheap (no I/O), and it
                // keeps the entry from being closed in between.
                Some(
                    entry
                        .idle
                        .pop()
                        .unwrap_or_else(|| handle(&entry.repo, self.object_cache_bytes)),
                )
            }
            Some(_) => {
                e.by_path.remove(path);
                None
            }
            None => None,
        }
    }

    /// Keeps `repo`, a handle of the repository at `path`, for the next read,
    /// unless the repository was closed or changed meanwhile or enough handles
    /// are idle already.
    pub(crate) fn give_back(&self, path: &Path, identity: Identity, repo: gix::Repository) {
        let mut e = self.lock();
        if e.idle_handles() >= IDLE_HANDLES {
            return;
        }
        if let Some(entry) = e.by_path.get_mut(path)
            && entry.identity == identity
        {
            entry.idle.push(repo);
        }
    }

    /// Closes the repository at `path` (its shared state, mapped packs and idle
    /// handles), after a heavy read: the next push opens it afresh.
    pub(crate) fn forget(&self, path: &Path) {
        self.lock().by_path.remove(path);
    }

    /// Counts a repository just opened and keeps it (unless the capacity is 0).
    pub(crate) fn put(&self, path: PathBuf, identity: Identity, repo: gix::ThreadSafeRepository) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        if self.capacity == 0 {
            return;
        }
        let mut e = self.lock();
        e.clock += 1;
        let last_used = e.clock;
        if !e.by_path.contains_key(&path) && e.by_path.len() >= self.capacity {
            let oldest = e
                .by_path
                .iter()
                .min_by_key(|(_, v)| v.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                e.by_path.remove(&k);
            }
        }
        e.by_path.insert(
            path,
            Entry {
                repo,
                identity,
                last_used,
                idle: Vec::new(),
            },
        );
    }
}

impl Entries {
    /// Idle handles across all entries (at most `push.open_repositories` of them
    /// to add up).
    fn idle_handles(&self) -> usize {
        self.by_path.values().map(|e| e.idle.len()).sum()
    }
}

/// Largest read buffer an idle handle keeps.
pub(crate) const MAX_KEPT_BUFFER: usize = 64 * 1024;

/// Drops the handle's reusable read buffers larger than [`MAX_KEPT_BUFFER`];
/// `true` when there was one.
///
/// Why: gitoxide returns every object's buffer to its handle for reuse, whatever
/// its size, so a handle that read one huge tree (or peeled a tag to a large blob)
/// would keep that memory for as long as it stays idle, in each of up to
/// [`IDLE_HANDLES`] handles. Handles dropped after one read never had that problem.
pub(crate) fn trim_buffers(repo: &mut gix::Repository) -> bool {
    let Some(bufs) = repo.set_freelist(None) else {
        return false;
    };
    let before = bufs.len();
    let kept: Vec<Vec<u8>> = bufs
        .into_iter()
        .filter(|b| b.capacity() <= MAX_KEPT_BUFFER)
        .collect();
    let trimmed = kept.len() < before;
    repo.set_freelist(Some(kept));
    trimmed
}

/// A handle for one read of `repo`, with an object cache of up to
/// `object_cache_bytes` (0: none).
pub(crate) fn handle(
    repo: &gix::ThreadSafeRepository,
    object_cache_bytes: usize,
) -> gix::Repository {
    let mut r = repo.to_thread_local();
    r.object_cache_size(object_cache_bytes);
    r
}
