//! The few settings of the agent's own that the per-event pipeline reads: the agent-only
//! knobs written in observer sections and the file sink's. The agent's config file
//! (`tapio-control`'s `config` module) parses and range-checks them; they are declared here,
//! beside the observers and the sink that use them.

use serde::Deserialize;
use std::path::PathBuf;

/// Knobs of this agent's own that sit in an observer section but are not part of the
/// fleet-wide config (a controller's config leaves them as the file set them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalKnobs {
    /// `storage.inflight_max_age_secs`: an in-flight request whose completion has not come
    /// after this long is dropped from the kernel's table (counted as `inflight_expired`), so
    /// the table stays bounded even if completions are lost. Never shorter than the critical
    /// threshold plus a second (see `observers::storage::inflight_max_age_ns`).
    pub inflight_max_age_secs: u32,
    /// `node.poll_interval_ms`: how often /proc/pressure/* and the hardware counters are
    /// sampled.
    pub poll_interval_ms: u32,
    /// `container_pressure.poll_interval_ms`: how often each watched container's cpu.stat
    /// and pressure files are read.
    pub pressure_poll_interval_ms: u32,
    /// `container_pressure.rescan_interval_ms`: how often the cgroup hierarchies are walked
    /// again for new and removed containers.
    pub pressure_rescan_interval_ms: u32,
    /// `container_pressure.max_containers`: most containers watched at once; those beyond
    /// are counted (`container_pressure.container_not_watched`).
    pub pressure_max_containers: u32,
}

impl Default for LocalKnobs {
    fn default() -> Self {
        Self {
            inflight_max_age_secs: 600,
            poll_interval_ms: 2_000,
            pressure_poll_interval_ms: 5_000,
            pressure_rescan_interval_ms: 10_000,
            pressure_max_containers: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    /// Rotate when the file would grow past this size.
    #[serde(default = "FileSinkConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.N`); older ones are deleted.
    #[serde(default = "FileSinkConfig::default_keep_files")]
    pub keep_files: u32,
}

impl FileSinkConfig {
    fn default_max_bytes() -> u64 {
        64 * 1024 * 1024
    }
    fn default_keep_files() -> u32 {
        5
    }
    pub fn at(path: PathBuf) -> Self {
        Self { path, max_bytes: Self::default_max_bytes(), keep_files: Self::default_keep_files() }
    }
}
