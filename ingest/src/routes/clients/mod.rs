//! The routes upstream apps call with an API client's token: the token
//! itself, accounts (with balances as of an instant, statements, spending
//! limits), transfers and payouts, holds, multi-leg batches, webhook
//! endpoints.

pub(crate) mod accounts;
pub(crate) mod batches;
pub(crate) mod holds;
pub(crate) mod token;
pub(crate) mod transfers;
pub(crate) mod webhooks;
