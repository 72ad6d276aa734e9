//! The HTTP edge of Ledgerline: authenticates API clients, validates
//! requests, publishes commands to Kafka, and serves read models (balances,
//! entries, transfer status) from Postgres.
//!
//! It stays thin: it never changes a balance. Money moves only in the
//! processor, from the commands this service publishes.
//!
//! The layout, from the outside in: [`app`] builds and runs the service
//! ([`server`]: connections and TLS), [`router`] is the only module that
//! names the route modules (and builds the OpenAPI document from them), each
//! route sits in the `middleware` stack. Routes are grouped by who calls
//! them (`routes::{clients, customers, staff, ops, providers, health}`) and
//! never import one another: what several of them share is in `extract`
//! (what a handler takes from a request: the caller, the headers), `domain`
//! (accounts, transfers, users, API clients, the audit log) and [`support`]
//! (tokens, passwords, rate limits, publishing, group commit). The state
//! every route uses is [`AppState`], at the crate root. The staff's web
//! dashboard (`/admin`) is `dashboard`, beside the API.

pub mod app;
pub mod config;
pub(crate) mod dashboard;
pub mod domain;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod middleware;
pub(crate) mod openapi;
pub mod router;
pub(crate) mod routes;
pub mod server;
pub mod state;
pub mod support;

pub use app::Application;
pub use config::IngestConfig;
pub use state::AppState;
