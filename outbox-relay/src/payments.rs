//! Delivering `payments` rows: order the payment from the provider, then
//! tell the ledger how it ended with a `payout.outcome` command of the
//! payout's hold (`Payments::settle`, the one place that does).
//!
//! Exactly-once payment rests on three things. The provider receives the
//! payout's own id as `Idempotency-Key`, so ordering the same payout again
//! (after a crash between the provider's answer and the row's record, or a
//! lost answer) pays once while the provider keeps the key. A row that may
//! have reached the provider before is looked up first, so a retry after
//! the provider forgot the key relays what it did instead of paying again.
//! The settling command's id is derived from the payout, so the same answer
//! relayed twice is applied once by the processor.
//!
//! A refusal of one payment (the provider's 400, 402 or 422) is that
//! payment's outcome: its hold is voided with the provider's reason. It is
//! an answer, so it never counts toward the circuit breaker, and payments
//! keep no order among themselves: one payment failing holds back no other.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use platform::config::{self, ConfigError};
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::Command;
use schemas::messages::{PaymentRequested, PayoutResult, payout_outcome};
use tokio::sync::Semaphore;

use crate::RelayConfig;
use crate::outbox::{Attempt, Row};
use crate::provider::{PaymentAnswer, PaymentOrder, ProviderClient};

/// Limits on the calls to the provider.
#[derive(Debug, Clone, Copy)]
pub struct PaymentsConfig {
    /// `LEDGERLINE_PROVIDER_CONCURRENCY_MAX`: calls in flight at once.
    pub concurrency_max: usize,
    /// `LEDGERLINE_PROVIDER_BREAKER_FAILURES_MAX`: consecutive failures that
    /// open the circuit breaker.
    pub breaker_failures_max: u32,
    /// `LEDGERLINE_PROVIDER_BREAKER_OPEN_MS`: how long an open breaker lets
    /// no call through; then one trial call decides.
    pub breaker_open_ms: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self { concurrency_max: 8, breaker_failures_max: 5, breaker_open_ms: 30_000 }
    }
}

impl PaymentsConfig {
    /// # Errors
    /// When a variable is malformed or out of range.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            concurrency_max: config::limit("LEDGERLINE_PROVIDER_CONCURRENCY_MAX", defaults.concurrency_max, 1..=256)?,
            breaker_failures_max: config::limit(
                "LEDGERLINE_PROVIDER_BREAKER_FAILURES_MAX",
                defaults.breaker_failures_max,
                1..=1_000,
            )?,
            breaker_open_ms: config::limit(
                "LEDGERLINE_PROVIDER_BREAKER_OPEN_MS",
                defaults.breaker_open_ms,
                10..=3_600_000,
            )?,
        })
    }
}

/// A circuit breaker for one destination: after `failures_max` failures in
/// a row it opens for `open_for`, during which rows wait without spending
/// attempts; then calls go through again and one success closes it.
#[derive(Debug)]
struct Breaker {
    failures_in_row: u32,
    open_until: Option<Instant>,
}

/// The relay's side of the payment provider.
pub struct Payments {
    pool: sqlx::PgPool,
    client: Option<ProviderClient>,
    producer: FutureProducer,
    commands_topic: String,
    produce_timeout: Duration,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
    config: PaymentsConfig,
}

impl Payments {
    /// # Errors
    /// When the provider's HTTP client cannot be built.
    pub fn new(config: &RelayConfig, producer: FutureProducer, pool: sqlx::PgPool) -> anyhow::Result<Self> {
        Ok(Self {
            pool,
            client: config.provider.clone().map(ProviderClient::new).transpose()?,
            producer,
            commands_topic: config.kafka.topics.commands.clone(),
            produce_timeout: Duration::from_millis(config.kafka.produce_timeout_ms),
            permits: Semaphore::new(config.payments.concurrency_max),
            breaker: Mutex::new(Breaker { failures_in_row: 0, open_until: None }),
            config: config.payments,
        })
    }

    /// Orders one payment and relays its outcome to the ledger, unless its
    /// turn for a call comes after `start_deadline` (the claim's lease
    /// could then run out mid-call, and another relay order it meanwhile).
    pub async fn deliver(&self, row: &Row, start_deadline: std::time::Instant) -> Attempt {
        let Some(client) = self.client.as_ref() else {
            return Attempt::failed(
                "no_provider",
                "no payment provider is configured (LEDGERLINE_PROVIDER_BASE_URL)",
                None,
            );
        };
        let payment: PaymentRequested = match serde_json::from_str(&row.payload) {
            Ok(payment) => payment,
            Err(error) => return Attempt::failed("bad_payload", &format!("not a payment.requested: {error}"), None),
        };
        if self.breaker_open() {
            // Not an attempt: the row keeps its budget for when the
            // provider is back.
            return Attempt::HeldBack;
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return Attempt::HeldBack;
        };
        // The wait for a permit can be long (every payment of a claim starts
        // at once): a call begun after the deadline could outlive the lease.
        if Instant::now() >= start_deadline {
            return Attempt::HeldBack;
        }
        let order = PaymentOrder {
            payment_id: payment.payment_id.to_string(),
            amount: payment.money.amount().value().to_string(),
            currency: payment.money.currency().code().to_owned(),
            creditor_name: payment.creditor.name.clone(),
            creditor_iban: payment.creditor.iban.to_string(),
            remittance_information: payment.remittance_information.as_ref().map(|text| text.as_str().to_owned()),
        };
        let answer = self.ask(client, row, &order).await;
        self.record_call(&answer);
        match answer {
            Ok(PaymentAnswer::Settled { provider_reference }) => {
                tracing::info!(outbox_id = row.id, payment_id = %payment.payment_id, %provider_reference, "payment settled");
                let settled = self.settle(&payment, PayoutResult::Settled, Some(&provider_reference), None).await;
                answered(settled, format!("settled:{provider_reference}"))
            }
            Ok(PaymentAnswer::Rejected { code }) => {
                // This payment's outcome, not the provider's failure: the
                // hold is voided with the provider's reason.
                tracing::warn!(outbox_id = row.id, payment_id = %payment.payment_id, code, "payment refused by the provider");
                let voided = self.settle(&payment, PayoutResult::Rejected, None, Some(&code)).await;
                answered(voided, format!("rejected:{code}"))
            }
            Ok(PaymentAnswer::Pending { provider_reference }) => {
                // The outcome comes by the provider's callback.
                tracing::info!(outbox_id = row.id, payment_id = %payment.payment_id, %provider_reference, "payment pending at the provider");
                Attempt::Answered { outcome: format!("pending:{provider_reference}") }
            }
            Err(failure) => Attempt::failed(&failure.code, &failure.message, failure.retry_after_ms),
        }
    }

    /// Orders the payment, under the payout's own id as the idempotency key.
    /// A row an earlier attempt may have sent to the provider (one that
    /// failed, or was claimed by a relay that never recorded what came of
    /// it, or that an operator put back after it died) is first looked up:
    /// the provider may have paid although no answer reached us, and may
    /// have forgotten the key since. Only a payment it does not know is
    /// ordered again.
    async fn ask(
        &self,
        client: &ProviderClient,
        row: &Row,
        order: &PaymentOrder,
    ) -> Result<PaymentAnswer, crate::provider::ProviderFailure> {
        if row.may_have_been_sent() {
            if let Some(known) = client.status(&order.payment_id).await? {
                tracing::info!(outbox_id = row.id, payment_id = %order.payment_id, ?known, "the provider knows this payment; relaying its state");
                return Ok(known);
            }
            tracing::info!(outbox_id = row.id, payment_id = %order.payment_id, "the provider never took this payment; ordering it");
        }
        client.pay(&order.payment_id, order).await
    }

    /// The one place the relay tells the ledger how the provider decided a
    /// payout: it records the outcome (which is what lets the processor
    /// trust the command, see `platform::payouts`), then publishes the
    /// `payout.outcome` command, with the provider's reference or reason.
    async fn settle(
        &self,
        payment: &PaymentRequested,
        result: PayoutResult,
        provider_reference: Option<&str>,
        provider_code: Option<&str>,
    ) -> Attempt {
        let recorded = platform::payouts::record_outcome(
            &self.pool,
            payment.payment_id,
            result,
            platform::payouts::Origin::Relay,
            provider_reference,
            provider_code,
        )
        .await;
        if let Err(error) = recorded {
            return Attempt::failed("outcome_not_recorded", &error.to_string(), None);
        }
        self.publish(&payout_outcome(payment.payment_id, payment.source_account_id, result, Utc::now())).await
    }

    async fn publish(&self, command: &Command) -> Attempt {
        let payload = match serde_json::to_string(command) {
            Ok(payload) => payload,
            Err(error) => return Attempt::failed("bad_command", &error.to_string(), None),
        };
        let key = command.partition_key();
        let record = FutureRecord::to(&self.commands_topic).key(&key).payload(&payload);
        match self.producer.send(record, self.produce_timeout).await {
            Ok(_) => Attempt::Delivered,
            Err((error, _)) => Attempt::failed(&crate::kafka_error_code(&error), &error.to_string(), None),
        }
    }

    fn breaker_open(&self) -> bool {
        let Ok(breaker) = self.breaker.lock() else { return false };
        breaker.open_until.is_some_and(|until| Instant::now() < until)
    }

    /// Counts a call for the breaker: any answer closes it, a failure of
    /// the provider's counts toward opening it, and a failure about one
    /// payment (a conflict on its key) changes nothing.
    fn record_call(&self, answer: &Result<PaymentAnswer, crate::provider::ProviderFailure>) {
        let succeeded = match answer {
            Ok(_) => true,
            Err(failure) if failure.counts_against_provider => false,
            Err(_) => return,
        };
        let Ok(mut breaker) = self.breaker.lock() else { return };
        if succeeded {
            if breaker.open_until.is_some() {
                tracing::info!("payment provider answering again: circuit breaker closed");
            }
            *breaker = Breaker { failures_in_row: 0, open_until: None };
            return;
        }
        breaker.failures_in_row = breaker.failures_in_row.saturating_add(1);
        if breaker.failures_in_row >= self.config.breaker_failures_max {
            breaker.open_until = Some(Instant::now() + Duration::from_millis(self.config.breaker_open_ms));
            tracing::warn!(
                failures_in_row = breaker.failures_in_row,
                open_ms = self.config.breaker_open_ms,
                "payment provider failing: circuit breaker open"
            );
        }
    }
}

impl std::fmt::Debug for Payments {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Payments")
            .field("client", &self.client)
            .field("commands_topic", &self.commands_topic)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A delivered settlement keeps the provider's answer on its row; a
/// failed one is retried (and looked up first).
fn answered(settled: Attempt, outcome: String) -> Attempt {
    match settled {
        Attempt::Delivered => Attempt::Answered { outcome },
        other => other,
    }
}
