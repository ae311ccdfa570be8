//! `POST /v1/agents/heartbeat`: an agent reports liveness, observers and loss counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::open_enum::{DegradedReason, ObserverStatus};

/// Heartbeat request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Must be `tapio-wire/v1`.
    pub wire_version: String,
    /// Stable id of the agent.
    pub agent_id: String,
    /// Its node.
    pub node_name: String,
    /// Config generation the agent has applied ("0" before any).
    pub config_version: String,
    /// Hash of the applied config ("" before any).
    #[serde(default)]
    pub config_hash: String,
    /// Seconds since the agent process started.
    pub uptime_seconds: u64,
    /// Status of each observer; must not be empty.
    pub observers: BTreeMap<String, ObserverStatus>,
    /// Cumulative counters of the agent process.
    pub counters: HeartbeatCounters,
    /// Why the agent is degraded, if it is.
    #[serde(default)]
    pub degraded_reasons: Vec<DegradedReason>,
}

/// The agent's cumulative counters. Every place evidence can be lost has one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatCounters {
    /// Events emitted.
    pub events_total: u64,
    /// Kernel records rejected as malformed.
    pub malformed_events_total: u64,
    /// Records lost before user space (ring buffer reserve failures).
    pub lost_events_total: u64,
    /// Completions dropped because they could not be correlated unambiguously.
    pub correlation_drops_total: u64,
    /// Events a sink could not take.
    pub sink_drops_total: u64,
    /// Failed sends to the controller.
    pub controller_send_failures_total: u64,
}

/// Heartbeat response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// `tapio-wire/v1`.
    pub wire_version: String,
    /// False means "I do not know you": the agent says hello again at once.
    pub accepted: bool,
    /// The config generation the agent should be on.
    pub next_config_version: String,
}
