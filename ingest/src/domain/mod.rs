//! The bank's things as ingest knows them, shared by the routes of several
//! audiences: accounts and transfers as they are shown, accepting a command,
//! users, API clients, the audit log, statements. No route lives here and nothing here
//! names a route module.

pub(crate) mod acceptance;
pub(crate) mod accounts;
pub(crate) mod audit;
pub mod clients;
pub(crate) mod operations;
pub(crate) mod permissions;
pub(crate) mod statements;
pub(crate) mod transfers;
pub mod users;
