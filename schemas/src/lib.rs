//! The contracts of Ledgerline: money and identifier types that validate on
//! parse, the Kafka messages (commands in, events out), topic names, and the
//! SQL migrations of the ledger database.
//!
//! Everything that crosses a process boundary is defined here, once. Upstream
//! apps written in other languages publish against the JSON Schema files in
//! `schemas/json/`, which are generated from these types (see
//! [`json_schemas`]) and checked for staleness by a test.

pub mod annotations;
pub mod ids;
pub mod messages;
pub mod money;
pub mod payee;
pub mod topics;

pub use annotations::{Metadata, Reference, ReversalReason};
pub use ids::{AccountId, IdempotencyKey, Operation, TransferId};
pub use messages::{Command, Event, RejectionReason};
pub use money::{Amount, Currency, Money, MoneyError};
pub use payee::{Creditor, Iban, Remittance};
pub use topics::Topics;

/// The embedded SQL migrations of the ledger database, applied by
/// `ledgerctl migrate`, `ledgerctl dev` and the test kit.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Every published JSON Schema, by file name under `schemas/json/`.
#[must_use]
pub fn json_schemas() -> Vec<(&'static str, serde_json::Value)> {
    fn to_value(schema: schemars::Schema) -> serde_json::Value {
        serde_json::to_value(schema).expect("a generated JSON Schema always serializes")
    }
    vec![
        ("command.schema.json", to_value(schemars::schema_for!(Command))),
        ("event.schema.json", to_value(schemars::schema_for!(Event))),
        ("payment-requested.schema.json", to_value(schemars::schema_for!(messages::PaymentRequested))),
    ]
}
