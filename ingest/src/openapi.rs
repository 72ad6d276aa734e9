//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`.
//!
//! It is generated from the code: every route is registered through
//! `utoipa_axum::routes!` together with its handler's `#[utoipa::path]`
//! annotation, so the router and the document are built from the same list
//! and a route cannot exist without being documented. What every operation
//! shares is added here once: the problem+json error answers and the bearer
//! authentication scheme, required by every operation that does not say
//! `security(())` (public routes).

use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{Modify, ToSchema};

/// The name of the bearer scheme operations refer to.
pub(crate) const BEARER: &str = "bearer";

#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    info(
        title = "Ledgerline",
        description = "The HTTP edge of Ledgerline, a double-entry transaction processor. Money is a decimal \
                       string with an ISO 4217 currency. Every error is an RFC 9457 problem+json body with a \
                       stable `code` and the `request_id`. Requests that move money take an `Idempotency-Key`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem)),
    tags(
        (name = "auth", description = "API clients' tokens (OAuth2 client credentials)"),
        (name = "accounts", description = "API clients' accounts, deposits and entries"),
        (name = "transfers", description = "API clients' transfers, multi-leg batches, reversals and payouts"),
        (name = "holds", description = "API clients' two-phase transfers: hold, capture, void"),
        (name = "webhooks", description = "API clients' webhook endpoints"),
        (name = "providers", description = "Payment providers' callbacks"),
        (name = "customers", description = "Customers' sessions, passwords and profile"),
        (name = "customer accounts", description = "Customers' own accounts and history"),
        (name = "customer transfers", description = "Transaction PIN, step-up and customers' transfers"),
        (name = "staff", description = "Support, ops and admin work on any account"),
        (name = "admin", description = "Users, roles, API clients, system accounts, audit log"),
        (name = "ops", description = "Dead letters and replays, the outbox"),
        (name = "health", description = "Probes"),
    )
)]
pub(crate) struct ApiDoc;

/// An error answer (RFC 9457, `application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Problem {
    /// `urn:ledgerline:problem:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// Stable and machine-readable: act on this, not on the text.
    pub code: String,
    /// What went wrong, for a person.
    #[schema(nullable = false)]
    pub detail: Option<String>,
    /// Also in the `X-Request-Id` header; quote it to support.
    pub request_id: String,
}

/// The whole document: the routers' operations on top of [`ApiDoc`], plus
/// what every operation shares (the bearer scheme and the error answers),
/// added once the paths are known.
#[must_use]
pub(crate) fn complete(mut openapi: OpenApi) -> OpenApi {
    Conventions.modify(&mut openapi);
    openapi
}

#[derive(Debug)]
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An API client's token from POST /v1/oauth/token, or a customer's or staff member's \
                         access token from POST /v1/auth/login.",
                    ))
                    .build(),
            ),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                add_problems(operation);
                constrain_idempotency_key(operation);
                name_link_targets(operation);
                // Every operation needs a bearer token unless it says
                // otherwise with `security(())`.
                if operation.security.is_none() {
                    operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                }
            }
        }
    }
}

/// Declares what the server checks of an `Idempotency-Key` (see
/// [`schemas::IdempotencyKey`]) on every operation that takes one: 1 to 255
/// printable ASCII characters.
fn constrain_idempotency_key(operation: &mut Operation) {
    use utoipa::openapi::{ObjectBuilder, RefOr, Type};
    for parameter in operation.parameters.iter_mut().flatten() {
        if parameter.name == "Idempotency-Key" {
            parameter.schema = Some(RefOr::T(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(schemas::IdempotencyKey::LENGTH_MAX))
                    .pattern(Some("^[ -~]+$"))
                    .examples(["order-1042"])
                    .into(),
            ));
        }
    }
}

/// Writes each link's target as `operationId`, the field OpenAPI names:
/// utoipa 5.5 serializes its `Link::operation_id` as `operation_id`, which
/// no tool reads (schemathesis refuses such links). The name moves into the
/// link's flattened extensions, which serialize under their own key.
fn name_link_targets(operation: &mut Operation) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::extensions::Extensions;
    for response in operation.responses.responses.values_mut() {
        let RefOr::T(response) = response else { continue };
        for link in response.links.values_mut() {
            let RefOr::T(link) = link else { continue };
            if link.operation_id.is_empty() {
                continue;
            }
            let target = std::mem::take(&mut link.operation_id);
            let named = Extensions::from_iter([("operationId", serde_json::Value::String(target))]);
            link.extensions.get_or_insert_with(Extensions::default).merge(named);
        }
    }
}

fn add_problems(operation: &mut Operation) {
    let problem = || ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    for (status, description) in [
        ("4XX", "The request was refused; `code` says why"),
        ("5XX", "The service failed or is unavailable; retry with the same Idempotency-Key"),
    ] {
        operation.responses.responses.entry(status.to_owned()).or_insert_with(|| {
            ResponseBuilder::new().description(description).content("application/problem+json", problem()).into()
        });
    }
}

/// The document, serialized once at start.
#[derive(Debug, Clone)]
pub(crate) struct Document(std::sync::Arc<str>);

impl Document {
    /// # Errors
    /// When the document cannot be serialized.
    pub(crate) fn new(openapi: OpenApi) -> anyhow::Result<Self> {
        Ok(Self(std::sync::Arc::from(openapi.to_json()?)))
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json")),
    security(()),
)]
pub(crate) async fn serve(axum::Extension(document): axum::Extension<Document>) -> impl axum::response::IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::CACHE_CONTROL, "public, max-age=60"),
        ],
        document.0.to_string(),
    )
}
