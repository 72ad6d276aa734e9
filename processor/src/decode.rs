//! Turning a Kafka payload into a [`Command`], or into the reason it goes to
//! the dead-letter topic.

use schemas::Command;

/// Why a message cannot be applied; the code travels in the dead-letter
/// message's `ledgerline-dlq-reason` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    /// A stable code: `empty_message`, `undecodable`, `invalid_command`, `apply_failed`.
    pub code: &'static str,
    /// A human-readable explanation.
    pub detail: String,
}

/// The largest payload a command may have. Commands are a few hundred bytes;
/// anything this large is not one of ours.
pub const PAYLOAD_SIZE_MAX_BYTES: usize = 64 * 1024;

/// Parses a payload in two steps, so the reason tells "not JSON at all" from
/// "JSON, but not a valid command".
///
/// # Errors
/// The dead-letter reason.
pub fn decode(payload: Option<&[u8]>) -> Result<Command, DeadLetterReason> {
    let payload = match payload {
        None | Some([]) => {
            return Err(DeadLetterReason { code: "empty_message", detail: "the message has no payload".into() });
        }
        Some(payload) if payload.len() > PAYLOAD_SIZE_MAX_BYTES => {
            return Err(DeadLetterReason {
                code: "undecodable",
                detail: format!("the payload is {} bytes, above {PAYLOAD_SIZE_MAX_BYTES}", payload.len()),
            });
        }
        Some(payload) => payload,
    };
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|error| DeadLetterReason {
        code: "undecodable",
        detail: format!("the payload is not JSON: {error}"),
    })?;
    serde_json::from_value(value).map_err(|error| DeadLetterReason {
        code: "invalid_command",
        detail: format!("the payload is not a valid command: {error}"),
    })
}

/// What can be read of a command that cannot be applied: enough for its
/// sender to find out that it was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its `transfer_id`, else its `command_id`.
    pub command_id: uuid::Uuid,
    pub command_type: Option<String>,
    /// Its `source_account_id`, else its `account_id`.
    pub account_id: Option<uuid::Uuid>,
}

/// The identity of a payload that is a JSON object with a UUID
/// `transfer_id` or `command_id`; `None` for anything else (nothing to tell
/// a sender it cannot be identified by).
#[must_use]
pub fn identity(payload: &[u8]) -> Option<Identity> {
    if payload.len() > PAYLOAD_SIZE_MAX_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let uuid_of = |field: &str| value.get(field).and_then(serde_json::Value::as_str)?.parse::<uuid::Uuid>().ok();
    Some(Identity {
        command_id: uuid_of("transfer_id").or_else(|| uuid_of("command_id"))?,
        command_type: value
            .get("type")
            .and_then(serde_json::Value::as_str)
            .map(|text| text.chars().take(100).collect()),
        account_id: uuid_of("source_account_id").or_else(|| uuid_of("account_id")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_of_an_unknown_version_is_still_identified() {
        let payload =
            br#"{"type": "transfer.requested", "version": 2, "transfer_id": "7f1d7e62-2c4b-4f4e-9a1e-1d2c3b4a5f60",
                           "source_account_id": "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"}"#;
        assert_eq!(decode(Some(payload)).expect_err("version 2").code, "invalid_command");
        let identity = identity(payload).expect("identified");
        assert_eq!(identity.command_id.to_string(), "7f1d7e62-2c4b-4f4e-9a1e-1d2c3b4a5f60");
        assert_eq!(identity.command_type.as_deref(), Some("transfer.requested"));
        assert_eq!(
            identity.account_id.map(|id| id.to_string()).as_deref(),
            Some("0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01")
        );
        assert_eq!(super::identity(br#"{"type": "transfer.requested", "transfer_id": 7}"#), None);
        assert_eq!(super::identity(b"garbage"), None);
    }

    #[test]
    fn a_missing_payload_is_an_empty_message() {
        assert_eq!(decode(None).expect_err("no payload").code, "empty_message");
    }

    #[test]
    fn bytes_that_are_not_json_are_undecodable() {
        assert_eq!(decode(Some(b"\x00\x01garbage")).expect_err("garbage").code, "undecodable");
    }

    #[test]
    fn json_that_is_not_a_command_is_an_invalid_command() {
        let reason = decode(Some(br#"{"type": "transfer.requested", "version": 1}"#)).expect_err("incomplete");
        assert_eq!(reason.code, "invalid_command");
        assert!(reason.detail.contains("missing field"), "{}", reason.detail);
    }

    #[test]
    fn an_oversized_payload_is_undecodable_without_parsing() {
        let payload = vec![b' '; PAYLOAD_SIZE_MAX_BYTES + 1];
        assert_eq!(decode(Some(&payload)).expect_err("too big").code, "undecodable");
    }
}
