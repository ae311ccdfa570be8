//! tapio-wire: the shapes and rules of the `tapio-wire/v1` agent ↔ controller protocol.
//!
//! This crate is shared by every Tapio peer that speaks v1 (the agent's outbound client,
//! the controller's HTTP server, test tools). It holds only data types, validation and
//! canonical encoding (plus one std-only capped file reader every binary shares), so it
//! depends on `serde`, `serde_json` and `thiserror` and nothing else: no HTTP stack, no
//! async runtime, no hashing crate.
//!
//! * [`hello`], [`config`], [`heartbeat`], [`events`], [`status`]: request and response
//!   bodies of the five operations.
//! * [`compiled`]: [`CompiledConfig`], the config object served to agents.
//! * [`canonical`]: deterministic JSON bytes, the input of the config hash, formatted as
//!   `sha256:<hex>` by [`CompiledConfig::config_hash_with`]. The SHA-256 primitive itself
//!   is passed in by the controller and the `tapio` CLI (crate `sha2`), which keeps this
//!   crate free of a hashing dependency while both compute the hash the same way.
//! * [`open_enum`]: enums that keep unknown values instead of rejecting a payload.
//! * [`error`]: the error envelope and [`ErrorCode`].
//! * [`capped`]: the size-capped file reader every binary uses for its config, profile
//!   and token files (std only).
//! * [`validate`] and [`reasoning`]: the receiver-side rules, returning [`WireError`]
//!   whose [`WireError::code`] is the spec's error code.
//!
//! Compatibility rules (v1 is additive only): unknown JSON fields are ignored when parsing,
//! every received enum has a catch-all variant, and every extension field is optional and
//! omitted from the JSON when unset, so a plain v1 peer never sees it.

pub mod canonical;
pub mod capped;
pub mod compiled;
pub mod config;
pub mod error;
pub mod events;
pub mod heartbeat;
pub mod hello;
pub mod open_enum;
pub mod reasoning;
pub mod status;
pub mod validate;

pub use compiled::CompiledConfig;
pub use config::{Batching, ConfigResponse};
pub use error::{ErrorBody, ErrorCode, ErrorEnvelope};
pub use events::{EventBatch, EventError, EventsResponse, WireEvent, Workload};
pub use heartbeat::{HeartbeatCounters, HeartbeatRequest, HeartbeatResponse};
pub use hello::{HelloRequest, HelloResponse};
pub use open_enum::{DegradedReason, ObserverStatus, Outcome, Severity};
pub use status::{
    AgentState, AgentStatus, SequenceStatus, SinkStatus, StatusConfig, StatusQuery, StatusResponse, StatusSummary,
    StatusTotals,
};
pub use validate::WireError;

/// The protocol version carried in every body's `wire_version` field.
pub const WIRE_VERSION: &str = "tapio-wire/v1";

/// The path prefix that moves together with [`WIRE_VERSION`].
pub const PATH_PREFIX: &str = "/v1";

/// Paths of the protocol operations.
pub mod paths {
    /// `POST`: an agent introduces itself.
    pub const HELLO: &str = "/v1/agents/hello";
    /// `GET`: an agent pulls the compiled config.
    pub const CONFIG: &str = "/v1/agents/config";
    /// `POST`: an agent reports liveness and counters.
    pub const HEARTBEAT: &str = "/v1/agents/heartbeat";
    /// `POST`: an agent sends an event batch.
    pub const EVENTS: &str = "/v1/events";
    /// `GET`: read-only snapshot of the controller's facts.
    pub const STATUS: &str = "/v1/status";
}
