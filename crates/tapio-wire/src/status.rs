//! `GET /v1/status`: a read-only snapshot of the controller's facts (no verdicts).
//!
//! Extension for fleets: the agent list is paged (`?limit=&after=`, in agent id order) and
//! may be filtered by state (`?state=`); every response carries a `summary` of agent
//! counts by state over the whole registry, and `next_after` while more agents follow.
//! A plain v1 client that sends no `limit` gets every agent, as wire-v1 promises.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::heartbeat::HeartbeatCounters;
use crate::open_enum::{DegradedReason, ObserverStatus};

/// Status response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `tapio-wire/v1`.
    pub wire_version: String,
    /// Identity of this controller instance.
    pub controller_id: String,
    /// When it started.
    pub started_at_unix: u64,
    /// The active config.
    pub config: StatusConfig,
    /// Controller-wide totals.
    pub totals: StatusTotals,
    /// Known agents (one page of them, in agent id order).
    pub agents: Vec<AgentStatus>,
    /// Extension: agent counts by state over the whole registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<StatusSummary>,
    /// Extension: present while more agents match; pass it as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
    /// Extension: the controller's event sinks (absent from controllers without it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkStatus>,
}

/// Extension: one controller sink, as `/v1/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// `stdout`, `file`, `nats`, `otlp`.
    pub name: String,
    /// True when a 200 on `/v1/events` waits for this sink to hold the batch; false for a
    /// best-effort sink (fed after the acknowledgement, its overflow dropped and counted).
    pub durable: bool,
    /// Its worker runs and its last write worked.
    pub ready: bool,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Largest `limit` a status query may ask for.
pub const STATUS_PAGE_MAX: usize = 5_000;

/// Query of `GET /v1/status` (extension; every parameter optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusQuery {
    /// Agents per page, 0..=[`STATUS_PAGE_MAX`] (0: the summary only); absent, every agent
    /// (no `next_after`).
    pub limit: Option<usize>,
    /// Start after this agent id (the previous page's `next_after`).
    pub after: Option<String>,
    /// Only agents in this state (see [`AgentState`]).
    pub state: Option<String>,
}

/// Agent states a status query can filter by; the `summary` counts each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Said hello.
    Registered,
    /// Known only from its batches.
    Unregistered,
    /// Registered, and silent for longer than the stale bound.
    Stale,
    /// Its last heartbeat reported the config hash being served.
    Current,
    /// Its last heartbeat reported another hash.
    Outdated,
    /// Registered, no heartbeat yet.
    Unreported,
    /// Its last heartbeat named a degraded reason or an observer not running (and not
    /// disabled).
    Degraded,
}

impl AgentState {
    /// Every state, in summary order.
    pub const ALL: [Self; 7] = [
        Self::Registered,
        Self::Unregistered,
        Self::Stale,
        Self::Current,
        Self::Outdated,
        Self::Unreported,
        Self::Degraded,
    ];

    /// The query spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Unregistered => "unregistered",
            Self::Stale => "stale",
            Self::Current => "current",
            Self::Outdated => "outdated",
            Self::Unreported => "unreported",
            Self::Degraded => "degraded",
        }
    }

    /// Parses a query spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Agent counts by state over the whole registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSummary {
    /// Every known agent.
    pub agents_total: u64,
    /// Agents that said hello.
    pub registered: u64,
    /// Agents known only from their batches.
    pub unregistered: u64,
    /// Registered agents silent for longer than the stale bound.
    pub stale: u64,
    /// Agents whose last heartbeat reported the served config hash.
    pub current: u64,
    /// Agents whose last heartbeat reported another hash.
    pub outdated: u64,
    /// Registered agents with no heartbeat yet.
    pub unreported: u64,
    /// Agents whose last heartbeat reported degradation.
    pub degraded: u64,
}

/// The active config generation and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusConfig {
    /// Generation.
    pub version: String,
    /// `sha256:<hex>`.
    pub config_hash: String,
}

/// Controller-wide totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusTotals {
    /// Events in accepted batches.
    pub accepted_events_total: u64,
    /// Events in rejected batches.
    pub rejected_events_total: u64,
    /// Batches accepted.
    pub batches_accepted_total: u64,
    /// Batches rejected.
    pub batches_rejected_total: u64,
    /// Extension: accepted batches whose sender could not be tracked (registry full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untracked_batches_total: Option<u64>,
}

/// One agent as the controller knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Agent id.
    pub agent_id: String,
    /// Its node.
    pub node_name: String,
    /// Its build version ("" until it says hello).
    pub tapio_version: String,
    /// When it said hello (0 until it does).
    pub registered_at_unix: u64,
    /// Seconds since its last heartbeat; null before the first.
    pub last_heartbeat_age_seconds: Option<u64>,
    /// Config generation it reported applying ("" before its first heartbeat).
    pub reported_config_version: String,
    /// Counters from its last heartbeat.
    pub reported_counters: HeartbeatCounters,
    /// Observer states from its last heartbeat.
    pub observers: BTreeMap<String, ObserverStatus>,
    /// Batch sequence tracking.
    pub sequence: SequenceStatus,
    /// Extension: config hash it reported applying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_config_hash: Option<String>,
    /// Extension: whether the config hash it reported applying is the controller's target
    /// hash (`config.config_hash`); absent before its first heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_current: Option<bool>,
    /// Extension: false while the agent has sent batches but no hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<bool>,
    /// Extension: degraded reasons from its last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_reasons: Option<Vec<DegradedReason>>,
    /// Extension: its correlation drops by `observer.reason` from its last heartbeat
    /// (absent when it reported none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reported_correlation_drops: BTreeMap<String, u64>,
}

/// Per-agent batch sequence facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceStatus {
    /// Sequence of the last accepted batch; null before the first.
    pub last_seen: Option<u64>,
    /// Batches that arrived with `seq > last + 1`.
    pub gaps_total: u64,
    /// Batches that arrived with `seq <= last`.
    pub regressions_total: u64,
}
