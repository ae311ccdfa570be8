//! [`ApiError`]: every error response, always as the v1 error envelope.
//!
//! Messages are written for the client and contain field names and short excerpts of
//! what it sent, never internal details (paths, stack traces, debug dumps).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tapio_wire::{ErrorCode, ErrorEnvelope, WireError};

/// The code of an error response, attached as a response extension so the metrics
/// middleware can count errors by code.
#[derive(Debug, Clone)]
pub struct ErrorCodeTag(pub ErrorCode);

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with `code` and a message for the client.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), allow: None }
    }

    /// 500 with no details.
    pub fn internal() -> Self {
        Self::new(ErrorCode::InternalError, "internal error")
    }

    /// 405 naming the allowed method.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        Self {
            allow: Some(allow),
            ..Self::new(ErrorCode::MethodNotAllowed, format!("this endpoint only accepts {allow}"))
        }
    }

    /// The error code.
    pub fn code(&self) -> &ErrorCode {
        &self.code
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorEnvelope::new(self.code.clone(), self.message).to_json();
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        // After a refused or timed-out body the connection's framing is unknown: close it.
        if matches!(self.code, ErrorCode::PayloadTooLarge | ErrorCode::RequestTimeout) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.extensions_mut().insert(ErrorCodeTag(self.code));
        resp
    }
}
