//! Webhook endpoints of API clients: register one for the event types it
//! wants (the signing secret is shown once), list them, remove one.
//!
//! Deliveries are the relay's: it signs each event with the endpoint's
//! secret following Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`); the README shows how a receiver verifies them.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::clients::Scope;
use crate::error::ApiError;
use crate::extract::principal::Principal;

/// The event types an endpoint may subscribe to: what the ledger tells.
pub(crate) const EVENT_TYPES: &[&str] = &[
    "transfer.completed",
    "transfer.rejected",
    "transfer.held",
    "transfer.voided",
    "account.status_changed",
    "account.overdraft_limit_changed",
    "account.command_rejected",
];

/// Endpoints one client may have.
pub(crate) const ENDPOINTS_PER_CLIENT_MAX: i64 = 20;
const URL_LENGTH_MAX: usize = 2_000;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, register)).routes(routes!(remove))
}

/// A webhook endpoint to register.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = WebhookRegistration)]
#[serde(deny_unknown_fields)]
struct Registration {
    /// An http(s) URL of at most 2000 characters.
    #[schema(example = "https://example.com/ledgerline/webhooks", max_length = 2000)]
    url: String,
    /// At least one of `transfer.completed`, `transfer.rejected`,
    /// `transfer.held`, `transfer.voided`, `account.status_changed`,
    /// `account.overdraft_limit_changed`, `account.command_rejected`.
    #[schema(example = json!(["transfer.completed", "transfer.rejected"]))]
    event_types: Vec<String>,
}

/// A registered webhook endpoint.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = WebhookEndpoint)]
struct Endpoint {
    id: Uuid,
    url: String,
    event_types: Vec<String>,
    created_at: DateTime<Utc>,
    /// `active`, or `disabled_failing` (shown for 30 days): it failed without
    /// a success for days and a webhook died (`LEDGERLINE_WEBHOOK_DISABLE_AFTER_S`);
    /// no more webhooks go to it. Register it again once it works.
    #[schema(example = "active")]
    status: String,
}

/// A newly registered endpoint and its signing secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RegisteredWebhook)]
struct Registered {
    #[serde(flatten)]
    endpoint: Endpoint,
    /// Shown once: the receiver verifies signatures with it.
    secret: String,
}

fn validate(registration: &Registration, private_networks_allowed: bool) -> Result<(), ApiError> {
    let url = registration.url.as_str();
    if url.len() > URL_LENGTH_MAX || !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ApiError::unprocessable(
            "invalid_webhook_url",
            "the URL must be http(s) and at most 2000 characters",
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::unprocessable("invalid_webhook_url", "the URL must not contain spaces"));
    }
    if !private_networks_allowed && !may_be_public(url) {
        return Err(ApiError::unprocessable(
            "webhook_url_not_public",
            "the URL must name a public host: not localhost, a private, loopback or link-local address",
        ));
    }
    if registration.event_types.is_empty() || registration.event_types.len() > EVENT_TYPES.len() {
        return Err(ApiError::unprocessable("invalid_event_types", "name at least one event type"));
    }
    if let Some(unknown) = registration.event_types.iter().find(|kind| !EVENT_TYPES.contains(&kind.as_str())) {
        return Err(ApiError::unprocessable(
            "invalid_event_types",
            format!("unknown event type {unknown:?}; known: {}", EVENT_TYPES.join(" ")),
        ));
    }
    Ok(())
}

/// A first check at registration, on what the URL says; the relay checks
/// the addresses it actually connects to (names may resolve anywhere, and
/// change), so this only spares a client an endpoint that can never work.
fn may_be_public(url: &str) -> bool {
    let Ok(uri) = url.parse::<axum::http::Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return false;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(address) => platform::net::is_public(address),
        // A numeric last label makes the whole host an IPv4 address in
        // another spelling (2130706433, 0x7f.1, 127.1): never a name.
        Err(_) => host.rsplit('.').next().is_some_and(|label| {
            !label.is_empty() && !label.chars().all(|c| c.is_ascii_digit()) && !label.starts_with("0x")
        }),
    }
}

/// Registers a webhook endpoint for the event types it wants.
///
/// The answer holds the signing secret, shown this once. A client has at
/// most 20 endpoints. Needs the `webhooks:manage` scope.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "webhook_create",
    tag = "webhooks",
    request_body = Registration,
    responses((status = 201, description = "Registered; the secret is shown only here", body = Registered)),
)]
async fn register(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Json<Registration>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    principal.require(Scope::WebhooksManage)?;
    let Json(mut registration) = body?;
    validate(&registration, state.webhook_private_networks_allowed)?;
    registration.event_types.sort();
    registration.event_types.dedup();
    let count = sqlx::query_scalar!(
        r#"select count(*) as "count!" from webhook_endpoints where api_client_id = $1 and disabled_at is null"#,
        principal.client_id
    )
    .fetch_one(&state.pool)
    .await?;
    if count >= ENDPOINTS_PER_CLIENT_MAX {
        return Err(ApiError::unprocessable("too_many_webhooks", "remove an endpoint before adding another"));
    }
    let id = Uuid::new_v4();
    let mut random = [0_u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut random);
    // With the key ring, the secret is derived and only its nonce stored;
    // without, a random secret is stored (see `WebhookSecretKeys`).
    let (secret, stored, nonce, key_id) = match state.webhook_secret_keys.as_deref() {
        Some(keys) => {
            let secret = keys
                .derive(keys.current_id(), &id.to_string(), &random)
                .ok_or_else(|| anyhow::anyhow!("the current webhook key is missing"))?;
            (secret, None, Some(random.to_vec()), Some(keys.current_id().to_owned()))
        }
        None => {
            let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(random));
            (secret.clone(), Some(secret), None, None)
        }
    };
    let endpoint = sqlx::query_as!(
        Endpoint,
        r#"insert into webhook_endpoints (id, api_client_id, url, event_types, secret, secret_nonce, secret_key_id)
          values ($1, $2, $3, $4, $5, $6, $7) returning id, url, event_types, created_at, 'active' as "status!""#,
        id,
        principal.client_id,
        &registration.url,
        &registration.event_types,
        stored,
        nonce,
        key_id,
    )
    .fetch_one(&state.pool)
    .await?;
    tracing::info!(endpoint_id = %endpoint.id, client_id = %principal.client_id, "webhook endpoint registered");
    Ok((StatusCode::CREATED, Json(Registered { endpoint, secret })))
}

/// The client's webhook endpoints, oldest first (secrets are not shown).
///
/// Needs the `webhooks:manage` scope.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "webhook_list",
    tag = "webhooks",
    responses((
        status = 200,
        description = "`{\"endpoints\": [WebhookEndpoint]}`: the active endpoints, and those disabled for failing",
        body = serde_json::Value,
        example = json!({ "endpoints": [{
            "created_at": "2025-01-01T12:00:00Z",
            "event_types": ["transfer.completed"],
            "id": "3f2c8f4e-5b7a-4c1d-9e2f-6a8b0c1d2e3f",
            "url": "https://example.com/ledgerline/webhooks",
            "status": "active",
        }] }),
    )),
)]
async fn list(State(state): State<AppState>, principal: Principal) -> Result<impl IntoResponse, ApiError> {
    principal.require(Scope::WebhooksManage)?;
    let endpoints = sqlx::query_as!(
        Endpoint,
        r#"select id, url, event_types, created_at,
                 case when disabled_at is null then 'active' else 'disabled_failing' end as "status!"
          from webhook_endpoints
          where api_client_id = $1
            and (disabled_at is null or (disabled_reason = 'failing' and disabled_at > now() - interval '30 days'))
          order by created_at"#,
        principal.client_id,
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(serde_json::json!({ "endpoints": endpoints })))
}

/// Removes a webhook endpoint: no more deliveries go to it.
///
/// Needs the `webhooks:manage` scope.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{endpoint_id}",
    operation_id = "webhook_delete",
    tag = "webhooks",
    params(("endpoint_id" = Uuid, Path, description = "The endpoint", example = "5d9c2b1a-7e3f-4a6b-8c0d-1e2f3a4b5c6d")),
    responses((status = 204, description = "Removed")),
)]
async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<impl IntoResponse, ApiError> {
    principal.require(Scope::WebhooksManage)?;
    let Path(endpoint_id) = path?;
    let removed = sqlx::query!(
        r"update webhook_endpoints set disabled_at = now(), disabled_reason = 'removed'
          where id = $1 and api_client_id = $2 and (disabled_at is null or disabled_reason = 'failing')",
        endpoint_id,
        principal.client_id,
    )
    .execute(&state.pool)
    .await?;
    if removed.rows_affected() == 0 {
        return Err(ApiError::not_found("webhook_not_found", "no such webhook endpoint"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_naming_internal_hosts_are_refused_at_registration() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://api.localhost./hook",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.7/",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
        ] {
            assert!(!may_be_public(url), "{url} accepted");
        }
        for url in
            ["https://hooks.example.com/x", "https://cafe.be/hook", "https://8.8.8.8/x", "https://[2606:4700::1]/"]
        {
            assert!(may_be_public(url), "{url} refused");
        }
    }
}
