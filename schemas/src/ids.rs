//! Identifiers: accounts, transfers, and the client-chosen idempotency key
//! from which a transfer's id is derived.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            #[must_use]
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            #[must_use]
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(formatter)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map(Self)
            }
        }
    };
}

uuid_id! {
    /// An account of the ledger (a customer's, or a system account).
    AccountId
}

impl AccountId {
    /// The system cash-in account of a currency, seeded by the first
    /// migration: `00000000-0000-0000-0001-` followed by the currency code's
    /// ASCII bytes in hex. Deposits are debited from it, so it may go negative.
    #[must_use]
    pub fn cash_in(currency: crate::Currency) -> Self {
        let code = currency.code().bytes().fold(0_u128, |accumulated, byte| (accumulated << 8) | u128::from(byte));
        Self(Uuid::from_u128((1_u128 << 48) | code))
    }

    /// The system external-clearing account of `currency`: payouts to other
    /// banks are credited to it when the provider settles them (it stands
    /// for the money on its way out through the provider). Seeded by a
    /// migration: `00000000-0000-0000-0002-` and the currency code in hex.
    #[must_use]
    pub fn external_clearing(currency: crate::Currency) -> Self {
        let code = currency.code().bytes().fold(0_u128, |accumulated, byte| (accumulated << 8) | u128::from(byte));
        Self(Uuid::from_u128((2_u128 << 48) | code))
    }

    /// The id of the account a client opens with an idempotency key, so a
    /// retried "open account" request opens one account, not two.
    #[must_use]
    pub fn derive(client_id: Uuid, key: &IdempotencyKey) -> Self {
        Self(Operation::OpenAccount.derive(client_id, key))
    }

    /// A fresh random account id.
    #[must_use]
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

uuid_id! {
    /// A money movement. The processor applies each transfer id at most once.
    TransferId
}

/// The namespace of derived ids (UUID v5). Changing it would change
/// every derived id, so it is fixed forever.
const TRANSFER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c65_6467_6572_6c69_6e65_0000_0000_0001);

/// The kind of request a transfer id is derived for. The same idempotency key
/// used for a transfer and for a deposit names two different operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Transfer,
    Deposit,
    OpenAccount,
    Payout,
    /// A staff member's freeze, unfreeze or close.
    AccountStatus,
    Hold,
    /// The capture (post) of a hold.
    Capture,
    /// The release of a hold.
    Void,
    Reversal,
    /// A multi-leg transfer (`transfer.batch`).
    Batch,
    /// A change of an account's spending limits.
    SpendingLimits,
}

impl Operation {
    /// The id a client names with an idempotency key for this operation.
    fn derive(self, client_id: Uuid, key: &IdempotencyKey) -> Uuid {
        let operation = match self {
            Operation::Transfer => "transfer",
            Operation::Deposit => "deposit",
            Operation::OpenAccount => "account",
            Operation::Payout => "payout",
            Operation::AccountStatus => "account-status",
            Operation::Hold => "hold",
            Operation::Capture => "capture",
            Operation::Void => "void",
            Operation::Reversal => "reversal",
            Operation::Batch => "batch",
            Operation::SpendingLimits => "spending-limits",
        };
        let name = format!("{operation}/{client_id}/{}", key.as_str());
        Uuid::new_v5(&TRANSFER_ID_NAMESPACE, name.as_bytes())
    }
}

impl TransferId {
    /// The id of the operation a client names with an idempotency key: the
    /// same (operation, client, key) always gives the same id, so a retried
    /// HTTP request becomes the same command.
    #[must_use]
    pub fn derive(operation: Operation, client_id: Uuid, key: &IdempotencyKey) -> Self {
        Self(operation.derive(client_id, key))
    }
}

/// Why an idempotency key is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyKeyError {
    #[error("the idempotency key is empty")]
    Empty,
    #[error("the idempotency key is longer than {} characters", IdempotencyKey::LENGTH_MAX)]
    TooLong,
    #[error("the idempotency key may only hold printable ASCII characters")]
    NotPrintableAscii,
}

/// A client-chosen key that makes a request safe to retry: 1 to 255
/// printable ASCII characters (space to tilde).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const LENGTH_MAX: usize = 255;

    /// # Errors
    /// When the key is empty, too long, or holds anything but printable ASCII.
    pub fn parse(key: &str) -> Result<Self, IdempotencyKeyError> {
        if key.is_empty() {
            return Err(IdempotencyKeyError::Empty);
        }
        if key.len() > Self::LENGTH_MAX {
            return Err(IdempotencyKeyError::TooLong);
        }
        if !key.bytes().all(|byte| (b' '..=b'~').contains(&byte)) {
            return Err(IdempotencyKeyError::NotPrintableAscii);
        }
        Ok(Self(key.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let key = Cow::<'de, str>::deserialize(deserializer)?;
        Self::parse(&key).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for IdempotencyKey {
    fn schema_name() -> Cow<'static, str> {
        "IdempotencyKey".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": IdempotencyKey::LENGTH_MAX,
            "pattern": "^[ -~]+$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::parse(text).expect("test keys are valid")
    }

    #[test]
    fn a_key_of_printable_ascii_is_accepted() {
        assert_eq!(key("order-42 / retry #1").as_str(), "order-42 / retry #1");
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
    }

    #[test]
    fn an_empty_key_is_rejected() {
        assert_eq!(IdempotencyKey::parse(""), Err(IdempotencyKeyError::Empty));
    }

    #[test]
    fn a_key_longer_than_255_characters_is_rejected() {
        assert_eq!(IdempotencyKey::parse(&"k".repeat(256)), Err(IdempotencyKeyError::TooLong));
    }

    #[test]
    fn a_key_with_control_or_non_ascii_characters_is_rejected() {
        assert_eq!(IdempotencyKey::parse("a\nb"), Err(IdempotencyKeyError::NotPrintableAscii));
        assert_eq!(IdempotencyKey::parse("clé"), Err(IdempotencyKeyError::NotPrintableAscii));
    }

    #[test]
    fn the_same_client_and_key_always_derive_the_same_transfer_id() {
        let client = Uuid::from_u128(7);
        let first = TransferId::derive(Operation::Transfer, client, &key("abc"));
        let again = TransferId::derive(Operation::Transfer, client, &key("abc"));
        assert_eq!(first, again);
    }

    #[test]
    fn another_client_key_or_operation_derives_another_transfer_id() {
        let client = Uuid::from_u128(7);
        let base = TransferId::derive(Operation::Transfer, client, &key("abc"));
        assert_ne!(base, TransferId::derive(Operation::Transfer, Uuid::from_u128(8), &key("abc")));
        assert_ne!(base, TransferId::derive(Operation::Transfer, client, &key("abd")));
        assert_ne!(base, TransferId::derive(Operation::Deposit, client, &key("abc")));
    }

    #[test]
    fn the_cash_in_account_id_matches_the_one_the_migration_seeds() {
        assert_eq!(AccountId::cash_in(crate::Currency::EUR).to_string(), "00000000-0000-0000-0001-000000455552");
    }

    #[test]
    fn the_external_clearing_account_id_matches_the_one_the_migration_seeds() {
        assert_eq!(
            AccountId::external_clearing(crate::Currency::EUR).to_string(),
            "00000000-0000-0000-0002-000000455552"
        );
    }

    #[test]
    fn ids_parse_from_their_display_form() {
        let id = AccountId::new_random();
        assert_eq!(id.to_string().parse::<AccountId>().expect("parses"), id);
        assert!("not-a-uuid".parse::<AccountId>().is_err());
    }
}
