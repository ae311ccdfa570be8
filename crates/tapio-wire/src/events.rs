//! `POST /v1/events`: an agent sends a batch of evidence.
//!
//! [`WireEvent`] is also the record shape the controller stores (evidence.md): the v1
//! fields plus the optional extension fields, which are omitted from JSON when unset so a
//! plain v1 peer sees exactly the v1 shape. Field order follows the record layout.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::open_enum::{Outcome, Severity};

/// Event batch request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Must be `tapio-wire/v1`.
    pub wire_version: String,
    /// Sending agent.
    pub agent_id: String,
    /// Its node.
    pub node_name: String,
    /// Rises by one per batch per agent process.
    pub sequence: u64,
    /// Wall clock at send time.
    pub sent_at_unix_nanos: u64,
    /// 1..=max_batch_events events.
    pub events: Vec<WireEvent>,
}

/// One piece of kernel evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    /// Extension: ULID of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `kernel.<observer>.<anomaly>`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Observer that produced it.
    pub observer: String,
    /// Severity (open enum).
    pub severity: Severity,
    /// Extension: outcome of the operation (open enum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Extension: the error the kernel reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
    /// Extension: RFC 3339 UTC rendering of `timestamp_unix_nanos`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Wall clock of the kernel moment.
    pub timestamp_unix_nanos: u64,
    /// Extension: node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Extension: config generation that judged the event (0 = local defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<u32>,
    /// Extension: what the node knows about the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Extension, set by the controller only: Kubernetes names of the workload, keyed by
    /// their OpenTelemetry attribute names (`k8s.pod.name`, `k8s.namespace.name`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<std::collections::BTreeMap<String, String>>,
    /// Observer-specific facts, numbers in base units. Never reasoning.
    pub facts: Map<String, Value>,
}

/// Extension: a factual error attached to an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventError {
    /// SCREAMING_SNAKE code.
    pub code: String,
    /// One factual line.
    pub message: String,
}

/// Extension: workload identity as known on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// cgroup v2 inode id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// cgroup path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
    /// Container runtime id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Kubernetes pod UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// Event batch response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsResponse {
    /// `tapio-wire/v1`.
    pub wire_version: String,
    /// Events accepted.
    pub accepted: u64,
    /// Events rejected.
    pub rejected: u64,
    /// The config generation the agent should be on.
    pub next_config_version: String,
}
