//! End-to-end tests: HTTP → Kafka → processor → Postgres → outbox relay →
//! Kafka, each test on its own database and broker. One test binary, so the
//! suite links once.

mod account_security;
mod admin;
mod auth;
mod authz;
mod contract;
mod customers;
mod dashboard;
mod dead_letters;
mod deployment;
mod edge;
mod events;
mod group;
mod hardening;
mod http_ledger;
mod late_locking;
mod ledger_features;
mod load;
mod metrics;
mod migrations;
mod model;
mod openapi;
mod ops;
mod payouts;
mod processor_restart;
mod provider;
mod relay;
mod relay_safety;
mod retention;
mod status;
mod tls;
mod transfers;
mod webhooks;
