//! Staff routes, by role: `support` reads any account, `admin` freezes,
//! unfreezes and closes accounts and sets spending limits, `ops` (and `admin`) fund accounts from
//! cash-in. A staff route refuses other roles with 403 `forbidden_role`
//! (the route is no secret; accounts stay 404 when they do not exist).
//!
//! What staff submit is followed at `/v1/staff/commands/{id}` (the
//! `Location` of the 202): the processor's decision, `completed` or
//! `rejected` with its reason, read from `account_commands` for a freeze,
//! unfreeze or close and from `transfers` for a deposit.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use schemas::{Operation, TransferId};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::acceptance::Requester;
use crate::domain::accounts::{
    AccountView, DepositRequest, LimitSetter, SpendingLimitsRequest, StatusChange, find_account,
};
use crate::domain::permissions::Permission;
use crate::domain::transfers::TransferView;
use crate::domain::{acceptance, accounts, audit, transfers};
use crate::error::ApiError;
use crate::extract::user::{User, require};
use crate::middleware::context::RequestId;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(read_account))
        .routes(routes!(deposit))
        .routes(routes!(freeze))
        .routes(routes!(unfreeze))
        .routes(routes!(close))
        .routes(routes!(set_spending_limits))
        .routes(routes!(command_status))
}

/// Where staff follow what they submitted.
fn command_location(command_id: Uuid) -> String {
    format!("/v1/staff/commands/{command_id}")
}

/// A command the staff member submitted (a freeze, unfreeze, close or
/// deposit), and the processor's decision (admin, ops).
///
/// `accepted` until the processor decides, then `completed`, or `rejected`
/// with the reason (e.g. `account_not_empty` for a close).
#[utoipa::path(
    get,
    path = "/v1/staff/commands/{command_id}",
    operation_id = "staff_command_status",
    tag = "staff",
    params(("command_id" = Uuid, Path, description = "The `transfer_id` of the 202", example = "1ef73cfc-e0aa-5cd3-bb3b-8400b8b21d1d")),
    responses((status = 200, description = "The command and its status", body = TransferView)),
)]
async fn command_status(
    State(state): State<AppState>,
    user: User,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    require(&user, Permission::ReadCommands)?;
    let Path(command_id) = path?;
    Ok(Json(transfers::transfer_view(&state, command_id, Requester::User(user.id)).await?))
}

/// Any account, by id (support, ops, admin).
#[utoipa::path(
    get,
    path = "/v1/staff/accounts/{account_id}",
    operation_id = "staff_read_account",
    tag = "staff",
    params(("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01")),
    responses((status = 200, description = "The account and its balances", body = AccountView)),
)]
async fn read_account(
    State(state): State<AppState>,
    user: User,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::ReadLedger)?;
    let Path(account_id) = path?;
    Ok(Json(find_account(&state, account_id, None).await?.view()?))
}

/// Freezes an account (admin): it can neither send nor receive until
/// unfrozen. Applied by the processor; 202 with the command's status URL.
#[utoipa::path(
    post,
    path = "/v1/staff/accounts/{account_id}/freeze",
    operation_id = "staff_freeze_account",
    tag = "staff",
    params(
        ("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = acceptance::Accepted,
        headers(("Location" = String, description = "The command's status URL under /v1/staff/commands")),
    )),
)]
async fn freeze(
    state: State<AppState>,
    user: User,
    peer: ConnectInfo<SocketAddr>,
    request_id: Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    change_status(state, user, peer, request_id, headers, path, StatusChange::Freeze).await
}

/// Unfreezes an account (admin).
#[utoipa::path(
    post,
    path = "/v1/staff/accounts/{account_id}/unfreeze",
    operation_id = "staff_unfreeze_account",
    tag = "staff",
    params(
        ("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = acceptance::Accepted,
        headers(("Location" = String, description = "The command's status URL under /v1/staff/commands")),
    )),
)]
async fn unfreeze(
    state: State<AppState>,
    user: User,
    peer: ConnectInfo<SocketAddr>,
    request_id: Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    change_status(state, user, peer, request_id, headers, path, StatusChange::Unfreeze).await
}

/// Closes an account for good (admin); its balance must be zero.
#[utoipa::path(
    post,
    path = "/v1/staff/accounts/{account_id}/close",
    operation_id = "staff_close_account",
    tag = "staff",
    params(
        ("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = acceptance::Accepted,
        headers(("Location" = String, description = "The command's status URL under /v1/staff/commands")),
    )),
)]
async fn close(
    state: State<AppState>,
    user: User,
    peer: ConnectInfo<SocketAddr>,
    request_id: Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Response, ApiError> {
    change_status(state, user, peer, request_id, headers, path, StatusChange::Close).await
}

async fn change_status(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    change: StatusChange,
) -> Result<Response, ApiError> {
    require(&user, Permission::ChangeAccountStatus)?;
    let Path(account_id) = path?;
    let key = crate::extract::headers::required_idempotency_key(&headers)?;
    let (command_id, accepted) =
        accounts::request_status_change(&state, user.id, peer, &request_id.0, &key, account_id, change).await?;
    Ok(accepted.into_response_at(&command_location(command_id)))
}

/// Sets any account's spending limits (admin; audited). An absent limit is
/// removed.
#[utoipa::path(
    put,
    path = "/v1/staff/accounts/{account_id}/spending-limits",
    operation_id = "staff_set_spending_limits",
    tag = "staff",
    params(
        ("account_id" = Uuid, Path, description = "The account", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    request_body = SpendingLimitsRequest,
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = acceptance::Accepted,
        headers(("Location" = String, description = "The command's status URL under /v1/staff/commands")),
    )),
)]
async fn set_spending_limits(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<SpendingLimitsRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&user, Permission::SetSpendingLimits)?;
    let Path(account_id) = path?;
    let key = crate::extract::headers::required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let setter = LimitSetter::Staff { staff_id: user.id, peer };
    let accepted = accounts::request_spending_limits(&state, setter, &request_id.0, &key, account_id, &request).await?;
    let command_id = TransferId::derive(Operation::SpendingLimits, user.id, &key).as_uuid();
    Ok(accepted.into_response_at(&command_location(command_id)))
}

/// Funds any account from the currency's cash-in system account (ops, admin).
#[utoipa::path(
    post,
    path = "/v1/staff/accounts/{account_id}/deposits",
    operation_id = "staff_deposit",
    tag = "staff",
    params(
        ("account_id" = Uuid, Path, description = "The account to fund", example = "0b6f4b8e-8a51-4c53-9d55-0a5b0b7c1d01"),
        ("Idempotency-Key" = String, Header, description = "Makes a retry safe"),
    ),
    request_body = DepositRequest,
    responses((
        status = 202,
        description = "Accepted; the processor applies it",
        body = acceptance::Accepted,
        headers(("Location" = String, description = "The command's status URL under /v1/staff/commands")),
    )),
)]
async fn deposit(
    State(state): State<AppState>,
    user: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<DepositRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    require(&user, Permission::Deposit)?;
    let Path(account_id) = path?;
    let key = crate::extract::headers::required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let money = request.money()?;
    find_account(&state, account_id, None).await?;
    let transfer_id = TransferId::derive(Operation::Deposit, user.id, &key);
    let (command, canonical) = accounts::deposit_command(transfer_id, account_id, money);
    let accepted =
        acceptance::accept(&state, Requester::User(user.id), &key, &command, canonical, &request_id.0).await?;
    // Money made from cash-in by a person: the audit log says who.
    audit::record(
        &state,
        audit::Event::by_staff(
            "account.deposit_requested",
            user.id,
            peer,
            &request_id.0,
            serde_json::json!({
                "account_id": account_id,
                "transfer_id": transfer_id.as_uuid(),
                "amount": money.amount().to_string(),
                "currency": money.currency().code(),
            }),
        ),
    )
    .await;
    Ok(accepted.into_response_at(&command_location(transfer_id.as_uuid())))
}
