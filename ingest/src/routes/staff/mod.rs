//! The routes of the bank's staff, by role: the support desk (`desk`:
//! reading accounts, freezes, deposits), admins' management of users,
//! clients and system accounts (`admin`), and the audit log (`audit`).

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod desk;
