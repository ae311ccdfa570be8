//! `POST /v1/agents/hello`: an agent introduces itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Hello request. The five strings are required and non-blank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRequest {
    /// Must be `tapio-wire/v1`.
    pub wire_version: String,
    /// Stable id of the agent.
    pub agent_id: String,
    /// Kubernetes node (or host) name.
    pub node_name: String,
    /// Agent build version.
    pub tapio_version: String,
    /// `uname -r` of the node.
    pub kernel_release: String,
    /// CPU architecture.
    pub arch: String,
    /// Features the agent supports.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Sizes of loaded objects, by name.
    #[serde(default)]
    pub object_sizes: BTreeMap<String, u64>,
    /// Map counts, by name.
    #[serde(default)]
    pub map_counts: BTreeMap<String, u64>,
}

/// Hello response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    /// `tapio-wire/v1`.
    pub wire_version: String,
    /// False when the controller refuses the agent.
    pub accepted: bool,
    /// Identity of this controller instance.
    pub controller_id: String,
    /// Active config generation.
    pub config_version: String,
    /// How often the agent should send batches.
    pub send_interval_ms: u64,
    /// Upper bound of events per batch.
    pub max_batch_events: u64,
}
