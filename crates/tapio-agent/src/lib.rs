//! tapio-agent as a library: the pieces of the node agent, exposed for its binary, its
//! tests and its benchmarks. The binary (`main.rs`) only parses arguments and calls
//! [`runtime::run`].
//!
//! This crate holds start-up, shutdown and the log line; the per-event path lives in
//! `tapio-pipeline` (observers, drain, queue, sinks) and the control plane in
//! `tapio-control` (config file, config carriers, controller link, command line), so that
//! each can be built for what it needs (see their docs). Their modules are re-exported
//! here under the agent's name.

pub mod logger;
pub mod runtime;
pub mod shutdown;

pub use tapio_control::{carriers, cli, config, controller};
pub use tapio_pipeline::{
    clock, counters, drain, drain_priority, evidence, knobs, observers, queue, ring, sink_stage, sinks, stamp, ulid,
};
