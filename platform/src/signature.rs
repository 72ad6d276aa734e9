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

/// The keys webhook signing secrets are derived from
/// (`LEDGERLINE_WEBHOOK_SECRETS_KEYS`, or `_FILE`): `id:base64,id:base64`,
/// the first the current one. With them, an endpoint's secret is never
/// stored: it is HMAC-SHA256(key, endpoint id and a random nonce), and the
/// database keeps only the nonce and the key's id, so a copy of the
/// database (a backup, a read replica, an injected `select`) cannot forge a
/// webhook. Older keys stay listed until their endpoints are re-registered:
/// that is how keys rotate.
#[derive(Clone)]
pub struct WebhookSecretKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for WebhookSecretKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        formatter.debug_struct("WebhookSecretKeys").field("ids", &ids).finish_non_exhaustive()
    }
}

/// The name of the variable.
pub const WEBHOOK_SECRETS_KEYS: &str = "LEDGERLINE_WEBHOOK_SECRETS_KEYS";

impl WebhookSecretKeys {
    /// The shortest key accepted, in bytes.
    pub const KEY_LENGTH_MIN: usize = 32;

    /// # Errors
    /// When the text is empty or a key is malformed, short or listed twice.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let (id, encoded) = entry.split_once(':').ok_or("each key is id:base64")?;
            let id = id.trim();
            if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!("key id {id:?}: 1 to 32 of a-z, 0-9, - and _"));
            }
            let key = BASE64.decode(encoded.trim()).map_err(|error| format!("key {id}: not base64: {error}"))?;
            if key.len() < Self::KEY_LENGTH_MIN {
                return Err(format!("key {id}: at least {} bytes", Self::KEY_LENGTH_MIN));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(format!("key id {id} listed twice"));
            }
            keys.push((id.to_owned(), key));
        }
        if keys.is_empty() {
            return Err("no key".into());
        }
        Ok(Self { keys })
    }

    /// From the environment; `None` when unset (secrets are then stored).
    ///
    /// # Errors
    /// When the variable is set but malformed.
    pub fn from_env() -> Result<Option<Self>, crate::config::ConfigError> {
        use secrecy::ExposeSecret as _;
        match crate::config::secret_optional(WEBHOOK_SECRETS_KEYS)? {
            None => Ok(None),
            Some(text) => Self::parse(text.expose_secret())
                .map(Some)
                .map_err(|problem| crate::config::ConfigError::new(WEBHOOK_SECRETS_KEYS, problem)),
        }
    }

    /// The current key's id.
    #[must_use]
    pub fn current_id(&self) -> &str {
        self.keys.first().map_or("", |(id, _)| id.as_str())
    }

    /// The secret of `endpoint_id` with `nonce` under key `key_id`
    /// (`whsec_…`), or `None` for a key no longer configured.
    #[must_use]
    pub fn derive(&self, key_id: &str, endpoint_id: &str, nonce: &[u8]) -> Option<String> {
        let (_, key) = self.keys.iter().find(|(id, _)| id == key_id)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(b"ledgerline-webhook-secret:");
        mac.update(endpoint_id.as_bytes());
        mac.update(b":");
        mac.update(nonce);
        Some(format!("whsec_{}", BASE64.encode(mac.finalize().into_bytes())))
    }
}

#[cfg(test)]
mod webhook_secret_tests {
    use super::*;

    #[test]
    fn secrets_derive_per_key_endpoint_and_nonce_and_sign_like_stored_ones() {
        let one = BASE64.encode([1_u8; 32]);
        let two = BASE64.encode([2_u8; 32]);
        let keys = WebhookSecretKeys::parse(&format!("k2:{two}, k1:{one}")).expect("keys");
        assert_eq!(keys.current_id(), "k2");
        let secret = keys.derive("k2", "endpoint-a", b"nonce").expect("known key");
        assert!(secret.starts_with("whsec_"));
        assert_eq!(keys.derive("k2", "endpoint-a", b"nonce"), Some(secret.clone()), "deterministic");
        assert_ne!(keys.derive("k1", "endpoint-a", b"nonce"), Some(secret.clone()));
        assert_ne!(keys.derive("k2", "endpoint-b", b"nonce"), Some(secret.clone()));
        assert_ne!(keys.derive("k2", "endpoint-a", b"other"), Some(secret.clone()));
        assert_eq!(keys.derive("k0", "endpoint-a", b"nonce"), None);
        assert!(webhook_key(&secret).is_ok(), "usable as a Standard Webhooks secret");
        assert!(!format!("{keys:?}").contains(&two), "no key in Debug");
        for bad in
            ["", "k1", "k1:not base64!", &format!("k1:{}", BASE64.encode([1_u8; 16])), &format!("k1:{one},k1:{two}")]
        {
            assert!(WebhookSecretKeys::parse(bad).is_err(), "{bad:?}");
        }
    }
}
