//! Payouts to other banks, end to end: `POST /v1/payouts` → processor holds
//! the funds and writes a payment order to the outbox → relay orders it from
//! the (fake) provider over OAuth2 → the answer posts or voids the hold.

use std::net::SocketAddr;
use std::time::Duration;

use ledgerline_tests::{PROVIDER_CALLBACK_SECRET, TestApp, WAIT_MAX, unique_key};
use outbox_relay::RelayConfig;
use outbox_relay::fake_provider::{FakeProvider, Mode};
use outbox_relay::provider::ProviderConfig;
use platform::CancellationToken;
use rust_decimal::Decimal;
use schemas::{AccountId, Currency};
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

const PROVIDER_CLIENT_ID: &str = "ledgerline";
const PROVIDER_SECRET: &str = "payout-test-secret";
const IBAN: &str = "DE89370400440532013000";

/// A stack without its own relay, and a fake payment provider; the relay
/// tests (`relay_safety`) drive the same harness.
pub(crate) struct Payouts {
    pub(crate) app: TestApp,
    pub(crate) provider: FakeProvider,
}

impl Payouts {
    pub(crate) async fn start() -> Self {
        let app = TestApp::spawn_without_relay().await;
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let provider = FakeProvider::start(any_port, PROVIDER_CLIENT_ID, PROVIDER_SECRET).await.expect("fake provider");
        Self { app, provider }
    }

    fn relay_config(&self) -> RelayConfig {
        self.relay_config_with_timeout(2_000)
    }

    /// The relay's settings for this provider, each call to it bounded by
    /// `provider_timeout_ms`.
    pub(crate) fn relay_config_with_timeout(&self, provider_timeout_ms: u64) -> RelayConfig {
        let mut config = RelayConfig::new(self.app.kafka.clone());
        config.provider = Some(ProviderConfig {
            name: "fake".into(),
            base_url: self.provider.base_url(),
            token_url: self.provider.token_url(),
            client_id: PROVIDER_CLIENT_ID.into(),
            client_secret: SecretString::from(PROVIDER_SECRET.to_owned()),
            timeout_ms: provider_timeout_ms,
            token_refresh_margin_s: 0,
        });
        config.poll_interval_ms = 50;
        config.backoff_base_ms = 100;
        config.backoff_max_ms = 400;
        config
    }

    fn start_relay(&self, config: RelayConfig) -> CancellationToken {
        let stop = CancellationToken::new();
        tokio::spawn(outbox_relay::run(config, self.app.pool.clone(), stop.clone()));
        stop
    }

    pub(crate) async fn funded_account(&self, amount: &str) -> Uuid {
        let account = self.app.open_account("EUR").await;
        self.app.fund(account, amount, "EUR").await;
        account
    }

    async fn payout(&self, source: Uuid, amount: &str, key: &str) -> reqwest::Response {
        self.payout_to(source, amount, key, "Jane Doe").await
    }

    async fn payout_to(&self, source: Uuid, amount: &str, key: &str, creditor: &str) -> reqwest::Response {
        self.app
            .http()
            .post(self.app.url("/v1/payouts"))
            .bearer_auth(self.app.token().await)
            .header("Idempotency-Key", key)
            .json(&json!({
                "source_account_id": source,
                "amount": amount,
                "currency": "EUR",
                "creditor": { "name": creditor, "iban": IBAN },
                "remittance_information": "invoice 42",
            }))
            .send()
            .await
            .expect("payout request")
    }

    async fn submit(&self, source: Uuid, amount: &str) -> String {
        self.submit_to(source, amount, "Jane Doe").await
    }

    /// A payout to `creditor` (by name), accepted; its id.
    pub(crate) async fn submit_to(&self, source: Uuid, amount: &str, creditor: &str) -> String {
        let response = self.payout_to(source, amount, &unique_key("payout"), creditor).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("JSON");
        body["transfer_id"].as_str().expect("transfer id").to_owned()
    }

    /// Waits until the payout's status is one of `statuses`.
    pub(crate) async fn wait_for_status(&self, transfer_id: &str, statuses: &[&str]) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let body: Value = self.app.get_transfer(transfer_id).await.json().await.expect("JSON");
            if statuses.iter().any(|status| body["status"] == *status) {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "payout {transfer_id} stuck at {}", body["status"]);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn available(&self, account: Uuid) -> Decimal {
        let account = self.app.account(account).await;
        account["available"].as_str().expect("available").parse().expect("decimal")
    }

    pub(crate) async fn clearing_balance(&self) -> Decimal {
        sqlx::query_scalar("select balance from accounts where id = $1")
            .bind(AccountId::external_clearing(Currency::EUR).as_uuid())
            .fetch_one(&self.app.pool)
            .await
            .expect("clearing account")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_payout_moves_the_money_to_clearing_once() {
    let payouts = Payouts::start().await;
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("100.00").await;
    let payout = payouts.submit(alice, "40.00").await;

    let settled = payouts.wait_for_status(&payout, &["posted", "voided", "rejected"]).await;
    assert_eq!(settled["status"], "posted", "{settled}");
    assert_eq!(payouts.app.balance(alice).await, Decimal::new(6000, 2));
    assert_eq!(payouts.available(alice).await, Decimal::new(6000, 2));
    assert_eq!(payouts.clearing_balance().await, Decimal::new(4000, 2));
    let stats = payouts.provider.stats();
    assert_eq!((stats.payments_made, stats.tokens_issued), (1, 1));
    stop.cancel();
    assert!(payouts.app.ledger_problems().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_payout_gives_the_money_back() {
    let payouts = Payouts::start().await;
    payouts.provider.set_mode(Mode::Reject);
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("100.00").await;
    let payout = payouts.submit(alice, "40.00").await;

    let settled = payouts.wait_for_status(&payout, &["posted", "voided", "rejected"]).await;
    assert_eq!(settled["status"], "voided", "{settled}");
    assert_eq!(payouts.app.balance(alice).await, Decimal::new(10000, 2));
    assert_eq!(payouts.available(alice).await, Decimal::new(10000, 2), "nothing left on hold");
    assert_eq!(payouts.clearing_balance().await, Decimal::ZERO);
    assert_eq!(payouts.provider.stats().payments_made, 0);
    stop.cancel();
    assert!(payouts.app.ledger_problems().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_beyond_the_balance_is_rejected_and_never_reaches_the_provider() {
    let payouts = Payouts::start().await;
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("10.00").await;
    let payout = payouts.submit(alice, "40.00").await;
    let decided = payouts.app.wait_for_decision(&payout).await;
    assert_eq!(
        (decided["status"].as_str(), decided["reason"].as_str()),
        (Some("rejected"), Some("insufficient_funds"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(payouts.provider.stats().payment_requests, 0);
    assert_eq!(payouts.app.count("select count(*) from outbox where destination = 'payments'").await, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payouts_wait_while_the_provider_is_down_and_complete_when_it_returns() {
    let payouts = Payouts::start().await;
    payouts.provider.set_mode(Mode::Unavailable { retry_after_s: None });
    let mut config = payouts.relay_config();
    // Opens after 3 failures in a row, for 300 ms at a time.
    config.payments.breaker_failures_max = 3;
    config.payments.breaker_open_ms = 300;
    config.attempts_max = 1_000;
    // Retries as fast as the 50 ms poll allows, so only the breaker can
    // keep the number of calls down.
    config.backoff_base_ms = 10;
    config.backoff_max_ms = 20;
    let stop = payouts.start_relay(config);
    let alice = payouts.funded_account("100.00").await;
    let first = payouts.submit(alice, "10.00").await;
    let second = payouts.submit(alice, "15.00").await;

    // Down for a while: the funds stay held, nothing is lost.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(payouts.wait_for_status(&first, &["held"]).await["status"], "held");
    assert_eq!(payouts.available(alice).await, Decimal::new(7500, 2));
    let while_down = payouts.provider.stats().payment_requests;
    assert!(while_down >= 3, "the relay tried: {while_down} calls");
    // The breaker spared the provider: without it, 1.5 s of retries every
    // 50 ms would be about 30 calls; with it, 3 and then one per 300 ms.
    assert!(while_down <= 15, "{while_down} calls in 1.5 s: the breaker did not hold back");

    payouts.provider.set_mode(Mode::Settle);
    for payout in [&first, &second] {
        assert_eq!(payouts.wait_for_status(payout, &["posted", "voided"]).await["status"], "posted");
    }
    assert_eq!(payouts.app.balance(alice).await, Decimal::new(7500, 2));
    assert_eq!(payouts.provider.stats().payments_made, 2);
    stop.cancel();
    assert!(payouts.app.ledger_problems().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_dies_after_the_provider_paid_pays_once_on_restart() {
    let payouts = Payouts::start().await;
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("100.00").await;
    let payout = payouts.submit(alice, "40.00").await;
    payouts.wait_for_status(&payout, &["posted"]).await;
    stop.cancel();

    // The relay's transaction marks the row delivered after the provider
    // answered; a crash before its commit leaves the row pending, exactly
    // as this does. A new relay delivers it again.
    let reopened = payouts
        .app
        .count("with row as (update outbox set delivered_at = null where destination = 'payments' returning 1) select count(*) from row")
        .await;
    assert_eq!(reopened, 1);
    let restarted = payouts.start_relay(payouts.relay_config());
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while payouts.app.count("select count(*) from outbox where destination = 'payments' and delivered_at is null").await
        > 0
    {
        assert!(tokio::time::Instant::now() < deadline, "the reopened row was not delivered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The processor decides the repeated post too (as already decided).
    tokio::time::sleep(Duration::from_millis(500)).await;
    restarted.cancel();

    let stats = payouts.provider.stats();
    assert_eq!(stats.payment_requests, 2, "the provider was asked twice");
    assert_eq!(stats.payments_made, 1, "and paid once: same idempotency key");
    assert_eq!(stats.keys.len(), 1);
    assert_eq!(
        payouts.app.count("select count(*) from transfers where kind = 'post'").await,
        1,
        "the hold was posted once"
    );
    assert_eq!(payouts.app.balance(alice).await, Decimal::new(6000, 2));
    assert!(payouts.app.ledger_problems().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_request_is_validated_and_idempotent() {
    let payouts = Payouts::start().await;
    let alice = payouts.funded_account("100.00").await;
    let key = unique_key("payout");
    let first = payouts.payout(alice, "40.00", &key).await;
    let again = payouts.payout(alice, "40.00", &key).await;
    assert_eq!((first.status(), again.status()), (reqwest::StatusCode::ACCEPTED, reqwest::StatusCode::ACCEPTED));
    let (first, again): (Value, Value) = (first.json().await.expect("JSON"), again.json().await.expect("JSON"));
    assert_eq!(first["transfer_id"], again["transfer_id"]);
    let reused = payouts.payout(alice, "41.00", &key).await;
    assert_eq!(reused.status(), 422);

    for (iban, name) in [("DE88370400440532013000", "Jane Doe"), (IBAN, ""), (IBAN, &"x".repeat(141))] {
        let response = payouts
            .app
            .http()
            .post(payouts.app.url("/v1/payouts"))
            .bearer_auth(payouts.app.token().await)
            .header("Idempotency-Key", unique_key("bad"))
            .json(&json!({
                "source_account_id": alice,
                "amount": "1.00",
                "currency": "EUR",
                "creditor": { "name": name, "iban": iban },
            }))
            .send()
            .await
            .expect("request");
        assert!(response.status().is_client_error(), "{iban} / {name:?}: {}", response.status());
        assert_eq!(
            response.headers().get("content-type").and_then(|value| value.to_str().ok()),
            Some("application/problem+json")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_payout_is_settled_by_signed_callbacks_and_a_duplicate_changes_nothing() {
    let payouts = Payouts::start().await;
    payouts.provider.set_callbacks(&payouts.app.url("/v1/providers/fake/callbacks"), PROVIDER_CALLBACK_SECRET);
    payouts.provider.set_mode(Mode::Callback { paid: true, copies: 2, delay_ms: 300 });
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("100.00").await;
    let payout = payouts.submit(alice, "40.00").await;

    assert_eq!(payouts.wait_for_status(&payout, &["posted", "voided"]).await["status"], "posted");
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while payouts.provider.stats().callbacks_sent < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the second callback was never sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The duplicate is accepted (the provider must not retry it) and
    // decided as already decided.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = payouts.provider.stats();
    assert_eq!((stats.callbacks_sent, stats.callbacks_accepted), (2, 2));
    assert_eq!(payouts.app.count("select count(*) from transfers where kind = 'post'").await, 1);
    assert_eq!(payouts.app.balance(alice).await, Decimal::new(6000, 2));
    assert_eq!(payouts.clearing_balance().await, Decimal::new(4000, 2));
    stop.cancel();
    assert!(payouts.app.ledger_problems().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_without_a_valid_fresh_signature_are_refused() {
    let payouts = Payouts::start().await;
    payouts.provider.set_mode(Mode::Pending);
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("100.00").await;
    let payout = payouts.submit(alice, "40.00").await;
    payouts.wait_for_status(&payout, &["held"]).await;

    let body = json!({ "payment_id": payout, "status": "settled" }).to_string();
    let now = chrono::Utc::now().timestamp();
    let send = |name: &'static str, signature: Option<String>, body: String| {
        let request = payouts
            .app
            .http()
            .post(payouts.app.url(&format!("/v1/providers/{name}/callbacks")))
            .header("content-type", "application/json")
            .body(body);
        let request = match signature {
            Some(signature) => request.header("provider-signature", signature),
            None => request,
        };
        async move {
            let response = request.send().await.expect("callback");
            let status = response.status().as_u16();
            let problem: Value = response.json().await.expect("problem+json");
            (status, problem["code"].as_str().unwrap_or_default().to_owned())
        }
    };
    let sign =
        |secret: &str, at: i64, body: &str| platform::signature::sign_callback(secret.as_bytes(), at, body.as_bytes());
    let cases = [
        ("fake", None, body.clone(), (401, "signature_malformed")),
        ("fake", Some(sign("another-secret", now, &body)), body.clone(), (401, "signature_invalid")),
        (
            "fake",
            Some(sign(PROVIDER_CALLBACK_SECRET, now, &body)),
            body.replace("settled", "rejected"),
            (401, "signature_invalid"),
        ),
        ("fake", Some(sign(PROVIDER_CALLBACK_SECRET, now - 3_600, &body)), body.clone(), (401, "signature_stale")),
        ("other", Some(sign(PROVIDER_CALLBACK_SECRET, now, &body)), body.clone(), (404, "provider_not_found")),
    ];
    for (name, signature, body, (status, code)) in cases {
        assert_eq!(send(name, signature, body).await, (status, code.to_owned()));
    }
    let unknown = json!({ "payment_id": Uuid::new_v4(), "status": "settled" }).to_string();
    assert_eq!(
        send("fake", Some(sign(PROVIDER_CALLBACK_SECRET, now, &unknown)), unknown).await,
        (404, "payment_not_found".to_owned())
    );
    let odd = json!({ "payment_id": payout, "status": "maybe" }).to_string();
    assert_eq!(
        send("fake", Some(sign(PROVIDER_CALLBACK_SECRET, now, &odd)), odd).await,
        (422, "invalid_callback_status".to_owned())
    );

    // None of that moved money; a valid one does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(payouts.wait_for_status(&payout, &["held"]).await["status"], "held");
    let rejected = json!({ "payment_id": payout, "status": "rejected", "code": "creditor_account_closed" }).to_string();
    assert_eq!(
        send("fake", Some(sign(PROVIDER_CALLBACK_SECRET, now, &rejected)), rejected).await,
        (202, String::new())
    );
    assert_eq!(payouts.wait_for_status(&payout, &["posted", "voided"]).await["status"], "voided");
    assert_eq!(payouts.available(alice).await, Decimal::new(10000, 2));
    stop.cancel();
}

impl Payouts {
    /// Sends a signed provider callback; its status code.
    async fn callback(&self, body: &Value) -> u16 {
        let body = body.to_string();
        let signature = platform::signature::sign_callback(
            PROVIDER_CALLBACK_SECRET.as_bytes(),
            chrono::Utc::now().timestamp(),
            body.as_bytes(),
        );
        let response = self
            .app
            .http()
            .post(self.app.url("/v1/providers/fake/callbacks"))
            .header("content-type", "application/json")
            .header("provider-signature", signature)
            .body(body)
            .send()
            .await
            .expect("callback");
        response.status().as_u16()
    }

    /// Waits for the ledger's decision of command `id`: (status, reason).
    async fn decision(&self, id: Uuid) -> (String, Option<String>) {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("select status, rejection_reason from transfers where id = $1")
                    .bind(id)
                    .fetch_optional(&self.app.pool)
                    .await
                    .expect("decision query");
            if let Some(row) = row {
                return row;
            }
            assert!(tokio::time::Instant::now() < deadline, "command {id} never decided");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the `transfer.rejected` event of command `id`; its reason.
    async fn refusal(&self, id: Uuid) -> String {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let reason: Option<String> = sqlx::query_scalar(
                "select payload->>'reason' from outbox_events
                 where event_type = 'transfer.rejected' and payload->>'transfer_id' = $1",
            )
            .bind(id.to_string())
            .fetch_optional(&self.app.pool)
            .await
            .expect("refusal query");
            if let Some(reason) = reason {
                return reason;
            }
            assert!(tokio::time::Instant::now() < deadline, "command {id} never refused");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn settlement_id(payout: &str, result: schemas::messages::PayoutResult) -> Uuid {
        let payment_id = schemas::TransferId::from_uuid(payout.parse().expect("payout id"));
        schemas::messages::payout_outcome(payment_id, AccountId::new_random(), result, chrono::Utc::now()).id()
    }
}

/// Defect #1 of issue 10. Before the fix the provider's "settled" was
/// rejected `account_frozen` under its derived id, for good: the money had
/// left the bank and the ledger still showed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_the_provider_paid_is_debited_although_the_account_was_frozen_meanwhile() {
    let payouts = Payouts::start().await;
    payouts.provider.set_mode(Mode::Pending);
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("100.00").await;
    let payout = payouts.submit(alice, "40.00").await;
    payouts.wait_for_status(&payout, &["held"]).await;
    // A fraud review freezes the account while the provider is paying.
    let freeze = schemas::Command::AccountFrozen(schemas::messages::AccountStatusCommand {
        version: schemas::messages::V1,
        command_id: Uuid::new_v4(),
        account_id: AccountId::from_uuid(alice),
        requested_at: chrono::Utc::now(),
    });
    payouts.app.publish_command(&freeze).await;
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while payouts.app.account(alice).await["status"] != "frozen" {
        assert!(tokio::time::Instant::now() < deadline, "the account was never frozen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(payouts.callback(&json!({ "payment_id": payout, "status": "settled" })).await, 202);
    assert_eq!(payouts.wait_for_status(&payout, &["posted", "voided"]).await["status"], "posted");
    assert_eq!(payouts.app.balance(alice).await, Decimal::new(6000, 2));
    assert_eq!(payouts.clearing_balance().await, Decimal::new(4000, 2));
    stop.cancel();
    assert!(payouts.app.ledger_problems().await.is_empty());
}

/// Defect #3 of issue 10. Before the fix an upstream app publishing
/// straight to `ledger.commands` could void a payout the provider was
/// paying (`transfer.void` was applied), and reverse a settled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_providers_recorded_outcome_settles_a_payout_and_a_paid_one_cannot_be_reversed() {
    use schemas::messages::{PayoutResult, TransferReverse, TransferVoid, V1, payout_outcome};
    let payouts = Payouts::start().await;
    payouts.provider.set_mode(Mode::Pending);
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("100.00").await;
    let payout = payouts.submit(alice, "40.00").await;
    payouts.wait_for_status(&payout, &["held"]).await;
    let payment_id = schemas::TransferId::from_uuid(payout.parse().expect("payout id"));
    let source = AccountId::from_uuid(alice);

    // Published by someone who is neither the relay nor a callback.
    let void_id = Uuid::new_v4();
    payouts
        .app
        .publish_command(&schemas::Command::TransferVoid(TransferVoid {
            version: V1,
            transfer_id: schemas::TransferId::from_uuid(void_id),
            hold_id: payment_id,
            source_account_id: source,
            requested_at: chrono::Utc::now(),
        }))
        .await;
    let forged = payout_outcome(payment_id, source, PayoutResult::Rejected, chrono::Utc::now());
    payouts.app.publish_command(&forged).await;
    // Refused by event only: such refusals must not take the ids the
    // provider's real outcome comes under.
    assert_eq!(payouts.refusal(void_id).await, "payout_settled_by_provider_only");
    assert_eq!(payouts.refusal(forged.id()).await, "payout_outcome_not_recorded");
    assert_eq!(payouts.wait_for_status(&payout, &["held"]).await["status"], "held");
    assert_eq!(payouts.available(alice).await, Decimal::new(6000, 2));

    // The provider's signed callback settles it; its reversal is refused.
    assert_eq!(payouts.callback(&json!({ "payment_id": payout, "status": "settled" })).await, 202);
    assert_eq!(payouts.wait_for_status(&payout, &["posted", "voided"]).await["status"], "posted");
    let reversal_id = Uuid::new_v4();
    payouts
        .app
        .publish_command(&schemas::Command::TransferReverse(TransferReverse {
            version: V1,
            transfer_id: schemas::TransferId::from_uuid(reversal_id),
            original_transfer_id: schemas::TransferId::from_uuid(Payouts::settlement_id(
                &payout,
                PayoutResult::Settled,
            )),
            reason: None,
            requested_at: chrono::Utc::now(),
        }))
        .await;
    assert_eq!(payouts.decision(reversal_id).await, ("rejected".to_owned(), Some("reversal_of_payout".to_owned())));
    assert_eq!(payouts.app.balance(alice).await, Decimal::new(6000, 2));
    assert_eq!(payouts.clearing_balance().await, Decimal::new(4000, 2));
    stop.cancel();
    assert!(payouts.app.ledger_problems().await.is_empty());
}

/// Defect #11 of issue 10. Before the fix a "settled" callback after a
/// synchronous "rejected" was dropped at debug level: money refunded and
/// paid out, and nobody told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outcome_contradicting_the_settlement_is_recorded_and_raised() {
    use schemas::messages::PayoutResult;
    let payouts = Payouts::start().await;
    payouts.provider.set_mode(Mode::Reject);
    let stop = payouts.start_relay(payouts.relay_config());
    let alice = payouts.funded_account("100.00").await;
    let payout = payouts.submit(alice, "40.00").await;
    assert_eq!(payouts.wait_for_status(&payout, &["posted", "voided"]).await["status"], "voided");

    assert_eq!(payouts.callback(&json!({ "payment_id": payout, "status": "settled" })).await, 202);
    let conflicting = Payouts::settlement_id(&payout, PayoutResult::Settled);
    assert_eq!(
        payouts.decision(conflicting).await,
        ("rejected".to_owned(), Some("payout_outcome_conflict".to_owned()))
    );
    // An event for the world, a metric for alerts, a list for operators.
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while payouts.app.count("select count(*) from outbox_events where event_type = 'payout.outcome_conflicted'").await
        != 1
    {
        assert!(tokio::time::Instant::now() < deadline, "no payout.outcome_conflicted event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted once the processor settles the batch, just after its commit.
    while payouts.app.processor_metrics().payout_conflicts_total() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the conflict was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conflicts = platform::payouts::conflicts(&payouts.app.pool, 10).await.expect("conflicts");
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].payment_id.to_string(), payout);
    assert_eq!(conflicts[0].ledger_status, "voided");
    // The ledger keeps the first outcome until an operator reconciles.
    assert_eq!(payouts.app.balance(alice).await, Decimal::new(10000, 2));
    stop.cancel();
    assert!(payouts.app.ledger_problems().await.is_empty());
}
