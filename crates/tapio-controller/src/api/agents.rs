//! Agent lifecycle operations: hello, config pull, heartbeat.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
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
    query: Result<Query<ConfigQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::new(ErrorCode::InvalidField, "query string is not agent_id=…&node_name=… (each given once)")
    })?;
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
