//! Holds: reserving funds on a source (a hold or a payout), and settling a
//! pending hold by posting it (all or part), voiding it, or letting it
//! expire.

use rust_decimal::Decimal;
use schemas::messages::{AccountStatus, TransferCompleted, TransferHeld, TransferKind, TransferVoided, V1, VoidReason};
use schemas::{AccountId, Event, Money, RejectionReason, TransferId};

use super::{Engine, Refusal, TransferRecord, TransferStatus};
use crate::decide;

impl Engine {
    /// Reserves a hold's or a payout's funds on the source. A payout has no
    /// expiry.
    pub(super) fn hold(&mut self, record: &TransferRecord) -> Result<(), Refusal> {
        let (source_id, destination_id, money) = record.legs()?;
        let expires_at = record.expires_at;
        let (source, _) = decide::check_pair(
            money,
            source_id,
            destination_id,
            self.accounts.get(&source_id),
            self.accounts.get(&destination_id),
        )?;
        decide::check_funds(source, money.amount().value())?;
        source.check_limits(money.amount().value(), money.amount().value())?;
        if expires_at.is_some_and(|expires_at| expires_at <= self.log_time) {
            return Err(RejectionReason::HoldExpired.into());
        }
        if let Some(source) = self.accounts.get_mut(&source_id) {
            source.held += money.amount().value();
        }
        self.changes.events.push(Event::TransferHeld(TransferHeld {
            version: V1,
            transfer_id: record.id,
            kind: record.kind,
            source_account_id: source_id,
            destination_account_id: destination_id,
            money,
            expires_at,
            reference: record.reference.clone(),
            metadata: record.metadata.clone(),
            held_at: self.now,
        }));
        Ok(())
    }

    /// The pending hold `hold_id` of `source_account_id` that a
    /// `transfer.post` or `transfer.void` may settle, or why there is none.
    /// A payout's hold is settled by the provider's outcome only.
    fn pending_hold(
        &mut self,
        hold_id: TransferId,
        source_account_id: AccountId,
    ) -> Result<TransferRecord, RejectionReason> {
        let hold = self
            .transfers
            .get(&hold_id)
            .filter(|hold| {
                matches!(hold.kind, TransferKind::Hold | TransferKind::Payout)
                    && hold.source_account_id == Some(source_account_id)
            })
            .cloned()
            .ok_or(RejectionReason::HoldNotFound)?;
        if hold.kind == TransferKind::Payout {
            return Err(RejectionReason::PayoutSettledByProviderOnly);
        }
        match hold.status {
            TransferStatus::Held => {}
            TransferStatus::Rejected => return Err(RejectionReason::HoldNotFound),
            _ => return Err(RejectionReason::HoldAlreadySettled),
        }
        if hold.expires_at.is_some_and(|expires_at| expires_at <= self.log_time) {
            self.release(hold_id, TransferStatus::Expired, None);
            return Err(RejectionReason::HoldExpired);
        }
        Ok(hold)
    }

    /// Releases a pending hold's reservation and settles its row.
    pub(super) fn release(&mut self, hold_id: TransferId, status: TransferStatus, void_id: Option<TransferId>) {
        let Some(hold) = self.transfers.get_mut(&hold_id) else { return };
        debug_assert_eq!(hold.status, TransferStatus::Held);
        hold.status = status;
        let (Some(source_id), Some(money)) = (hold.source_account_id, hold.money) else { return };
        if !self.new_transfer_order.contains(&hold_id) {
            self.settled_holds.push(hold_id);
        }
        if let Some(source) = self.accounts.get_mut(&source_id) {
            source.held -= money.amount().value();
            assert!(source.held >= Decimal::ZERO, "held below zero on {source_id}");
        }
        if status != TransferStatus::Posted {
            self.changes.events.push(Event::TransferVoided(TransferVoided {
                version: V1,
                hold_id,
                transfer_id: void_id,
                reason: if status == TransferStatus::Expired { VoidReason::Expired } else { VoidReason::Requested },
                source_account_id: source_id,
                money,
                voided_at: self.now,
            }));
        }
    }

    pub(super) fn post(
        &mut self,
        record: &mut TransferRecord,
        source_account_id: AccountId,
        requested: Option<Money>,
    ) -> Result<(), RejectionReason> {
        let hold_id = record.related_transfer_id.ok_or(RejectionReason::HoldNotFound)?;
        let hold = self.pending_hold(hold_id, source_account_id)?;
        self.capture(record, &hold, requested)
    }

    /// Posts `requested` (the whole hold when `None`) of the pending `hold`
    /// to its destination and releases the rest.
    ///
    /// The source's status does not matter: the hold reserved the funds
    /// when it was made, so a freeze since (a fraud review, say) cannot
    /// stop money the provider already paid out from being debited. A
    /// closed source cannot have a pending hold (closing one with holds is
    /// refused). The destination must still be open to receive.
    pub(super) fn capture(
        &mut self,
        record: &mut TransferRecord,
        hold: &TransferRecord,
        requested: Option<Money>,
    ) -> Result<(), RejectionReason> {
        let (Some(source_account_id), Some(destination_id), Some(hold_money)) =
            (hold.source_account_id, hold.destination_account_id, hold.money)
        else {
            return Err(RejectionReason::HoldNotFound);
        };
        let money = requested.unwrap_or(hold_money);
        record.source_account_id = Some(source_account_id);
        record.destination_account_id = Some(destination_id);
        record.money = Some(money);
        if money.currency() != hold_money.currency() {
            return Err(RejectionReason::CurrencyMismatch);
        }
        if money.amount() > hold_money.amount() {
            return Err(RejectionReason::AmountExceedsHold);
        }
        let destination = self.accounts.get(&destination_id).ok_or(RejectionReason::UnknownAccount)?;
        if destination.status == AccountStatus::Closed {
            return Err(RejectionReason::AccountClosed);
        }
        // Funds are not checked again: the hold reserved more than the post
        // takes, so releasing it first always covers the debit.
        self.release(hold.id, TransferStatus::Posted, None);
        if let Some(hold) = self.transfers.get_mut(&hold.id) {
            hold.settled_amount = Some(money.amount().value());
        }
        let (Some(source), Some(destination)) =
            (self.accounts.get(&source_account_id), self.accounts.get(&destination_id))
        else {
            return Err(RejectionReason::UnknownAccount);
        };
        let entries = decide::movement_entries(source, destination, money);
        self.book(record.id, entries);
        self.changes.events.push(Event::TransferCompleted(TransferCompleted {
            version: V1,
            transfer_id: record.id,
            kind: TransferKind::Post,
            source_account_id,
            destination_account_id: destination_id,
            money,
            related_transfer_id: Some(hold.id),
            // A capture tells what its hold was for.
            reference: hold.reference.clone(),
            metadata: hold.metadata.clone(),
            completed_at: self.now,
        }));
        Ok(())
    }

    pub(super) fn void(
        &mut self,
        record: &mut TransferRecord,
        source_account_id: AccountId,
    ) -> Result<(), RejectionReason> {
        let hold_id = record.related_transfer_id.ok_or(RejectionReason::HoldNotFound)?;
        let hold = self.pending_hold(hold_id, source_account_id)?;
        record.source_account_id = hold.source_account_id;
        record.destination_account_id = hold.destination_account_id;
        record.money = hold.money;
        self.release(hold_id, TransferStatus::Voided, Some(record.id));
        Ok(())
    }

    /// Releases pending holds whose expiry has passed (found by the sweep).
    pub fn expire_holds(&mut self, hold_ids: &[TransferId]) -> usize {
        let mut expired = 0;
        for hold_id in hold_ids {
            let due = self.transfers.get(hold_id).is_some_and(|hold| {
                hold.kind == TransferKind::Hold
                    && hold.status == TransferStatus::Held
                    && hold.expires_at.is_some_and(|expires_at| expires_at <= self.now)
            });
            if due {
                self.release(*hold_id, TransferStatus::Expired, None);
                expired += 1;
            }
        }
        expired
    }
}
