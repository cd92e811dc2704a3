//! Giving memory back after heavy work (a giant push, a batch of big events).
//!
//! Two things keep memory a worker no longer uses after a giant push:
//! - glibc's allocator keeps memory freed by a thread in that thread's arena and
//!   returns only the top of each heap by itself (measured with 8 giant pushes at
//!   once: RssAnon 158 MiB 30 s later, against 14 MiB idle); `malloc_trim(0)`
//!   releases every arena's free pages;
//! - a pooled database connection keeps its read and write buffers at their
//!   largest size (a group-commit statement of several capped events, a relay
//!   claim of big rows: megabytes each); sqlx's `shrink_buffers` resets them.
//!
//! Both cost a little (a trim walks the arenas; a shrunk buffer grows again),
//! so they run only after work flagged heavy ([`request_release`]), at most once
//! a second, from [`run_janitor`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

/// How often the janitor looks for a request.
pub(crate) const JANITOR_INTERVAL: Duration = Duration::from_secs(1);

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the janitor to give memory back soon (after heavy work is done).
pub(crate) fn request_release() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Until `stop`: when asked, shrinks the buffers of `pool`'s idle connections
/// and returns the allocator's free pages to the OS.
pub(crate) async fn run_janitor(pool: PgPool, stop: CancellationToken) {
    let mut tick = tokio::time::interval(JANITOR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if REQUESTED.swap(false, Ordering::Relaxed) {
            shrink_idle_connections(&pool);
            let _ = tokio::task::spawn_blocking(release_freed).await;
        }
    }
}

/// Resets the buffers of every connection idle in `pool` now (connections in
/// use are left alone; they are shrunk at the next request once idle).
pub(crate) fn shrink_idle_connections(pool: &PgPool) {
    let mut idle = Vec::new();
    while let Some(conn) = pool.try_acquire() {
        idle.push(conn);
    }
    for conn in &mut idle {
        conn.shrink_buffers();
    }
}

/// Allocations from this size on get pages of their own (glibc: mmap), returned
/// to the OS when freed. glibc raises its threshold (up to 32 MiB) each time such
/// a block is freed, after which big buffers come from the arenas and stay there.
pub(crate) const MMAP_THRESHOLD: i32 = 256 * 1024;
/// glibc arenas at most (its default is 8 per core: each thread's freed memory
/// stays in the arena it came from, so memory freed after a giant push was
/// spread over a dozen of them).
pub(crate) const ARENA_MAX: i32 = 4;

/// Sets the allocator up for long-running roles (worker, relay): a fixed
/// [`MMAP_THRESHOLD`] and at most [`ARENA_MAX`] arenas. Call before any thread
/// is started.
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called at start-up
    // before other threads exist, as glibc recommends.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Returns the allocator's free pages to the OS (glibc on Linux; elsewhere a
/// no-op: other allocators return memory by themselves or offer no such call).
pub(crate) fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no
    // preconditions and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
