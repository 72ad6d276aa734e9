//! Serving connections: HTTP/1.1 with hyper, for plain TCP and TLS alike.
//!
//! Not `axum::serve`, because it runs hyper without a timer, and so without
//! a header-read timeout: a client that sends its request headers a byte at
//! a time holds its connection for as long as it likes, and enough of them
//! hold every connection the process can open (the request timeout only
//! starts once the headers are in). Here the headers of every request, the
//! first and each one after on a kept-alive connection, must arrive within
//! `LEDGERLINE_HTTP_HEADER_READ_TIMEOUT_MS`. An answer that makes no progress
//! for `LEDGERLINE_HTTP_WRITE_TIMEOUT_MS` (a client that stopped reading)
//! closes its connection, and at most `LEDGERLINE_HTTP_CONNECTIONS_MAX`
//! connections are served at once, so slow clients cannot hold every
//! connection the process can open. On shutdown the listener stops
//! accepting, and requests in flight get [`DRAIN_TIMEOUT_MS`] to finish.

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use platform::CancellationToken;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt as _;

/// How long requests in flight may take to finish after a stop.
pub(crate) const DRAIN_TIMEOUT_MS: u64 = 30_000;

/// The bounds on each listener's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
    pub connections_max: usize,
}

/// Serves `router` on the connections `listener` accepts until `shutdown`.
/// Each request carries the peer's address as `ConnectInfo<SocketAddr>`.
pub(crate) async fn serve<L>(mut listener: L, router: Router, limits: ConnectionLimits, shutdown: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    loop {
        // A slot first: at the cap, new connections wait in the kernel's
        // accept queue rather than being served half-way.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let (io, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let io = WriteTimeout { inner: io, timeout: limits.write_timeout, stalled_since: None };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // A client gone, a header-read or write timeout, a malformed request.
                tracing::debug!(%peer, %error, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_millis(DRAIN_TIMEOUT_MS)) => {
            tracing::warn!("requests still in flight {DRAIN_TIMEOUT_MS} ms after the stop; leaving them");
        }
    }
}

/// A connection whose writes fail once they have made no progress for
/// `timeout`: hyper has no write timeout, and a client that requests and
/// never reads would otherwise hold its connection (and its slot) for ever.
struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Armed when a write returns `Pending`, cleared by any progress.
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteTimeout<T> {
    /// Passes `poll`'s result through, but turns a write that has been
    /// pending for `timeout` into an error.
    fn guard<R>(&mut self, context: &mut Context<'_>, poll: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let timeout = self.timeout;
        let deadline = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(context).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client has not read its answer within LEDGERLINE_HTTP_WRITE_TIMEOUT_MS",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(context, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(context, buf);
        self.guard(context, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(context, bufs);
        self.guard(context, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(context);
        self.guard(context, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(context);
        self.guard(context, poll)
    }
}
