//! Guards that decide, before a handler runs, whether the worker consumes at
//! all: the kill switch (a dependency outage stops consuming instead of burning
//! every job's retries) and fleet-wide pause of a job kind (operator intent),
//! and the bulk pacer, which decides how fast a storm's jobs may start.
//!
//! Both only *gate* consuming; the supervisor (`crate::consumer::supervisor`)
//! acts on them by cancelling and re-registering consumers. They know nothing
//! of the broker. Their SQL is in [`storage`].

pub(crate) mod killswitch;
pub(crate) mod pacer;
pub(crate) mod pause;
pub(crate) mod storage;

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;

pub(crate) use killswitch::KillSwitch;

/// What the supervisor and the delivery tasks consult.
#[derive(Clone)]
pub(crate) struct Gates {
    /// The kill switch.
    pub(crate) killswitch: Arc<KillSwitch>,
    /// Job kinds paused fleet-wide (kept current by [`pause::run_watcher`]).
    pub(crate) paused: watch::Receiver<BTreeSet<String>>,
}
