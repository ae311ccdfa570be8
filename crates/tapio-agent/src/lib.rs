//! tapio-agent as a library: the pieces of the node agent, exposed for its binary, its
//! tests and its benchmarks. The binary (`main.rs`) only parses arguments and calls
//! [`runtime::run`].

pub mod carriers;
pub mod cli;
pub mod clock;
pub mod config;
pub mod controller;
pub mod counters;
pub mod drain;
pub mod drain_priority;
pub mod evidence;
pub mod logger;
pub mod observers;
pub mod queue;
pub mod ring;
pub mod runtime;
pub mod shutdown;
pub mod sink_stage;
pub mod sinks;
pub mod stamp;
pub mod ulid;

#[cfg(test)]
pub(crate) mod test_dirs;
