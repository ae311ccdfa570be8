//! The node agent's control plane: its config file, the observers' config carriers and
//! applying a config to all of them, the controller link, and the command line. Code that
//! runs once at start-up or now and then, never per record.
//!
//! A crate of its own so that the `agent` profile can build it for size ("z") while the
//! binary, the link-time optimization of the whole agent and the per-event path
//! (`tapio-pipeline`) stay built for speed: cargo sets an opt-level per crate, and code is
//! compiled in the crate that instantiates it (the JSON decoding of the controller's
//! responses and of the config file, here). `tapio-agent` re-exports these modules under
//! its own name.

pub mod carriers;
pub mod cli;
pub mod config;
pub mod controller;

// The per-event path's modules this one uses, at the paths the agent's crate has them.
use tapio_pipeline::{clock, counters, observers};
