//! What every console handler shares: the [`Console`] of this process (config,
//! database, token, the replay it runs, relay rate samples) and the
//! [`ConsoleState`] the router hands to each handler. Apart from `mod.rs`, so
//! the pages depend on it and `mod.rs` only routes.

use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{relay_rate, replay_task};
use crate::config::{Config, SecretString};
use crate::health::Health;
use crate::inflight::InFlight;

/// What the console needs beyond the admin server's shared state: the config
/// (broker, prefix, kinds), the database and the token. Built by the process
/// that serves it.
#[derive(Debug)]
pub struct Console {
    pub(super) config: Arc<Config>,
    pub(super) pool: PgPool,
    pub(super) token: SecretString,
    /// This console among all processes' (owner of the replays it runs).
    pub(super) instance: Uuid,
    /// The replay this process runs now, if any.
    pub(super) running: replay_task::Slot,
    /// Stops this process's replay ([`Console::stop`], or the console dropped).
    pub(super) replay_stop: CancellationToken,
    /// Samples behind the overview's relay rate.
    pub(super) relay_rate: relay_rate::RelayRate,
}

impl Drop for Console {
    /// The console goes with its process's admin server: a replay it runs
    /// stops and stores where to resume, instead of running on unseen.
    fn drop(&mut self) {
        self.replay_stop.cancel();
    }
}

impl Console {
    /// Stops the replay this process runs, if any, as its admin server stops
    /// (`admin::serve`), and returns once it has stored `interrupted` with
    /// the id to resume from (it confirms what it sent first), so another
    /// process's console can resume it. Explicit, not on [`Drop`]: open
    /// connections keep the console alive after its server has stopped.
    pub(crate) async fn stop(&self) {
        self.replay_stop.cancel();
        replay_task::idle(&self.running).await;
    }

    /// The console of a process with `config` and `pool`; `None` when
    /// `admin.console_token` is empty (the console is then off). Whether this
    /// process relays the outbox is `config`'s `outbox.relay`.
    pub(crate) fn new(config: Arc<Config>, pool: PgPool) -> Option<Arc<Self>> {
        let token = config.admin.console_token.clone();
        if token.expose().is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            config,
            pool,
            token,
            instance: Uuid::now_v7(),
            running: replay_task::slot(),
            replay_stop: CancellationToken::new(),
            relay_rate: relay_rate::RelayRate::default(),
        }))
    }
}

/// Shared by the console's handlers: the [`Console`] and the two pieces of the
/// admin server's state the overview reads. Not the admin server's state
/// itself, so the console depends on what it reads and the admin server,
/// which holds and routes the console, is not needed to build it.
#[derive(Clone, Debug)]
pub(super) struct ConsoleState {
    /// Readiness and uptime, for the overview.
    pub(super) health: Arc<Health>,
    /// Deliveries being handled now, for the overview and the jobs page.
    pub(super) inflight: Arc<InFlight>,
    pub(super) console: Arc<Console>,
}

impl Console {
    /// Runs `run` in the background as this process's replay.
    pub(super) fn spawn_replay(&self, run: replay_task::Run) {
        replay_task::spawn(
            &self.pool,
            self.config.amqp.clone(),
            self.instance,
            self.running.clone(),
            self.replay_stop.clone(),
            run,
        );
    }
}
