//! The business rules of one money movement, free of I/O: given the state of
//! the accounts involved, apply or reject, and with which entries.

use rust_decimal::Decimal;
pub use schemas::messages::AccountStatus;
use schemas::messages::SpendingLimit;
use schemas::{AccountId, Currency, Money, RejectionReason};

/// An account as the processor sees it, locked for the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountState {
    pub id: AccountId,
    pub currency: Currency,
    pub kind: AccountKind,
    pub status: AccountStatus,
    pub balance: Decimal,
    pub held: Decimal,
    pub overdraft_limit: Decimal,
    /// The most one transfer may debit, when limited.
    pub per_transfer_max: Option<Decimal>,
    /// The most the account may debit in 24 hours, pending holds
    /// included, when limited.
    pub rolling_24h_max: Option<Decimal>,
    /// What the account debited in the last 24 hours (read only for an
    /// account with a rolling limit; zero otherwise).
    pub debited_24h: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    Customer,
    /// Cash-in, clearing, fees: may go negative by design.
    System,
}

impl AccountKind {
    /// The stable code, as in the database.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            AccountKind::Customer => "customer",
            AccountKind::System => "system",
        }
    }

    /// Parses a stored code; `None` for a code this version does not know.
    #[must_use]
    pub fn from_code(code: &str) -> Option<Self> {
        [Self::Customer, Self::System].into_iter().find(|kind| kind.code() == code)
    }
}

impl AccountState {
    /// What the account may still spend: balance − held + overdraft limit.
    #[must_use]
    pub fn available(&self) -> Decimal {
        self.balance - self.held + self.overdraft_limit
    }

    /// Whether the account's spending limits allow debiting `amount` more,
    /// `transfer_total` being what the transfer asking for it debits from
    /// the account in all (more than `amount` for a batch with several
    /// legs from it). Pending holds count against the rolling limit until
    /// they are released; a posted hold counts as its debit.
    ///
    /// # Errors
    /// The limit the debit would exceed.
    pub fn check_limits(&self, transfer_total: Decimal, amount: Decimal) -> Result<(), SpendingLimit> {
        if self.per_transfer_max.is_some_and(|max| transfer_total > max) {
            return Err(SpendingLimit::PerTransfer);
        }
        if self.rolling_24h_max.is_some_and(|max| self.debited_24h + self.held + amount > max) {
            return Err(SpendingLimit::Rolling24h);
        }
        Ok(())
    }
}

/// One line of the double entry: negative debits, positive credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub account_id: AccountId,
    pub amount: Decimal,
    pub currency: Currency,
    pub balance_after: Decimal,
}

/// The checks every debit of `source` for the benefit of `destination`
/// passes, funds aside: two distinct, known, open accounts in the money's
/// currency, the source not frozen.
///
/// # Errors
/// The stable reason the debit is refused.
pub fn check_pair<'a>(
    money: Money,
    source_id: AccountId,
    destination_id: AccountId,
    source: Option<&'a AccountState>,
    destination: Option<&'a AccountState>,
) -> Result<(&'a AccountState, &'a AccountState), RejectionReason> {
    if source_id == destination_id {
        return Err(RejectionReason::SameAccount);
    }
    let (Some(source), Some(destination)) = (source, destination) else {
        return Err(RejectionReason::UnknownAccount);
    };
    if source.currency != money.currency() || destination.currency != money.currency() {
        return Err(RejectionReason::CurrencyMismatch);
    }
    if source.status == AccountStatus::Closed || destination.status == AccountStatus::Closed {
        return Err(RejectionReason::AccountClosed);
    }
    // A frozen account may still receive money; it may not send any.
    if source.status == AccountStatus::Frozen {
        return Err(RejectionReason::AccountFrozen);
    }
    Ok((source, destination))
}

/// Whether `source` may spend `amount`: system accounts always may.
///
/// # Errors
/// `insufficient_funds`.
pub fn check_funds(source: &AccountState, amount: Decimal) -> Result<(), RejectionReason> {
    if source.kind == AccountKind::Customer && source.available() < amount {
        return Err(RejectionReason::InsufficientFunds);
    }
    Ok(())
}

/// Decides a movement of `money` from `source` to `destination` (either may
/// be unknown). On success, the two entries, which sum to zero.
///
/// # Errors
/// The stable reason the movement is refused.
pub fn decide_movement(
    money: Money,
    source_id: AccountId,
    destination_id: AccountId,
    source: Option<&AccountState>,
    destination: Option<&AccountState>,
) -> Result<[Entry; 2], RejectionReason> {
    let (source, destination) = check_pair(money, source_id, destination_id, source, destination)?;
    let amount = money.amount().value();
    check_funds(source, amount)?;
    Ok(movement_entries(source, destination, money))
}

/// The two entries of moving `money` from `source` to `destination`, with
/// the balances after them. No checks: the caller decided already.
#[must_use]
pub fn movement_entries(source: &AccountState, destination: &AccountState, money: Money) -> [Entry; 2] {
    let amount = money.amount().value();
    let entries = [
        Entry {
            account_id: source.id,
            amount: -amount,
            currency: money.currency(),
            balance_after: source.balance - amount,
        },
        Entry {
            account_id: destination.id,
            amount,
            currency: money.currency(),
            balance_after: destination.balance + amount,
        },
    ];
    assert_balanced(&entries);
    entries
}

/// The invariant of double entry: the entries of one transfer sum to zero in
/// every currency. A violation is a bug in the processor, never bad input,
/// so it panics rather than writing an unbalanced ledger.
///
/// # Panics
/// When the entries do not balance.
pub fn assert_balanced(entries: &[Entry]) {
    for currency in Currency::ALL {
        let sum: Decimal = entries.iter().filter(|entry| entry.currency == *currency).map(|entry| entry.amount).sum();
        assert!(sum.is_zero(), "unbalanced entries in {currency}: {entries:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(balance: &str, kind: AccountKind, status: AccountStatus) -> AccountState {
        AccountState {
            id: AccountId::new_random(),
            currency: Currency::EUR,
            kind,
            status,
            balance: balance.parse().expect("valid decimal"),
            held: Decimal::ZERO,
            overdraft_limit: Decimal::ZERO,
            per_transfer_max: None,
            rolling_24h_max: None,
            debited_24h: Decimal::ZERO,
        }
    }

    fn customer(balance: &str) -> AccountState {
        account(balance, AccountKind::Customer, AccountStatus::Active)
    }

    fn eur(amount: &str) -> Money {
        Money::parse(amount, Currency::EUR).expect("valid money")
    }

    fn decide(money: Money, source: &AccountState, destination: &AccountState) -> Result<[Entry; 2], RejectionReason> {
        decide_movement(money, source.id, destination.id, Some(source), Some(destination))
    }

    #[test]
    fn a_covered_transfer_debits_the_source_and_credits_the_destination() {
        let (source, destination) = (customer("100.00"), customer("5.00"));
        let [debit, credit] = decide(eur("30.00"), &source, &destination).expect("applied");
        assert_eq!(debit.amount, "-30.00".parse::<Decimal>().expect("decimal"));
        assert_eq!(debit.balance_after, "70.00".parse::<Decimal>().expect("decimal"));
        assert_eq!(credit.amount, "30.00".parse::<Decimal>().expect("decimal"));
        assert_eq!(credit.balance_after, "35.00".parse::<Decimal>().expect("decimal"));
        assert_eq!(debit.amount + credit.amount, Decimal::ZERO);
    }

    #[test]
    fn spending_the_whole_balance_is_allowed_but_a_cent_more_is_not() {
        let (source, destination) = (customer("30.00"), customer("0"));
        assert!(decide(eur("30.00"), &source, &destination).is_ok());
        assert_eq!(decide(eur("30.01"), &source, &destination), Err(RejectionReason::InsufficientFunds));
    }

    #[test]
    fn held_funds_are_not_available_and_an_overdraft_limit_is() {
        let mut source = customer("100.00");
        source.held = "80.00".parse().expect("decimal");
        let destination = customer("0");
        assert_eq!(decide(eur("30.00"), &source, &destination), Err(RejectionReason::InsufficientFunds));
        source.overdraft_limit = "10.00".parse().expect("decimal");
        assert!(decide(eur("30.00"), &source, &destination).is_ok());
    }

    #[test]
    fn a_system_account_may_go_negative() {
        let cash_in = account("0", AccountKind::System, AccountStatus::Active);
        let [debit, _] = decide(eur("1000.00"), &cash_in, &customer("0")).expect("applied");
        assert_eq!(debit.balance_after, "-1000.00".parse::<Decimal>().expect("decimal"));
    }

    #[test]
    fn an_unknown_account_is_rejected() {
        let known = customer("100.00");
        let missing = AccountId::new_random();
        assert_eq!(
            decide_movement(eur("1.00"), known.id, missing, Some(&known), None),
            Err(RejectionReason::UnknownAccount)
        );
    }

    #[test]
    fn a_transfer_to_the_same_account_is_rejected() {
        let source = customer("100.00");
        assert_eq!(
            decide_movement(eur("1.00"), source.id, source.id, Some(&source), Some(&source)),
            Err(RejectionReason::SameAccount)
        );
    }

    #[test]
    fn a_currency_mismatch_is_rejected() {
        let source = customer("100.00");
        let mut destination = customer("0");
        destination.currency = Currency::USD;
        assert_eq!(decide(eur("1.00"), &source, &destination), Err(RejectionReason::CurrencyMismatch));
    }

    #[test]
    fn a_frozen_account_may_receive_but_not_send() {
        let frozen = account("100.00", AccountKind::Customer, AccountStatus::Frozen);
        let active = customer("100.00");
        assert_eq!(decide(eur("1.00"), &frozen, &active), Err(RejectionReason::AccountFrozen));
        assert!(decide(eur("1.00"), &active, &frozen).is_ok());
    }

    #[test]
    fn a_closed_account_may_neither_send_nor_receive() {
        let closed = account("100.00", AccountKind::Customer, AccountStatus::Closed);
        let active = customer("100.00");
        assert_eq!(decide(eur("1.00"), &closed, &active), Err(RejectionReason::AccountClosed));
        assert_eq!(decide(eur("1.00"), &active, &closed), Err(RejectionReason::AccountClosed));
    }

    #[test]
    fn the_per_transfer_limit_bounds_one_transfer_and_the_rolling_limit_counts_debits_and_holds() {
        let decimal = |text: &str| text.parse::<Decimal>().expect("decimal");
        let mut source = customer("1000.00");
        source.per_transfer_max = Some(decimal("100.00"));
        assert_eq!(source.check_limits(decimal("100.00"), decimal("100.00")), Ok(()));
        assert_eq!(source.check_limits(decimal("100.01"), decimal("100.01")), Err(SpendingLimit::PerTransfer));
        // A batch: each leg is small, together they are one transfer.
        assert_eq!(source.check_limits(decimal("120.00"), decimal("60.00")), Err(SpendingLimit::PerTransfer));
        source.per_transfer_max = None;
        source.rolling_24h_max = Some(decimal("300.00"));
        source.debited_24h = decimal("150.00");
        source.held = decimal("100.00");
        assert_eq!(source.check_limits(decimal("50.00"), decimal("50.00")), Ok(()));
        assert_eq!(source.check_limits(decimal("50.01"), decimal("50.01")), Err(SpendingLimit::Rolling24h));
    }

    #[test]
    #[should_panic(expected = "unbalanced entries")]
    fn unbalanced_entries_are_caught_by_the_assertion() {
        let id = AccountId::new_random();
        assert_balanced(&[Entry {
            account_id: id,
            amount: Decimal::ONE,
            currency: Currency::EUR,
            balance_after: Decimal::ONE,
        }]);
    }
}
