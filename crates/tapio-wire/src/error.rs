//! The error envelope `{"error": {"code", "message"}}` and the spec's error codes.

use serde::{Deserialize, Serialize};

/// An error code from the spec's table, plus a catch-all for codes from newer peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: a required field or query parameter is absent or blank.
    MissingField,
    /// 400: `wire_version` is not `tapio-wire/v1`.
    UnsupportedVersion,
    /// 400: a field is present but invalid.
    InvalidField,
    /// 400: the body is not the JSON the operation expects.
    MalformedJson,
    /// 401 (extension): auth is on and the bearer token is missing or wrong.
    Unauthenticated,
    /// 403 (extension): the credentials are valid but do not allow this request (an agent
    /// reporting for a node its token is not bound to, or the wrong ServiceAccount).
    Forbidden,
    /// 404: no route.
    UnknownEndpoint,
    /// 405 (extension): known route, wrong method.
    MethodNotAllowed,
    /// 408 (extension): the client did not deliver the request in time.
    RequestTimeout,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 422: reasoning in facts.
    ReasoningField,
    /// 429 (extension): the registry is at its configured bound.
    TooManyAgents,
    /// 500: unexpected failure.
    InternalError,
    /// 503 (extension): the controller cannot take work yet (readiness probe).
    NotReady,
    /// 400 (extension): the request head is not HTTP/1.1 the server can read.
    MalformedRequest,
    /// 414 (extension): the request target is longer than the server reads.
    UriTooLong,
    /// 431 (extension): the request head is larger than the server reads.
    HeadersTooLarge,
    /// A code this build does not know, kept verbatim.
    Other(String),
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::MissingField => "MISSING_FIELD",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Self::InvalidField => "INVALID_FIELD",
            Self::MalformedJson => "MALFORMED_JSON",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::UnknownEndpoint => "UNKNOWN_ENDPOINT",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::ReasoningField => "REASONING_FIELD",
            Self::TooManyAgents => "TOO_MANY_AGENTS",
            Self::InternalError => "INTERNAL_ERROR",
            Self::NotReady => "NOT_READY",
            Self::MalformedRequest => "MALFORMED_REQUEST",
            Self::UriTooLong => "URI_TOO_LONG",
            Self::HeadersTooLarge => "HEADERS_TOO_LARGE",
            Self::Other(s) => s.as_str(),
        }
    }

    /// The HTTP status the spec pairs with this code (500 for unknown codes).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::MissingField
            | Self::UnsupportedVersion
            | Self::InvalidField
            | Self::MalformedJson
            | Self::MalformedRequest => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::UnknownEndpoint => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::ReasoningField => 422,
            Self::TooManyAgents => 429,
            Self::UriTooLong => 414,
            Self::HeadersTooLarge => 431,
            Self::InternalError | Self::Other(_) => 500,
            Self::NotReady => 503,
        }
    }
}

impl From<&str> for ErrorCode {
    fn from(s: &str) -> Self {
        match s {
            "MISSING_FIELD" => Self::MissingField,
            "UNSUPPORTED_VERSION" => Self::UnsupportedVersion,
            "INVALID_FIELD" => Self::InvalidField,
            "MALFORMED_JSON" => Self::MalformedJson,
            "UNAUTHENTICATED" => Self::Unauthenticated,
            "FORBIDDEN" => Self::Forbidden,
            "UNKNOWN_ENDPOINT" => Self::UnknownEndpoint,
            "METHOD_NOT_ALLOWED" => Self::MethodNotAllowed,
            "REQUEST_TIMEOUT" => Self::RequestTimeout,
            "PAYLOAD_TOO_LARGE" => Self::PayloadTooLarge,
            "REASONING_FIELD" => Self::ReasoningField,
            "TOO_MANY_AGENTS" => Self::TooManyAgents,
            "INTERNAL_ERROR" => Self::InternalError,
            "NOT_READY" => Self::NotReady,
            "MALFORMED_REQUEST" => Self::MalformedRequest,
            "URI_TOO_LONG" => Self::UriTooLong,
            "HEADERS_TOO_LARGE" => Self::HeadersTooLarge,
            other => Self::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::from(s.as_str()))
    }
}

/// The inner object of the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// SCREAMING_SNAKE code.
    pub code: ErrorCode,
    /// Human text; never a stack trace, path or debug dump.
    pub message: String,
}

/// `{"error": {"code", "message"}}`: the body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

impl ErrorEnvelope {
    /// Builds an envelope.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { error: ErrorBody { code, message: message.into() } }
    }

    /// The JSON bytes of the envelope.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing two strings cannot fail; the fallback keeps this total anyway.
        serde_json::to_vec(self)
            .unwrap_or_else(|_| br#"{"error":{"code":"INTERNAL_ERROR","message":"internal error"}}"#.to_vec())
    }
}
