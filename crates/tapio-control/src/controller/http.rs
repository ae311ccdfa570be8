//! The agent's outbound HTTP/1.1 client: the workspace's one plain client
//! ([`tapio_util::http`]), under the name the controller link has always used.

pub use tapio_util::http::*;

/// The `User-Agent` every agent request carries.
pub const USER_AGENT: &str = concat!("tapio-agent/", env!("CARGO_PKG_VERSION"));
