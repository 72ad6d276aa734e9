//! Admins' management of who may do what: users' roles and freezes, API
//! clients, and system accounts. Every change is written to the audit log
//! in the same transaction as the change itself, so neither exists without
//! the other.
//!
//! Roles and freezes take effect on the user's next request: the `User`
//! extractor reads the user's current role and status, not the token's.
//! An admin cannot change their own role or freeze themselves (another
//! admin must), so the last admin cannot lock everyone out by mistake.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use schemas::Currency;
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::accounts::{AccountView, find_account};
use crate::domain::audit;
use crate::domain::clients::Scope;
use crate::domain::permissions::Permission;
use crate::domain::users::{ROLES, UserView, apply_freeze, apply_role, lock_actor_and_target};
use crate::error::ApiError;
use crate::extract::user::{User, require};
use crate::middleware::context::RequestId;

/// Rows one list returns at most.
pub(crate) const PAGE_LIMIT_MAX: i64 = 500;

/// The longest API client name.
pub(crate) const CLIENT_NAME_LENGTH_MAX: usize = 200;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(change_role))
        .routes(routes!(freeze_user))
        .routes(routes!(unfreeze_user))
        .routes(routes!(list_clients, create_client))
        .routes(routes!(disable_client))
        .routes(routes!(list_system_accounts, open_system_account))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UserList {
    users: Vec<UserView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UsersQuery {
    /// Only users with this role.
    role: Option<String>,
    /// Users whose email comes after this one (the previous page's last).
    after_email: Option<String>,
    /// At most this many (1..=500, default 100), by email.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Users, by email; filter by role to list the staff (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/users",
    operation_id = "admin_list_users",
    tag = "admin",
    params(UsersQuery),
    responses((status = 200, description = "Users by email", body = UserList)),
)]
async fn list_users(
    State(state): State<AppState>,
    user: User,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::Administer)?;
    let Query(query) = query?;
    let limit = page_limit(query.limit)?;
    if let Some(role) = &query.role {
        check_role(role)?;
    }
    let users = sqlx::query_as!(
        UserView,
        r"select id, email, role, created_at, disabled_at as frozen_at from users
          where ($1::text is null or role = $1) and ($2::text is null or email > $2)
          order by email limit $3",
        query.role,
        query.after_email,
        limit,
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(UserList { users }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleChange {
    /// `customer`, `support`, `admin` or `ops`.
    #[schema(example = "support")]
    role: String,
}

/// Gives a user another role (admin); not one's own, and never the last
/// active admin's.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{user_id}/role",
    operation_id = "admin_change_role",
    tag = "admin",
    params(("user_id" = Uuid, Path, description = "The user", example = "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f")),
    request_body = RoleChange,
    responses((status = 200, description = "The user with the new role", body = UserView)),
)]
async fn change_role(
    State(state): State<AppState>,
    admin: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    path: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<RoleChange>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&admin, Permission::Administer)?;
    let Path(user_id) = path?;
    let Json(change) = body?;
    check_role(&change.role)?;
    not_oneself(&admin, user_id)?;
    let mut transaction = state.pool.begin().await?;
    lock_actor_and_target(&mut transaction, admin.id, user_id).await?;
    let (before, user) =
        apply_role(&mut transaction, user_id, &change.role, Some(admin.id), Some(peer), &request_id.0).await?;
    transaction.commit().await?;
    tracing::info!(admin = %admin.id, %user_id, from = before, to = change.role, "role changed");
    Ok(Json(user))
}

/// Freezes a user (admin): no login, no request, every session and access
/// token ended, until unfrozen. Not oneself, and never the last active admin.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{user_id}/freeze",
    operation_id = "admin_freeze_user",
    tag = "admin",
    params(("user_id" = Uuid, Path, description = "The user", example = "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f")),
    responses((status = 200, description = "The frozen user", body = UserView)),
)]
async fn freeze_user(
    state: State<AppState>,
    admin: User,
    peer: ConnectInfo<SocketAddr>,
    request_id: Extension<RequestId>,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    set_frozen(state, admin, peer, request_id, path, true).await
}

/// Unfreezes a user (admin). They log in again: the sessions and tokens
/// from before the freeze stay ended.
#[utoipa::path(
    post,
    path = "/v1/admin/users/{user_id}/unfreeze",
    operation_id = "admin_unfreeze_user",
    tag = "admin",
    params(("user_id" = Uuid, Path, description = "The user", example = "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f")),
    responses((status = 200, description = "The user", body = UserView)),
)]
async fn unfreeze_user(
    state: State<AppState>,
    admin: User,
    peer: ConnectInfo<SocketAddr>,
    request_id: Extension<RequestId>,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    set_frozen(state, admin, peer, request_id, path, false).await
}

async fn set_frozen(
    State(state): State<AppState>,
    admin: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    path: Result<Path<Uuid>, PathRejection>,
    frozen: bool,
) -> Result<Json<UserView>, ApiError> {
    require(&admin, Permission::Administer)?;
    let Path(user_id) = path?;
    not_oneself(&admin, user_id)?;
    let mut transaction = state.pool.begin().await?;
    lock_actor_and_target(&mut transaction, admin.id, user_id).await?;
    let user = apply_freeze(&mut transaction, user_id, frozen, Some(admin.id), Some(peer), &request_id.0).await?;
    transaction.commit().await?;
    tracing::info!(admin = %admin.id, %user_id, frozen, "user frozen or unfrozen");
    Ok(Json(user))
}

/// An API client as admins see it; its secret is never shown again.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub(crate) struct ClientView {
    id: Uuid,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClientList {
    clients: Vec<ClientView>,
}

/// API clients, newest first (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/clients",
    operation_id = "admin_list_clients",
    tag = "admin",
    responses((status = 200, description = "API clients, newest first", body = ClientList)),
)]
async fn list_clients(State(state): State<AppState>, user: User) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::Administer)?;
    let clients = sqlx::query_as!(
        ClientView,
        "select id, name, scopes, created_at, disabled_at from api_clients order by created_at desc limit $1",
        PAGE_LIMIT_MAX,
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(ClientList { clients }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewClientRequest {
    /// Who it is for, for people: 1 to 200 characters, no control characters.
    #[schema(example = "payroll")]
    name: String,
    /// What it may do: `accounts:write`, `accounts:read`, `transfers:write`,
    /// `transfers:read`, `deposits:write`, `webhooks:manage`.
    #[schema(example = json!(["accounts:read", "transfers:write"]))]
    scopes: Vec<String>,
}

/// A new API client's credentials. Store the secret now: it is not shown again.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NewClientView {
    client_id: Uuid,
    client_secret: String,
    name: String,
    scopes: Vec<String>,
}

/// Creates an API client for an upstream app (admin); the secret is shown once.
#[utoipa::path(
    post,
    path = "/v1/admin/clients",
    operation_id = "admin_create_client",
    tag = "admin",
    request_body = NewClientRequest,
    responses((status = 201, description = "The client's id and secret", body = NewClientView)),
)]
async fn create_client(
    State(state): State<AppState>,
    admin: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<NewClientRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&admin, Permission::Administer)?;
    let Json(request) = body?;
    let name = request.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > CLIENT_NAME_LENGTH_MAX || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("a name has 1 to {CLIENT_NAME_LENGTH_MAX} characters and no control characters"),
        ));
    }
    let scopes = request
        .scopes
        .iter()
        .map(|text| Scope::parse(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|detail| ApiError::unprocessable("invalid_scope", detail))?;
    if scopes.is_empty() {
        return Err(ApiError::unprocessable("invalid_scope", "give at least one scope"));
    }
    // The client and its audit row commit together: no live secret without a record.
    let client = crate::domain::clients::NewClient::generate();
    let hash = state.hasher.hash_blocking(client.secret.clone()).await?;
    let scopes: Vec<String> = scopes.iter().map(|scope| scope.as_str().to_owned()).collect();
    let mut transaction = state.pool.begin().await?;
    sqlx::query!(
        "insert into api_clients (id, name, secret_hash, scopes) values ($1, $2, $3, $4)",
        client.id,
        &name,
        hash,
        &scopes,
    )
    .execute(&mut *transaction)
    .await?;
    audit::record_in(
        &mut transaction,
        audit::Event::by_staff(
            "api_client.created",
            admin.id,
            peer,
            &request_id.0,
            serde_json::json!({ "client_id": client.id, "name": name, "scopes": scopes }),
        ),
    )
    .await?;
    transaction.commit().await?;
    tracing::info!(admin = %admin.id, client_id = %client.id, "API client created");
    let view =
        NewClientView { client_id: client.id, client_secret: client.secret.expose_secret().to_owned(), name, scopes };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Disables an API client (admin): its tokens stop working at once and it
/// gets no new ones. There is no undo: create another client.
#[utoipa::path(
    post,
    path = "/v1/admin/clients/{client_id}/disable",
    operation_id = "admin_disable_client",
    tag = "admin",
    params(("client_id" = Uuid, Path, description = "The API client", example = "de000000-0000-4000-8000-000000000001")),
    responses((status = 200, description = "The disabled client", body = ClientView)),
)]
async fn disable_client(
    State(state): State<AppState>,
    admin: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&admin, Permission::Administer)?;
    let Path(client_id) = path?;
    let mut transaction = state.pool.begin().await?;
    let client = sqlx::query_as!(
        ClientView,
        r"update api_clients set disabled_at = coalesce(disabled_at, now()) where id = $1
          returning id, name, scopes, created_at, disabled_at",
        client_id,
    )
    .fetch_optional(&mut *transaction)
    .await?;
    let client = client.ok_or_else(|| ApiError::not_found("client_not_found", "no such API client"))?;
    audit::record_in(
        &mut transaction,
        audit::Event::by_staff(
            "api_client.disabled",
            admin.id,
            peer,
            &request_id.0,
            serde_json::json!({ "client_id": client_id }),
        ),
    )
    .await?;
    transaction.commit().await?;
    Ok(Json(client))
}

/// A system account: the bank's own, allowed to go negative (cash-in,
/// external clearing, fees, …), one per role and currency.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SystemAccountView {
    system_role: String,
    #[serde(flatten)]
    account: AccountView,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SystemAccountList {
    system_accounts: Vec<SystemAccountView>,
}

/// System accounts, by role and currency (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/system-accounts",
    operation_id = "admin_list_system_accounts",
    tag = "admin",
    responses((status = 200, description = "System accounts by role and currency", body = SystemAccountList)),
)]
async fn list_system_accounts(State(state): State<AppState>, user: User) -> Result<impl IntoResponse, ApiError> {
    require(&user, Permission::Administer)?;
    // `system_role!`: nullable in the table, but set on every system account
    // (the `accounts_check` constraint), which Postgres does not infer.
    let ids = sqlx::query!(
        r#"select id, system_role as "system_role!" from accounts where kind = 'system'
           order by system_role, currency limit $1"#,
        PAGE_LIMIT_MAX,
    )
    .fetch_all(&state.pool)
    .await?;
    let mut accounts = Vec::with_capacity(ids.len());
    for row in ids {
        accounts.push(SystemAccountView {
            system_role: row.system_role,
            account: find_account(&state, row.id, None).await?.view()?,
        });
    }
    Ok(Json(SystemAccountList { system_accounts: accounts }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SystemAccountRequest {
    #[schema(value_type = String, example = "EUR")]
    currency: Currency,
    /// What it is for: 3 to 40 of `a-z`, `0-9`, `_`, starting with a letter.
    #[schema(example = "fees")]
    system_role: String,
}

/// Opens a system account (admin). Idempotent: the role and currency name
/// it, so asking again answers the same account with 200.
#[utoipa::path(
    post,
    path = "/v1/admin/system-accounts",
    operation_id = "admin_open_system_account",
    tag = "admin",
    request_body = SystemAccountRequest,
    responses(
        (status = 201, description = "Opened", body = SystemAccountView),
        (status = 200, description = "It existed already", body = SystemAccountView),
    ),
)]
async fn open_system_account(
    State(state): State<AppState>,
    admin: User,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<SystemAccountRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require(&admin, Permission::Administer)?;
    let Json(request) = body?;
    if !is_system_role(&request.system_role) {
        return Err(ApiError::unprocessable(
            "invalid_system_role",
            "a system role has 3 to 40 of a-z, 0-9 and _, and starts with a letter",
        ));
    }
    let mut transaction = state.pool.begin().await?;
    let opened = sqlx::query_scalar!(
        r"insert into accounts (id, currency, kind, system_role) values ($1, $2, 'system', $3)
          on conflict (system_role, currency) where kind = 'system' do nothing
          returning id",
        Uuid::new_v4(),
        request.currency.code(),
        &request.system_role,
    )
    .fetch_optional(&mut *transaction)
    .await?;
    if let Some(account_id) = opened {
        audit::record_in(
            &mut transaction,
            audit::Event::by_staff(
                "system_account.opened",
                admin.id,
                peer,
                &request_id.0,
                serde_json::json!({
                    "account_id": account_id,
                    "system_role": request.system_role,
                    "currency": request.currency.code(),
                }),
            ),
        )
        .await?;
    }
    transaction.commit().await?;
    let account_id = sqlx::query_scalar!(
        "select id from accounts where kind = 'system' and system_role = $1 and currency = $2",
        &request.system_role,
        request.currency.code(),
    )
    .fetch_one(&state.pool)
    .await?;
    let view = SystemAccountView {
        system_role: request.system_role,
        account: find_account(&state, account_id, None).await?.view()?,
    };
    let status = if opened.is_some() { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)))
}

fn is_system_role(text: &str) -> bool {
    (3..=40).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_role(role: &str) -> Result<(), ApiError> {
    if ROLES.contains(&role) {
        Ok(())
    } else {
        Err(ApiError::unprocessable("invalid_role", format!("a role is one of {}", ROLES.join(", "))))
    }
}

fn not_oneself(admin: &User, user_id: Uuid) -> Result<(), ApiError> {
    if admin.id == user_id {
        return Err(ApiError::unprocessable(
            "not_oneself",
            "an admin cannot change their own role or freeze themselves; ask another admin",
        ));
    }
    Ok(())
}

fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(100);
    if (1..=PAGE_LIMIT_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request("invalid_query", format!("limit must be within 1..={PAGE_LIMIT_MAX}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_roles_are_short_lower_snake_names() {
        for good in ["fees", "cash_in", "interest_2026"] {
            assert!(is_system_role(good), "{good}");
        }
        for bad in ["", "fe", "Fees", "1fees", "fees-eu", "fees eu", "fées", &"f".repeat(41), "x'; drop table x;--"] {
            assert!(!is_system_role(bad), "{bad}");
        }
    }
}
