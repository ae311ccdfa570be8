//! The agent's real-kernel tests, one binary: a module per area, the shared scaffolding in
//! `tests/support/` (see its module doc). Run them as root, as `scripts/test` does:
//!
//! ```text
//! flock /tmp/tapio-kernel-tests.lock cargo test -p tapio-agent --test kernel -- --include-ignored --test-threads=2
//! ```
//!
//! One binary, so that one lock covers every kernel test by construction: each kernel test
//! begins with `let _turn = support::kernel_test(..)`, which waits for the process-wide
//! turn, and `support::agent` refuses to start an agent on a thread without it (the two
//! tests that load eBPF in-process, `config` and `startup`'s ABI test, take it the same
//! way). Two tests never run agents at once, however many test threads cargo uses. The
//! external `flock` keeps this binary apart from other crates' kernel tests and other
//! checkouts. New kernel tests join as a module here and use `tests/support/`.
//!
//! The agent's tests that need neither root nor the kernel are unit tests in `src/`. Three
//! here need neither too and stay where they belong rather than in a binary of their own:
//! `startup::a_config_with_an_unknown_key_is_refused_at_start_naming_the_key` (the built
//! binary's `--check-config`, next to the other start-up tests) and `support`'s two tests of
//! the turn itself. `controller_link` and `profile_rollout` start real agents against the
//! real controller, so they are kernel tests and live here too.
//!
//! Areas: `network`, `container`, `storage`, `node`, `pressure` (evidence of each observer), `config`
//! (the kernel config carrier under rewrites), `startup` and `shutdown` (what an operator
//! sees), `controller_link` and `profile_rollout` (controller mode end to end), `dns` (the DNS
//! observer's evidence against the laboratory's real servers and clients), `dns_lab`
//! (the DNS laboratory of `support::dns` proves its own scenarios, without the agent), `ring`
//! (what the agent's ring reader keeps resident), `recursion` (the kernel's skipped runs of
//! the agent's programs in its counters).

#[path = "../support/mod.rs"]
mod support;

mod config;
mod container;
mod controller_link;
mod dns;
mod dns_lab;
mod network;
mod node;
mod pressure;
mod profile_rollout;
mod recursion;
mod ring;
mod shutdown;
mod startup;
mod storage;
