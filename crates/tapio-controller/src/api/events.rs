//! `POST /v1/events`: validate a batch, track its sequence, hand its records to the sink.
//!
//! A batch is accepted or rejected whole (the spec's errors are per batch), so a 200
//! always reports `rejected: 0`. A rejected batch does not touch sequence tracking.
//! A 200 means safe: every durable sink (file, JetStream, and an OTLP collector unless
//! `--otlp-best-effort`) holds every record of the batch. When one cannot, the batch is
//! refused with 503 `NOT_READY` and the agent retries it (see `crate::sink`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use tapio_wire::validate::{parse_body, validate_batch};
use tapio_wire::{ErrorCode, EventBatch, EventsResponse, WIRE_VERSION};

use super::body::read_limited;
use super::error::ApiError;
use super::json::json;
use crate::auth::AuthorizedNode;
use crate::metrics::{evidence_labels, EvidenceLabels};
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
    // A node-bound agent reports for its own node only, in the batch and in every record,
    // under its node's name.
    let bound = bound.as_deref();
    super::check_node(bound, &batch.node_name, m).map_err(|e| reject(batch.events.len(), e))?;
    for node in batch.events.iter().filter_map(|e| e.node.as_deref()) {
        super::check_node(bound, node, m).map_err(|e| reject(batch.events.len(), e))?;
    }
    super::check_agent(bound, &batch.agent_id, m).map_err(|e| reject(batch.events.len(), e))?;

    let n = batch.events.len() as u64;
    // Sequence tracking waits for the sinks: a refused batch comes back with the same
    // sequence, and must not count as a regression then.
    let (agent_id, node_name, sequence) = (batch.agent_id.clone(), batch.node_name.clone(), batch.sequence);
    // Names are added before the sinks see the records, so every sink stores the same record.
    crate::k8s::enrich_batch(st.pods.as_deref(), &mut batch.events, &node_name, &m.k8s);
    let evidence = evidence_counts(&batch);
    let (lines, records) = encode_batch(batch);
    if let Err(refusal) = st.sinks.deliver(lines, records).await {
        return Err(reject(
            n as usize,
            ApiError::new(
                ErrorCode::NotReady,
                format!("the {} sink could not keep this batch ({}); retry it", refusal.sink, refusal.reason),
            ),
        ));
    }
    match st.registry.batch(&agent_id, &node_name, sequence, Instant::now()) {
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

    m.batches_accepted.inc();
    m.events_accepted.inc_by(n);
    m.count_evidence(&evidence);
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

/// Accepted evidence per (type, severity) label pair; a batch has few distinct pairs.
fn evidence_counts(batch: &EventBatch) -> Vec<(EvidenceLabels, u64)> {
    let mut counts: Vec<(EvidenceLabels, u64)> = Vec::new();
    for e in &batch.events {
        let labels = evidence_labels(&e.event_type, e.severity.as_str());
        match counts.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, n)) => *n += 1,
            None => counts.push((labels, 1)),
        }
    }
    counts
}
