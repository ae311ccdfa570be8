//! Agent lifecycle operations: hello, config pull, heartbeat.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tapio_wire::config::ConfigQuery;
use tapio_wire::validate::{parse_body, validate_config_query, validate_heartbeat, validate_hello};
use tapio_wire::{ErrorCode, HeartbeatRequest, HeartbeatResponse, HelloRequest, HelloResponse, WIRE_VERSION};

use super::body::read_limited;
use super::error::ApiError;
use super::json::{json, json_bytes};
use crate::auth::AuthorizedNode;
use crate::metrics::ResultLabels;
use crate::registry::HelloOutcome;
use crate::state::{unix_now, AppState};

/// `POST /v1/agents/hello`.
pub async fn hello(
    State(st): State<Arc<AppState>>,
    bound: Option<Extension<AuthorizedNode>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_limited(&headers, body, st.body_limit).await?;
    let req: HelloRequest = parse_body(&bytes)?;
    validate_hello(&req)?;
    super::check_node(bound.as_deref(), &req.node_name, &st.metrics)?;
    super::check_agent(bound.as_deref(), &req.agent_id, &st.metrics)?;
    let result = match st.registry.hello(&req, Instant::now(), unix_now()) {
        Ok(outcome) => {
            if outcome == HelloOutcome::Registered {
                log::info!(
                    "agent registered agent_id={:?} node={:?} version={:?}",
                    req.agent_id,
                    req.node_name,
                    req.tapio_version
                );
            }
            "accepted"
        }
        Err(full) => {
            st.metrics.hellos.get_or_create(&ResultLabels { result: "too_many_agents" }).inc();
            return Err(ApiError::new(ErrorCode::TooManyAgents, full.to_string()));
        }
    };
    st.metrics.hellos.get_or_create(&ResultLabels { result }).inc();
    Ok(json(
        StatusCode::OK,
        &HelloResponse {
            wire_version: WIRE_VERSION.to_string(),
            accepted: true,
            controller_id: st.controller_id.clone(),
            config_version: st.config().version.clone(),
            send_interval_ms: st.send_interval_ms,
            max_batch_events: st.max_batch_events,
        },
    ))
}

/// `GET /v1/agents/config?agent_id=…&node_name=…`.
pub async fn config(
    State(st): State<Arc<AppState>>,
    bound: Option<Extension<AuthorizedNode>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_config_query(raw.as_deref().unwrap_or(""))?;
    let (agent_id, node) = validate_config_query(&query)?;
    super::check_node(bound.as_deref(), node, &st.metrics)?;
    super::check_agent(bound.as_deref(), agent_id, &st.metrics)?;
    st.registry.touch(agent_id, Instant::now());

    let cfg = st.config();
    let etag = HeaderValue::from_str(&cfg.etag).map_err(|_| ApiError::internal())?;
    let hit =
        headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| cfg.if_none_match_hits(v));
    let mut resp =
        if hit { StatusCode::NOT_MODIFIED.into_response() } else { json_bytes(StatusCode::OK, cfg.body.clone()) };
    resp.headers_mut().insert(header::ETAG, etag);
    Ok(resp)
}

/// `POST /v1/agents/heartbeat`.
pub async fn heartbeat(
    State(st): State<Arc<AppState>>,
    bound: Option<Extension<AuthorizedNode>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_limited(&headers, body, st.body_limit).await?;
    let req: HeartbeatRequest = parse_body(&bytes)?;
    validate_heartbeat(&req)?;
    super::check_node(bound.as_deref(), &req.node_name, &st.metrics)?;
    super::check_agent(bound.as_deref(), &req.agent_id, &st.metrics)?;
    let accepted = st.registry.heartbeat(&req, Instant::now());
    let result = if accepted { "accepted" } else { "unknown_agent" };
    st.metrics.heartbeats.get_or_create(&ResultLabels { result }).inc();
    Ok(json(
        StatusCode::OK,
        &HeartbeatResponse {
            wire_version: WIRE_VERSION.to_string(),
            accepted,
            next_config_version: st.config().version.clone(),
        },
    ))
}

/// Parses the config query. wire-v1 asks for percent-decoding only: a `+` is a plus sign
/// (form decoding, axum's `Query`, would make it a space and look up another agent).
/// `agent_id` and `node_name` may each appear once; other parameters are ignored.
fn parse_config_query(raw: &str) -> Result<ConfigQuery, ApiError> {
    let bad = |why: &str| {
        ApiError::new(ErrorCode::InvalidField, format!("query string is not agent_id=…&node_name=… ({why})"))
    };
    let mut query = ConfigQuery::default();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key).ok_or_else(|| bad("a malformed %-escape or not UTF-8"))?;
        let slot = match key.as_str() {
            "agent_id" => &mut query.agent_id,
            "node_name" => &mut query.node_name,
            _ => continue,
        };
        if slot.is_some() {
            return Err(bad("each given once"));
        }
        *slot = Some(percent_decode(value).ok_or_else(|| bad("a malformed %-escape or not UTF-8"))?);
    }
    Ok(query)
}

/// `%XX` → the byte 0xXX, everything else as is; None for a `%` without two hex digits
/// after it, or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = char::from(hex[0]).to_digit(16)?;
            let lo = char::from(hex[1]).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Option<(Option<String>, Option<String>)> {
        parse_config_query(raw).ok().map(|q| (q.agent_id, q.node_name))
    }

    fn both(a: &str, n: &str) -> Option<(Option<String>, Option<String>)> {
        Some((Some(a.into()), Some(n.into())))
    }

    #[test]
    fn the_config_query_is_percent_decoded_only() {
        // A plus is a plus: form decoding made `a+b` the agent `a b`.
        assert_eq!(parsed("agent_id=a+b&node_name=n%2B1"), both("a+b", "n+1"));
        assert_eq!(parsed("agent_id=a%20b&node_name=n%C3%A9"), both("a b", "né"));
        assert_eq!(parsed("node_name=n&other=%zz&agent_id=a&&"), both("a", "n"), "other parameters are not judged");
        assert_eq!(parsed("agent%5Fid=a&node_name=n"), both("a", "n"));
        assert_eq!(parsed("agent_id&node_name="), both("", ""));
        assert_eq!(parsed(""), Some((None, None)));
        for bad in ["agent_id=a%&node_name=n", "agent_id=a%2&node_name=n", "agent_id=%ff&node_name=n"] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
        assert_eq!(parsed("agent_id=a&agent_id=b&node_name=n"), None, "each given once");
    }
}
