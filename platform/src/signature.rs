//! HMAC-SHA256 signatures of HTTP bodies, with a timestamp against replay.
//!
//! Two conventions, one per direction:
//! - **Provider callbacks** (the payment provider calls ingest):
//!   `Provider-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//! - **Webhooks** (Ledgerline calls its customers), following Standard
//!   Webhooks: headers `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`,
//!   the key being the base64 after `whsec_` in the endpoint's secret.
//!
//! Verification compares in constant time and refuses a timestamp more than
//! `tolerance_s` away from now, so a captured request cannot be replayed
//! later.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing or malformed")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
    #[error("the signature's timestamp is outside the tolerance: a stale or replayed request")]
    Stale,
}

impl SignatureError {
    /// A stable code for problem+json answers and metrics.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_invalid",
            SignatureError::Stale => "signature_stale",
        }
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            mac.update(b".");
        }
        mac.update(part);
    }
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok()).collect()
}

fn check_time(timestamp: i64, now: i64, tolerance_s: i64) -> Result<(), SignatureError> {
    if (now - timestamp).abs() > tolerance_s { Err(SignatureError::Stale) } else { Ok(()) }
}

/// The `Provider-Signature` header value for `body` sent at `timestamp`.
#[must_use]
pub fn sign_callback(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, &[timestamp.to_string().as_bytes(), body]).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex(&tag))
}

/// Checks a `Provider-Signature` header against `body`.
///
/// # Errors
/// Malformed, mismatching, or outside `tolerance_s` of `now`.
pub fn verify_callback(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let (mut timestamp, mut tags) = (None, Vec::new());
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => tags.push(unhex(value).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // The signature first: a stale request with a bad signature is a forgery.
    let expected = mac(secret, &[timestamp.to_string().as_bytes(), body]);
    if !tags.iter().any(|tag| expected.clone().verify_slice(tag).is_ok()) {
        return Err(SignatureError::Mismatch);
    }
    check_time(timestamp, now, tolerance_s)
}

/// The key inside a Standard Webhooks secret (`whsec_<base64>`).
///
/// # Errors
/// When the secret is not in that form.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let encoded = secret.strip_prefix("whsec_").ok_or(SignatureError::Malformed)?;
    BASE64.decode(encoded).map_err(|_| SignatureError::Malformed)
}

/// The `webhook-signature` header value for a message.
#[must_use]
pub fn sign_webhook(key: &[u8], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, &[message_id.as_bytes(), timestamp.to_string().as_bytes(), body]).finalize().into_bytes();
    format!("v1,{}", BASE64.encode(tag))
}

/// Checks a webhook the way a receiver does.
///
/// # Errors
/// Malformed, mismatching, or outside `tolerance_s` of `now`.
pub fn verify_webhook(
    key: &[u8],
    message_id: &str,
    timestamp: i64,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let expected = mac(key, &[message_id.as_bytes(), timestamp.to_string().as_bytes(), body]);
    // Several space-separated signatures may be sent during a key rotation.
    let matches = signature_header
        .split(' ')
        .filter_map(|candidate| candidate.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .any(|tag| expected.clone().verify_slice(&tag).is_ok());
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    check_time(timestamp, now, tolerance_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_signature_verifies_and_any_change_breaks_it() {
        let header = sign_callback(b"secret", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(verify_callback(b"secret", &header, br#"{"a":1}"#, 1_700_000_010, 300), Ok(()));
        assert_eq!(
            verify_callback(b"secret", &header, br#"{"a":2}"#, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_callback(b"other", &header, br#"{"a":1}"#, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify_callback(b"secret", &moved, br#"{"a":1}"#, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_callback(b"secret", &header, br#"{"a":1}"#, 1_700_001_000, 300), Err(SignatureError::Stale));
        assert_eq!(verify_callback(b"secret", "v1=zz", b"", 0, 300), Err(SignatureError::Malformed));
        assert_eq!(verify_callback(b"secret", "", b"", 0, 300), Err(SignatureError::Malformed));
    }

    #[test]
    fn webhook_signatures_match_the_standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's examples.
        let key = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let body = br#"{"test": 2432232314}"#;
        let signature = sign_webhook(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(
            verify_webhook(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, &signature, body, 1_614_265_400, 300),
            Ok(())
        );
        assert_eq!(
            verify_webhook(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, &signature, body, 1_614_275_330, 300),
            Err(SignatureError::Stale),
            "a replay hours later is stale"
        );
        assert_eq!(
            verify_webhook(&key, "msg_other", 1_614_265_330, &signature, body, 1_614_265_400, 300),
            Err(SignatureError::Mismatch)
        );
    }
}
