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
    /// Extension (additive; absent from older agents): `counters.correlation_drops_total`
    /// by `observer.reason` (`storage.ambiguous_inflight_io`), the reasons that counted
    /// only, so that each can be told apart downstream. Sent only when non-empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub correlation_drops: BTreeMap<String, u64>,
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
    /// Extension (additive; absent from older agents, read as 0): facts the kernel side saw
    /// but could not judge, so no evidence was produced (config of another ABI, a kernel
    /// lacking what the hook reads). Sent only when non-zero, so a v1 heartbeat without it
    /// keeps its exact shape.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_judged_total: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_judged_total_is_an_additive_extension() {
        let v1 = r#"{"events_total":1,"malformed_events_total":0,"lost_events_total":0,
            "correlation_drops_total":0,"sink_drops_total":0,"controller_send_failures_total":0}"#;
        let c: HeartbeatCounters = serde_json::from_str(v1).unwrap();
        assert_eq!(c.not_judged_total, 0);
        assert!(!serde_json::to_string(&c).unwrap().contains("not_judged_total"));
        let c = HeartbeatCounters { not_judged_total: 3, ..c };
        let back: HeartbeatCounters = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.not_judged_total, 3);
    }
}
