//! [`CompiledConfig`]: the observer config the controller serves to agents.
//!
//! Its final content will come from the Evidence Profile compiler; today it holds the
//! observer knobs known so far. Every field has a default and unknown fields are ignored,
//! so the struct can grow additively within v1. The numbers below are conservative
//! placeholders until profiles define them.
//!
//! The fleet convergence key is `sha256:<hex>` of [`CompiledConfig::canonical_json`]. The
//! SHA-256 lives in `tapio-controller` (module `config_hash`), keeping this crate free of
//! a hashing dependency. A peer that parsed the config with an older build (dropping
//! fields it does not know) must report the hash it was served, not recompute it.

use serde::{Deserialize, Serialize};

use crate::canonical;

/// The compiled config served by `GET /v1/agents/config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompiledConfig {
    /// TCP connection observer.
    pub network: NetworkConfig,
    /// Process exit and OOM observer.
    pub container: ContainerConfig,
    /// Block I/O observer.
    pub storage: StorageConfig,
    /// Node pressure observer.
    pub node: NodeConfig,
}

impl CompiledConfig {
    /// Canonical JSON bytes: keys sorted, no whitespace (see [`crate::canonical`]).
    pub fn canonical_json(&self) -> Vec<u8> {
        canonical::to_canonical_vec(self)
    }
}

/// Network observer knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// Window in which retransmits of one connection are counted.
    pub retransmit_window_ms: u64,
    /// Retransmits within the window that make a `retransmit_spike`.
    pub retransmit_count: u32,
    /// Smoothed RTT over baseline × this / 100 makes an `rtt_degradation`.
    pub rtt_ratio_percent: u32,
    /// Absolute smoothed RTT ceiling.
    pub rtt_ceiling_us: u64,
    /// Baseline samples needed before RTT is judged.
    pub rtt_min_samples: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retransmit_window_ms: 1_000,
            retransmit_count: 5,
            rtt_ratio_percent: 300,
            rtt_ceiling_us: 1_000_000,
            rtt_min_samples: 20,
        }
    }
}

/// Container observer knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// Non-zero exit codes that are not evidence.
    pub exit_ignore_codes: Vec<u8>,
    /// Fatal signals that are not evidence.
    pub exit_ignore_signals: Vec<u8>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self { enabled: true, exit_ignore_codes: Vec::new(), exit_ignore_signals: Vec::new() }
    }
}

/// Storage observer knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// Issue-to-completion latency that makes a warning `latency_spike`.
    pub latency_warning_ms: u64,
    /// Issue-to-completion latency that makes a critical `latency_spike`.
    pub latency_critical_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { enabled: true, latency_warning_ms: 100, latency_critical_ms: 1_000 }
    }
}

/// Node observer knobs: PSI "some avg10" thresholds, in whole percent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// Memory pressure threshold.
    pub psi_memory_some_avg10_percent: u32,
    /// CPU pressure threshold.
    pub psi_cpu_some_avg10_percent: u32,
    /// I/O pressure threshold.
    pub psi_io_some_avg10_percent: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            psi_memory_some_avg10_percent: 10,
            psi_cpu_some_avg10_percent: 50,
            psi_io_some_avg10_percent: 30,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_gives_defaults() {
        let c: CompiledConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, CompiledConfig::default());
        let c: CompiledConfig = serde_json::from_str(r#"{"network":{"enabled":false}}"#).unwrap();
        assert!(!c.network.enabled);
        assert_eq!(c.network.retransmit_count, 5);
    }

    #[test]
    fn canonical_bytes_are_sorted_and_compact() {
        let bytes = CompiledConfig::default().canonical_json();
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains(' ') && !text.contains('\n'));
        // Top-level keys in byte order: container < network < node < storage.
        let c = text.find("\"container\"").unwrap();
        let n = text.find("\"network\"").unwrap();
        let o = text.find("\"node\"").unwrap();
        let s = text.find("\"storage\"").unwrap();
        assert!(c < n && n < o && o < s, "{text}");
        // Golden bytes (also computed independently with Python's
        // `json.dumps(sort_keys=True, separators=(",", ":"))`): other implementations must
        // produce exactly these for the same config, or the fleet never converges.
        assert_eq!(
            text,
            concat!(
                r#"{"container":{"enabled":true,"exit_ignore_codes":[],"exit_ignore_signals":[]},"#,
                r#""network":{"enabled":true,"retransmit_count":5,"retransmit_window_ms":1000,"#,
                r#""rtt_ceiling_us":1000000,"rtt_min_samples":20,"rtt_ratio_percent":300},"#,
                r#""node":{"enabled":true,"psi_cpu_some_avg10_percent":50,"#,
                r#""psi_io_some_avg10_percent":30,"psi_memory_some_avg10_percent":10},"#,
                r#""storage":{"enabled":true,"latency_critical_ms":1000,"latency_warning_ms":100}}"#
            )
        );
    }
}
