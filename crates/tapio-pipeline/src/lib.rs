//! The node agent's per-event path: the observers (loading, attaching and each one's
//! userspace half), the ring-buffer drain, classification, stamping, the evidence queue and
//! the sinks, with the counters of every place evidence can be lost.
//!
//! A crate of its own, apart from the agent's control plane (`tapio-control`), so that the
//! `agent` profile can build that one for size and keep this one built for speed: cargo
//! sets an opt-level per crate, and code is compiled in the crate that instantiates it (the
//! JSON encoder for Tapio's records, here). `tapio-agent` re-exports these modules under
//! its own name.

pub mod clock;
pub mod counters;
pub mod drain;
pub mod drain_priority;
pub mod evidence;
pub mod knobs;
pub mod observers;
pub mod queue;
pub mod ring;
pub mod sink_stage;
pub mod sinks;
pub mod stamp;
pub mod ulid;
