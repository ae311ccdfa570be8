//! `POST /v1/events`: validate a batch, track its sequence, hand its records to the sink.
//!
//! A batch is accepted or rejected whole (the spec's errors are per batch), so a 200
//! always reports `rejected: 0`. A rejected batch does not touch sequence tracking.
//! "Accepted" means validated and counted; a sink that cannot keep up drops records and
//! counts them rather than failing the agent's request.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tapio_wire::validate::{parse_body, validate_batch};
use tapio_wire::{EventBatch, EventsResponse, WIRE_VERSION};

use super::body::read_limited;
use super::error::ApiError;
use super::json::json;
use crate::auth::AuthorizedNode;
use crate::record::encode_batch;
use crate::registry::BatchTracking;
use crate::sequence::SeqObservation;
use crate::state::AppState;

/// `POST /v1/events`.
pub async fn events(
    State(st): State<Arc<AppState>>,
    bound: Option<Extension<AuthorizedNode>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = &st.metrics;
    let reject = |events: usize, e: ApiError| {
        m.batches_rejected.inc();
        m.events_rejected.inc_by(events as u64);
        e
    };
    let bytes = read_limited(&headers, body, st.body_limit).await.map_err(|e| reject(0, e))?;
    let mut batch: EventBatch = parse_body(&bytes).map_err(|e| reject(0, e.into()))?;
    let max = usize::try_from(st.max_batch_events).unwrap_or(usize::MAX);
    validate_batch(&batch, max).map_err(|e| reject(batch.events.len(), e.into()))?;
    // A node-bound agent reports for its own node only, in the batch and in every record.
    let bound = bound.as_deref();
    AuthorizedNode::check(bound, &batch.node_name, m).map_err(|e| reject(batch.events.len(), e))?;
    for node in batch.events.iter().filter_map(|e| e.node.as_deref()) {
        AuthorizedNode::check(bound, node, m).map_err(|e| reject(batch.events.len(), e))?;
    }

    match st.registry.batch(&batch.agent_id, &batch.node_name, batch.sequence, Instant::now()) {
        BatchTracking::Tracked(SeqObservation::Gap) => {
            m.sequence_gaps.inc();
        }
        BatchTracking::Tracked(SeqObservation::Regression) => {
            m.sequence_regressions.inc();
        }
        BatchTracking::Tracked(SeqObservation::InOrder) => {}
        BatchTracking::Untracked => {
            m.untracked_batches.inc();
        }
    }

    crate::k8s::enrich_batch(st.pods.as_deref(), &mut batch.events, &m.k8s);
    let n = batch.events.len() as u64;
    let (lines, records) = encode_batch(batch);
    st.sink.submit(lines, records);
    m.batches_accepted.inc();
    m.events_accepted.inc_by(n);
    Ok(json(
        StatusCode::OK,
        &EventsResponse {
            wire_version: WIRE_VERSION.to_string(),
            accepted: n,
            rejected: 0,
            next_config_version: st.config().version.clone(),
        },
    ))
}
