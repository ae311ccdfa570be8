//! Receiver-side rules of v1: body parsing with error classification, and per-operation
//! validation. Every failure is a [`WireError`] whose [`WireError::code`] is the spec's
//! error code, so a server maps it to a response without further judgement.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::config::ConfigQuery;
use crate::error::{ErrorCode, ErrorEnvelope};
use crate::events::EventBatch;
use crate::heartbeat::HeartbeatRequest;
use crate::hello::HelloRequest;
use crate::reasoning::find_reasoning;
use crate::WIRE_VERSION;

/// Longest accepted identity string (agent id, node name, versions): a DNS name's limit.
/// The registry stores these per agent, so they are bounded.
pub const MAX_IDENTITY_LEN: usize = 253;

/// Most observers a heartbeat may name (an agent runs a handful). The registry keeps the
/// last heartbeat of every agent, so each of its fields is bounded in count and length.
pub const MAX_OBSERVERS: usize = 32;

/// Longest observer name, and longest observer status string (a value this build does
/// not know is kept verbatim, so it is bounded too).
pub const MAX_OBSERVER_TEXT_LEN: usize = 64;

/// Most degraded reasons a heartbeat may carry.
pub const MAX_DEGRADED_REASONS: usize = 32;

/// Longest degraded reason.
pub const MAX_DEGRADED_REASON_LEN: usize = 128;

/// Most correlation drop reasons a heartbeat may carry (an agent sends those that counted,
/// the first by name if more did), and the longest `observer` and `reason` of one: the
/// registry keeps them per agent and each becomes a metric label.
pub const MAX_CORRELATION_DROP_REASONS: usize = 32;
pub const MAX_CORRELATION_DROP_NAME_LEN: usize = 48;

/// Longest `config_hash` (`sha256:` plus 64 hex digits is 71 bytes; room for another
/// algorithm's spelling).
pub const MAX_CONFIG_HASH_LEN: usize = 128;

/// Longest event `id`. The spec's id is a ULID (26 characters); the bound leaves room for
/// another implementation's id form (a UUID is 36) while keeping stored ids small.
pub const MAX_EVENT_ID_LEN: usize = 64;

/// Longest piece of client-supplied text echoed back in an error message.
const MAX_ECHO: usize = 96;

/// A v1 rule violation. Messages carry field names and short excerpts only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required field or query parameter is absent or blank.
    #[error("required field `{0}` is missing or blank")]
    MissingField(String),
    /// `wire_version` is present and not `tapio-wire/v1`.
    #[error("wire_version `{0}` is not supported; this peer speaks tapio-wire/v1")]
    UnsupportedVersion(String),
    /// A field is present but invalid.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Field (path) name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body is not the JSON the operation expects.
    #[error("body is not the expected JSON: {0}")]
    MalformedJson(String),
    /// An event's facts contain a reasoning key.
    #[error("events[{event}] carries reasoning key `{key}` at {path}; facts must not carry reasoning")]
    ReasoningField {
        /// Index of the event in the batch.
        event: usize,
        /// The key as sent.
        key: String,
        /// Where it is.
        path: String,
    },
}

impl WireError {
    /// The spec's error code for this violation.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::MissingField(_) => ErrorCode::MissingField,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::InvalidField { .. } => ErrorCode::InvalidField,
            Self::MalformedJson(_) => ErrorCode::MalformedJson,
            Self::ReasoningField { .. } => ErrorCode::ReasoningField,
        }
    }

    /// The HTTP status paired with [`Self::code`].
    pub fn http_status(&self) -> u16 {
        self.code().http_status()
    }

    /// The error envelope for this violation.
    pub fn to_envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope::new(self.code(), self.to_string())
    }

    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidField { field: field.into(), reason: reason.into() }
    }
}

/// Shortens peer-supplied text before it is echoed in a message or a log line.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_ECHO {
        return s.to_string();
    }
    let mut end = MAX_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Parses a request body, classifying failures as the spec's codes.
///
/// Precedence, so a newer sender gets the most useful answer: not JSON at all →
/// `MALFORMED_JSON`; a JSON object with a foreign or absent `wire_version` →
/// `UNSUPPORTED_VERSION` / `MISSING_FIELD` (before any shape complaint, since a different
/// version may have a different shape); an absent required field → `MISSING_FIELD`;
/// anything else → `MALFORMED_JSON`.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    // Serde's derived structs also take an array of their fields in order; the protocol's
    // bodies are objects, named fields only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(WireError::MalformedJson("a request body is a JSON object, not an array".into()));
    }
    match serde_json::from_slice::<T>(bytes) {
        Ok(v) => Ok(v),
        Err(e) => Err(classify_parse_error(bytes, &e)),
    }
}

fn classify_parse_error(bytes: &[u8], e: &serde_json::Error) -> WireError {
    if e.is_syntax() || e.is_eof() || e.is_io() {
        return WireError::MalformedJson(clip(&e.to_string()));
    }
    // The document is valid JSON but not the expected shape: look at its version first.
    #[derive(Deserialize)]
    struct Probe {
        wire_version: Option<Value>,
    }
    if let Ok(probe) = serde_json::from_slice::<Probe>(bytes) {
        match probe.wire_version {
            None => return WireError::MissingField("wire_version".into()),
            Some(Value::String(v)) if v.trim().is_empty() => return WireError::MissingField("wire_version".into()),
            Some(Value::String(v)) if v != WIRE_VERSION => return WireError::UnsupportedVersion(clip(&v)),
            Some(Value::String(_)) => {}
            Some(other) => return WireError::UnsupportedVersion(clip(&other.to_string())),
        }
    }
    let text = e.to_string();
    // serde's derive reports absent fields as "missing field `name`".
    if let Some(rest) = text.strip_prefix("missing field `") {
        if let Some(end) = rest.find('`') {
            return WireError::MissingField(clip(&rest[..end]));
        }
    }
    WireError::MalformedJson(clip(&text))
}

/// `wire_version` must be exactly `tapio-wire/v1`.
pub fn check_version(wire_version: &str) -> Result<(), WireError> {
    if wire_version.trim().is_empty() {
        return Err(WireError::MissingField("wire_version".into()));
    }
    if wire_version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(clip(wire_version)));
    }
    Ok(())
}

/// A required identity string: present, non-blank, bounded.
pub fn check_identity(field: &str, value: &str) -> Result<(), WireError> {
    if value.trim().is_empty() {
        return Err(WireError::MissingField(field.into()));
    }
    if value.len() > MAX_IDENTITY_LEN {
        return Err(WireError::invalid(field, format!("longer than {MAX_IDENTITY_LEN} bytes")));
    }
    Ok(())
}

/// Hello: version and the five required strings.
pub fn validate_hello(req: &HelloRequest) -> Result<(), WireError> {
    check_version(&req.wire_version)?;
    check_identity("agent_id", &req.agent_id)?;
    check_identity("node_name", &req.node_name)?;
    check_identity("tapio_version", &req.tapio_version)?;
    check_identity("kernel_release", &req.kernel_release)?;
    check_identity("arch", &req.arch)
}

/// Config pull: both query parameters present and non-blank. Returns them.
pub fn validate_config_query(q: &ConfigQuery) -> Result<(&str, &str), WireError> {
    let agent_id = q.agent_id.as_deref().unwrap_or("");
    let node_name = q.node_name.as_deref().unwrap_or("");
    check_identity("agent_id", agent_id)?;
    check_identity("node_name", node_name)?;
    Ok((agent_id, node_name))
}

/// Heartbeat: version, identity, applied config version, non-empty observers, and every
/// field the registry keeps bounded in count and length.
pub fn validate_heartbeat(req: &HeartbeatRequest) -> Result<(), WireError> {
    check_version(&req.wire_version)?;
    check_identity("agent_id", &req.agent_id)?;
    check_identity("node_name", &req.node_name)?;
    check_identity("config_version", &req.config_version)?;
    if req.observers.is_empty() {
        return Err(WireError::invalid("observers", "must name at least one observer"));
    }
    if req.observers.len() > MAX_OBSERVERS {
        return Err(WireError::invalid(
            "observers",
            format!("names {} observers; at most {MAX_OBSERVERS} are accepted", req.observers.len()),
        ));
    }
    for (name, status) in &req.observers {
        if name.trim().is_empty() {
            return Err(WireError::invalid("observers", "observer names must not be blank"));
        }
        if name.len() > MAX_OBSERVER_TEXT_LEN {
            return Err(WireError::invalid(
                "observers",
                format!("observer name `{}` is longer than {MAX_OBSERVER_TEXT_LEN} bytes", clip(name)),
            ));
        }
        if status.as_str().len() > MAX_OBSERVER_TEXT_LEN {
            return Err(WireError::invalid(
                format!("observers.{}", clip(name)),
                format!("status is longer than {MAX_OBSERVER_TEXT_LEN} bytes"),
            ));
        }
    }
    if req.config_hash.len() > MAX_CONFIG_HASH_LEN {
        return Err(WireError::invalid("config_hash", format!("longer than {MAX_CONFIG_HASH_LEN} bytes")));
    }
    if req.degraded_reasons.len() > MAX_DEGRADED_REASONS {
        return Err(WireError::invalid(
            "degraded_reasons",
            format!("carries {} reasons; at most {MAX_DEGRADED_REASONS} are accepted", req.degraded_reasons.len()),
        ));
    }
    if let Some(i) = req.degraded_reasons.iter().position(|r| r.as_str().len() > MAX_DEGRADED_REASON_LEN) {
        return Err(WireError::invalid(
            format!("degraded_reasons[{i}]"),
            format!("longer than {MAX_DEGRADED_REASON_LEN} bytes"),
        ));
    }
    if req.correlation_drops.len() > MAX_CORRELATION_DROP_REASONS {
        return Err(WireError::invalid(
            "correlation_drops",
            format!(
                "carries {} reasons; at most {MAX_CORRELATION_DROP_REASONS} are accepted",
                req.correlation_drops.len()
            ),
        ));
    }
    if let Some(key) = req.correlation_drops.keys().find(|k| correlation_drop_key(k).is_none()) {
        return Err(WireError::invalid(
            "correlation_drops",
            format!(
                "`{}` is not `observer.reason` (lower-case letters, digits and `_`, each at most \
                 {MAX_CORRELATION_DROP_NAME_LEN} bytes)",
                clip(key)
            ),
        ));
    }
    Ok(())
}

/// The `(observer, reason)` of a heartbeat's correlation drop key `observer.reason`, if it
/// has that shape.
pub fn correlation_drop_key(key: &str) -> Option<(&str, &str)> {
    let (observer, reason) = key.split_once('.')?;
    let name = |s: &str| {
        (1..=MAX_CORRELATION_DROP_NAME_LEN).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    (name(observer) && name(reason)).then_some((observer, reason))
}

/// Event batch: version, identity, 1..=`max_batch_events` events, each with a
/// `kernel.`-prefixed type and an observer, and no reasoning anywhere in facts.
pub fn validate_batch(batch: &EventBatch, max_batch_events: usize) -> Result<(), WireError> {
    check_version(&batch.wire_version)?;
    check_identity("agent_id", &batch.agent_id)?;
    check_identity("node_name", &batch.node_name)?;
    let n = batch.events.len();
    if n == 0 || n > max_batch_events {
        return Err(WireError::invalid(
            "events",
            format!("a batch carries 1..={max_batch_events} events, this one has {n}"),
        ));
    }
    for (i, event) in batch.events.iter().enumerate() {
        check_event_type(i, &event.event_type)?;
        if event.observer.trim().is_empty() {
            return Err(WireError::MissingField(format!("events[{i}].observer")));
        }
        if let Some(id) = &event.id {
            check_event_id(i, id)?;
        }
    }
    for (i, event) in batch.events.iter().enumerate() {
        if let Some(hit) = find_reasoning(&event.facts) {
            return Err(WireError::ReasoningField { event: i, key: clip(&hit.key), path: clip(&hit.path) });
        }
    }
    Ok(())
}

/// An event id (when sent) is 1..=[`MAX_EVENT_ID_LEN`] visible ASCII characters: it
/// becomes a NATS `Nats-Msg-Id` header and an OTLP `log.record.uid`, where a line break or
/// a control character has no place (a ULID is 26 of them).
fn check_event_id(i: usize, id: &str) -> Result<(), WireError> {
    let field = || format!("events[{i}].id");
    if id.is_empty() {
        return Err(WireError::invalid(field(), "is empty; send a ULID or leave the field out"));
    }
    if id.len() > MAX_EVENT_ID_LEN {
        return Err(WireError::invalid(field(), format!("is longer than {MAX_EVENT_ID_LEN} bytes (a ULID is 26)")));
    }
    if let Some(pos) = id.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(WireError::invalid(
            field(),
            format!("holds a character that is not visible ASCII at byte {pos} (a ULID is 26 of 0-9 and A-Z)"),
        ));
    }
    Ok(())
}

/// An event type is `kernel.` followed by a non-empty name.
fn check_event_type(i: usize, event_type: &str) -> Result<(), WireError> {
    if event_type.trim().is_empty() {
        return Err(WireError::MissingField(format!("events[{i}].type")));
    }
    match event_type.strip_prefix("kernel.") {
        Some(rest) if !rest.trim().is_empty() => Ok(()),
        _ => Err(WireError::invalid(
            format!("events[{i}].type"),
            format!("`{}` does not start with `kernel.`", clip(event_type)),
        )),
    }
}
