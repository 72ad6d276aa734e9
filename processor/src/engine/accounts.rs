//! Account commands: freeze, unfreeze, close, set the overdraft limit or
//! the spending limits. Each
//! is decided once under its command id and stored in `account_commands`,
//! applied or refused.

use rust_decimal::Decimal;
use schemas::messages::{
    AccountCommandRejected, AccountOverdraftLimitChanged, AccountSpendingLimitsChanged, AccountStatus,
    AccountStatusChanged, V1,
};
use schemas::{AccountId, Command, Event, RejectionReason};
use uuid::Uuid;

use super::{AccountCommandRecord, Engine, Outcome, Position};

impl Engine {
    pub(super) fn apply_account_command(
        &mut self,
        command: &Command,
        canonical: &str,
        fingerprint: Vec<u8>,
        position: &Position,
    ) -> Outcome {
        let command_id = command.id();
        let (account_id, requested_at) = match command {
            Command::AccountFrozen(c) | Command::AccountUnfrozen(c) | Command::AccountClosed(c) => {
                (c.account_id, c.requested_at)
            }
            Command::AccountOverdraftLimitSet(c) => (c.account_id, c.requested_at),
            Command::AccountSpendingLimitsSet(c) => (c.account_id, c.requested_at),
            _ => unreachable!("only account commands come here"),
        };
        if let Some(previous) = self.account_commands.get(&command_id) {
            if *previous == fingerprint {
                return Outcome::AlreadyDecided;
            }
            // The row belongs to the first command; this one is refused
            // through the outbox only, under an id of its own.
            let event = self.id_reused_event(command, canonical, Some(account_id));
            self.changes.events.push(event);
            return Outcome::Rejected(RejectionReason::IdempotencyKeyReused);
        }
        let result = self.account_change(command, account_id);
        let outcome = match result {
            Ok(event) => {
                self.changes.events.push(event);
                Outcome::Applied
            }
            Err(reason) => {
                self.changes.events.push(Event::AccountCommandRejected(AccountCommandRejected {
                    version: V1,
                    command_id,
                    account_id,
                    command_type: command.type_name().to_owned(),
                    reason,
                    rejected_at: self.now,
                }));
                Outcome::Rejected(reason)
            }
        };
        self.account_commands.insert(command_id, fingerprint.clone());
        self.changes.account_commands.push(AccountCommandRecord {
            id: command_id,
            account_id,
            command_type: command.type_name(),
            rejection_reason: match outcome {
                Outcome::Rejected(reason) => Some(reason),
                _ => None,
            },
            fingerprint,
            requested_at,
            position: position.clone(),
        });
        outcome
    }

    fn account_change(&mut self, command: &Command, account_id: AccountId) -> Result<Event, RejectionReason> {
        let now = self.now;
        let account = self.accounts.get_mut(&account_id).ok_or(RejectionReason::UnknownAccount)?;
        if account.status == AccountStatus::Closed {
            return Err(RejectionReason::AccountClosed);
        }
        let status_changed = |command_id: Uuid, status: AccountStatus| {
            Event::AccountStatusChanged(AccountStatusChanged {
                version: V1,
                command_id,
                account_id,
                status,
                changed_at: now,
            })
        };
        match command {
            Command::AccountFrozen(c) => {
                if account.status == AccountStatus::Frozen {
                    return Err(RejectionReason::AccountFrozen);
                }
                account.status = AccountStatus::Frozen;
                Ok(status_changed(c.command_id, AccountStatus::Frozen))
            }
            Command::AccountUnfrozen(c) => {
                if account.status != AccountStatus::Frozen {
                    return Err(RejectionReason::AccountNotFrozen);
                }
                account.status = AccountStatus::Active;
                Ok(status_changed(c.command_id, AccountStatus::Active))
            }
            Command::AccountClosed(c) => {
                if !account.balance.is_zero() || !account.held.is_zero() {
                    return Err(RejectionReason::AccountNotEmpty);
                }
                account.status = AccountStatus::Closed;
                Ok(status_changed(c.command_id, AccountStatus::Closed))
            }
            Command::AccountOverdraftLimitSet(c) => {
                let limit = match c.overdraft_limit {
                    Some(money) if money.currency() != account.currency => {
                        return Err(RejectionReason::CurrencyMismatch);
                    }
                    Some(money) => money.amount().value(),
                    None => Decimal::ZERO,
                };
                // A limit below what the account already uses would leave it
                // overdrawn beyond its limit.
                if account.balance - account.held + limit < Decimal::ZERO {
                    return Err(RejectionReason::InsufficientFunds);
                }
                account.overdraft_limit = limit;
                Ok(Event::AccountOverdraftLimitChanged(AccountOverdraftLimitChanged {
                    version: V1,
                    command_id: c.command_id,
                    account_id,
                    overdraft_limit: c.overdraft_limit,
                    changed_at: now,
                }))
            }
            Command::AccountSpendingLimitsSet(c) => {
                let amount = |limit: Option<schemas::Money>| match limit {
                    Some(money) if money.currency() != account.currency => Err(RejectionReason::CurrencyMismatch),
                    limit => Ok(limit.map(|money| money.amount().value())),
                };
                // A lower limit than what the account spent today is set
                // all the same: it stops further debits, as asked.
                let per_transfer_max = amount(c.limits.per_transfer_max)?;
                let rolling_24h_max = amount(c.limits.rolling_24h_max)?;
                account.per_transfer_max = per_transfer_max;
                account.rolling_24h_max = rolling_24h_max;
                Ok(Event::AccountSpendingLimitsChanged(AccountSpendingLimitsChanged {
                    version: V1,
                    command_id: c.command_id,
                    account_id,
                    limits: c.limits,
                    changed_at: now,
                }))
            }
            _ => unreachable!("only account commands come here"),
        }
    }
}
