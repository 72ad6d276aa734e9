//! Money: an ISO 4217 [`Currency`] with its minor-unit scale, a positive
//! [`Amount`] bounded in magnitude and never finer than its currency, and
//! [`Money`], the pair that travels in messages.
//!
//! Amounts are `rust_decimal::Decimal` and cross the wire as JSON strings
//! (`"12.50"`), never as JSON numbers: a number would pass through a float in
//! many client libraries.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value is not valid money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unsupported currency code {0:?}; supported: {list}", list = Currency::codes().join(", "))]
    UnsupportedCurrency(String),
    #[error("the amount must be greater than zero")]
    NotPositive,
    #[error("{currency} allows at most {scale} decimal places")]
    TooManyDecimals { currency: Currency, scale: u32 },
    #[error("the amount is above the maximum of {}", Amount::MAX_UNITS)]
    TooLarge,
    #[error("the amount is not a decimal number: {0}")]
    NotADecimal(String),
}

macro_rules! currencies {
    ($($code:ident => $scale:literal, $name:literal;)+) => {
        /// An ISO 4217 currency that Ledgerline supports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Currency {
            $(#[doc = $name] $code,)+
        }

        impl Currency {
            /// Every supported currency.
            pub const ALL: &'static [Currency] = &[$(Currency::$code,)+];

            /// The three-letter ISO 4217 code.
            #[must_use]
            pub fn code(self) -> &'static str {
                match self { $(Currency::$code => stringify!($code),)+ }
            }

            /// The number of decimal places of the currency's minor unit
            /// (2 for EUR cents, 0 for JPY, 3 for KWD fils).
            #[must_use]
            pub fn minor_unit_scale(self) -> u32 {
                match self { $(Currency::$code => $scale,)+ }
            }
        }

        impl FromStr for Currency {
            type Err = MoneyError;

            fn from_str(code: &str) -> Result<Self, Self::Err> {
                match code {
                    $(stringify!($code) => Ok(Currency::$code),)+
                    other => Err(MoneyError::UnsupportedCurrency(other.to_owned())),
                }
            }
        }
    };
}

currencies! {
    EUR => 2, "Euro";
    USD => 2, "US dollar";
    GBP => 2, "Pound sterling";
    CHF => 2, "Swiss franc";
    JPY => 0, "Japanese yen";
    SEK => 2, "Swedish krona";
    NOK => 2, "Norwegian krone";
    DKK => 2, "Danish krone";
    PLN => 2, "Polish zloty";
    KWD => 3, "Kuwaiti dinar";
}

impl Currency {
    fn codes() -> Vec<&'static str> {
        Self::ALL.iter().map(|currency| currency.code()).collect()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = Cow::<'de, str>::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Currency {
    fn schema_name() -> Cow<'static, str> {
        "Currency".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "ISO 4217 currency code.",
            "type": "string",
            "enum": Currency::codes(),
        })
    }
}

/// A positive amount of money, at most [`Amount::MAX_UNITS`], with no more
/// decimal places than its currency's minor unit. It is stored rescaled to
/// exactly the currency's scale, so `10`, `10.0` and `10.00` EUR are equal
/// and print as `10.00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(Decimal);

impl Amount {
    /// The largest amount one command may move, in major units: a trillion.
    /// It bounds every sum the ledger makes far below `numeric(38, 4)`.
    pub const MAX_UNITS: i64 = 1_000_000_000_000;

    /// Checks a decimal against the rules for `currency`.
    ///
    /// # Errors
    /// When the value is zero or negative, finer than the currency's minor
    /// unit, or above [`Amount::MAX_UNITS`].
    pub fn parse(value: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        let scale = currency.minor_unit_scale();
        if value <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        if value > Decimal::from(Self::MAX_UNITS) {
            return Err(MoneyError::TooLarge);
        }
        // `normalize` drops trailing zeros, so "10.500" EUR is accepted as 10.50.
        if value.normalize().scale() > scale {
            return Err(MoneyError::TooManyDecimals { currency, scale });
        }
        let mut rescaled = value;
        rescaled.rescale(scale);
        Ok(Self(rescaled))
    }

    /// The value, at the currency's scale.
    #[must_use]
    pub fn value(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(formatter)
    }
}

/// A positive amount in a currency: the unit of every money movement.
///
/// On the wire: `{"amount": "12.50", "currency": "EUR"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Amount,
    currency: Currency,
}

impl Money {
    /// Checks `value` against the rules of `currency`.
    ///
    /// # Errors
    /// As [`Amount::parse`].
    pub fn new(value: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        Ok(Self { amount: Amount::parse(value, currency)?, currency })
    }

    /// Parses a decimal string, as it comes from a form or a command line.
    ///
    /// # Errors
    /// When the string is not a decimal, or as [`Amount::parse`].
    pub fn parse(value: &str, currency: Currency) -> Result<Self, MoneyError> {
        let decimal =
            Decimal::from_str_exact(value.trim()).map_err(|error| MoneyError::NotADecimal(error.to_string()))?;
        Self::new(decimal, currency)
    }

    #[must_use]
    pub fn amount(self) -> Amount {
        self.amount
    }

    #[must_use]
    pub fn currency(self) -> Currency {
        self.currency
    }
}

impl fmt::Display for Money {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.amount, self.currency)
    }
}

/// A positive amount in a currency, never finer than the currency's minor
/// unit. (The wire shape of `Money`; `Money::new` does the validation.)
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Money")]
struct MoneyWire {
    /// A positive decimal string with no more decimal places than the
    /// currency's minor unit, e.g. "12.50". JSON numbers are refused.
    #[schemars(with = "String", regex(pattern = r"^[0-9]{1,13}(\.[0-9]{1,4})?$"))]
    amount: StringDecimal,
    currency: Currency,
}

/// A decimal that deserializes only from a string.
struct StringDecimal(Decimal);

impl Serialize for StringDecimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StringDecimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StringDecimal;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a decimal amount as a string, such as \"12.50\"")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Decimal::from_str_exact(value)
                    .map(StringDecimal)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(value), &self))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MoneyWire { amount: StringDecimal(self.amount.value()), currency: self.currency }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = MoneyWire::deserialize(deserializer)?;
        Money::new(wire.amount.0, wire.currency).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Money {
    fn schema_name() -> Cow<'static, str> {
        "Money".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        MoneyWire::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decimal(value: &str) -> Decimal {
        Decimal::from_str_exact(value).expect("test decimals are valid")
    }

    #[test]
    fn every_supported_currency_parses_from_its_own_code() {
        for currency in Currency::ALL {
            assert_eq!(currency.code().parse::<Currency>(), Ok(*currency));
        }
    }

    #[test]
    fn currencies_know_their_minor_unit_scale() {
        assert_eq!(Currency::EUR.minor_unit_scale(), 2);
        assert_eq!(Currency::JPY.minor_unit_scale(), 0);
        assert_eq!(Currency::KWD.minor_unit_scale(), 3);
    }

    #[test]
    fn an_unknown_or_lowercase_currency_is_rejected() {
        assert!("XXX".parse::<Currency>().is_err());
        assert!("eur".parse::<Currency>().is_err());
        assert!("".parse::<Currency>().is_err());
    }

    #[test]
    fn a_positive_amount_within_the_scale_is_accepted_and_rescaled() {
        let amount = Amount::parse(decimal("10.5"), Currency::EUR).expect("valid");
        assert_eq!(amount.to_string(), "10.50");
        let yen = Amount::parse(decimal("1000"), Currency::JPY).expect("valid");
        assert_eq!(yen.to_string(), "1000");
    }

    #[test]
    fn an_amount_with_more_decimals_than_its_currency_is_rejected() {
        assert_eq!(
            Amount::parse(decimal("0.001"), Currency::EUR),
            Err(MoneyError::TooManyDecimals { currency: Currency::EUR, scale: 2 })
        );
        assert!(Amount::parse(decimal("1.5"), Currency::JPY).is_err());
    }

    #[test]
    fn trailing_zeros_beyond_the_scale_do_not_count_as_decimals() {
        let amount = Amount::parse(decimal("10.500"), Currency::EUR).expect("valid");
        assert_eq!(amount.to_string(), "10.50");
    }

    #[test]
    fn zero_and_negative_amounts_are_rejected() {
        assert_eq!(Amount::parse(Decimal::ZERO, Currency::EUR), Err(MoneyError::NotPositive));
        assert_eq!(Amount::parse(decimal("-1"), Currency::EUR), Err(MoneyError::NotPositive));
    }

    #[test]
    fn an_amount_above_the_maximum_is_rejected() {
        let at_max = Decimal::from(Amount::MAX_UNITS);
        assert!(Amount::parse(at_max, Currency::EUR).is_ok());
        assert_eq!(Amount::parse(at_max + decimal("0.01"), Currency::EUR), Err(MoneyError::TooLarge));
    }

    #[test]
    fn money_round_trips_through_json_as_strings() {
        let money = Money::parse("12.5", Currency::EUR).expect("valid");
        let json = serde_json::to_value(money).expect("serializes");
        assert_eq!(json, serde_json::json!({"amount": "12.50", "currency": "EUR"}));
        let back: Money = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, money);
    }

    #[test]
    fn money_as_a_json_number_is_refused() {
        let result = serde_json::from_str::<Money>(r#"{"amount": 12.5, "currency": "EUR"}"#);
        assert!(result.is_err());
    }

    #[test]
    fn money_with_an_unknown_field_is_refused() {
        let result = serde_json::from_str::<Money>(r#"{"amount": "12.50", "currency": "EUR", "fee": "1.00"}"#);
        assert!(result.is_err());
    }

    #[test]
    fn money_finer_than_its_currency_is_refused_on_parse() {
        let result = serde_json::from_str::<Money>(r#"{"amount": "1.5", "currency": "JPY"}"#);
        let error = result.expect_err("JPY has no decimals").to_string();
        assert!(error.contains("JPY allows at most 0 decimal places"), "{error}");
    }

    #[test]
    fn money_that_is_not_a_decimal_is_refused() {
        assert!(matches!(Money::parse("ten", Currency::EUR), Err(MoneyError::NotADecimal(_))));
        assert!(serde_json::from_str::<Money>(r#"{"amount": "1e3", "currency": "EUR"}"#).is_err());
    }
}
