//! The agent's logger: the workspace's one stderr line format ([`tapio_util::logger`]) at
//! the level `TAPIO_LOG` names.

use log::LevelFilter;

/// Installs the logger; `TAPIO_LOG=trace|debug|info|warn|error` sets the level (default
/// info; an unknown value is info too, so a typo cannot silence the agent).
pub fn init() {
    let level = std::env::var("TAPIO_LOG").ok().and_then(|v| tapio_util::logger::parse_level(&v));
    tapio_util::logger::init(level.unwrap_or(LevelFilter::Info));
}
