//! tapio-agent as a library: the pieces of the node agent, exposed for its binary, its
//! tests and its benchmarks. The binary (`main.rs`) only parses arguments and calls
//! [`runtime::run`].
//!
//! This crate holds what runs once or now and then: start-up and shutdown, the config file,
//! the observers' config carriers and the controller link. The per-event path lives in
//! `tapio-pipeline` (built for speed where this crate is built for size; see its doc) and
//! is re-exported here under the same module names.

pub mod carriers;
pub mod cli;
pub mod config;
pub mod controller;
pub mod logger;
pub mod runtime;
pub mod shutdown;

pub use tapio_pipeline::{
    clock, counters, drain, drain_priority, evidence, knobs, observers, queue, ring, sink_stage, sinks, stamp, ulid,
};
