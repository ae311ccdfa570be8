//! Reads a request body under the size limit, before any parsing.
//!
//! A declared `Content-Length` over the limit is refused without reading a byte. A body
//! without one (chunked) is read through a counting limiter that stops one byte past the
//! limit, so an endless chunked body costs at most the limit in memory.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tapio_wire::ErrorCode;

use super::error::ApiError;

fn too_large(limit: usize) -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, format!("request body is over the {limit}-byte limit"))
}

/// The whole body, or 413 PAYLOAD_TOO_LARGE / 400 MALFORMED_JSON.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(declared) = headers.get(header::CONTENT_LENGTH) {
        let over = declared.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).is_none_or(|n| n > limit as u64);
        if over {
            return Err(too_large(limit));
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large(limit)),
        Err(_) => Err(ApiError::new(ErrorCode::MalformedJson, "request body could not be read")),
    }
}
