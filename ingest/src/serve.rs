//! Serving connections: HTTP/1.1 with hyper, for plain TCP and TLS alike.
//!
//! Not `axum::serve`, because it runs hyper without a timer, and so without
//! a header-read timeout: a client that sends its request headers a byte at
//! a time holds its connection for as long as it likes, and enough of them
//! hold every connection the process can open (the request timeout only
//! starts once the headers are in). Here the headers of every request, the
//! first and each one after on a kept-alive connection, must arrive within
//! `LEDGERLINE_HTTP_HEADER_READ_TIMEOUT_MS`. On shutdown the listener stops
//! accepting, and requests in flight get [`DRAIN_TIMEOUT_MS`] to finish.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use platform::CancellationToken;
use tower::ServiceExt as _;

/// How long requests in flight may take to finish after a stop.
pub const DRAIN_TIMEOUT_MS: u64 = 30_000;

/// Serves `router` on the connections `listener` accepts until `shutdown`.
/// Each request carries the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(mut listener: L, router: Router, header_read_timeout: Duration, shutdown: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    loop {
        let (io, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // A client gone, a header-read timeout, a malformed request.
                tracing::debug!(%peer, %error, "connection ended");
            }
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
