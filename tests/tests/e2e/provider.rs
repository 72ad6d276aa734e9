//! The payment provider's client against the fake provider, over real HTTP:
//! OAuth2 token caching and refresh, one refresh on 401 and no loop,
//! idempotent retries, and how failures are sorted for the relay.

use std::net::SocketAddr;
use std::time::Duration;

use outbox_relay::fake_provider::{FakeProvider, Mode};
use outbox_relay::provider::{PaymentAnswer, PaymentOrder, ProviderClient, ProviderConfig};
use secrecy::SecretString;

const CLIENT_ID: &str = "ledgerline";
const CLIENT_SECRET: &str = "provider-test-secret";

async fn provider() -> FakeProvider {
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
    FakeProvider::start(any_port, CLIENT_ID, CLIENT_SECRET).await.expect("fake provider")
}

fn client(provider: &FakeProvider, timeout_ms: u64, token_refresh_margin_s: u64) -> ProviderClient {
    ProviderClient::new(ProviderConfig {
        name: "fake".into(),
        base_url: provider.base_url(),
        token_url: provider.token_url(),
        client_id: CLIENT_ID.into(),
        client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
        timeout_ms,
        token_refresh_margin_s,
    })
    .expect("client")
}

fn order(payment_id: &str) -> PaymentOrder {
    PaymentOrder {
        payment_id: payment_id.into(),
        amount: "125.40".into(),
        currency: "EUR".into(),
        creditor_name: "Jane Doe".into(),
        creditor_iban: "DE89370400440532013000".into(),
        remittance_information: Some("invoice 42".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_cached_and_replaced_before_it_expires() {
    let provider = provider().await;
    provider.set_token_ttl_s(3);
    // Replaced 2 s before expiry: after 1 s.
    let client = client(&provider, 5_000, 2);
    for key in ["1", "2"] {
        assert!(matches!(client.pay(key, &order(key)).await, Ok(PaymentAnswer::Settled { .. })));
    }
    assert_eq!(provider.stats().tokens_issued, 1, "the second payment reused the token");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(matches!(client.pay("3", &order("3")).await, Ok(PaymentAnswer::Settled { .. })));
    let stats = provider.stats();
    assert_eq!(stats.tokens_issued, 2, "a new token before the old one expired");
    assert_eq!(stats.unauthorized_requests, 0, "never sent an expired token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_triggers_one_refresh_and_never_a_loop() {
    let provider = provider().await;
    let client = client(&provider, 5_000, 0);
    assert!(client.pay("1", &order("1")).await.is_ok());
    provider.revoke_tokens();
    assert!(matches!(client.pay("2", &order("2")).await, Ok(PaymentAnswer::Settled { .. })), "refreshed and retried");
    let stats = provider.stats();
    assert_eq!((stats.tokens_issued, stats.unauthorized_requests), (2, 1));

    // Every token is refused (expired on issue): one refresh, then an error.
    provider.set_token_ttl_s(0);
    provider.revoke_tokens();
    let failure = client.pay("3", &order("3")).await.expect_err("refused");
    assert_eq!(failure.code, "unauthorized");
    let after = provider.stats();
    assert_eq!(after.tokens_issued - stats.tokens_issued, 1, "exactly one refresh");
    assert_eq!(after.unauthorized_requests - stats.unauthorized_requests, 2, "two tries, no loop");
    assert_eq!(after.payments_made, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_retried_with_the_same_idempotency_key_pays_once() {
    let provider = provider().await;
    // The provider pays, but answers after the client gave up.
    provider.set_mode(Mode::Slow { delay_ms: 1_500 });
    let client = client(&provider, 300, 0);
    let failure = client.pay("outbox-17", &order("p-17")).await.expect_err("timed out");
    assert_eq!(failure.code, "timeout");
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    provider.set_mode(Mode::Settle);
    let first = client.pay("outbox-17", &order("p-17")).await.expect("answer");
    let again = client.pay("outbox-17", &order("p-17")).await.expect("answer");
    assert_eq!(first, PaymentAnswer::Settled { provider_reference: "fp-p-17".into() });
    assert_eq!(again, first);
    let stats = provider.stats();
    assert_eq!(stats.payments_made, 1, "one payment for three requests");
    assert_eq!(stats.payment_requests, 3);
    assert_eq!(stats.keys, vec!["outbox-17".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_looked_up_by_reference_even_after_its_key_is_forgotten() {
    let provider = provider().await;
    let client = client(&provider, 5_000, 0);
    assert_eq!(client.status("p-1").await.expect("an answer"), None, "404: never ordered");
    let paid = client.pay("p-1", &order("p-1")).await.expect("an answer");
    provider.forget_idempotency_keys();
    assert_eq!(client.status("p-1").await.expect("an answer"), Some(paid));
    provider.set_mode(Mode::Unavailable { retry_after_s: None });
    let down = client.status("p-1").await.expect_err("down");
    assert!(down.counts_against_provider);
    let stats = provider.stats();
    assert_eq!((stats.payments_made, stats.status_requests), (1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_refusals_are_told_apart() {
    let provider = provider().await;
    let client = client(&provider, 5_000, 0);

    provider.set_mode(Mode::Unavailable { retry_after_s: Some(7) });
    let down = client.pay("1", &order("1")).await.expect_err("down");
    assert_eq!((down.code.as_str(), down.retry_after_ms), ("http_503", Some(7_000)));

    provider.set_mode(Mode::Reject);
    assert_eq!(
        client.pay("1", &order("1")).await.expect("an answer"),
        PaymentAnswer::Rejected { code: "creditor_account_closed".into() },
        "after a 503 the same key is a new attempt"
    );

    provider.set_mode(Mode::Pending);
    assert_eq!(
        client.pay("2", &order("2")).await.expect("an answer"),
        PaymentAnswer::Pending { provider_reference: "fp-2".into() }
    );

    // Another order under a used key is not an answer the relay can act on
    // (the provider may have paid under it), nor the provider's failure.
    let reused = client.pay("2", &order("other")).await.expect_err("refused");
    assert_eq!((reused.code.as_str(), reused.counts_against_provider), ("idempotency_conflict", false));
    assert_eq!(provider.stats().payments_made, 0);

    // A 400 about one order is that order's refusal, with the provider's reason.
    provider.refuse_creditor("Nobody", 400, "creditor_name_invalid");
    let mut invalid = order("4");
    invalid.creditor_name = "Nobody".into();
    assert_eq!(
        client.pay("4", &invalid).await.expect("an answer"),
        PaymentAnswer::Rejected { code: "creditor_name_invalid".into() }
    );

    // A provider that is not there at all.
    drop(provider);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gone = client.pay("3", &order("3")).await.expect_err("unreachable");
    assert!(["connect", "http_error", "timeout"].contains(&gone.code.as_str()), "{gone:?}");
}
