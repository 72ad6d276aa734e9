//! The routes upstream apps call with an API client's token: the token
//! itself, accounts, transfers and payouts, webhook endpoints.

pub(crate) mod accounts;
pub(crate) mod token;
pub(crate) mod transfers;
pub(crate) mod webhooks;
