//! The routes, grouped by who calls them. Only [`crate::router`] names
//! these modules, and no route module names another (a test scans the
//! sources): what routes share lives in `crate::extract`, `crate::domain`
//! and `crate::support`.

pub(crate) mod clients;
pub(crate) mod customers;
pub(crate) mod health;
pub(crate) mod ops;
pub(crate) mod providers;
pub(crate) mod staff;
