//! The HTTP edge of Ledgerline: authenticates API clients, validates
//! requests, publishes commands to Kafka, and serves read models (balances,
//! entries, transfer status) from Postgres.
//!
//! It stays thin: it never changes a balance. Money moves only in the
//! processor, from the commands this service publishes.

pub mod accounts;
pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod callbacks;
pub mod config;
pub mod context;
pub mod customer_accounts;
pub mod customer_transfers;
pub mod customers;
pub mod decisions;
pub mod error;
pub mod group_commit;
pub mod health;
pub mod limits;
pub mod metrics;
mod middleware;
pub mod openapi;
pub mod ops;
pub mod passwords;
pub mod publish;
pub mod retention;
pub mod router;
pub mod serve;
pub mod staff;
pub mod state;
pub mod tls;
pub mod transfers;
pub mod webhooks;

pub use app::Application;
pub use config::IngestConfig;
pub use state::AppState;
