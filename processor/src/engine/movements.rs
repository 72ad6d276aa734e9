//! Money that moves: a transfer or a deposit booked as a pair of entries, a
//! reversal of one, and a payout, from the order of its funds to the
//! provider's outcome.

use schemas::messages::{
    PaymentRequested, PayoutOutcome, PayoutOutcomeConflicted, PayoutResult, TransferCompleted, TransferExternal,
    TransferKind, V1,
};
use schemas::{AccountId, Event, RejectionReason, TransferId};

use super::{Engine, TransferRecord, TransferStatus};
use crate::decide::{self, Entry};

impl Engine {
    pub(super) fn movement(&mut self, record: &TransferRecord) -> Result<(), RejectionReason> {
        let (source_id, destination_id, money) = record.legs()?;
        let entries = decide::decide_movement(
            money,
            source_id,
            destination_id,
            self.accounts.get(&source_id),
            self.accounts.get(&destination_id),
        )?;
        self.book(record.id, entries);
        self.changes.events.push(Event::TransferCompleted(TransferCompleted {
            version: V1,
            transfer_id: record.id,
            kind: record.kind,
            source_account_id: source_id,
            destination_account_id: destination_id,
            money,
            related_transfer_id: record.related_transfer_id,
            completed_at: self.now,
        }));
        Ok(())
    }

    /// Writes entries and moves the balances they describe.
    pub(super) fn book(&mut self, transfer_id: TransferId, entries: [Entry; 2]) {
        decide::assert_balanced(&entries);
        for entry in entries {
            if let Some(account) = self.accounts.get_mut(&entry.account_id) {
                account.balance += entry.amount;
                debug_assert_eq!(account.balance, entry.balance_after);
            }
            self.changes.entries.push((transfer_id, entry));
        }
    }

    pub(super) fn reverse(&mut self, record: &mut TransferRecord) -> Result<(), RejectionReason> {
        let original_id = record.related_transfer_id.ok_or(RejectionReason::TransferNotFound)?;
        let original = self.transfers.get(&original_id).cloned().ok_or(RejectionReason::TransferNotFound)?;
        let reversible = matches!(original.kind, TransferKind::Transfer | TransferKind::Deposit | TransferKind::Post)
            && original.status == TransferStatus::Completed;
        if !reversible {
            return Err(RejectionReason::TransferNotReversible);
        }
        if original.reversed {
            return Err(RejectionReason::AlreadyReversed);
        }
        // Money posted to external clearing has left the bank: the provider
        // paid it out. Giving it back is a new payment the other way, not a
        // debit of the clearing account (which has no funds check).
        if original
            .money
            .zip(original.destination_account_id)
            .is_some_and(|(money, destination)| destination == AccountId::external_clearing(money.currency()))
        {
            return Err(RejectionReason::ReversalOfPayout);
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
    pub(super) fn payout(&mut self, record: &TransferRecord, payout: &TransferExternal) -> Result<(), RejectionReason> {
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
