//! Money that moves: a transfer or a deposit booked as a pair of entries, a
//! batch of them all or nothing, a reversal of one, and a payout, from the
//! order of its funds to the provider's outcome.

use std::collections::HashMap;

use rust_decimal::Decimal;
use schemas::messages::{
    PaymentRequested, PayoutOutcome, PayoutOutcomeConflicted, PayoutResult, TransferBatch, TransferCompleted,
    TransferExternal, TransferKind, V1,
};
use schemas::{AccountId, Event, Money, RejectionReason, TransferId};

use super::{Engine, Refusal, TransferRecord, TransferStatus};
use crate::decide::{self, AccountState, Entry};

/// Whether a debit of this kind counts against its source's spending
/// limits: what the account's owner asks to spend. A deposit debits a
/// system account, a post spends what its hold counted already, and a
/// reversal corrects a transfer (refusing it would keep a mistake).
pub(super) fn is_limited(kind: TransferKind) -> bool {
    matches!(kind, TransferKind::Transfer | TransferKind::Hold | TransferKind::Payout)
}

impl Engine {
    pub(super) fn movement(&mut self, record: &TransferRecord) -> Result<(), Refusal> {
        let (source_id, destination_id, money) = record.legs()?;
        let entries = self.decide_debit(record.kind, money, source_id, destination_id, money.amount().value())?;
        self.book(record.id, entries);
        self.completed(record, source_id, destination_id, money);
        Ok(())
    }

    /// Tells that `record` moved `money` from `source_id` to `destination_id`.
    fn completed(&mut self, record: &TransferRecord, source_id: AccountId, destination_id: AccountId, money: Money) {
        self.changes.events.push(Event::TransferCompleted(TransferCompleted {
            version: V1,
            transfer_id: record.id,
            kind: record.kind,
            source_account_id: source_id,
            destination_account_id: destination_id,
            money,
            related_transfer_id: record.related_transfer_id,
            reference: record.reference.clone(),
            metadata: record.metadata.clone(),
            completed_at: self.now,
        }));
    }

    /// Decides a movement of `money` of a transfer of `kind` that debits
    /// `transfer_total` from the source in all, spending limits included.
    fn decide_debit(
        &self,
        kind: TransferKind,
        money: Money,
        source_id: AccountId,
        destination_id: AccountId,
        transfer_total: Decimal,
    ) -> Result<[Entry; 2], Refusal> {
        let source = self.accounts.get(&source_id);
        let entries =
            decide::decide_movement(money, source_id, destination_id, source, self.accounts.get(&destination_id))?;
        if let Some(source) = source.filter(|_| is_limited(kind)) {
            source.check_limits(transfer_total, money.amount().value())?;
        }
        Ok(entries)
    }

    /// Applies a batch's legs in order, all or nothing: a leg may spend
    /// what an earlier leg credited, and a refused leg refuses the whole
    /// batch with its reason and index, every balance as it was.
    pub(super) fn batch(&mut self, record: &TransferRecord, batch: &TransferBatch) -> Result<(), Refusal> {
        let before: Vec<(AccountId, AccountState)> = batch
            .legs
            .iter()
            .flat_map(|leg| [leg.source_account_id, leg.destination_account_id])
            .filter_map(|id| self.accounts.get(&id).map(|state| (id, state.clone())))
            .collect();
        let entries_before = self.changes.entries.len();
        // What the batch debits from each source so far: the batch is one
        // transfer for the per-transfer limit.
        let mut debited: HashMap<AccountId, Decimal> = HashMap::new();
        let mut legs = Vec::with_capacity(batch.legs.len());
        for (index, leg) in batch.legs.iter().enumerate() {
            let (source_id, money) = (leg.source_account_id, leg.money);
            let total = debited.get(&source_id).copied().unwrap_or_default() + money.amount().value();
            match self.decide_debit(TransferKind::Transfer, money, source_id, leg.destination_account_id, total) {
                Ok(entries) => {
                    debited.insert(source_id, total);
                    let leg = TransferRecord::leg_of(record, index, source_id, leg.destination_account_id, money);
                    self.book(leg.id, entries);
                    legs.push(leg);
                }
                Err(refusal) => {
                    for (id, state) in before {
                        self.accounts.insert(id, state);
                    }
                    self.changes.entries.truncate(entries_before);
                    return Err(Refusal { leg: u16::try_from(index).ok(), ..refusal });
                }
            }
        }
        for leg in legs {
            let (source_id, destination_id, money) = leg.legs()?;
            self.completed(&leg, source_id, destination_id, money);
            self.new_transfer_order.push(leg.id);
            self.transfers.insert(leg.id, leg);
        }
        Ok(())
    }

    /// Writes entries and moves the balances they describe.
    pub(super) fn book(&mut self, transfer_id: TransferId, entries: [Entry; 2]) {
        decide::assert_balanced(&entries);
        for entry in entries {
            if let Some(account) = self.accounts.get_mut(&entry.account_id) {
                account.balance += entry.amount;
                debug_assert_eq!(account.balance, entry.balance_after);
                // Kept up for accounts with a rolling limit only: the
                // locked read derives it for those alone.
                if account.rolling_24h_max.is_some() && entry.amount < Decimal::ZERO {
                    account.debited_24h -= entry.amount;
                }
            }
            self.changes.entries.push((transfer_id, entry));
        }
    }

    pub(super) fn reverse(&mut self, record: &mut TransferRecord) -> Result<(), Refusal> {
        let original_id = record.related_transfer_id.ok_or(RejectionReason::TransferNotFound)?;
        let original = self.transfers.get(&original_id).cloned().ok_or(RejectionReason::TransferNotFound)?;
        let reversible = matches!(original.kind, TransferKind::Transfer | TransferKind::Deposit | TransferKind::Post)
            && original.status == TransferStatus::Completed;
        if !reversible {
            return Err(RejectionReason::TransferNotReversible.into());
        }
        if original.reversed {
            return Err(RejectionReason::AlreadyReversed.into());
        }
        // Money posted to external clearing has left the bank: the provider
        // paid it out. Giving it back is a new payment the other way, not a
        // debit of the clearing account (which has no funds check).
        if original
            .money
            .zip(original.destination_account_id)
            .is_some_and(|(money, destination)| destination == AccountId::external_clearing(money.currency()))
        {
            return Err(RejectionReason::ReversalOfPayout.into());
        }
        // The correction runs the other way: the original's destination pays back.
        record.source_account_id = original.destination_account_id;
        record.destination_account_id = original.source_account_id;
        record.money = original.money;
        self.movement(record)?;
        if let Some(original) = self.transfers.get_mut(&original_id) {
            original.reversed = true;
        }
        Ok(())
    }

    /// Holds a payout's funds on its source and, once they are held, orders
    /// the payout from the provider (through the outbox).
    pub(super) fn payout(&mut self, record: &TransferRecord, payout: &TransferExternal) -> Result<(), Refusal> {
        self.hold(record)?;
        // Asked of the provider only once the funds are safe.
        self.changes.payments.push(PaymentRequested {
            version: V1,
            payment_id: record.id,
            source_account_id: payout.source_account_id,
            money: payout.money,
            creditor: payout.creditor.clone(),
            remittance_information: payout.remittance_information.clone(),
            requested_at: payout.requested_at,
        });
        Ok(())
    }

    /// Settles a payout's hold with the provider's outcome: posted to
    /// external clearing when paid, released when refused. Only an outcome
    /// the relay or a provider callback recorded counts; an outcome that
    /// contradicts the payout's settlement is refused and raised as a
    /// conflict, the ledger left as it is.
    pub(super) fn settle_payout(
        &mut self,
        record: &mut TransferRecord,
        outcome: &PayoutOutcome,
    ) -> Result<(), RejectionReason> {
        if !self.recorded_outcomes.contains(&(outcome.payment_id, outcome.result)) {
            return Err(RejectionReason::PayoutOutcomeNotRecorded);
        }
        let payout = self
            .transfers
            .get(&outcome.payment_id)
            .filter(|payout| {
                payout.kind == TransferKind::Payout && payout.source_account_id == Some(outcome.source_account_id)
            })
            .cloned()
            .ok_or(RejectionReason::HoldNotFound)?;
        record.source_account_id = payout.source_account_id;
        record.destination_account_id = payout.destination_account_id;
        record.money = payout.money;
        match (payout.status, outcome.result) {
            (TransferStatus::Held, PayoutResult::Settled) => self.capture(record, &payout, None),
            (TransferStatus::Held, PayoutResult::Rejected) => {
                self.release(payout.id, TransferStatus::Voided, Some(record.id));
                Ok(())
            }
            (TransferStatus::Posted, PayoutResult::Rejected) | (TransferStatus::Voided, PayoutResult::Settled) => {
                self.raise_payout_conflict(&payout, outcome.result);
                Err(RejectionReason::PayoutOutcomeConflict)
            }
            (TransferStatus::Rejected, _) => Err(RejectionReason::HoldNotFound),
            _ => Err(RejectionReason::HoldAlreadySettled),
        }
    }

    /// Tells that the provider reported `reported` for a payout the ledger
    /// settled the other way, for an operator to reconcile.
    fn raise_payout_conflict(&mut self, payout: &TransferRecord, reported: PayoutResult) {
        let (Some(source_account_id), Some(money)) = (payout.source_account_id, payout.money) else { return };
        self.changes.events.push(Event::PayoutOutcomeConflicted(PayoutOutcomeConflicted {
            version: V1,
            payment_id: payout.id,
            source_account_id,
            money,
            settled_as: if payout.status == TransferStatus::Posted {
                PayoutResult::Settled
            } else {
                PayoutResult::Rejected
            },
            reported,
            detected_at: self.now,
        }));
    }
}
