//! The HTTP edge of Ledgerline: authenticates API clients, validates
//! requests, publishes commands to Kafka, and serves read models (balances,
//! entries, transfer status) from Postgres.
//!
//! It stays thin: it never changes a balance. Money moves only in the
//! processor, from the commands this service publishes.

pub(crate) mod accounts;
pub mod admin;
pub mod app;
pub(crate) mod audit;
pub mod auth;
pub(crate) mod callbacks;
pub mod config;
pub(crate) mod context;
pub(crate) mod customer_accounts;
pub(crate) mod customer_transfers;
pub(crate) mod customers;
pub(crate) mod decisions;
pub(crate) mod error;
pub(crate) mod group_commit;
pub(crate) mod health;
pub mod limits;
pub(crate) mod metrics;
mod middleware;
pub(crate) mod openapi;
pub(crate) mod ops;
pub mod passwords;
pub mod publish;
pub(crate) mod retention;
pub mod router;
pub(crate) mod serve;
pub(crate) mod staff;
pub mod state;
pub mod tls;
pub(crate) mod transfers;
pub(crate) mod webhooks;

pub use app::Application;
pub use config::IngestConfig;
pub use state::AppState;
