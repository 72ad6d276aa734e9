//! The one error type of the HTTP edge, rendered as RFC 9457
//! `application/problem+json` with a stable machine `code` and the request id.
//!
//! Handlers return [`ApiError`]; its response carries the [`Problem`] as an
//! extension, and the request-context middleware ([`crate::middleware::context`]) writes
//! the body, because only it knows the request id. A 500 gets a generic body;
//! its cause chain goes to the log.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem, minus the request id the middleware adds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    Client { status: StatusCode, code: &'static str, title: &'static str, detail: String },
    #[error("authentication required")]
    Unauthenticated { code: &'static str, detail: String },
    #[error("missing scope {0}")]
    InsufficientScope(&'static str),
    #[error("locked")]
    Locked { retry_after_s: u64 },
    #[error("too many requests")]
    RateLimited { retry_after_s: u64 },
    #[error("the message broker is unavailable")]
    BrokerUnavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client { status: StatusCode::BAD_REQUEST, code, title: "Bad request", detail: detail.into() }
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code,
            title: "The request cannot be processed",
            detail: detail.into(),
        }
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client { status: StatusCode::NOT_FOUND, code, title: "Not found", detail: detail.into() }
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Unauthenticated { code, detail: detail.into() }
    }

    pub fn invalid_token(detail: impl Into<String>) -> Self {
        Self::Unauthenticated { code: "invalid_token", detail: detail.into() }
    }
}

/// Postgres's codes for text it cannot store: a NUL character (22021,
/// `character_not_in_repertoire`) or one outside the database's encoding
/// (22P05). Only the request can have brought such text.
const UNSTORABLE_TEXT_CODES: [&str; 2] = ["22021", "22P05"];

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        // Text Postgres cannot hold is the caller's mistake wherever it
        // reaches a statement (an email, a filter, a name), not a failure
        // of the service: a 422 with a clear code, never a 500. Found by
        // the contract test (a NUL byte in a login's email).
        if let sqlx::Error::Database(database) = &error
            && database.code().is_some_and(|code| UNSTORABLE_TEXT_CODES.contains(&code.as_ref()))
        {
            return Self::unprocessable("invalid_text", "text in this request holds a NUL or unstorable character");
        }
        Self::Internal(anyhow::Error::new(error).context("database"))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::Client {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "body_too_large",
                title: "The request body is too large",
                detail: rejection.body_text(),
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::Client {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                title: "Unsupported media type",
                detail: "send the body as application/json".into(),
            },
            StatusCode::BAD_REQUEST => Self::bad_request("malformed_json", rejection.body_text()),
            _ => Self::unprocessable("invalid_body", rejection.body_text()),
        }
    }
}

impl From<FormRejection> for ApiError {
    fn from(rejection: FormRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::Client {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "body_too_large",
                title: "The request body is too large",
                detail: rejection.body_text(),
            };
        }
        Self::bad_request("invalid_request", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // A malformed id names nothing that could exist.
        Self::not_found("not_found", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, detail, extra_header): (_, _, _, _, Option<(HeaderName, HeaderValue)>) = match self {
            ApiError::Client { status, code, title, detail } => (status, code, title, Some(detail), None),
            ApiError::Unauthenticated { code, detail } => {
                let challenge = if code == "invalid_token" {
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#)
                } else {
                    HeaderValue::from_static("Bearer")
                };
                (
                    StatusCode::UNAUTHORIZED,
                    code,
                    "Unauthorized",
                    Some(detail),
                    Some((header::WWW_AUTHENTICATE, challenge)),
                )
            }
            ApiError::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "Forbidden",
                Some(format!("this operation needs the scope {scope}")),
                Some((header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer error="insufficient_scope""#))),
            ),
            ApiError::Locked { retry_after_s } => (
                StatusCode::LOCKED,
                "pin_locked",
                "Locked",
                Some(format!("too many wrong PINs; try again in {retry_after_s} s")),
                Some((header::RETRY_AFTER, HeaderValue::from(retry_after_s))),
            ),
            ApiError::RateLimited { retry_after_s } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
                Some(format!("slow down; retry in {retry_after_s} s")),
                Some((header::RETRY_AFTER, HeaderValue::from(retry_after_s))),
            ),
            ApiError::BrokerUnavailable(error) => {
                tracing::error!(error = ?error, "publishing to Kafka failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "broker_unavailable",
                    "Service unavailable",
                    Some("the request was not accepted; retry it with the same Idempotency-Key".into()),
                    Some((header::RETRY_AFTER, HeaderValue::from_static("1"))),
                )
            }
            ApiError::Internal(error) => {
                tracing::error!(error = ?error, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Internal server error", None, None)
            }
        };
        problem_response(status, code, title, detail, extra_header)
    }
}

/// An empty response carrying the problem for the middleware to render.
pub(crate) fn problem_response(
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: Option<String>,
    extra_header: Option<(HeaderName, HeaderValue)>,
) -> Response {
    let problem =
        Problem { type_uri: format!("urn:ledgerline:problem:{code}"), title, status: status.as_u16(), code, detail };
    let mut response = status.into_response();
    if let Some((name, value)) = extra_header {
        response.headers_mut().insert(name, value);
    }
    response.extensions_mut().insert(problem);
    response
}
