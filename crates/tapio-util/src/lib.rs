//! Small utilities that Tapio's agent, controller, CLI and test tools share, each written
//! once here instead of once per binary.
//!
//! Hand-written rather than taken from crates because the node agent links them and its
//! binary size is budgeted (README, "Budgets"): each module does exactly what Tapio needs
//! with std (libc for `clock_gettime` and `perf_event_open`, the `log` facade for the
//! logger), where a general crate would bring far more.
//!
//! - [`time`]: RFC 3339 UTC formatting and parsing.
//! - [`http`]: the plain HTTP/1.1 client (bounded, no TLS, no redirects) and its URL.
//! - [`rotate`]: the size-rotated JSON-lines file and its rotation names.
//! - [`mountinfo`]: one `/proc/<pid>/mountinfo` line.
//! - [`perf`]: `perf_event_open(2)` with the first `perf_event_attr` ABI.
//! - [`logger`]: the one stderr log line format of the agent and the controller.
//! - [`cpus`]: the kernel's CPU lists, as slots of per-CPU maps.
//! - [`text`]: short ASCII text held inline (an evidence record's id, timestamp, addresses).
//! - [`collect`]: a `BTreeMap` built by insertion, without `collect()`'s sort code.
//! - `test_dirs` (feature `test-support`, for tests only): empty scratch directories.
//! - `test_process` (feature `test-support`, for tests only): a test alone in a child process.

pub mod collect;
pub mod cpus;
pub mod http;
pub mod logger;
pub mod mountinfo;
pub mod perf;
pub mod rotate;
#[cfg(feature = "test-support")]
pub mod test_dirs;
#[cfg(any(test, feature = "test-support"))]
pub mod test_process;
pub mod text;
pub mod time;
