//! The ledger engine: consumes `ledger.commands` and applies each command to
//! the double-entry ledger in Postgres exactly once.
//!
//! - [`decide`] is the pure business logic: given the accounts, is a
//!   transfer applied or rejected, and with which entries.
//! - [`ledger`] writes one decision in one Postgres transaction, together
//!   with the consumer offset, so the commit is the single point of truth.
//! - [`consumer`] runs the Kafka loop on a thread of its own, seeks to the
//!   offsets stored in Postgres on every assignment, and sends what it
//!   cannot decode to the dead-letter topic.
//!
//! One command per transaction for now; batching is issue #3.

pub mod config;
pub mod consumer;
pub mod decide;
pub mod decode;
pub mod ledger;
pub mod metrics;

pub use config::ProcessorConfig;
pub use consumer::Processor;
pub use metrics::ProcessorMetrics;
