//! What a command needs before the engine can decide it: the accounts to
//! lock, the transfers to load, whether an unlocked read is enough, and how
//! a redelivery of it is recognised (its canonical form and fingerprint).
//! Pure functions of the command; the ledger calls them to plan a batch's
//! reads and locks.

use std::collections::HashMap;

use schemas::{AccountId, Command, TransferId};

use super::{Engine, TransferRecord};

impl Engine {
    /// The account ids a command may touch, given the transfers it refers
    /// to (so they can be locked before the engine runs).
    #[must_use]
    pub fn accounts_of(command: &Command, referenced: &HashMap<TransferId, TransferRecord>) -> Vec<AccountId> {
        let from_record = |id: &TransferId| {
            referenced
                .get(id)
                .map(|record| [record.source_account_id, record.destination_account_id])
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
        };
        match command {
            Command::TransferRequested(request) => vec![request.source_account_id, request.destination_account_id],
            Command::AccountDeposited(deposit) => {
                vec![AccountId::cash_in(deposit.money.currency()), deposit.account_id]
            }
            Command::TransferHold(hold) => vec![hold.source_account_id, hold.destination_account_id],
            Command::TransferPost(post) => {
                let mut ids = from_record(&post.hold_id);
                ids.push(post.source_account_id);
                ids
            }
            Command::TransferVoid(void) => {
                let mut ids = from_record(&void.hold_id);
                ids.push(void.source_account_id);
                ids
            }
            Command::TransferReverse(reverse) => from_record(&reverse.original_transfer_id),
            Command::AccountFrozen(command) | Command::AccountUnfrozen(command) | Command::AccountClosed(command) => {
                vec![command.account_id]
            }
            Command::AccountOverdraftLimitSet(command) => vec![command.account_id],
            Command::TransferExternal(payout) => {
                vec![payout.source_account_id, AccountId::external_clearing(payout.money.currency())]
            }
            Command::PayoutOutcome(outcome) => {
                let mut ids = from_record(&outcome.payment_id);
                ids.push(outcome.source_account_id);
                ids
            }
            Command::TransferBatch(batch) => {
                batch.legs.iter().flat_map(|leg| [leg.source_account_id, leg.destination_account_id]).collect()
            }
            Command::AccountSpendingLimitsSet(command) => vec![command.account_id],
        }
    }

    /// Whether a command can be decided on an unlocked read of its
    /// accounts, checked against the locked read before its batch commits
    /// (`crate::ledger::apply_batch`). It must depend on nothing but those
    /// accounts and its own id: no hold, original transfer, account command
    /// or recorded payout outcome, whose rows an unlocked read could see
    /// before another batch changes them.
    #[must_use]
    pub fn decidable_before_locking(command: &Command) -> bool {
        matches!(
            command,
            Command::TransferRequested(_)
                | Command::AccountDeposited(_)
                | Command::TransferHold(_)
                | Command::TransferExternal(_)
                | Command::TransferBatch(_)
        )
    }

    /// The transfer ids a command refers to besides its own.
    #[must_use]
    pub fn referenced_transfers(command: &Command) -> Vec<TransferId> {
        match command {
            Command::TransferPost(post) => vec![post.hold_id],
            Command::TransferVoid(void) => vec![void.hold_id],
            Command::TransferReverse(reverse) => vec![reverse.original_transfer_id],
            Command::PayoutOutcome(outcome) => vec![outcome.payment_id],
            _ => Vec::new(),
        }
    }
}

/// Whether a command is about an account (a freeze, an unfreeze, a close,
/// an overdraft limit) rather than a transfer: it is decided once under its
/// command id in `account_commands`, not under a transfer id in `transfers`.
#[must_use]
pub(crate) fn is_account_command(command: &Command) -> bool {
    matches!(
        command,
        Command::AccountFrozen(_)
            | Command::AccountUnfrozen(_)
            | Command::AccountClosed(_)
            | Command::AccountOverdraftLimitSet(_)
            | Command::AccountSpendingLimitsSet(_)
    )
}

/// The canonical form of a command for duplicate detection: its JSON
/// without `version` and `requested_at` (a retried HTTP request gets a new
/// timestamp), keys sorted.
#[must_use]
pub fn canonical_form(command: &Command) -> String {
    let mut value = serde_json::to_value(command).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("version");
        object.remove("requested_at");
    }
    value.to_string()
}

/// What a decided command's row keeps to recognise its redelivery: the
/// SHA-256 of its [`canonical_form`]. 32 bytes, whatever the command says
/// (a payout's creditor name and IBAN stay out of the ledger's rows), and
/// the same for the same command in any process or version that keeps the
/// canonical form.
#[must_use]
pub fn fingerprint(canonical: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(canonical.as_bytes()).to_vec()
}
