//! Staff routes, by role: `support` reads any account, `admin` freezes,
//! unfreezes and closes accounts, `ops` (and `admin`) fund accounts from
//! cash-in. A staff route refuses other roles with 403 `forbidden_role`
//! (the route is no secret; accounts stay 404 when they do not exist).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use schemas::messages::{AccountStatusCommand, V1};
use schemas::{AccountId, Command, Currency, Operation, TransferId};
use serde::Deserialize;
use uuid::Uuid;

use crate::accounts::find_account;
use crate::context::RequestId;
use crate::customers::User;
use crate::error::ApiError;
use crate::startup::AppState;
use crate::transfers::{self, Requester};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/staff/accounts/{account_id}", get(read_account))
        .route("/v1/staff/accounts/{account_id}/deposits", post(deposit))
        .route("/v1/staff/accounts/{account_id}/{action}", post(change_status))
}

/// # Errors
/// 403 `forbidden_role` unless the user has one of `roles`.
pub fn require_role(user: &User, roles: &[&str]) -> Result<(), ApiError> {
    if roles.contains(&user.role.as_str()) {
        Ok(())
    } else {
        Err(ApiError::Client {
            status: StatusCode::FORBIDDEN,
            code: "forbidden_role",
            title: "Forbidden",
            detail: format!("this needs one of the roles {}", roles.join(", ")),
        })
    }
}

async fn read_account(
    State(state): State<AppState>,
    user: User,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require_role(&user, &["support", "admin", "ops"])?;
    let Path(account_id) = path?;
    Ok(Json(find_account(&state, account_id, None).await?.view()?))
}

async fn change_status(
    State(state): State<AppState>,
    user: User,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<(Uuid, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    require_role(&user, &["admin"])?;
    let Path((account_id, action)) = path?;
    let build: fn(AccountStatusCommand) -> Command = match action.as_str() {
        "freeze" => Command::AccountFrozen,
        "unfreeze" => Command::AccountUnfrozen,
        "close" => Command::AccountClosed,
        _ => return Err(ApiError::not_found("not_found", "no such route")),
    };
    let key = transfers::required_idempotency_key(&headers)?;
    find_account(&state, account_id, None).await?;
    let command_id = TransferId::derive(Operation::AccountStatus, user.id, &key).as_uuid();
    let command = build(AccountStatusCommand {
        version: V1,
        command_id,
        account_id: AccountId::from_uuid(account_id),
        requested_at: Utc::now(),
    });
    let canonical = serde_json::json!({ "kind": action, "account_id": account_id });
    let accepted =
        transfers::accept(&state, Requester::User(user.id), &key, &command, canonical, &request_id.0).await?;
    tracing::info!(user_id = %user.id, %account_id, action, "account status change requested");
    Ok(accepted.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DepositRequest {
    amount: String,
    currency: Currency,
}

async fn deposit(
    State(state): State<AppState>,
    user: User,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    path: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<DepositRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    require_role(&user, &["ops", "admin"])?;
    let Path(account_id) = path?;
    let key = transfers::required_idempotency_key(&headers)?;
    let Json(request) = body?;
    let money = transfers::parse_money(&request.amount, request.currency)?;
    find_account(&state, account_id, None).await?;
    let transfer_id = TransferId::derive(Operation::Deposit, user.id, &key);
    let (command, canonical) = crate::accounts::deposit_command(transfer_id, account_id, money);
    let accepted =
        transfers::accept(&state, Requester::User(user.id), &key, &command, canonical, &request_id.0).await?;
    Ok(accepted.into_response())
}
