//! Shared plumbing of the Ledgerline services: configuration from the
//! environment, tracing, Kafka client settings (and the embedded mock
//! cluster), the Postgres pool, the shutdown signal, and HMAC signatures of
//! HTTP bodies.
//!
//! It holds no business logic. A thing written once here cannot drift
//! between the services.

pub mod config;
pub mod kafka;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod payouts;
pub mod postgres;
pub mod shutdown;
pub mod signature;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken;
