//! The machinery the routes use, none of it a route: tokens, secrets, rate
//! limits, publishing to Kafka, group commit, waiting for decisions, and
//! retention.

pub(crate) mod decisions;
pub(crate) mod group_commit;
pub(crate) mod jwt;
pub mod limits;
pub mod passwords;
pub mod publish;
pub(crate) mod retention;
