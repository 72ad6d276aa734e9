//! A fake payment provider, for tests and `ledgerctl dev`: a real HTTP
//! server with an OAuth2 client-credentials token endpoint, a payments
//! endpoint that honours `Idempotency-Key`, and a lookup of a payment by our
//! reference (`GET /v1/payments/{payment_id}`, as real providers look
//! payments up by the client's reference). It is switchable between modes
//! (pay, reject, accept for later, accept and call back (possibly more than
//! once), fail with 503 and `Retry-After`, pay at once but answer slowly),
//! can refuse one creditor's orders with a 400, and can forget its
//! idempotency keys as a real provider does after its retention period
//! (while it still knows the payments it made).
//! It counts what it saw, so tests can check that a payment was made once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use platform::CancellationToken;
use serde::Deserialize;
use serde_json::json;

use crate::provider::PaymentOrder;

/// How the provider answers payment orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pays at once: 201 `settled`.
    Settle,
    /// Refuses for good: 422 `rejected` with `creditor_account_closed`.
    Reject,
    /// Takes the order; the outcome would come by callback: 202 `pending`.
    Pending,
    /// Down: 503, with `Retry-After` when given.
    Unavailable { retry_after_s: Option<u64> },
    /// Pays at once, but answers (and answers lookups) only after this long:
    /// a client that gives up sooner never hears that it paid.
    Slow { delay_ms: u64 },
    /// Answers 202 `pending`, then after `delay_ms` POSTs a signed callback
    /// with the outcome (`paid` or not) to the callback URL, `copies` times.
    Callback { paid: bool, copies: u32, delay_ms: u64 },
}

/// What the provider saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub tokens_issued: u64,
    /// Requests to the payments API: orders and lookups.
    pub payment_requests: u64,
    /// Of those, lookups of a payment by reference.
    pub status_requests: u64,
    pub unauthorized_requests: u64,
    /// Callbacks sent, and how many ingest answered with a 2xx.
    pub callbacks_sent: u64,
    pub callbacks_accepted: u64,
    /// Payments actually made (settled): a second one for the same
    /// reference counts again, as it would cost the bank twice.
    pub payments_made: u64,
    /// Idempotency keys seen with a final answer.
    pub keys: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    client_id: String,
    client_secret: String,
    token_ttl_s: u64,
    tokens: HashMap<String, Instant>,
    stats: Stats,
    /// Final answers by idempotency key: the order and what was answered.
    /// Forgotten by [`FakeProvider::forget_idempotency_keys`].
    answers: HashMap<String, (PaymentOrder, StatusCode, serde_json::Value)>,
    /// The payments it took, by our reference (the order's `payment_id`),
    /// with their state as a lookup tells it; never forgotten.
    payments: HashMap<String, serde_json::Value>,
    /// Orders to these creditor names are refused: a status and a code.
    refused_creditors: HashMap<String, (StatusCode, String)>,
    /// Where callbacks go, and the HMAC key they are signed with.
    callbacks: Option<(String, String)>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(state: &Shared) -> MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running fake provider; it stops when dropped.
#[derive(Debug)]
pub struct FakeProvider {
    address: SocketAddr,
    state: Shared,
    shutdown: CancellationToken,
}

impl FakeProvider {
    /// Listens on `address` (port 0 for any) with these client credentials.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(address: SocketAddr, client_id: &str, client_secret: &str) -> anyhow::Result<Self> {
        let state: Shared = Arc::new(Mutex::new(Inner {
            mode: Mode::Settle,
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            token_ttl_s: 300,
            tokens: HashMap::new(),
            stats: Stats::default(),
            answers: HashMap::new(),
            payments: HashMap::new(),
            refused_creditors: HashMap::new(),
            callbacks: None,
        }));
        let app = Router::new()
            .route("/oauth/token", post(issue_token))
            .route("/v1/payments", post(order_payment))
            .route("/v1/payments/{payment_id}", get(look_up_payment))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            if let Err(error) = served {
                tracing::error!(%error, "the fake provider stopped");
            }
        });
        tracing::info!(%address, "fake payment provider listening");
        Ok(Self { address, state, shutdown })
    }

    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    #[must_use]
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.address)
    }

    pub fn set_mode(&self, mode: Mode) {
        lock(&self.state).mode = mode;
    }

    /// Lifetime of the tokens issued from now on.
    pub fn set_token_ttl_s(&self, seconds: u64) {
        lock(&self.state).token_ttl_s = seconds;
    }

    /// Where `Mode::Callback` sends its callbacks (a full URL, e.g.
    /// `http://127.0.0.1:8080/v1/providers/fake/callbacks`) and the secret
    /// it signs them with.
    pub fn set_callbacks(&self, url: &str, secret: &str) {
        lock(&self.state).callbacks = Some((url.to_owned(), secret.to_owned()));
    }

    /// Forgets every idempotency key, as a provider does once its retention
    /// period (a day at many) has passed: an order sent again under an old
    /// key is a new order. The payments themselves stay known to lookups.
    pub fn forget_idempotency_keys(&self) {
        lock(&self.state).answers.clear();
    }

    /// Refuses every order to the creditor `name` with `status` (a 4xx) and
    /// the error `code`, as a provider refuses a request it finds invalid.
    pub fn refuse_creditor(&self, name: &str, status: u16, code: &str) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        lock(&self.state).refused_creditors.insert(name.to_owned(), (status, code.to_owned()));
    }

    /// Invalidates every token issued so far, as a key rotation would.
    pub fn revoke_tokens(&self) {
        lock(&self.state).tokens.clear();
    }

    #[must_use]
    pub fn stats(&self) -> Stats {
        let inner = lock(&self.state);
        let mut stats = inner.stats.clone();
        stats.keys = inner.answers.keys().cloned().collect();
        stats.keys.sort();
        stats
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: String,
}

async fn issue_token(State(state): State<Shared>, headers: HeaderMap, Form(request): Form<TokenRequest>) -> Response {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| base64::engine::general_purpose::STANDARD.decode(encoded).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok());
    let mut inner = lock(&state);
    let expected = format!("{}:{}", inner.client_id, inner.client_secret);
    if credentials.as_deref() != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client" }))).into_response();
    }
    if request.grant_type != "client_credentials" {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "unsupported_grant_type" }))).into_response();
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let ttl_s = inner.token_ttl_s;
    inner.tokens.insert(token.clone(), Instant::now() + Duration::from_secs(ttl_s));
    inner.stats.tokens_issued += 1;
    Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": ttl_s })).into_response()
}

/// The bearer token of a request, if it is one the provider issued and it
/// has not expired.
fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| inner.tokens.get(token))
        .is_some_and(|expiry| Instant::now() < *expiry)
}

fn unauthorized(inner: &mut Inner) -> Response {
    inner.stats.unauthorized_requests += 1;
    (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_token" }))).into_response()
}

/// In `Mode::Slow`, holds an answer back for the delay.
async fn answer_late(mode: Mode, response: Response) -> Response {
    if let Mode::Slow { delay_ms } = mode {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    response
}

async fn order_payment(State(state): State<Shared>, headers: HeaderMap, Json(order): Json<PaymentOrder>) -> Response {
    let key = headers.get("idempotency-key").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let (mode, status, body) = {
        let mut inner = lock(&state);
        inner.stats.payment_requests += 1;
        if !authorized(&inner, &headers) {
            return unauthorized(&mut inner);
        }
        let Some(key) = key else {
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": "idempotency_key_required" }))).into_response();
        };
        let mode = inner.mode;
        if let Some((first, status, body)) = inner.answers.get(&key) {
            if *first != order {
                return (StatusCode::BAD_REQUEST, Json(json!({ "error": "idempotency_key_reused" }))).into_response();
            }
            // The same order again: the first answer, and no second payment.
            (mode, *status, body.clone())
        } else {
            match new_order(&state, &mut inner, mode, key, order) {
                Ok(answer) => answer,
                Err(response) => return *response,
            }
        }
    };
    answer_late(mode, (status, Json(body)).into_response()).await
}

/// Takes a first order under `key`: refused, down, or decided and kept.
fn new_order(
    state: &Shared,
    inner: &mut Inner,
    mode: Mode,
    key: String,
    order: PaymentOrder,
) -> Result<(Mode, StatusCode, serde_json::Value), Box<Response>> {
    if let Some((status, code)) = inner.refused_creditors.get(&order.creditor_name) {
        // Refused as invalid: no payment, nothing kept under the key.
        return Err(Box::new((*status, Json(json!({ "error": code, "code": code }))).into_response()));
    }
    let Some((status, body)) = decide(state, mode, &order) else {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "unavailable" }))).into_response();
        if let Mode::Unavailable { retry_after_s: Some(seconds) } = mode
            && let Ok(value) = seconds.to_string().parse()
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Err(Box::new(response));
    };
    // Decided and kept before answering: a client that stops waiting (a
    // timeout) does not undo a payment the provider made.
    if status == StatusCode::CREATED || matches!(mode, Mode::Callback { paid: true, .. }) {
        inner.stats.payments_made += 1;
    }
    inner.payments.insert(order.payment_id.clone(), body.clone());
    inner.answers.insert(key, (order, status, body.clone()));
    Ok((mode, status, body))
}

/// What the provider does with a new order in `mode`; `None` when it is down.
fn decide(state: &Shared, mode: Mode, order: &PaymentOrder) -> Option<(StatusCode, serde_json::Value)> {
    let reference = format!("fp-{}", order.payment_id);
    Some(match mode {
        Mode::Unavailable { .. } => return None,
        Mode::Reject => {
            (StatusCode::UNPROCESSABLE_ENTITY, json!({ "status": "rejected", "code": "creditor_account_closed" }))
        }
        Mode::Pending => (StatusCode::ACCEPTED, json!({ "status": "pending", "reference": reference })),
        Mode::Callback { paid, copies, delay_ms } => {
            tokio::spawn(call_back(state.clone(), order.payment_id.clone(), paid, copies, delay_ms));
            (StatusCode::ACCEPTED, json!({ "status": "pending", "reference": reference }))
        }
        Mode::Settle | Mode::Slow { .. } => {
            (StatusCode::CREATED, json!({ "status": "settled", "reference": reference }))
        }
    })
}

/// `GET /v1/payments/{payment_id}`: a payment by our reference, as the
/// provider knows it now (200), or 404 when it never took one.
async fn look_up_payment(State(state): State<Shared>, headers: HeaderMap, Path(payment_id): Path<String>) -> Response {
    let (mode, response) = {
        let mut inner = lock(&state);
        inner.stats.payment_requests += 1;
        inner.stats.status_requests += 1;
        if !authorized(&inner, &headers) {
            return unauthorized(&mut inner);
        }
        if matches!(inner.mode, Mode::Unavailable { .. }) {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "unavailable" }))).into_response();
        }
        let response = match inner.payments.get(&payment_id) {
            Some(body) => (StatusCode::OK, Json(body.clone())).into_response(),
            None => (StatusCode::NOT_FOUND, Json(json!({ "error": "payment_not_found" }))).into_response(),
        };
        (inner.mode, response)
    };
    answer_late(mode, response).await
}

/// Tells ingest how a pending payment ended, `copies` times, signed.
async fn call_back(state: Shared, payment_id: String, paid: bool, copies: u32, delay_ms: u64) {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let Some((url, secret)) = lock(&state).callbacks.clone() else {
        tracing::warn!("the fake provider has no callback URL; the outcome is not told");
        return;
    };
    let body = json!({
        "payment_id": payment_id,
        "status": if paid { "settled" } else { "rejected" },
        "reference": format!("fp-{payment_id}"),
    })
    .to_string();
    if let Some(known) = lock(&state).payments.get_mut(&payment_id) {
        *known = serde_json::from_str(&body).unwrap_or_default();
    }
    let client = reqwest::Client::new();
    for _ in 0..copies {
        let signature =
            platform::signature::sign_callback(secret.as_bytes(), chrono::Utc::now().timestamp(), body.as_bytes());
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .header("provider-signature", signature)
            .body(body.clone())
            .send()
            .await;
        let mut inner = lock(&state);
        inner.stats.callbacks_sent += 1;
        if sent.is_ok_and(|response| response.status().is_success()) {
            inner.stats.callbacks_accepted += 1;
        }
    }
}
