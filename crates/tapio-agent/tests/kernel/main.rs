//! The agent's real-kernel tests, one binary: a module per area, the shared scaffolding in
//! `tests/support/` (see its module doc). Run them as root, as `scripts/test` does:
//!
//! ```text
//! flock /tmp/tapio-kernel-tests.lock cargo test -p tapio-agent --test kernel -- --include-ignored --test-threads=2
//! ```
//!
//! One binary, so that one lock covers every kernel test by construction: each test begins
//! with `support::kernel_test(..)`, which waits for the process-wide turn, and the agent (and
//! every in-process eBPF load here) refuses to start without it. Two tests never run agents
//! at once, however many test threads cargo uses. The external `flock` keeps this binary
//! apart from other crates' kernel tests and other checkouts.
//!
//! The agent's tests that need neither root nor the kernel are unit tests in `src/`; the
//! one here (`startup::a_config_with_an_unknown_key_is_refused_at_start_naming_the_key`) runs
//! the built binary with `--check-config` and stays next to the start-up tests it belongs
//! with. `controller_link` and `profile_rollout` start real agents against the real
//! controller, so they are kernel tests and live here too.
//!
//! Areas: `network`, `container`, `storage`, `node` (evidence of each observer), `config`
//! (the kernel config carrier under rewrites), `startup` and `shutdown` (what an operator
//! sees), `controller_link` and `profile_rollout` (controller mode end to end).

#[path = "../support/mod.rs"]
mod support;

mod config;
mod container;
mod controller_link;
mod network;
mod node;
mod profile_rollout;
mod shutdown;
mod startup;
mod storage;
