//! Shared plumbing of the Ledgerline services: configuration from the
//! environment, tracing, Kafka client settings (and the embedded mock
//! cluster), the Postgres pool, and the shutdown signal.
//!
//! It holds no business logic. A thing written once here cannot drift
//! between the services.

pub mod config;
pub mod kafka;
pub mod postgres;
pub mod shutdown;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken;
