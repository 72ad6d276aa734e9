//! What an upstream app attaches to a transfer, a hold or a batch for its
//! own books: a bank [`Reference`] that can travel in a SEPA payment, and
//! bounded [`Metadata`]. The ledger stores and returns both, carries them in
//! events and webhooks, and never decides anything on them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// A bank reference: 1 to 140 characters of the SEPA basic Latin set
/// (`a-z A-Z 0-9 / - ? : ( ) . , ' +` and space), as an end-to-end
/// reference or remittance must be to cross any SEPA scheme unchanged; not
/// starting or ending with `/` and without `//` (the EPC's rule for
/// references).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Reference(String);

/// Why a reference is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("a reference has 1 to {} characters", Reference::LENGTH_MAX)]
    Length,
    #[error("a reference holds only the SEPA characters a-z A-Z 0-9 / - ? : ( ) . , ' + and space")]
    Characters,
    #[error("a reference does not start or end with '/' nor hold '//'")]
    Slashes,
}

impl Reference {
    pub const LENGTH_MAX: usize = 140;

    /// The JSON Schema pattern of a reference, for the published schemas
    /// and the OpenAPI document.
    /// Segments of SEPA characters joined by single slashes; the length is
    /// bounded apart (`maxLength`). No lookaround, so that any schema tool
    /// can generate from it.
    pub const PATTERN: &'static str = r"^[A-Za-z0-9?:().,'+ -]+(/[A-Za-z0-9?:().,'+ -]+)*$";

    /// # Errors
    /// When the text is empty, too long, holds a character outside the SEPA
    /// set, or misuses `/`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.is_empty() || text.len() > Self::LENGTH_MAX {
            return Err(ReferenceError::Length);
        }
        let sepa = |c: char| c.is_ascii_alphanumeric() || "/-?:().,'+ ".contains(c);
        if !text.chars().all(sepa) {
            return Err(ReferenceError::Characters);
        }
        if text.starts_with('/') || text.ends_with('/') || text.contains("//") {
            return Err(ReferenceError::Slashes);
        }
        Ok(Self(text.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Reference {
    fn schema_name() -> Cow<'static, str> {
        "Reference".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A bank reference: 1 to 140 SEPA characters (a-z A-Z 0-9 / - ? : ( ) . , ' + space), not starting or ending with '/', no '//'.",
            "minLength": 1,
            "maxLength": Reference::LENGTH_MAX,
            "pattern": Reference::PATTERN
        })
    }
}

/// Bounded key-value metadata: at most 32 keys of 1 to 64 characters, string
/// values of at most 512 characters, at most 4 KiB as JSON. Strings only, so
/// that every consumer (a CSV statement, a search, a webhook receiver in any
/// language) reads it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

/// Why metadata is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata has at most {} keys", Metadata::KEYS_MAX)]
    TooManyKeys,
    #[error("a metadata key has 1 to {} characters and no control characters", Metadata::KEY_LENGTH_MAX)]
    Key,
    #[error("a metadata value has at most {} characters and no control characters", Metadata::VALUE_LENGTH_MAX)]
    Value,
    #[error("metadata is at most {} bytes as JSON", Metadata::BYTES_MAX)]
    TooLarge,
}

impl Metadata {
    pub const KEYS_MAX: usize = 32;
    pub const KEY_LENGTH_MAX: usize = 64;
    pub const VALUE_LENGTH_MAX: usize = 512;
    pub const BYTES_MAX: usize = 4_096;

    /// # Errors
    /// When the map breaks one of the bounds.
    pub fn new(map: BTreeMap<String, String>) -> Result<Self, MetadataError> {
        if map.len() > Self::KEYS_MAX {
            return Err(MetadataError::TooManyKeys);
        }
        for (key, value) in &map {
            if key.is_empty() || key.chars().count() > Self::KEY_LENGTH_MAX || key.chars().any(char::is_control) {
                return Err(MetadataError::Key);
            }
            if value.chars().count() > Self::VALUE_LENGTH_MAX || value.chars().any(char::is_control) {
                return Err(MetadataError::Value);
            }
        }
        let metadata = Self(map);
        if serde_json::to_string(&metadata).map_or(usize::MAX, |json| json.len()) > Self::BYTES_MAX {
            return Err(MetadataError::TooLarge);
        }
        Ok(metadata)
    }

    #[must_use]
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Self::new(map).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Metadata {
    fn schema_name() -> Cow<'static, str> {
        "Metadata".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "Up to 32 keys (1 to 64 characters) with string values (up to 512 characters), at most 4 KiB as JSON; no control characters.",
            "maxProperties": Metadata::KEYS_MAX,
            "propertyNames": { "minLength": 1, "maxLength": Metadata::KEY_LENGTH_MAX, "pattern": "^[^\\u0000-\\u001f\\u007f]+$" },
            "additionalProperties": { "type": "string", "maxLength": Metadata::VALUE_LENGTH_MAX, "pattern": "^[^\\u0000-\\u001f\\u007f]*$" }
        })
    }
}

/// Why a transfer is reversed: 1 to 140 characters, no control
/// characters, trimmed. Free text for the books, not a SEPA field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ReversalReason(
    #[schemars(length(min = 1, max = 140), regex(pattern = r"^[^\u0000-\u001f\u007f]+$"))] String,
);

impl ReversalReason {
    pub const LENGTH_MAX: usize = 140;

    /// # Errors
    /// When the text is empty, too long or holds control characters.
    pub fn parse(text: &str) -> Result<Self, String> {
        crate::payee::payment_text(text, Self::LENGTH_MAX, "a reversal reason").map(Self)
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ReversalReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sepa_references_parse_and_others_are_refused_with_the_reason() {
        for good in ["INV-2026/0042", "Rent December", "a", "(ok) +1 ?:.,'", &"x".repeat(140)] {
            assert!(Reference::parse(good).is_ok(), "{good}");
        }
        assert_eq!(Reference::parse(""), Err(ReferenceError::Length));
        assert_eq!(Reference::parse(&"x".repeat(141)), Err(ReferenceError::Length));
        assert_eq!(Reference::parse("Miete für Mai"), Err(ReferenceError::Characters));
        assert_eq!(Reference::parse("a_b"), Err(ReferenceError::Characters));
        assert_eq!(Reference::parse("tab\there"), Err(ReferenceError::Characters));
        assert_eq!(Reference::parse("/lead"), Err(ReferenceError::Slashes));
        assert_eq!(Reference::parse("trail/"), Err(ReferenceError::Slashes));
        assert_eq!(Reference::parse("a//b"), Err(ReferenceError::Slashes));
    }

    #[test]
    fn metadata_is_bounded_in_keys_lengths_and_size() {
        let map = |pairs: Vec<(String, String)>| pairs.into_iter().collect::<BTreeMap<_, _>>();
        assert!(Metadata::new(map(vec![("order".into(), "A-1".into())])).is_ok());
        assert!(Metadata::new(map(vec![("empty".into(), String::new())])).is_ok());
        let many = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(Metadata::new(map(many)), Err(MetadataError::TooManyKeys));
        assert_eq!(Metadata::new(map(vec![(String::new(), "v".into())])), Err(MetadataError::Key));
        assert_eq!(Metadata::new(map(vec![("k".repeat(65), "v".into())])), Err(MetadataError::Key));
        assert_eq!(Metadata::new(map(vec![("k".into(), "v".repeat(513))])), Err(MetadataError::Value));
        assert_eq!(Metadata::new(map(vec![("k".into(), "a\nb".into())])), Err(MetadataError::Value));
        // 9 values of 500 characters: each within its bound, together over 4 KiB.
        let large = (0..9).map(|i| (format!("k{i}"), "v".repeat(500))).collect();
        assert_eq!(Metadata::new(map(large)), Err(MetadataError::TooLarge));
    }

    #[test]
    fn metadata_with_a_non_string_value_is_refused_on_parse() {
        assert!(serde_json::from_str::<Metadata>(r#"{"order": 42}"#).is_err());
        assert!(serde_json::from_str::<Metadata>(r#"["order"]"#).is_err());
        let parsed: Metadata = serde_json::from_str(r#"{"order": "42"}"#).expect("valid");
        assert_eq!(parsed.as_map().get("order").map(String::as_str), Some("42"));
    }
}
