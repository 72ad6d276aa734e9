//! What a handler takes from a request besides its body: the caller (an API
//! client's [`principal::Principal`], a person's [`user::User`]) and the
//! headers the API defines.

pub(crate) mod headers;
pub(crate) mod principal;
pub(crate) mod user;
