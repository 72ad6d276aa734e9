//! HTTPS for ingest: rustls (with ring) when `LEDGERLINE_TLS_CERT` and
//! `LEDGERLINE_TLS_KEY` name PEM files, and an optional plain-HTTP listener
//! (`LEDGERLINE_HTTP_REDIRECT_ADDR`) that answers every request with a
//! permanent redirect to the same path over HTTPS.
//!
//! Handshakes run in their own tasks, at most [`HANDSHAKES_IN_FLIGHT_MAX`] at
//! once and each for at most [`HANDSHAKE_TIMEOUT_MS`], so a client that opens
//! a connection and says nothing holds up no one else. Only completed
//! connections are served (`crate::server::serve`), as plain TCP ones are.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use platform::CancellationToken;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// TLS handshakes in progress at most; connections beyond are closed.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 1_024;

/// A handshake not finished by then is abandoned.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

/// Where the certificate chain and its private key are.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// `LEDGERLINE_TLS_CERT`: PEM, the server's certificate first.
    pub cert_path: PathBuf,
    /// `LEDGERLINE_TLS_KEY`: PEM, PKCS#8, PKCS#1 or SEC1.
    pub key_path: PathBuf,
}

impl TlsConfig {
    /// The rustls settings: TLS 1.2 and 1.3 with ring's safe defaults,
    /// HTTP/1.1 over ALPN (the server speaks only that).
    ///
    /// # Errors
    /// When a file cannot be read or holds no usable certificate or key.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let pem = std::fs::read(&self.cert_path)
            .with_context(|| format!("reading LEDGERLINE_TLS_CERT {}", self.cert_path.display()))?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing the certificates in {}", self.cert_path.display()))?;
        anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", self.cert_path.display());
        let pem = std::fs::read(&self.key_path)
            .with_context(|| format!("reading LEDGERLINE_TLS_KEY {}", self.key_path.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&pem)
            .with_context(|| format!("parsing the private key in {}", self.key_path.display()))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the certificate and the key do not go together")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Accepted and handshaken connections, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` until `stop` is cancelled.
    ///
    /// # Errors
    /// When the listener has no local address.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>, stop: CancellationToken) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, connections) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), sender, stop));
        Ok(Self { connections, local_addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop stopped: shutting down. axum stops asking
            // once its graceful shutdown begins, so this never resolves.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, usually: wait rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::warn!(%peer, "too many TLS handshakes in progress; closing the connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = connections.send((stream, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The plain-HTTP listener's router: every request gets 308 to the same
/// host, the HTTPS port and the same path and query. 308 keeps the method
/// and body, but a client that sent a token over plain HTTP has already
/// exposed it: API clients must be configured with the https URL; the
/// redirect is for people and health checkers.
pub fn redirect_router(https_port: u16) -> Router {
    Router::new().fallback(move |uri: Uri, headers: HeaderMap| async move { redirect(&uri, &headers, https_port) })
}

fn redirect(uri: &Uri, headers: &HeaderMap, https_port: u16) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<axum::http::uri::Authority>().ok());
    let Some(host) = host else {
        return (StatusCode::BAD_REQUEST, "a Host header is needed to redirect to HTTPS").into_response();
    };
    let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let location = format!("https://{}{port}{path}", host.host());
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, uri: &str, port: u16) -> (StatusCode, Option<String>) {
        let mut headers = HeaderMap::new();
        if !host.is_empty() {
            headers.insert(header::HOST, host.parse().expect("header"));
        }
        let response = redirect(&uri.parse().expect("uri"), &headers, port);
        let location = response.headers().get(header::LOCATION).map(|value| value.to_str().expect("text").to_owned());
        (response.status(), location)
    }

    #[test]
    fn the_redirect_keeps_host_path_and_query_and_swaps_the_port() {
        assert_eq!(
            location("bank.example:8080", "/v1/me?x=1", 8443),
            (StatusCode::PERMANENT_REDIRECT, Some("https://bank.example:8443/v1/me?x=1".into()))
        );
        assert_eq!(
            location("bank.example", "/", 443),
            (StatusCode::PERMANENT_REDIRECT, Some("https://bank.example/".into()))
        );
        // A Host that is no authority (a path, a user part) is refused, not echoed.
        assert_eq!(location("", "/", 443).0, StatusCode::BAD_REQUEST);
        assert_eq!(location("evil.example/x", "/", 443).0, StatusCode::BAD_REQUEST);
    }
}
