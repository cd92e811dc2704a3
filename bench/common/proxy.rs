//! A TCP proxy between hookfleet and a real server: `cut()` resets every open
//! connection, `block()` refuses new ones until `unblock()`. A copy of the test
//! harness's proxy (benches cannot use test code), returning errors instead of
//! panicking.

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
    blocked: bool,
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
            blocked: false,
        }));
        let stop = CancellationToken::new();
        let (st, stop2) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => r,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let (blocked, token) = {
                    let s = lock(&st);
                    (s.blocked, s.generation.clone())
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
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(TcpProxy { addr, state, stop })
    }

    /// Closes every connection open now (new ones are accepted at once).
    pub fn cut(&self) {
        let mut s = lock(&self.state);
        let old = std::mem::replace(&mut s.generation, CancellationToken::new());
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
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}
