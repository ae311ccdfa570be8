//! `GET /v1/status`: a read-only snapshot of facts, paged and filtered by agent state
//! (the summary is a count over the registry without copying any agent), plus the operational endpoints
//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tapio_wire::status::STATUS_PAGE_MAX;
use tapio_wire::validate::MAX_IDENTITY_LEN;
use tapio_wire::{
    AgentState, ErrorCode, StatusConfig, StatusQuery, StatusResponse, StatusSummary, StatusTotals, WIRE_VERSION,
};

use super::error::ApiError;
use super::json::{json, json_bytes};
use crate::registry::PageQuery;
use crate::state::AppState;

/// `GET /v1/status[?limit=&after=&state=]`: one page of agents plus the summary.
pub async fn status(
    State(st): State<Arc<AppState>>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidField,
            "query string is limit=<0..=5000>&after=<agent id>&state=<state> (each optional, given once)",
        )
    })?;
    if query.limit.is_some_and(|l| l > STATUS_PAGE_MAX) {
        return Err(ApiError::new(ErrorCode::InvalidField, format!("limit must be at most {STATUS_PAGE_MAX}")));
    }
    let state = match query.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(AgentState::parse(s).ok_or_else(|| {
            let known: Vec<&str> = AgentState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::new(ErrorCode::InvalidField, format!("state must be one of {}", known.join(", ")))
        })?),
    };
    if query.after.as_ref().is_some_and(|a| a.len() > MAX_IDENTITY_LEN) {
        return Err(ApiError::new(ErrorCode::InvalidField, format!("after is longer than {MAX_IDENTITY_LEN} bytes")));
    }
    // wire-v1's `agents` is the whole list: without `limit` (a plain v1 client) every
    // matching agent is listed, which the registry's bounds (`--max-agents` plus
    // `--max-unregistered-agents`) keep finite; few such requests run at once.
    let _whole_list = match query.limit {
        Some(_) => None,
        None => Some(st.full_status.acquire().await.map_err(|_| ApiError::internal())?),
    };
    let limit = query.limit.unwrap_or(usize::MAX);
    let m = &st.metrics;
    let config = st.config();
    let now = Instant::now();
    let census = st.registry.census(now, st.stale_after, &config.hash);
    let page = PageQuery {
        after: query.after.as_deref().filter(|a| !a.is_empty()),
        limit,
        state,
        stale_after: st.stale_after,
        target_hash: &config.hash,
    };
    let (agents, next_after) = st.registry.page(now, &page);
    let n = |v: usize| v as u64;
    Ok(json(
        StatusCode::OK,
        &StatusResponse {
            wire_version: WIRE_VERSION.to_string(),
            controller_id: st.controller_id.clone(),
            started_at_unix: st.started_at_unix,
            config: StatusConfig { version: config.version.clone(), config_hash: config.hash.clone() },
            totals: StatusTotals {
                accepted_events_total: m.events_accepted.get(),
                rejected_events_total: m.events_rejected.get(),
                batches_accepted_total: m.batches_accepted.get(),
                batches_rejected_total: m.batches_rejected.get(),
                untracked_batches_total: Some(m.untracked_batches.get()),
            },
            agents,
            summary: Some(StatusSummary {
                agents_total: n(census.registered + census.unregistered),
                registered: n(census.registered),
                unregistered: n(census.unregistered),
                stale: n(census.stale),
                current: n(census.config_current),
                outdated: n(census.config_outdated),
                unreported: n(census.config_unreported),
                degraded: n(census.degraded),
            }),
            next_after,
            sinks: st.sinks.status(),
        },
    ))
}

/// `GET /healthz`: the process serves requests.
pub async fn healthz() -> Response {
    json_bytes(StatusCode::OK, &br#"{"status":"ok"}"#[..])
}

/// `GET /readyz`: ready while every sink runs and every durable sink's last write worked
/// (a full disk, an unreachable JetStream or an OTLP collector that does not take exports
/// makes it fail, so traffic moves elsewhere).
pub async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    match st.sinks.not_ready() {
        None => json_bytes(StatusCode::OK, &br#"{"status":"ready"}"#[..]),
        Some(why) => ApiError::new(ErrorCode::NotReady, why).into_response(),
    }
}

/// `GET /metrics`: OpenMetrics text; agent gauges are refreshed at scrape time.
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let census = st.registry.census(Instant::now(), st.stale_after, &st.config().hash);
    st.metrics.set_agents("registered", census.registered);
    st.metrics.set_agents("unregistered", census.unregistered);
    st.metrics.set_agents("stale", census.stale);
    st.metrics.set_agents_config("current", census.config_current);
    st.metrics.set_agents_config("outdated", census.config_outdated);
    st.metrics.set_agents_config("unreported", census.config_unreported);
    // Registered agents only: a series per batch-only agent would let unauthenticated
    // batches with invented ids grow the scrape without bound.
    let agents = st.registry.registered_snapshot(Instant::now(), &st.config().hash);
    let mut resp = (StatusCode::OK, st.metrics.encode_with_agents(&agents)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
