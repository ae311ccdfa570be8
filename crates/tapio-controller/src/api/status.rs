//! `GET /v1/status`: a read-only snapshot of facts, plus the operational endpoints
//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tapio_wire::{ErrorCode, StatusConfig, StatusResponse, StatusTotals, WIRE_VERSION};

use super::error::ApiError;
use super::json::{json, json_bytes};
use crate::state::AppState;

/// `GET /v1/status`.
pub async fn status(State(st): State<Arc<AppState>>) -> Response {
    let m = &st.metrics;
    let config = st.config();
    let agents = st.registry.snapshot(Instant::now(), &config.hash);
    json(
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
            sinks: st.sinks.status(),
        },
    )
}

/// `GET /healthz`: the process serves requests.
pub async fn healthz() -> Response {
    json_bytes(StatusCode::OK, &br#"{"status":"ok"}"#[..])
}

/// `GET /readyz`: ready while every sink runs and every durable sink's last write worked
/// (a full disk or an unreachable JetStream makes it fail, so traffic moves elsewhere).
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
    let agents = st.registry.snapshot(Instant::now(), &st.config().hash);
    let mut resp = (StatusCode::OK, st.metrics.encode_with_agents(&agents)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
