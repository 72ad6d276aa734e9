//! The ledger engine: consumes `ledger.commands` and applies each command to
//! the double-entry ledger in Postgres exactly once.
//!
//! - [`decide`] is the pure business logic: given the accounts, is a
//!   transfer applied or rejected, and with which entries.
//! - [`engine`] applies a batch of commands in memory, in partition order,
//!   over the locked accounts: holds, posts, voids, reversals, account
//!   commands.
//! - [`ledger`] runs a batch in one Postgres transaction: lock the touched
//!   accounts in id order, run the engine, write its changes with set-based
//!   statements, store the consumer offsets, commit. The commit is the
//!   single point of truth.
//! - [`consumer`] runs the Kafka loop on a thread of its own, seeks to the
//!   offsets stored in Postgres on every assignment, and sends what it
//!   cannot decode to the dead-letter topic.
//! - [`health`] compares the stored offsets with Kafka's watermarks: lag
//!   per partition, stopped partitions, readiness.
//!

pub mod config;
pub mod consumer;
pub mod decide;
pub mod decode;
pub mod engine;
pub mod health;
pub mod ledger;
pub mod metrics;
pub mod replay;
pub mod verify;

pub use config::ProcessorConfig;
pub use consumer::Processor;
pub use ledger::Locking;
pub use metrics::ProcessorMetrics;
