//! The agent's logger: the workspace's one stderr line format ([`tapio_util::logger`]) at
//! the level `TAPIO_LOG` names. Lines are queued for a writer thread: a stderr nobody reads
//! (`2>&1 |` into a reader that stalled, a stuck log collector) blocks no thread of the
//! agent, not the ring-buffer drain nor its shutdown; what finds the queue full is dropped,
//! and counted in the log once it moves again.

use log::LevelFilter;

/// Installs the logger; `TAPIO_LOG=trace|debug|info|warn|error` sets the level (default
/// info; an unknown value is info too, so a typo cannot silence the agent).
pub fn init() {
    let level = std::env::var("TAPIO_LOG").ok().and_then(|v| tapio_util::logger::parse_level(&v));
    tapio_util::logger::init_queued(level.unwrap_or(LevelFilter::Info));
}

/// Writes out the queued lines before the exit, waiting at most
/// [`tapio_util::logger::FLUSH_WITHIN`] for a stderr that does not take them.
pub fn finish() {
    log::logger().flush();
}
