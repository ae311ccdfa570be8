//! `GET /v1/agents/config?agent_id=…&node_name=…`: an agent pulls its config.

use serde::{Deserialize, Serialize};

use crate::compiled::CompiledConfig;

/// Query parameters as received (both required; checked by
/// [`crate::validate::validate_config_query`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigQuery {
    /// Agent asking.
    pub agent_id: Option<String>,
    /// Its node.
    pub node_name: Option<String>,
}

/// Batching parameters the controller asks agents to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batching {
    /// How often to send a batch.
    pub send_interval_ms: u64,
    /// Upper bound of events per batch.
    pub max_batch_events: u64,
}

/// 200 response body. Sent with `ETag: "<config_hash>"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigResponse {
    /// `tapio-wire/v1`.
    pub wire_version: String,
    /// Config generation: a base-10 u32 as a string, never "0" (the tapio controller serves
    /// the Unix second at which the config was first served, so numbers are unique across
    /// its restarts).
    pub version: String,
    /// `sha256:<lowercase hex>` of the canonical JSON of `config`.
    pub config_hash: String,
    /// The config itself.
    pub config: CompiledConfig,
    /// Batching parameters.
    pub batching: Batching,
}
