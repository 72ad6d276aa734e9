//! Who receives a payment to another bank: an [`Iban`] checked on parse
//! (ISO 13616 mod-97), and a [`Creditor`] name fit for a payment order.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// An International Bank Account Number in its electronic form: upper case,
/// no spaces, 15 to 34 characters, a country code, and check digits that
/// verify (mod 97 = 1). Printed-form input with spaces is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Iban(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IbanError {
    #[error("an IBAN has 15 to 34 letters and digits")]
    Length,
    #[error("an IBAN starts with a two-letter country code and two check digits")]
    Prefix,
    #[error("an IBAN holds only letters and digits")]
    Characters,
    #[error("the IBAN's check digits do not match (mod 97)")]
    Checksum,
}

impl Iban {
    pub const LENGTH_MIN: usize = 15;
    pub const LENGTH_MAX: usize = 34;

    /// # Errors
    /// When the text is not a well-formed IBAN with valid check digits.
    pub fn parse(text: &str) -> Result<Self, IbanError> {
        let compact: String = text.chars().filter(|c| *c != ' ').collect::<String>().to_ascii_uppercase();
        if !(Self::LENGTH_MIN..=Self::LENGTH_MAX).contains(&compact.len()) {
            return Err(IbanError::Length);
        }
        if !compact.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
            return Err(IbanError::Characters);
        }
        let bytes = compact.as_bytes();
        if !(bytes[0].is_ascii_uppercase()
            && bytes[1].is_ascii_uppercase()
            && bytes[2].is_ascii_digit()
            && bytes[3].is_ascii_digit())
        {
            return Err(IbanError::Prefix);
        }
        // The first four characters move to the end; letters count as
        // 10..35; the number, taken mod 97, must be 1.
        let remainder = compact[4..].bytes().chain(compact[..4].bytes()).fold(0_u32, |remainder, byte| {
            let value = if byte.is_ascii_digit() { u32::from(byte - b'0') } else { u32::from(byte - b'A') + 10 };
            let shift = if value >= 10 { 100 } else { 10 };
            (remainder * shift + value) % 97
        });
        if remainder != 1 {
            return Err(IbanError::Checksum);
        }
        Ok(Self(compact))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Iban {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Iban {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Iban {
    fn schema_name() -> Cow<'static, str> {
        "Iban".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An IBAN in electronic form (no spaces, upper case) with valid mod-97 check digits.",
            "pattern": "^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$"
        })
    }
}

/// A free text for a payment order: 1 to `max` characters, no control
/// characters, trimmed.
pub(crate) fn payment_text(text: &str, max: usize, what: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.chars().count() > max {
        return Err(format!("{what} must have 1 to {max} characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

/// The receiver of a payment to another bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Creditor {
    /// 1 to 140 characters (the SEPA limit), no control characters.
    #[schemars(length(min = 1, max = 140))]
    pub name: String,
    pub iban: Iban,
}

impl Creditor {
    pub const NAME_LENGTH_MAX: usize = 140;
}

impl<'de> Deserialize<'de> for Creditor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            name: String,
            iban: Iban,
        }
        let raw = Raw::deserialize(deserializer)?;
        let name =
            payment_text(&raw.name, Self::NAME_LENGTH_MAX, "the creditor name").map_err(serde::de::Error::custom)?;
        Ok(Self { name, iban: raw.iban })
    }
}

/// The text that travels with a payment to the creditor: 1 to 140
/// characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Remittance(#[schemars(length(min = 1, max = 140))] String);

impl Remittance {
    pub const LENGTH_MAX: usize = 140;

    /// # Errors
    /// When the text is empty, too long or holds control characters.
    pub fn parse(text: &str) -> Result<Self, String> {
        payment_text(text, Self::LENGTH_MAX, "the remittance information").map(Self)
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Remittance {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ibans_parse_in_printed_or_electronic_form() {
        for text in
            ["DE89370400440532013000", "de89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "CH9300762011623852957"]
        {
            assert!(Iban::parse(text).is_ok(), "{text}");
        }
        assert_eq!(Iban::parse("DE89 3704 0044 0532 0130 00").expect("valid").as_str(), "DE89370400440532013000");
    }

    #[test]
    fn malformed_ibans_are_refused_with_the_reason() {
        assert_eq!(Iban::parse("DE88370400440532013000"), Err(IbanError::Checksum));
        assert_eq!(Iban::parse("DE89"), Err(IbanError::Length));
        assert_eq!(Iban::parse("1289370400440532013000"), Err(IbanError::Prefix));
        assert_eq!(Iban::parse("DE89-370400440532013000"), Err(IbanError::Characters));
        assert_eq!(Iban::parse(&"DE89".repeat(10)), Err(IbanError::Length));
    }

    #[test]
    fn creditor_names_are_trimmed_and_bounded() {
        let creditor: Creditor =
            serde_json::from_str(r#"{"name":"  Jane Doe ","iban":"DE89370400440532013000"}"#).expect("valid");
        assert_eq!(creditor.name, "Jane Doe");
        for bad in [
            r#"{"name":"","iban":"DE89370400440532013000"}"#.to_owned(),
            format!(r#"{{"name":"{}","iban":"DE89370400440532013000"}}"#, "x".repeat(141)),
            r#"{"name":"a\u0000b","iban":"DE89370400440532013000"}"#.to_owned(),
            r#"{"name":"Jane","iban":"DE89370400440532013000","extra":1}"#.to_owned(),
        ] {
            assert!(serde_json::from_str::<Creditor>(&bad).is_err(), "{bad}");
        }
    }
}
