//! Fairness between repositories: which queue a push is published to.
//!
//! Owns the choice the hook (and the spool flusher) makes for every push: the
//! push queue `<prefix>.push` while the push's repository and its owner
//! (`owner/*`) are within their token buckets (`[fairness]`), else the bulk
//! queue `<prefix>.push.bulk`, which workers give at most
//! `fairness.bulk_concurrency` permits. A storm (a mirror, a bot, a monorepo
//! import) then queues behind itself; other repositories' pushes pass it.
//!
//! Why the source decides: a queue is a FIFO, so once 20,000 pushes of one
//! repository sit in the push queue, no worker can let a later push of another
//! repository pass them (taking each off to postpone it costs seconds, and sends
//! the storm round the retry tiers). Consistent-hash sub-queues consumed round
//! robin would still hold every repository that hashes to the storm's
//! sub-queue behind it. The hook sees each push as it happens and needs only a
//! counter per repository to know a storm.
//!
//! The buckets are shared by every hook process on the git server through one
//! file, `<spool.dir>/fairness.buckets`: a table of [`SLOTS`] slots (key hash,
//! tokens, time), locked while a push reads and updates its two slots. Two keys
//! that share a slot reset each other's bucket (a full bucket: the push queue),
//! which errs towards the old behaviour. Any trouble with the file (missing
//! directory, permissions, a lock held longer than [`LOCK_WAIT`]) also sends the
//! push to the push queue: fairness never delays or loses a push.
//!
//! Order: a repository whose pushes move between the two queues may have a
//! later push handled before an earlier one; `ref_state` only moves forward
//! under the repository's lock (`super::record`), so effects stay in order.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::amqp::topology;
use crate::config::FairnessConfig;
use crate::push_job::PUSH_KIND;

/// Slots in the bucket file (32 bytes each: 128 KiB).
pub(crate) const SLOTS: u64 = 4096;
const SLOT_BYTES: u64 = 32;
/// Longest wait for the bucket file's lock before the push goes to the push
/// queue anyway (a hook process stopped while holding it must not stall others).
pub(crate) const LOCK_WAIT: Duration = Duration::from_millis(50);
/// The bucket file's name in the spool directory.
pub(crate) const FILE_NAME: &str = "fairness.buckets";

/// Where a push is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushLane {
    /// `<prefix>.push`, routing key `push`.
    Push,
    /// `<prefix>.push.bulk`, routing key `push.bulk`: the repository or its
    /// owner is over its rate.
    Bulk,
}

impl PushLane {
    /// The routing key on `<prefix>.jobs`.
    pub fn routing_key(self) -> String {
        match self {
            PushLane::Push => PUSH_KIND.to_string(),
            PushLane::Bulk => topology::bulk_routing_key(PUSH_KIND),
        }
    }
}

/// The lane of one push of `repository`, taking a token from its repository's
/// and its owner's buckets when it goes to the push queue.
pub fn choose(cfg: &FairnessConfig, spool_dir: &Path, repository: &str) -> PushLane {
    if !cfg.enabled {
        return PushLane::Push;
    }
    match Buckets::open(spool_dir).and_then(|mut b| b.take(cfg, repository, now_ms())) {
        Ok(lane) => lane,
        Err(e) => {
            tracing::debug!(error = %e, "fairness buckets unavailable; using the push queue");
            PushLane::Push
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The owner of `owner/name` (`None` for a name without one).
pub(crate) fn owner(repository: &str) -> Option<&str> {
    repository
        .trim_start_matches('/')
        .split_once('/')
        .map(|(o, _)| o)
        .filter(|o| !o.is_empty())
}

/// FNV-1a: stable across processes and builds (the table is shared by
/// different hook binaries during an upgrade).
fn hash(domain: u8, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(domain).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 0 marks an empty slot.
    h.max(1)
}

/// One bucket as stored: whose it is, its tokens and when they were counted.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slot {
    key: u64,
    tokens: f64,
    at_ms: i64,
}

impl Slot {
    fn decode(b: &[u8; SLOT_BYTES as usize]) -> Slot {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            w
        };
        Slot {
            key: u64::from_le_bytes(word(0)),
            tokens: f64::from_le_bytes(word(1)),
            at_ms: i64::from_le_bytes(word(2)),
        }
    }

    fn encode(&self) -> [u8; SLOT_BYTES as usize] {
        let mut b = [0u8; SLOT_BYTES as usize];
        b[0..8].copy_from_slice(&self.key.to_le_bytes());
        b[8..16].copy_from_slice(&self.tokens.to_le_bytes());
        b[16..24].copy_from_slice(&self.at_ms.to_le_bytes());
        b
    }

    /// The tokens `key` has at `now_ms`: a slot of another key (or garbage)
    /// is a full bucket; a clock that went back adds nothing.
    fn tokens(&self, key: u64, rate: f64, burst: f64, now_ms: i64) -> f64 {
        if self.key != key || !self.tokens.is_finite() || self.tokens < 0.0 {
            return burst;
        }
        let elapsed = (now_ms.saturating_sub(self.at_ms)).max(0) as f64 / 1000.0;
        (self.tokens + elapsed * rate).min(burst)
    }
}

/// The bucket file, locked.
struct Buckets {
    file: File,
}

impl Buckets {
    fn path(spool_dir: &Path) -> PathBuf {
        spool_dir.join(FILE_NAME)
    }

    fn open(spool_dir: &Path) -> std::io::Result<Buckets> {
        // The spool directory comes into being with the first spooled push.
        std::fs::create_dir_all(spool_dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(Self::path(spool_dir))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("lock held for over {LOCK_WAIT:?}"),
                    ));
                }
                Err(TryLockError::Error(e)) => return Err(e),
            }
        }
        if file.metadata()?.len() < SLOTS * SLOT_BYTES {
            file.set_len(SLOTS * SLOT_BYTES)?;
        }
        Ok(Buckets { file })
    }

    fn read(&self, key: u64) -> std::io::Result<Slot> {
        let mut b = [0u8; SLOT_BYTES as usize];
        self.file
            .read_exact_at(&mut b, (key % SLOTS) * SLOT_BYTES)?;
        Ok(Slot::decode(&b))
    }

    fn write(&self, slot: Slot) -> std::io::Result<()> {
        self.file
            .write_all_at(&slot.encode(), (slot.key % SLOTS) * SLOT_BYTES)
    }

    /// Takes a token from the repository's and the owner's bucket if both
    /// have one (the push queue); else takes none (the bulk queue).
    fn take(
        &mut self,
        cfg: &FairnessConfig,
        repository: &str,
        now_ms: i64,
    ) -> std::io::Result<PushLane> {
        let mut keys = vec![(
            hash(b'r', repository),
            cfg.repository_rate,
            f64::from(cfg.repository_burst),
        )];
        if let Some(o) = owner(repository) {
            keys.push((hash(b'o', o), cfg.owner_rate, f64::from(cfg.owner_burst)));
        }
        let mut slots = Vec::with_capacity(keys.len());
        for (key, rate, burst) in keys {
            let tokens = self.read(key)?.tokens(key, rate, burst, now_ms);
            slots.push(Slot {
                key,
                tokens,
                at_ms: now_ms,
            });
        }
        let lane = if slots.iter().all(|s| s.tokens >= 1.0) {
            for s in &mut slots {
                s.tokens -= 1.0;
            }
            PushLane::Push
        } else {
            PushLane::Bulk
        };
        for s in slots {
            self.write(s)?;
        }
        Ok(lane)
        // The lock goes with the file.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: f64, burst: u32) -> FairnessConfig {
        FairnessConfig {
            repository_rate: rate,
            repository_burst: burst,
            owner_rate: 1000.0,
            owner_burst: 1000,
            ..FairnessConfig::default()
        }
    }

    #[test]
    fn a_repository_over_its_burst_goes_to_the_bulk_queue_until_it_refills() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(2.0, 3);
        let mut b = Buckets::open(dir.path()).unwrap();
        let lanes: Vec<PushLane> = (0..5)
            .map(|_| b.take(&c, "o/storm", 1_000).unwrap())
            .collect();
        assert_eq!(
            lanes,
            [
                PushLane::Push,
                PushLane::Push,
                PushLane::Push,
                PushLane::Bulk,
                PushLane::Bulk
            ]
        );
        // Another repository is untouched.
        assert_eq!(b.take(&c, "o/quiet", 1_000).unwrap(), PushLane::Push);
        // Half a second at 2/s is one token.
        assert_eq!(b.take(&c, "o/storm", 1_500).unwrap(), PushLane::Push);
        assert_eq!(b.take(&c, "o/storm", 1_500).unwrap(), PushLane::Bulk);
    }

    #[test]
    fn an_owner_over_its_rate_sends_all_its_repositories_to_the_bulk_queue() {
        let dir = tempfile::tempdir().unwrap();
        let c = FairnessConfig {
            owner_rate: 1.0,
            owner_burst: 2,
            ..FairnessConfig::default()
        };
        let mut b = Buckets::open(dir.path()).unwrap();
        assert_eq!(b.take(&c, "bot/a", 0).unwrap(), PushLane::Push);
        assert_eq!(b.take(&c, "bot/b", 0).unwrap(), PushLane::Push);
        assert_eq!(b.take(&c, "bot/c", 0).unwrap(), PushLane::Bulk);
        assert_eq!(b.take(&c, "human/a", 0).unwrap(), PushLane::Push);
    }

    #[test]
    fn the_buckets_are_shared_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = FairnessConfig {
            repository_burst: 2,
            ..FairnessConfig::default()
        };
        // Each push opens the file anew, as each hook process does.
        let lanes: Vec<PushLane> = (0..3).map(|_| choose(&c, dir.path(), "o/r")).collect();
        assert_eq!(lanes, [PushLane::Push, PushLane::Push, PushLane::Bulk]);
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            SLOTS * SLOT_BYTES
        );
    }

    #[test]
    fn trouble_with_the_file_or_fairness_off_means_the_push_queue() {
        let dir = tempfile::tempdir().unwrap();
        // A spool "directory" under a regular file cannot be made, even by root.
        std::fs::write(dir.path().join("file"), "").unwrap();
        let unusable = dir.path().join("file/spool");
        let c = FairnessConfig {
            repository_burst: 1,
            ..FairnessConfig::default()
        };
        assert_eq!(choose(&c, &unusable, "o/r"), PushLane::Push);
        assert_eq!(choose(&c, &unusable, "o/r"), PushLane::Push);
        let off = FairnessConfig {
            enabled: false,
            ..c
        };
        for _ in 0..3 {
            assert_eq!(choose(&off, dir.path(), "o/r"), PushLane::Push);
        }
        // A lock held elsewhere: the push does not wait past LOCK_WAIT.
        let held = Buckets::open(dir.path()).unwrap();
        let start = Instant::now();
        assert_eq!(choose(&c, dir.path(), "o/r"), PushLane::Push);
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(held);
    }

    #[test]
    fn slots_of_other_keys_garbage_and_clocks_going_back_are_handled() {
        let s = Slot {
            key: 7,
            tokens: 0.5,
            at_ms: 10_000,
        };
        assert_eq!(s.tokens(8, 1.0, 5.0, 10_000), 5.0);
        assert_eq!(s.tokens(7, 1.0, 5.0, 9_000), 0.5);
        assert_eq!(s.tokens(7, 1.0, 5.0, 12_000), 2.5);
        assert_eq!(s.tokens(7, 1.0, 5.0, 100_000), 5.0);
        let nan = Slot {
            tokens: f64::NAN,
            ..s
        };
        assert_eq!(nan.tokens(7, 1.0, 5.0, 10_000), 5.0);
        assert_eq!(Slot::decode(&s.encode()), s);
        assert_eq!(owner("acme/site"), Some("acme"));
        assert_eq!(owner("single"), None);
    }
}
