//! Serving connections: HTTP/1.1 with timeouts and a connection cap
//! (`serve`), over plain TCP or TLS ([`tls`]).

pub(crate) mod serve;
pub mod tls;
