//! The routes of a bank's customers (the mobile app): sessions and
//! passwords, their own accounts, the transaction PIN and transfers.

pub(crate) mod accounts;
pub(crate) mod sessions;
pub(crate) mod transfers;
