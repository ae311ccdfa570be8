//! tapio-controller: Tapio's one-per-cluster coordinator and its only HTTP server.
//!
//! It speaks `tapio-wire/v1` to agents (hello, config pull, heartbeat, event batches,
//! status), keeps a bounded registry of agents with their reported counters and batch
//! sequences, validates batches (facts, not reasoning) and writes accepted evidence to a
//! sink. It never calls an agent. See `README.md` in this crate for flags and operation.
//!
//! Modules, one job each (and no cycles among `settings`, `state`, `profile` and `sink`):
//! * [`settings`]: flags → validated [`settings::Settings`].
//! * [`server`]: accept loop, timeouts, graceful shutdown. [`connections`]: connection
//!   bounds (total and per peer) and eviction of connections without a request.
//! * [`api`]: routes, handlers, error envelope, body limit, auth and metrics middleware.
//! * [`registry`] and [`sequence`]: agents, their reports and batch sequence facts.
//! * [`config_hash`]: SHA-256 config hash and the served config body.
//! * [`profile`]: Evidence Profile loading (YAML or JSON); [`profile_reload`]: SIGHUP and
//!   change reloads.
//! * [`record`] and [`sink`]: evidence records and their bounded writer; each sink's
//!   settings live with it ([`sink::config`]), so sinks depend on nothing above them.
//! * [`auth`]: bearer token holder and constant-time check.
//! * [`metrics`]: Prometheus metrics. The stderr logger is the workspace's one log line
//!   format ([`tapio_util::logger`]).
//! * [`io_timeout`]: write deadline for connections.
//! * [`k8s`]: pod names on records (pod watch) and `--auth kubernetes` (TokenReview).

pub mod api;
pub mod auth;
pub mod config_hash;
pub mod connections;
pub mod hyper_errors;
pub mod io_timeout;
pub mod k8s;
pub mod metrics;
pub mod profile;
pub mod profile_reload;
pub mod record;
pub mod registry;
pub mod sequence;
pub mod server;
pub mod settings;
pub mod sink;
pub mod state;

pub use server::{RunningServer, Server};
pub use settings::{Settings, SinkTarget};
