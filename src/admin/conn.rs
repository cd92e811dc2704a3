//! Connection bounds of the admin server, for `axum::serve`.
//!
//! Owns what tower-http's request layers cannot see: connections. `axum::serve`
//! gives no header-read timeout and no connection age, so [`BoundedListener`]
//! wraps each accepted stream in [`Bounded`], which:
//! - fails a request whose bytes started arriving more than
//!   [`REQUEST_BOUND`] ago and that has not been answered yet (a client that
//!   trickles its headers cannot pin the task; a handler is itself bounded by
//!   the router's request timeout, which is shorter);
//! - ends a keep-alive connection between requests (reads see end of stream, so
//!   hyper closes it cleanly) once it is older than [`CONNECTION_MAX_AGE`] or has
//!   been idle for [`IDLE_TIMEOUT`] — never in the middle of a request, so a
//!   scraper's keep-alive connection is never cut under a scrape;
//! - holds one of [`MAX_CONNECTIONS`] slots while open: beyond it, accepting
//!   waits for a connection to end.
//!
//! "Between requests" is read from the byte flow: a request starts with the
//! first byte read after the last byte written, and ends with the next write.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A request not answered this long after its first byte fails the connection
/// (headers plus the router's 10 s request timeout, with room).
pub(crate) const REQUEST_BOUND: Duration = Duration::from_secs(20);
/// A keep-alive connection is closed between requests after this long.
pub(crate) const CONNECTION_MAX_AGE: Duration = Duration::from_secs(120);
/// A connection idle this long between requests is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Admin connections open at once; more wait to be accepted.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// A TCP listener whose connections are [`Bounded`].
#[derive(Debug)]
pub(crate) struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
}

impl BoundedListener {
    /// Wraps `inner`.
    pub(crate) fn new(inner: TcpListener) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Bounded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        // The semaphore is never closed, so acquiring only waits.
        let slot = self.slots.clone().acquire_owned().await.ok();
        // axum's TcpListener logs and retries failed accepts itself.
        let (stream, peer) = axum::serve::Listener::accept(&mut self.inner).await;
        (Bounded::new(stream, slot), peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A stream with the bounds of the module docs.
#[derive(Debug)]
pub(crate) struct Bounded<S> {
    inner: S,
    opened: Instant,
    /// When the request being received started; `None` between requests.
    request_started: Option<Instant>,
    /// The last byte written (or the connection opened).
    last_write: Instant,
    timer: Pin<Box<Sleep>>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<S> Bounded<S> {
    /// Bounds `inner`, holding `slot` while it lives.
    pub(crate) fn new(inner: S, slot: Option<OwnedSemaphorePermit>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            opened: now,
            request_started: None,
            last_write: now,
            timer: Box::pin(tokio::time::sleep_until(now + IDLE_TIMEOUT)),
            _slot: slot,
        }
    }

    /// When the current state ends the connection.
    fn deadline(&self) -> Instant {
        match self.request_started {
            Some(t) => t + REQUEST_BOUND,
            None => (self.last_write + IDLE_TIMEOUT).min(self.opened + CONNECTION_MAX_AGE),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Bounded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.request_started.is_none() {
                    this.request_started = Some(Instant::now());
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let deadline = this.deadline();
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) if this.request_started.is_some() => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin request not completed in time",
            ))),
            // End of stream: hyper closes the idle connection cleanly.
            Poll::Ready(()) => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Bounded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.request_started = None;
            this.last_write = Instant::now();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_trickled_request_fails_after_the_bound() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = Bounded::new(server, None);
        let mut client = client;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        // No more bytes, no answer: the paused clock runs to the bound.
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_cleanly_between_requests() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = Bounded::new(server, None);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).await.unwrap() > 0);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let started = Instant::now();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0, "end of stream");
        assert_eq!(started.elapsed(), IDLE_TIMEOUT);
    }
}
