//! Per-request context: the request id (taken from a well-formed incoming
//! `x-request-id`, otherwise a new UUID), echoed on every response, carried
//! by the tracing span, and written into problem bodies.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;
use tracing::Instrument as _;

use crate::error::Problem;

pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest incoming request id we keep; a longer one is replaced.
const REQUEST_ID_LENGTH_MAX: usize = 128;

/// The id of the request being served, for handlers that log or publish it.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub String);

fn incoming_request_id(request: &Request) -> Option<String> {
    let value = request.headers().get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let acceptable = !value.is_empty()
        && value.len() <= REQUEST_ID_LENGTH_MAX
        && value.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte));
    acceptable.then(|| value.to_owned())
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(flatten)]
    problem: &'a Problem,
    request_id: &'a str,
}

pub(crate) async fn middleware(mut request: Request, next: Next) -> Response {
    let request_id = incoming_request_id(&request).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let span =
        tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %request_id);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;

    if let Some(problem) = response.extensions_mut().remove::<Problem>() {
        let body = serde_json::to_vec(&ProblemBody { problem: &problem, request_id: &request_id })
            .unwrap_or_else(|_| b"{}".to_vec());
        *response.body_mut() = Body::from(body);
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    span.in_scope(|| {
        tracing::info!(status = response.status().as_u16(), elapsed_ms = started.elapsed().as_millis(), "served");
    });
    response
}
