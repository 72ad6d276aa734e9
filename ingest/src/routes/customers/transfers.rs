//! The transaction PIN, the step-up token it buys, and the transfers a
//! customer submits with it.
//!
//! A customer sets a PIN (4 to 8 digits, argon2id). `POST /v1/auth/pin`
//! checks it and returns a step-up token valid 5 minutes, bound to the user;
//! a customer's transfer needs one in `X-Step-Up-Token`, and one step-up
//! pays for one transfer ([`crate::support::jwt::spend_step_up`]). Five wrong PINs
//! in a row lock PIN use for 15 minutes (423 `pin_locked` with
//! `Retry-After`); attempts are reserved before the hash is checked, so
//! parallel guesses get no more than five. The first PIN needs the password.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use schemas::{Currency, Operation, TransferId};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::{Accepted, Requester};
use crate::domain::transfers::TransferView;
use crate::domain::{acceptance, audit, transfers, users};
use crate::error::ApiError;
use crate::extract::headers::STEP_UP_HEADER;
use crate::extract::user::User;
use crate::middleware::context::RequestId;
use crate::support::jwt::JwtKeys;

pub(crate) const PIN_ATTEMPTS_MAX: i32 = 5;

pub(crate) const PIN_LOCK_S: i64 = 15 * 60;

/// The longest a status request may wait for the decision (below the
/// request timeout).
pub(crate) const WAIT_MS_MAX: u64 = 10_000;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_pin))
        .routes(routes!(step_up))
        .routes(routes!(submit))
        .routes(routes!(status))
}

fn check_pin_format(pin: &SecretString) -> Result<(), ApiError> {
    let pin = pin.expose_secret();
    if (4..=8).contains(&pin.len()) && pin.bytes().all(|byte| byte.is_ascii_digit()) {
        Ok(())
    } else {
        Err(ApiError::unprocessable("invalid_pin_format", "a PIN has 4 to 8 digits"))
    }
}

/// Checks a PIN with the lockout: 423 while locked, 401 `invalid_pin` when
/// wrong (the fifth in a row locks), 429 while the attempts left are all
/// being checked. Throttled per user first: the lockout bounds wrong PINs,
/// the limit the argon2 spent on right ones.
async fn verify_pin(
    state: &AppState,
    user: &User,
    pin: SecretString,
    peer: SocketAddr,
    request_id: &str,
) -> Result<(), ApiError> {
    state.limits.pin_users.admit(&user.id)?;
    // On a task of its own: a client hanging up (or the request timeout)
    // must not cancel a check between its reservation and its outcome.
    let (state, user_id, request_id) = (state.clone(), user.id, request_id.to_owned());
    tokio::spawn(async move { check_pin(&state, user_id, pin, peer, &request_id).await })
        .await
        .map_err(|error| ApiError::Internal(anyhow::anyhow!("checking a PIN: {error}")))?
}

/// A PIN check reserved before any hash is checked.
enum Reservation {
    /// The attempt is counted as in flight; check the PIN against this hash.
    Reserved(String),
    Locked(DateTime<Utc>),
    /// As many attempts as the lockout allows are being checked right now.
    Busy,
    NotSet,
}

async fn check_pin(
    state: &AppState,
    user_id: Uuid,
    pin: SecretString,
    peer: SocketAddr,
    request_id: &str,
) -> Result<(), ApiError> {
    let hash = match reserve_pin_attempt(&state.pool, user_id).await? {
        Reservation::Reserved(hash) => hash,
        Reservation::Locked(until) => return Err(locked(until)),
        Reservation::Busy => return Err(ApiError::RateLimited { retry_after_s: 1 }),
        Reservation::NotSet => {
            return Err(ApiError::unprocessable("pin_not_set", "set a PIN first: PUT /v1/me/pin"));
        }
    };
    let matches = match state.hasher.verify(Some(hash), pin).await {
        Ok(matches) => matches,
        Err(error) => {
            // Not a guess: the check itself failed. The reservation goes.
            release_pin_attempt(&state.pool, user_id, true).await?;
            return Err(ApiError::Internal(error));
        }
    };
    if matches {
        release_pin_attempt(&state.pool, user_id, false).await?;
        return Ok(());
    }
    let (attempts, locked_until) = settle_wrong_pin(&state.pool, user_id).await?;
    let locking = locked_until.is_some_and(|until| until > Utc::now()) && attempts == 0;
    audit::record(
        state,
        audit::Event {
            action: if locking { "pin.locked" } else { "pin.failed" },
            actor_user_id: Some(user_id),
            subject_user_id: Some(user_id),
            peer: Some(peer),
            request_id,
            detail: serde_json::json!({ "failed_attempts": attempts }),
        },
    )
    .await;
    match locked_until.filter(|until| *until > Utc::now()) {
        Some(until) if attempts == 0 => {
            tracing::warn!(%user_id, "PIN locked after {PIN_ATTEMPTS_MAX} wrong attempts");
            Err(locked(until))
        }
        _ => {
            tracing::info!(%user_id, attempts, "wrong PIN");
            Err(ApiError::unauthorized(
                "invalid_pin",
                format!("wrong PIN; {} attempt(s) left", PIN_ATTEMPTS_MAX - attempts),
            ))
        }
    }
}

/// A reservation older than this belongs to a check that died with its
/// process (checks run on their own tasks, so nothing else stops one):
/// it counts as a wrong PIN. Far above any request's time.
const PIN_RESERVATION_STALE_S: i32 = 300;

/// Reserves one PIN attempt, in one statement, before the hash is checked:
/// only when PIN use is not locked and the wrong PINs counted plus the
/// checks in flight are fewer than [`PIN_ATTEMPTS_MAX`]. So however many
/// requests come at once, and on however many ingest instances, at most
/// five guesses are checked or in flight per lock window. (Reading the lock
/// first and counting after the check let a burst of N requests make N
/// guesses.) Stale reservations turn into wrong attempts on the way.
async fn reserve_pin_attempt(pool: &sqlx::PgPool, user_id: Uuid) -> Result<Reservation, ApiError> {
    let hash: Option<String> = sqlx::query_scalar!(
        r#"update users set
              pin_failed_attempts = pin_failed_attempts
                  + case when pin_attempt_reserved_at < now() - make_interval(secs => $3)
                         then pin_attempts_in_flight else 0 end,
              pin_attempts_in_flight = 1
                  + case when pin_attempt_reserved_at < now() - make_interval(secs => $3)
                         then 0 else pin_attempts_in_flight end,
              pin_attempt_reserved_at = now()
          where id = $1 and pin_hash is not null
            and (pin_locked_until is null or pin_locked_until <= now())
            and pin_failed_attempts + pin_attempts_in_flight < $2
          returning pin_hash as "pin_hash!""#,
        user_id,
        PIN_ATTEMPTS_MAX,
        f64::from(PIN_RESERVATION_STALE_S),
    )
    .fetch_optional(pool)
    .await?;
    if let Some(hash) = hash {
        return Ok(Reservation::Reserved(hash));
    }
    // Refused: say why. When every attempt left is held by stale
    // reservations, they were guesses whose outcome was lost: lock, and
    // count from zero after the lock (as a fifth wrong PIN does), or the
    // lost reservations would refuse every attempt after every lock.
    let refused = sqlx::query!(
        r#"with stale as (
              select id, pin_attempt_reserved_at < now() - make_interval(secs => $3)
                         and pin_failed_attempts + pin_attempts_in_flight >= $2
                         and (pin_locked_until is null or pin_locked_until <= now()) as lock
              from users where id = $1 for update
          )
          update users set
              pin_locked_until = case when stale.lock then now() + make_interval(secs => $4) else pin_locked_until end,
              pin_failed_attempts = case when stale.lock then 0 else pin_failed_attempts end,
              pin_attempts_in_flight = case when stale.lock then 0 else pin_attempts_in_flight end
          from stale
          where users.id = stale.id
          returning pin_hash is not null as "has_pin!", pin_locked_until"#,
        user_id,
        PIN_ATTEMPTS_MAX,
        f64::from(PIN_RESERVATION_STALE_S),
        f64::from(i32::try_from(PIN_LOCK_S).unwrap_or(i32::MAX)),
    )
    .fetch_one(pool)
    .await?;
    let (has_pin, locked_until) = (refused.has_pin, refused.pin_locked_until);
    Ok(match locked_until.filter(|until| *until > Utc::now()) {
        _ if !has_pin => Reservation::NotSet,
        Some(until) => Reservation::Locked(until),
        None => Reservation::Busy,
    })
}

/// Ends a reservation that was no wrong guess: the right PIN (the wrong
/// ones in a row start again from zero) or a check that failed itself.
async fn release_pin_attempt(pool: &sqlx::PgPool, user_id: Uuid, failed_check: bool) -> Result<(), ApiError> {
    sqlx::query!(
        r"update users set
              pin_attempts_in_flight = greatest(pin_attempts_in_flight - 1, 0),
              pin_failed_attempts = case when $2 then pin_failed_attempts else 0 end
          where id = $1",
        user_id,
        failed_check,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends a reservation as a wrong PIN, atomically: the fifth in a row locks
/// PIN use for [`PIN_LOCK_S`] (and the count starts again).
async fn settle_wrong_pin(pool: &sqlx::PgPool, user_id: Uuid) -> Result<(i32, Option<DateTime<Utc>>), ApiError> {
    let settled = sqlx::query!(
        r"update users set
              pin_attempts_in_flight = greatest(pin_attempts_in_flight - 1, 0),
              pin_failed_attempts = case when pin_failed_attempts + 1 >= $2 then 0 else pin_failed_attempts + 1 end,
              pin_locked_until = case when pin_failed_attempts + 1 >= $2
                                      then now() + make_interval(secs => $3) else pin_locked_until end
          where id = $1
          returning pin_failed_attempts, pin_locked_until",
        user_id,
        PIN_ATTEMPTS_MAX,
        f64::from(i32::try_from(PIN_LOCK_S).unwrap_or(i32::MAX)),
    )
    .fetch_one(pool)
    .await?;
    Ok((settled.pin_failed_attempts, settled.pin_locked_until))
}

fn locked(until: DateTime<Utc>) -> ApiError {
    let seconds = u64::try_from((until - Utc::now()).num_seconds()).unwrap_or(0).max(1);
    ApiError::Locked { retry_after_s: seconds }
}

/// A new PIN, and the current one when one is set (the password when none is).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetPin {
    /// 4 to 8 digits.
    #[schema(value_type = String, format = Password, pattern = "^[0-9]{4,8}$")]
    pin: SecretString,
    /// Required to change a PIN that is set.
    #[schema(value_type = Option<String>, format = Password)]
    current_pin: Option<SecretString>,
    /// Required to set the first PIN: an access token alone (a stolen one)
    /// must not give its holder the second factor.
    #[schema(value_type = Option<String>, format = Password)]
    current_password: Option<SecretString>,
}

/// Sets or changes the transaction PIN.
///
/// The first PIN needs `current_password`; changing a PIN that is set needs
/// `current_pin`, checked with the same lockout as `POST /v1/auth/pin`.
#[utoipa::path(
    put,
    path = "/v1/me/pin",
    operation_id = "set_pin",
    tag = "customer transfers",
    request_body = SetPin,
    responses((status = 204, description = "The PIN is set")),
)]
async fn set_pin(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<SetPin>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(request) = body?;
    check_pin_format(&request.pin)?;
    let has_pin = sqlx::query_scalar!(r#"select pin_hash is not null as "has_pin!" from users where id = $1"#, user.id)
        .fetch_one(&state.pool)
        .await?;
    if has_pin {
        let current = request
            .current_pin
            .ok_or_else(|| ApiError::unprocessable("current_pin_required", "give current_pin to change the PIN"))?;
        verify_pin(&state, &user, current, peer, &request_id.0).await?;
    } else {
        let password = request.current_password.ok_or_else(|| {
            ApiError::unprocessable("current_password_required", "give current_password to set the first PIN")
        })?;
        // The same bucket as PIN checks: this is a password guess too.
        state.limits.pin_users.admit(&user.id)?;
        users::check_current_password(&state, user.id, password).await?;
    }
    let pin = request.pin;
    let hash = state.hasher.hash_blocking(pin).await?;
    sqlx::query!(
        "update users set pin_hash = $2, pin_failed_attempts = 0, pin_locked_until = null where id = $1",
        user.id,
        hash
    )
    .execute(&state.pool)
    .await?;
    tracing::info!(user_id = %user.id, changed = has_pin, "PIN set");
    audit::record(
        &state,
        audit::Event::by_user(if has_pin { "pin.changed" } else { "pin.set" }, user.id, peer, &request_id.0),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// The transaction PIN.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StepUpRequest {
    #[schema(value_type = String, format = Password)]
    pin: SecretString,
}

/// Checks the PIN and returns a step-up token valid 5 minutes.
///
/// A customer's transfer needs the token in `X-Step-Up-Token`. Five wrong
/// PINs in a row lock PIN use for 15 minutes (423 `pin_locked` with
/// `Retry-After`).
#[utoipa::path(
    post,
    path = "/v1/auth/pin",
    operation_id = "pin_step_up",
    tag = "customer transfers",
    request_body = StepUpRequest,
    responses((
        status = 200,
        description = "`{\"step_up_token\", \"expires_in\"}`: the token and its lifetime in seconds",
        body = serde_json::Value,
        example = json!({ "expires_in": 300, "step_up_token": "eyJhbGciOiJIUzI1NiJ9…" }),
    )),
)]
async fn step_up(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<StepUpRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(request) = body?;
    verify_pin(&state, &user, request.pin, peer, &request_id.0).await?;
    let token = state.jwt.issue_step_up(user.id, &user.role)?;
    Ok(Json(serde_json::json!({ "step_up_token": token, "expires_in": JwtKeys::STEP_UP_TTL_S })))
}

/// A transfer from one of the customer's accounts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = CustomerTransferRequest)]
#[serde(deny_unknown_fields)]
struct TransferRequest {
    /// One of the customer's own accounts.
    source_account_id: Uuid,
    destination_account_id: Uuid,
    /// A decimal string, e.g. "12.50".
    #[schema(example = "12.50")]
    amount: String,
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
    /// What the payee sees, e.g. an invoice number.
    #[serde(default)]
    #[schema(schema_with = transfers::reference_schema)]
    reference: Option<schemas::Reference>,
}

/// Submits a transfer from one of the customer's accounts.
///
/// Needs a step-up token (`POST /v1/auth/pin`) in `X-Step-Up-Token`.
/// Applied by the processor: follow it at the `Location`.
#[utoipa::path(
    post,
    path = "/v1/me/transfers",
    operation_id = "customer_create_transfer",
    tag = "customer transfers",
    params(
        ("X-Step-Up-Token" = String, Header, description = "From POST /v1/auth/pin, valid 5 minutes"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    request_body = TransferRequest,
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = Accepted,
        headers(("Location" = String, description = "The transfer's status URL under /v1/me/transfers")),
    )),
)]
async fn submit(
    State(state): State<AppState>,
    user: User,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Json<TransferRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let step_up = headers.get(STEP_UP_HEADER).and_then(|value| value.to_str().ok()).ok_or_else(|| {
        ApiError::unauthorized("step_up_required", "enter the PIN (POST /v1/auth/pin) and send X-Step-Up-Token")
    })?;
    let step_up = state.jwt.check_step_up(step_up, user.id)?;
    let key = crate::extract::headers::required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let money = transfers::parse_money(&request.amount, request.currency)?;
    let owns_source = sqlx::query_scalar!(
        r#"select exists (select 1 from accounts where id = $1 and owner_user_id = $2) as "owns!""#,
        request.source_account_id,
        user.id
    )
    .fetch_one(&state.pool)
    .await?;
    if !owns_source {
        return Err(ApiError::not_found("account_not_found", "no such source account"));
    }
    let transfer_id = TransferId::derive(Operation::Transfer, user.id, &key);
    crate::support::jwt::spend_step_up(&state.pool, &step_up, transfer_id.as_uuid()).await?;
    let (command, canonical) = transfers::transfer_command(
        transfer_id,
        request.source_account_id,
        request.destination_account_id,
        money,
        transfers::Annotations { reference: request.reference, metadata: None },
    );
    let accepted =
        acceptance::accept(&state, Requester::User(user.id), &key, &command, canonical, &request_id.0).await?;
    let mut response = accepted.into_response();
    if let Ok(location) = format!("/v1/me/transfers/{transfer_id}").parse() {
        response.headers_mut().insert(axum::http::header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    /// Wait up to this long (≤ 10 000) for the decision.
    #[param(maximum = 10_000)]
    wait_ms: Option<u64>,
}

/// A transfer the customer submitted, and its status.
///
/// With `wait_ms`, the answer waits up to that long while the ledger has
/// not decided (`accepted` or `unconfirmed`). The wait costs no queries: the
/// decision wakes it.
#[utoipa::path(
    get,
    path = "/v1/me/transfers/{transfer_id}",
    operation_id = "customer_get_transfer",
    tag = "customer transfers",
    params(("transfer_id" = Uuid, Path, description = "The transfer", example = "7f1d7e62-2c4b-4f4e-9a1e-1d2c3b4a5f60"), StatusQuery),
    responses((status = 200, description = "The transfer and its status", body = TransferView)),
)]
async fn status(
    State(state): State<AppState>,
    user: User,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Path(transfer_id) = path?;
    let Query(query) = query?;
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > WAIT_MS_MAX {
        return Err(ApiError::bad_request("invalid_query", format!("wait_ms is at most {WAIT_MS_MAX}")));
    }
    let requester = Requester::User(user.id);
    // Registered before the status is read: a decision committed after the
    // read wakes this request (see `crate::support::decisions`). Too many waiting
    // already: the answer is the status now.
    let registration = if wait_ms > 0 { state.decisions.register(transfer_id) } else { None };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    loop {
        let woken = registration.as_ref().map(|registration| registration.notify().notified());
        let mut woken = std::pin::pin!(woken);
        if let Some(woken) = woken.as_mut().as_pin_mut() {
            woken.enable();
        }
        state.decisions.count_status_read();
        let view = transfers::transfer_view(&state, transfer_id, requester).await?;
        let Some(woken) = woken.as_pin_mut() else { return Ok(Json(view)) };
        if view.is_decided() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(view));
        }
        // Woken when the watcher sees the decision, or at the deadline for
        // one last look.
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}
