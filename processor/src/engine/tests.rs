use rust_decimal::Decimal;
use schemas::messages::{
    AccountOverdraftLimitSet, AccountSpendingLimitsSet, AccountStatus, AccountStatusCommand, BatchLeg, SpendingLimits,
    TransferBatch, TransferHold, TransferPost, TransferRequested, TransferReverse, TransferVoid,
};
use schemas::{Currency, Money, Reference};

use super::*;
use crate::decide::AccountKind;

fn eur(amount: &str) -> Money {
    Money::parse(amount, Currency::EUR).expect("valid money")
}

fn dec(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

fn account(balance: &str) -> AccountState {
    AccountState {
        id: AccountId::new_random(),
        currency: Currency::EUR,
        kind: AccountKind::Customer,
        status: AccountStatus::Active,
        balance: dec(balance),
        held: Decimal::ZERO,
        overdraft_limit: Decimal::ZERO,
        per_transfer_max: None,
        rolling_24h_max: None,
        debited_24h: Decimal::ZERO,
    }
}

fn position() -> Position {
    Position { topic: "ledger.commands".into(), partition: 0, offset: 0, timestamp: None }
}

struct Ledger {
    engine: Engine,
    alice: AccountId,
    bob: AccountId,
}

impl Ledger {
    fn new(alice_balance: &str) -> Self {
        let (alice, bob) = (account(alice_balance), account("0"));
        let (alice_id, bob_id) = (alice.id, bob.id);
        Self {
            engine: Engine::new(Utc::now(), vec![alice, bob], Vec::new(), HashMap::new()),
            alice: alice_id,
            bob: bob_id,
        }
    }

    fn apply(&mut self, command: &Command) -> Outcome {
        self.engine.apply(command, &position())
    }

    fn balance_and_held(&self, id: AccountId) -> (Decimal, Decimal) {
        let account = self.engine.account(id).expect("known account");
        (account.balance, account.held)
    }

    fn transfer(&self, amount: &str) -> Command {
        Command::TransferRequested(TransferRequested {
            version: V1,
            transfer_id: TransferId::from_uuid(Uuid::new_v4()),
            source_account_id: self.alice,
            destination_account_id: self.bob,
            money: eur(amount),
            metadata: None,
            reference: None,
            requested_at: Utc::now(),
        })
    }

    fn hold(&self, amount: &str, expires_in: chrono::Duration) -> (TransferId, Command) {
        let id = TransferId::from_uuid(Uuid::new_v4());
        let command = Command::TransferHold(TransferHold {
            version: V1,
            transfer_id: id,
            source_account_id: self.alice,
            destination_account_id: self.bob,
            money: eur(amount),
            expires_at: Utc::now() + expires_in,
            metadata: None,
            reference: None,
            requested_at: Utc::now(),
        });
        (id, command)
    }

    fn post(&self, hold_id: TransferId, amount: Option<&str>) -> Command {
        Command::TransferPost(TransferPost {
            version: V1,
            transfer_id: TransferId::from_uuid(Uuid::new_v4()),
            hold_id,
            source_account_id: self.alice,
            money: amount.map(eur),
            requested_at: Utc::now(),
        })
    }

    fn void(&self, hold_id: TransferId) -> Command {
        Command::TransferVoid(TransferVoid {
            version: V1,
            transfer_id: TransferId::from_uuid(Uuid::new_v4()),
            hold_id,
            source_account_id: self.alice,
            requested_at: Utc::now(),
        })
    }

    fn status(&self, account_id: AccountId, make: fn(AccountStatusCommand) -> Command) -> Command {
        make(AccountStatusCommand { version: V1, command_id: Uuid::new_v4(), account_id, requested_at: Utc::now() })
    }
}

fn reverse(original: TransferId) -> Command {
    Command::TransferReverse(TransferReverse {
        version: V1,
        transfer_id: TransferId::from_uuid(Uuid::new_v4()),
        original_transfer_id: original,
        reason: None,
        requested_at: Utc::now(),
    })
}

/// The same commands decided on two reads of the same accounts.
fn decided_on(accounts: &[AccountState], commands: &[Command], now: DateTime<Utc>) -> Changes {
    let mut engine = Engine::new(now, accounts.to_vec(), Vec::new(), HashMap::new());
    for command in commands {
        engine.apply(command, &position());
    }
    engine.finish()
}

#[test]
fn decisions_on_reads_that_differ_in_balances_only_decide_alike_and_a_changed_outcome_does_not() {
    let now = Utc::now();
    let ledger = Ledger::new("50.00");
    let commands = [ledger.transfer("30.00"), ledger.transfer("15.00")];
    let read = [account("50.00"), account("0")];
    let (mut alice, mut bob) = (read[0].clone(), read[1].clone());
    let commands: Vec<Command> = commands
        .iter()
        .map(|command| match command {
            Command::TransferRequested(request) => Command::TransferRequested(TransferRequested {
                source_account_id: alice.id,
                destination_account_id: bob.id,
                ..request.clone()
            }),
            other => other.clone(),
        })
        .collect();
    let first = decided_on(&read, &commands, now);

    // A credit to either account meanwhile: same decisions, other balances.
    bob.balance = dec("7.00");
    alice.balance = dec("60.00");
    let credited = decided_on(&[alice.clone(), bob.clone()], &commands, now);
    assert!(first.decides_as(&credited));
    assert_ne!(first.entries, credited.entries, "the balances after differ");

    // Less on the source: the second transfer is refused now.
    alice.balance = dec("40.00");
    let debited = decided_on(&[alice.clone(), bob.clone()], &commands, now);
    assert!(!first.decides_as(&debited));

    // Frozen meanwhile: nothing moves.
    alice.balance = dec("50.00");
    alice.status = AccountStatus::Frozen;
    assert!(!first.decides_as(&decided_on(&[alice, bob], &commands, now)));
}

#[test]
fn a_redelivered_command_is_recognised_and_changes_nothing() {
    let mut ledger = Ledger::new("100.00");
    let transfer = ledger.transfer("10.00");
    assert_eq!(ledger.apply(&transfer), Outcome::Applied);
    assert_eq!(ledger.apply(&transfer), Outcome::AlreadyDecided);
    assert_eq!(ledger.balance_and_held(ledger.alice).0, dec("90.00"));
}

#[test]
fn a_hold_reserves_funds_that_are_then_not_available() {
    let mut ledger = Ledger::new("100.00");
    let (_, hold) = ledger.hold("80.00", chrono::Duration::minutes(5));
    assert_eq!(ledger.apply(&hold), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(ledger.alice), (dec("100.00"), dec("80.00")));
    let too_much = ledger.transfer("30.00");
    assert_eq!(ledger.apply(&too_much), Outcome::Rejected(RejectionReason::InsufficientFunds));
}

#[test]
fn a_partial_post_captures_part_and_releases_the_rest() {
    let mut ledger = Ledger::new("100.00");
    let (hold_id, hold) = ledger.hold("80.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    assert_eq!(ledger.apply(&ledger.post(hold_id, Some("30.00"))), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(ledger.alice), (dec("70.00"), dec("0")));
    assert_eq!(ledger.balance_and_held(ledger.bob).0, dec("30.00"));
    // A second post of the same hold is refused.
    assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Rejected(RejectionReason::HoldAlreadySettled));
}

#[test]
fn a_post_above_the_hold_is_refused_and_the_hold_stays() {
    let mut ledger = Ledger::new("100.00");
    let (hold_id, hold) = ledger.hold("20.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    assert_eq!(
        ledger.apply(&ledger.post(hold_id, Some("20.01"))),
        Outcome::Rejected(RejectionReason::AmountExceedsHold)
    );
    assert_eq!(ledger.balance_and_held(ledger.alice), (dec("100.00"), dec("20.00")));
    assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(ledger.alice), (dec("80.00"), dec("0")));
}

#[test]
fn a_void_releases_the_hold_and_moves_nothing() {
    let mut ledger = Ledger::new("100.00");
    let (hold_id, hold) = ledger.hold("60.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    assert_eq!(ledger.apply(&ledger.void(hold_id)), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(ledger.alice), (dec("100.00"), dec("0")));
    assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Rejected(RejectionReason::HoldAlreadySettled));
}

#[test]
fn an_expired_hold_is_released_by_the_sweep_and_cannot_be_posted() {
    let mut ledger = Ledger::new("100.00");
    let (hold_id, hold) = ledger.hold("60.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    // Later: the same hold, now past its expiry.
    let mut record = ledger.engine.transfers[&hold_id].clone();
    record.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
    let alice = ledger.engine.account(ledger.alice).expect("alice").clone();
    let bob = ledger.engine.account(ledger.bob).expect("bob").clone();
    let mut later = Engine::new(Utc::now(), vec![alice, bob], vec![record], HashMap::new());
    assert_eq!(later.expire_holds(&[hold_id]), 1);
    assert_eq!(later.account(ledger.alice).expect("alice").held, Decimal::ZERO);
    let post = ledger.post(hold_id, None);
    assert_eq!(later.apply(&post, &position()), Outcome::Rejected(RejectionReason::HoldAlreadySettled));
    let changes = later.finish();
    assert_eq!(changes.settled_holds, vec![(hold_id, TransferStatus::Expired, None)]);
}

#[test]
fn a_hold_that_expires_before_the_post_is_released_by_the_post() {
    let mut ledger = Ledger::new("100.00");
    let (hold_id, hold) = ledger.hold("60.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    ledger.engine.transfers.get_mut(&hold_id).expect("hold").expires_at =
        Some(Utc::now() - chrono::Duration::seconds(1));
    assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Rejected(RejectionReason::HoldExpired));
    assert_eq!(ledger.balance_and_held(ledger.alice), (dec("100.00"), dec("0")));
}

#[test]
fn a_post_of_another_accounts_hold_is_not_found() {
    let mut ledger = Ledger::new("100.00");
    let (hold_id, hold) = ledger.hold("10.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    let mut post = ledger.post(hold_id, None);
    if let Command::TransferPost(post) = &mut post {
        post.source_account_id = ledger.bob;
    }
    assert_eq!(ledger.apply(&post), Outcome::Rejected(RejectionReason::HoldNotFound));
}

#[test]
fn a_reversal_pays_back_once_and_the_second_is_refused() {
    let mut ledger = Ledger::new("100.00");
    let transfer = ledger.transfer("25.00");
    ledger.apply(&transfer);
    let original = TransferId::from_uuid(transfer.id());
    assert_eq!(ledger.apply(&reverse(original)), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(ledger.alice).0, dec("100.00"));
    assert_eq!(ledger.balance_and_held(ledger.bob).0, dec("0.00"));
    assert_eq!(ledger.apply(&reverse(original)), Outcome::Rejected(RejectionReason::AlreadyReversed));
    assert_eq!(
        ledger.apply(&reverse(TransferId::from_uuid(Uuid::new_v4()))),
        Outcome::Rejected(RejectionReason::TransferNotFound)
    );
}

#[test]
fn an_account_command_id_reused_for_another_command_is_refused_with_an_event() {
    let mut ledger = Ledger::new("100.00");
    let freeze = ledger.status(ledger.alice, Command::AccountFrozen);
    let Command::AccountFrozen(body) = &freeze else { unreachable!("built as a freeze") };
    let close = Command::AccountClosed(body.clone());
    assert_eq!(ledger.apply(&freeze), Outcome::Applied);
    assert_eq!(ledger.apply(&freeze), Outcome::AlreadyDecided);
    assert_eq!(ledger.apply(&close), Outcome::Rejected(RejectionReason::IdempotencyKeyReused));
    let changes = ledger.engine.finish();
    assert_eq!(changes.account_commands.len(), 1);
    // Told under an id of its own: the freeze under that id stands.
    assert!(changes.events.iter().any(|event| matches!(
        event,
        Event::CommandIdReused(CommandIdReused { reason: RejectionReason::IdempotencyKeyReused, reused_id, .. })
            if *reused_id == freeze.id()
    )));
    assert!(!changes.events.iter().any(|event| matches!(event, Event::AccountCommandRejected(_))));
}

#[test]
fn a_frozen_account_cannot_send_and_a_closed_one_nothing_at_all() {
    let mut ledger = Ledger::new("100.00");
    assert_eq!(ledger.apply(&ledger.status(ledger.alice, Command::AccountFrozen)), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.transfer("1.00")), Outcome::Rejected(RejectionReason::AccountFrozen));
    assert_eq!(
        ledger.apply(&ledger.status(ledger.alice, Command::AccountFrozen)),
        Outcome::Rejected(RejectionReason::AccountFrozen)
    );
    assert_eq!(ledger.apply(&ledger.status(ledger.alice, Command::AccountUnfrozen)), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.transfer("1.00")), Outcome::Applied);
    assert_eq!(
        ledger.apply(&ledger.status(ledger.alice, Command::AccountClosed)),
        Outcome::Rejected(RejectionReason::AccountNotEmpty)
    );
    // Bob has 1.00; send it back, then close Bob's account.
    let mut back = ledger.transfer("1.00");
    if let Command::TransferRequested(request) = &mut back {
        std::mem::swap(&mut request.source_account_id, &mut request.destination_account_id);
    }
    assert_eq!(ledger.apply(&back), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.status(ledger.bob, Command::AccountClosed)), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.transfer("1.00")), Outcome::Rejected(RejectionReason::AccountClosed));
}

#[test]
fn an_overdraft_limit_lets_an_account_go_below_zero_down_to_the_limit() {
    let mut ledger = Ledger::new("10.00");
    let limit = Command::AccountOverdraftLimitSet(AccountOverdraftLimitSet {
        version: V1,
        command_id: Uuid::new_v4(),
        account_id: ledger.alice,
        overdraft_limit: Some(eur("50.00")),
        requested_at: Utc::now(),
    });
    assert_eq!(ledger.apply(&limit), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.transfer("60.00")), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(ledger.alice).0, dec("-50.00"));
    assert_eq!(ledger.apply(&ledger.transfer("0.01")), Outcome::Rejected(RejectionReason::InsufficientFunds));
    // Removing the limit while overdrawn is refused.
    let remove = Command::AccountOverdraftLimitSet(AccountOverdraftLimitSet {
        version: V1,
        command_id: Uuid::new_v4(),
        account_id: ledger.alice,
        overdraft_limit: None,
        requested_at: Utc::now(),
    });
    assert_eq!(ledger.apply(&remove), Outcome::Rejected(RejectionReason::InsufficientFunds));
}

#[test]
fn the_changes_hold_one_update_per_touched_account_and_balanced_entries() {
    let mut ledger = Ledger::new("100.00");
    for _ in 0..10 {
        ledger.apply(&ledger.transfer("1.00"));
    }
    let changes = ledger.engine.finish();
    assert_eq!(changes.accounts.len(), 2);
    assert_eq!(changes.new_transfers.len(), 10);
    assert_eq!(changes.entries.len(), 20);
    let sum: Decimal = changes.entries.iter().map(|(_, entry)| entry.amount).sum();
    assert_eq!(sum, Decimal::ZERO);
}

/// Alice, Bob, and the euro external-clearing account, with the payout
/// outcomes in `recorded` as if the relay had written them.
struct Payouts {
    ledger: Ledger,
    clearing: AccountId,
}

impl Payouts {
    fn new(alice_balance: &str) -> Self {
        let (alice, bob) = (account(alice_balance), account("0"));
        let clearing =
            AccountState { id: AccountId::external_clearing(Currency::EUR), kind: AccountKind::System, ..account("0") };
        let (alice_id, bob_id, clearing_id) = (alice.id, bob.id, clearing.id);
        Self {
            ledger: Ledger {
                engine: Engine::new(Utc::now(), vec![alice, bob, clearing], Vec::new(), HashMap::new()),
                alice: alice_id,
                bob: bob_id,
            },
            clearing: clearing_id,
        }
    }

    fn payout(&mut self, amount: &str) -> TransferId {
        let id = TransferId::from_uuid(Uuid::new_v4());
        let command = Command::TransferExternal(schemas::messages::TransferExternal {
            version: V1,
            transfer_id: id,
            source_account_id: self.ledger.alice,
            money: eur(amount),
            creditor: schemas::Creditor {
                name: "Jane Doe".into(),
                iban: schemas::Iban::parse("DE89370400440532013000").expect("IBAN"),
            },
            remittance_information: None,
            requested_at: Utc::now(),
        });
        assert_eq!(self.ledger.apply(&command), Outcome::Applied);
        id
    }

    /// The provider's outcome, recorded (as the relay does) or not.
    fn outcome(&mut self, payment_id: TransferId, result: PayoutResult, recorded: bool) -> Outcome {
        if recorded {
            self.ledger.engine.recorded_outcomes.insert((payment_id, result));
        }
        let command = schemas::messages::payout_outcome(payment_id, self.ledger.alice, result, Utc::now());
        self.ledger.apply(&command)
    }

    fn freeze_alice(&mut self) {
        let freeze = self.ledger.status(self.ledger.alice, Command::AccountFrozen);
        assert_eq!(self.ledger.apply(&freeze), Outcome::Applied);
    }
}

#[test]
fn a_payout_the_provider_paid_is_debited_even_when_the_account_was_frozen_meanwhile() {
    let mut payouts = Payouts::new("100.00");
    let payment_id = payouts.payout("30.00");
    payouts.freeze_alice();
    assert_eq!(payouts.outcome(payment_id, PayoutResult::Settled, true), Outcome::Applied);
    assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("70.00"), dec("0")));
    assert_eq!(payouts.ledger.balance_and_held(payouts.clearing).0, dec("30.00"));
}

#[test]
fn a_hold_of_a_frozen_account_can_still_be_posted_and_voided() {
    let mut ledger = Ledger::new("100.00");
    let (first, hold) = ledger.hold("30.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    let (second, hold) = ledger.hold("20.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    let freeze = ledger.status(ledger.alice, Command::AccountFrozen);
    assert_eq!(ledger.apply(&freeze), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.post(first, None)), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.void(second)), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(ledger.alice), (dec("70.00"), dec("0")));
    // New debits stay refused.
    assert_eq!(ledger.apply(&ledger.transfer("1.00")), Outcome::Rejected(RejectionReason::AccountFrozen));
}

#[test]
fn a_post_or_void_of_a_payout_is_refused_only_the_providers_outcome_settles_it() {
    let mut payouts = Payouts::new("100.00");
    let payment_id = payouts.payout("30.00");
    let void = payouts.ledger.void(payment_id);
    assert_eq!(payouts.ledger.apply(&void), Outcome::Rejected(RejectionReason::PayoutSettledByProviderOnly));
    let post = payouts.ledger.post(payment_id, None);
    assert_eq!(payouts.ledger.apply(&post), Outcome::Rejected(RejectionReason::PayoutSettledByProviderOnly));
    assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("100.00"), dec("30.00")));
}

#[test]
fn an_outcome_nobody_recorded_settles_nothing() {
    let mut payouts = Payouts::new("100.00");
    let payment_id = payouts.payout("30.00");
    assert_eq!(
        payouts.outcome(payment_id, PayoutResult::Rejected, false),
        Outcome::Rejected(RejectionReason::PayoutOutcomeNotRecorded)
    );
    assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("100.00"), dec("30.00")));
    // A relay of an older version posts under the settlement's derived id.
    let Command::PayoutOutcome(settled) =
        schemas::messages::payout_outcome(payment_id, payouts.ledger.alice, PayoutResult::Settled, Utc::now())
    else {
        unreachable!("an outcome")
    };
    let old_post = Command::TransferPost(TransferPost {
        version: V1,
        transfer_id: settled.transfer_id,
        hold_id: payment_id,
        source_account_id: payouts.ledger.alice,
        money: None,
        requested_at: Utc::now(),
    });
    assert_eq!(payouts.ledger.apply(&old_post), Outcome::Rejected(RejectionReason::PayoutSettledByProviderOnly));
    // Neither refusal took the ids: the provider's recorded outcome,
    // under the same ids, still settles the payout.
    assert_eq!(payouts.outcome(payment_id, PayoutResult::Settled, true), Outcome::Applied);
    assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("70.00"), dec("0")));
}

#[test]
fn a_settled_payout_cannot_be_reversed() {
    let mut payouts = Payouts::new("100.00");
    let payment_id = payouts.payout("30.00");
    assert_eq!(payouts.outcome(payment_id, PayoutResult::Settled, true), Outcome::Applied);
    let settlement = payouts.ledger.engine.changes.entries.last().map(|(id, _)| *id).expect("posted");
    assert_eq!(payouts.ledger.apply(&reverse(settlement)), Outcome::Rejected(RejectionReason::ReversalOfPayout));
    assert_eq!(payouts.ledger.balance_and_held(payouts.clearing).0, dec("30.00"));
}

#[test]
fn a_contradicting_outcome_is_refused_and_raised_as_a_conflict() {
    let mut payouts = Payouts::new("100.00");
    let payment_id = payouts.payout("30.00");
    assert_eq!(payouts.outcome(payment_id, PayoutResult::Rejected, true), Outcome::Applied);
    assert_eq!(
        payouts.outcome(payment_id, PayoutResult::Settled, true),
        Outcome::Rejected(RejectionReason::PayoutOutcomeConflict)
    );
    // The same outcome told twice is one decision.
    assert_eq!(payouts.outcome(payment_id, PayoutResult::Rejected, true), Outcome::AlreadyDecided);
    assert_eq!(payouts.ledger.balance_and_held(payouts.ledger.alice), (dec("100.00"), dec("0")));
    let conflicts: Vec<_> = payouts
        .ledger
        .engine
        .changes
        .events
        .iter()
        .filter_map(|event| match event {
            Event::PayoutOutcomeConflicted(conflict) => Some(conflict),
            _ => None,
        })
        .collect();
    assert_eq!(conflicts.len(), 1);
    assert_eq!((conflicts[0].settled_as, conflicts[0].reported), (PayoutResult::Rejected, PayoutResult::Settled));
}

#[test]
fn a_reused_id_is_refused_under_an_id_of_its_own_not_as_the_first_commands_rejection() {
    let mut ledger = Ledger::new("100.00");
    let first = ledger.transfer("10.00");
    assert_eq!(ledger.apply(&first), Outcome::Applied);
    let Command::TransferRequested(mut second) = ledger.transfer("99.00") else { unreachable!() };
    second.transfer_id = TransferId::from_uuid(first.id());
    assert_eq!(
        ledger.apply(&Command::TransferRequested(second)),
        Outcome::Rejected(RejectionReason::IdempotencyKeyReused)
    );
    let told_as_rejected = ledger.engine.changes.events.iter().any(
        |event| matches!(event, Event::TransferRejected(rejected) if rejected.transfer_id.as_uuid() == first.id()),
    );
    assert!(!told_as_rejected, "the completed transfer must not be announced as rejected");
    let reused = ledger.engine.changes.events.iter().find_map(|event| match event {
        Event::CommandIdReused(reused) => Some(reused),
        _ => None,
    });
    let reused = reused.expect("a command.id_reused event");
    assert_eq!(reused.reused_id, first.id());
    assert_ne!(reused.conflict_id, first.id());
}

#[test]
fn a_post_is_decided_against_its_time_in_the_log_not_the_time_it_is_applied() {
    let mut ledger = Ledger::new("100.00");
    let (hold_id, hold) = ledger.hold("30.00", chrono::Duration::minutes(5));
    ledger.apply(&hold);
    // The processor gets to the post an hour after the hold expired, but
    // the post entered the log before the expiry.
    ledger.engine.now = Utc::now() + chrono::Duration::hours(1);
    let in_time = Position { timestamp: Some(Utc::now() + chrono::Duration::minutes(4)), ..position() };
    assert_eq!(ledger.engine.apply(&ledger.post(hold_id, None), &in_time), Outcome::Applied);
    let (late_hold_id, late_hold) = ledger.hold("10.00", chrono::Duration::minutes(5));
    let made_now = Position { timestamp: Some(Utc::now()), ..position() };
    assert_eq!(ledger.engine.apply(&late_hold, &made_now), Outcome::Applied);
    let too_late = Position { timestamp: Some(Utc::now() + chrono::Duration::minutes(6)), ..position() };
    assert_eq!(
        ledger.engine.apply(&ledger.post(late_hold_id, None), &too_late),
        Outcome::Rejected(RejectionReason::HoldExpired)
    );
}

/// A third account, Carol, for batches (a fee account, say).
fn with_carol(ledger: &mut Ledger) -> AccountId {
    let carol = account("0");
    let id = carol.id;
    ledger.engine.accounts.insert(id, carol.clone());
    ledger.engine.initial_accounts.insert(id, carol);
    id
}

fn batch(legs: &[(AccountId, AccountId, &str)]) -> (TransferId, Command) {
    let id = TransferId::from_uuid(Uuid::new_v4());
    let command = Command::TransferBatch(TransferBatch {
        version: V1,
        transfer_id: id,
        legs: legs
            .iter()
            .map(|(source, destination, amount)| BatchLeg {
                source_account_id: *source,
                destination_account_id: *destination,
                money: eur(amount),
            })
            .collect(),
        reference: Some(Reference::parse("ORDER-1042").expect("reference")),
        metadata: None,
        requested_at: Utc::now(),
    });
    (id, command)
}

#[test]
fn a_batch_applies_every_leg_as_a_transfer_of_its_own() {
    let mut ledger = Ledger::new("100.00");
    let carol = with_carol(&mut ledger);
    let (alice, bob) = (ledger.alice, ledger.bob);
    let (batch_id, command) = batch(&[(alice, bob, "60.00"), (alice, carol, "1.50"), (bob, carol, "10.00")]);
    assert_eq!(ledger.apply(&command), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(alice).0, dec("38.50"));
    assert_eq!(ledger.balance_and_held(bob).0, dec("50.00"));
    assert_eq!(ledger.balance_and_held(carol).0, dec("11.50"));
    let changes = ledger.engine.finish();
    assert_eq!(changes.entries.len(), 6);
    assert_eq!(changes.new_transfers.len(), 4, "the batch's row and one per leg");
    let legs: Vec<&TransferRecord> =
        changes.new_transfers.iter().filter(|row| row.related_transfer_id == Some(batch_id)).collect();
    assert_eq!(legs.len(), 3);
    assert!(legs.iter().all(|leg| leg.kind == TransferKind::Transfer && leg.reference.is_some()));
    assert_eq!(legs[0].id, TransferBatch::leg_id(batch_id, 0));
    let completed = changes.events.iter().filter(|event| matches!(event, Event::TransferCompleted(_))).count();
    assert_eq!(completed, 3);
}

#[test]
fn a_batch_with_a_refused_leg_moves_nothing_and_names_the_leg() {
    let mut ledger = Ledger::new("100.00");
    let carol = with_carol(&mut ledger);
    let (alice, bob) = (ledger.alice, ledger.bob);
    // The second leg would overdraw: the first, applied on its own, would not.
    let (batch_id, command) = batch(&[(alice, bob, "60.00"), (alice, carol, "50.00")]);
    assert_eq!(ledger.apply(&command), Outcome::Rejected(RejectionReason::InsufficientFunds));
    for (id, balance) in [(alice, "100.00"), (bob, "0"), (carol, "0")] {
        assert_eq!(ledger.balance_and_held(id).0, dec(balance), "{id}");
    }
    let changes = ledger.engine.finish();
    assert!(changes.entries.is_empty());
    assert!(changes.accounts.is_empty(), "no account changed");
    assert_eq!(changes.new_transfers.len(), 1, "the batch's row only");
    assert_eq!(changes.new_transfers[0].id, batch_id);
    assert_eq!(changes.new_transfers[0].rejected_leg, Some(1));
    let Some(Event::TransferRejected(rejected)) = changes.events.first() else { panic!("{:?}", changes.events) };
    assert_eq!((rejected.kind, rejected.leg, rejected.source_account_id), (TransferKind::Batch, Some(1), Some(alice)));
}

#[test]
fn a_later_leg_may_spend_what_an_earlier_leg_credited() {
    let mut ledger = Ledger::new("100.00");
    let carol = with_carol(&mut ledger);
    let (alice, bob) = (ledger.alice, ledger.bob);
    let (_, command) = batch(&[(alice, bob, "100.00"), (bob, carol, "100.00")]);
    assert_eq!(ledger.apply(&command), Outcome::Applied);
    assert_eq!(ledger.balance_and_held(carol).0, dec("100.00"));
    // The other order fails on its first leg: Bob has nothing yet.
    let (_, reversed_order) = batch(&[(bob, alice, "100.00"), (alice, carol, "1.00")]);
    assert_eq!(ledger.apply(&reversed_order), Outcome::Rejected(RejectionReason::InsufficientFunds));
}

fn limited(ledger: &mut Ledger, per_transfer_max: Option<&str>, rolling_24h_max: Option<&str>) {
    let alice = ledger.engine.accounts.get_mut(&ledger.alice).expect("alice");
    alice.per_transfer_max = per_transfer_max.map(dec);
    alice.rolling_24h_max = rolling_24h_max.map(dec);
}

#[test]
fn a_per_transfer_limit_refuses_a_larger_transfer_hold_or_batch_with_the_limit() {
    let mut ledger = Ledger::new("1000.00");
    limited(&mut ledger, Some("100.00"), None);
    let carol = with_carol(&mut ledger);
    let (alice, bob) = (ledger.alice, ledger.bob);
    assert_eq!(ledger.apply(&ledger.transfer("100.00")), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.transfer("100.01")), Outcome::Rejected(RejectionReason::LimitExceeded));
    let (_, hold) = ledger.hold("150.00", chrono::Duration::minutes(5));
    assert_eq!(ledger.apply(&hold), Outcome::Rejected(RejectionReason::LimitExceeded));
    // Two legs of 60 from Alice are one transfer of 120.
    let (_, split) = batch(&[(alice, bob, "60.00"), (alice, carol, "60.00")]);
    assert_eq!(ledger.apply(&split), Outcome::Rejected(RejectionReason::LimitExceeded));
    let changes = ledger.engine.finish();
    let limits: Vec<Option<SpendingLimit>> = changes
        .new_transfers
        .iter()
        .filter(|row| row.rejection_reason.is_some())
        .map(|row| row.exceeded_limit)
        .collect();
    assert_eq!(limits, vec![Some(SpendingLimit::PerTransfer); 3]);
}

#[test]
fn a_rolling_limit_counts_todays_debits_and_pending_holds_but_not_deposits_or_posts() {
    let mut ledger = Ledger::new("1000.00");
    limited(&mut ledger, None, Some("300.00"));
    ledger.engine.accounts.get_mut(&ledger.alice).expect("alice").debited_24h = dec("100.00");
    let (hold_id, hold) = ledger.hold("150.00", chrono::Duration::minutes(5));
    assert_eq!(ledger.apply(&hold), Outcome::Applied);
    // 100 debited + 150 held: 50 left.
    assert_eq!(ledger.apply(&ledger.transfer("50.01")), Outcome::Rejected(RejectionReason::LimitExceeded));
    assert_eq!(ledger.apply(&ledger.transfer("50.00")), Outcome::Applied);
    // Capturing the hold moves it from held to debited: not counted twice,
    // and not refused although the limit is reached.
    assert_eq!(ledger.apply(&ledger.post(hold_id, None)), Outcome::Applied);
    let alice = ledger.engine.account(ledger.alice).expect("alice");
    assert_eq!((alice.debited_24h, alice.held), (dec("300.00"), Decimal::ZERO));
    assert_eq!(ledger.apply(&ledger.transfer("0.01")), Outcome::Rejected(RejectionReason::LimitExceeded));
    let changes = ledger.engine.finish();
    let last = changes.new_transfers.last().expect("rows");
    assert_eq!(last.exceeded_limit, Some(SpendingLimit::Rolling24h));
}

#[test]
fn spending_limits_are_set_by_an_account_command_in_the_accounts_currency() {
    let mut ledger = Ledger::new("1000.00");
    let alice = ledger.alice;
    let set = |limit: Money| {
        Command::AccountSpendingLimitsSet(AccountSpendingLimitsSet {
            version: V1,
            command_id: Uuid::new_v4(),
            account_id: alice,
            limits: SpendingLimits { per_transfer_max: Some(limit), rolling_24h_max: None },
            requested_at: Utc::now(),
        })
    };
    let usd = Money::parse("10.00", Currency::USD).expect("money");
    assert_eq!(ledger.apply(&set(usd)), Outcome::Rejected(RejectionReason::CurrencyMismatch));
    assert_eq!(ledger.apply(&set(eur("10.00"))), Outcome::Applied);
    assert_eq!(ledger.apply(&ledger.transfer("10.01")), Outcome::Rejected(RejectionReason::LimitExceeded));
    assert_eq!(ledger.apply(&ledger.transfer("10.00")), Outcome::Applied);
}
