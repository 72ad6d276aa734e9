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

#[cfg(test)]
mod tests {
    use super::*;

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
