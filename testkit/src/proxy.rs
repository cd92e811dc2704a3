//! A fault-injecting TCP proxy between hookfleet and a real server: `cut()`
//! resets every open connection, `stall()` freezes them (a peer that hangs),
//! `block()` refuses new ones until `unblock()`.
//!
//! Used by the integration tests and by the benches (`hookfleet-bench`,
//! `hookfleet-soak`), so it returns errors instead of panicking; the tests'
//! shorthand that panics, [`TcpProxy::rabbitmq`], is in the crate root.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running proxy; stops (and cuts everything) when dropped.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

struct State {
    generation: CancellationToken,
    /// Cancelled: open connections stop forwarding but stay open (a peer that hangs).
    stalled: CancellationToken,
    blocked: bool,
    accepted: u64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TcpProxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            generation: CancellationToken::new(),
            stalled: CancellationToken::new(),
            blocked: false,
            accepted: 0,
        }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, target, state.clone(), stop.clone()));
        Ok(TcpProxy { addr, state, stop })
    }

    /// Closes every connection open now (new ones are accepted at once).
    pub fn cut(&self) {
        let mut s = lock(&self.state);
        let old = std::mem::replace(&mut s.generation, CancellationToken::new());
        old.cancel();
    }

    /// Open connections stop forwarding in both directions but stay open (a
    /// server that hangs instead of closing), until the next `cut`.
    pub fn stall(&self) {
        let mut s = lock(&self.state);
        let old = std::mem::replace(&mut s.stalled, CancellationToken::new());
        old.cancel();
    }

    /// Refuses new connections and cuts open ones, until [`TcpProxy::unblock`].
    pub fn block(&self) {
        lock(&self.state).blocked = true;
        self.cut();
    }

    /// Lets connections through again.
    pub fn unblock(&self) {
        lock(&self.state).blocked = false;
    }

    /// Connections accepted so far (each reconnect counts one).
    pub fn accepted(&self) -> u64 {
        lock(&self.state).accepted
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        let (blocked, generation, stalled) = {
            let mut s = lock(&state);
            s.accepted += 1;
            (s.blocked, s.generation.clone(), s.stalled.clone())
        };
        if blocked {
            drop(inbound);
            continue;
        }
        let _ = inbound.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = outbound.set_nodelay(true);
            tokio::select! {
                _ = generation.cancelled() => {}
                // Both sockets stay open, nothing moves, until the next cut.
                _ = stalled.cancelled() => generation.cancelled().await,
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            }
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}
