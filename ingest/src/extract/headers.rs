//! The request headers the API defines: `Idempotency-Key` (the transfer id
//! is derived from it) and the customers' `X-Step-Up-Token`.

use axum::http::HeaderMap;
use schemas::IdempotencyKey;

use crate::error::ApiError;

pub(crate) const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// # Errors
/// 400 when the header is missing or malformed.
pub(crate) fn required_idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    optional_idempotency_key(headers)?
        .ok_or_else(|| ApiError::bad_request("idempotency_key_missing", "this request needs an Idempotency-Key header"))
}

/// # Errors
/// 400 when the header is present but malformed.
pub(crate) fn optional_idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else { return Ok(None) };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("idempotency_key_invalid", "the Idempotency-Key must be printable ASCII"))?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(|error| ApiError::bad_request("idempotency_key_invalid", error.to_string()))
}

pub(crate) const STEP_UP_HEADER: &str = "x-step-up-token";
