//! [`CompiledConfig`]: the observer config the controller serves to agents.
//!
//! The Evidence Profile compiler (`tapio-profile`) produces it; the controller serves it.
//! Every field has a default and unknown fields are ignored, so the struct grows additively
//! within v1: a field added later is `#[serde(default)]` (via the struct-level attribute),
//! and an older peer that lacks it still parses the rest. The defaults are the
//! `production-default` profile, which is also the agent's own local default, so a
//! controller serving `{}` changes nothing on a node (tapio-profile tests that equality).
//!
//! The fleet convergence key is `sha256:<hex>` of [`CompiledConfig::canonical_json`],
//! formatted by [`CompiledConfig::config_hash_with`]. The SHA-256 primitive itself comes
//! from the caller (crate `sha2` in the controller and the CLI), keeping this crate free of
//! a hashing dependency while the bytes hashed and the text produced have one source. A
//! peer that parsed the config with an older build (dropping fields it does not know) must
//! report the hash it was served, not recompute it.

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
    /// Per-container CPU throttling and pressure (PSI) observer (extension).
    pub container_pressure: ContainerPressureConfig,
    /// DNS observer (added within v1: a peer that lacks it uses the defaults).
    pub dns: DnsConfig,
}

impl CompiledConfig {
    /// Canonical JSON bytes: keys sorted, no whitespace (see [`crate::canonical`]).
    pub fn canonical_json(&self) -> Vec<u8> {
        canonical::to_canonical_vec(self)
    }

    /// `sha256:<lowercase hex>` of the canonical bytes, with the digest computed by
    /// `sha256` (this crate has no hashing dependency; every caller passes the same one).
    pub fn config_hash_with(&self, sha256: impl FnOnce(&[u8]) -> [u8; 32]) -> String {
        tagged_sha256(&sha256(&self.canonical_json()))
    }
}

/// `sha256:` followed by the lowercase hex of `digest`.
pub fn tagged_sha256(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for &b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// Network observer knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// `connection_refused` / `_timeout` / `_unreachable` evidence on or off (extension).
    pub connect_failures: bool,
    /// `connection_reset` evidence on or off (extension).
    pub resets: bool,
    /// `retransmit_spike` evidence on or off (extension).
    pub retransmit_spikes: bool,
    /// `rtt_degradation` evidence on or off (extension).
    pub rtt_degradation: bool,
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
    /// A ratio crossing also needs srtt to exceed the baseline by this much (extension).
    pub rtt_min_increase_us: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            connect_failures: true,
            resets: true,
            retransmit_spikes: true,
            rtt_degradation: true,
            retransmit_window_ms: 10_000,
            retransmit_count: 10,
            rtt_ratio_percent: 200,
            rtt_ceiling_us: 500_000,
            rtt_min_samples: 20,
            rtt_min_increase_us: 1_000,
        }
    }
}

/// Container observer knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// `oom_kill` evidence on or off (extension).
    pub oom_kills: bool,
    /// `abnormal_exit` evidence on or off (extension).
    pub abnormal_exits: bool,
    /// Non-zero exit codes that are not evidence.
    pub exit_ignore_codes: Vec<u8>,
    /// Fatal signals that are not evidence.
    pub exit_ignore_signals: Vec<u8>,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            oom_kills: true,
            abnormal_exits: true,
            exit_ignore_codes: Vec::new(),
            exit_ignore_signals: Vec::new(),
        }
    }
}

/// Storage observer knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// `io_error` evidence on or off (extension).
    pub io_errors: bool,
    /// `latency_spike` evidence on or off (extension).
    pub latency_spikes: bool,
    /// Issue-to-completion latency that makes a warning `latency_spike`.
    pub latency_warning_ms: u64,
    /// Issue-to-completion latency that makes a critical `latency_spike`.
    pub latency_critical_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            io_errors: true,
            latency_spikes: true,
            latency_warning_ms: 100,
            latency_critical_ms: 1_000,
        }
    }
}

/// Node observer knobs: PSI "some avg10" thresholds in whole percent (0 = that resource
/// off), and hardware-counter thresholds.
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
    /// Pressure evidence on or off (extension).
    pub psi: bool,
    /// After a crossing, avg10 must fall this far below the threshold before the next one
    /// counts (extension).
    pub psi_rearm_margin_percent: u32,
    /// Hardware-counter evidence on or off (extension).
    pub pmc: bool,
    /// Instructions per cycle below this / 100 make an `ipc_degradation` (extension).
    pub pmc_ipc_min_percent: u32,
    /// Backend-stalled share of cycles above this makes a `cpu_stall` (extension).
    pub pmc_stall_max_percent: u32,
    /// CPUs that ran fewer cycles than this in one interval are not judged (extension).
    pub pmc_min_cycles: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            psi_memory_some_avg10_percent: 10,
            psi_cpu_some_avg10_percent: 50,
            psi_io_some_avg10_percent: 30,
            psi: true,
            psi_rearm_margin_percent: 5,
            pmc: true,
            pmc_ipc_min_percent: 50,
            pmc_stall_max_percent: 60,
            pmc_min_cycles: 50_000_000,
        }
    }
}

/// Container pressure observer knobs (extension): CFS throttling share and PSI "some avg10"
/// thresholds per container, in whole percent (a PSI threshold of 0 turns that resource off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerPressureConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// `cpu_throttling` evidence on or off.
    pub cpu_throttling: bool,
    /// Share of a poll interval's CFS periods that were throttled making a `cpu_throttling`.
    pub throttled_periods_percent: u32,
    /// Intervals with fewer CFS periods than this are not judged (a nearly idle container).
    pub throttling_min_periods: u32,
    /// `memory_pressure`, `cpu_pressure` and `io_pressure` evidence on or off.
    pub psi: bool,
    /// Memory pressure threshold.
    pub psi_memory_some_avg10_percent: u32,
    /// CPU pressure threshold.
    pub psi_cpu_some_avg10_percent: u32,
    /// I/O pressure threshold.
    pub psi_io_some_avg10_percent: u32,
    /// After a crossing, the value must fall this far below its threshold before the next
    /// one counts (throttling share and PSI alike).
    pub rearm_margin_percent: u32,
}

impl Default for ContainerPressureConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cpu_throttling: true,
            throttled_periods_percent: 25,
            throttling_min_periods: 10,
            psi: true,
            psi_memory_some_avg10_percent: 10,
            psi_cpu_some_avg10_percent: 50,
            psi_io_some_avg10_percent: 30,
            rearm_margin_percent: 5,
        }
    }
}

/// DNS observer knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DnsConfig {
    /// Observer on or off.
    pub enabled: bool,
    /// `failure` evidence (an error rcode) on or off.
    pub failures: bool,
    /// `timeout` evidence on or off.
    pub timeouts: bool,
    /// `latency_spike` evidence on or off.
    pub latency_spikes: bool,
    /// NXDOMAIN answers are `failure` evidence too (off: `ndots:5` makes them routine).
    pub report_nxdomain: bool,
    /// A query unanswered by its server within this long is a `timeout`.
    pub timeout_ms: u64,
    /// Query-to-answer latency that makes a warning `latency_spike`.
    pub latency_warning_ms: u64,
    /// … and a critical one (below `timeout_ms`).
    pub latency_critical_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failures: true,
            timeouts: true,
            latency_spikes: true,
            report_nxdomain: false,
            timeout_ms: 5_000,
            latency_warning_ms: 500,
            latency_critical_ms: 2_000,
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
        assert_eq!(c.network.retransmit_count, 10);
    }

    #[test]
    fn canonical_bytes_are_sorted_and_compact() {
        let bytes = CompiledConfig::default().canonical_json();
        let text = String::from_utf8(bytes).unwrap();
        assert!(!text.contains(' ') && !text.contains('\n'));
        // Top-level keys in byte order: container < container_pressure < dns < network < node < storage.
        let c = text.find("\"container\"").unwrap();
        let p = text.find("\"container_pressure\"").unwrap();
        let n = text.find("\"network\"").unwrap();
        let o = text.find("\"node\"").unwrap();
        let s = text.find("\"storage\"").unwrap();
        assert!(c < p && p < n && n < o && o < s, "{text}");
        // Golden bytes (also computed independently with Python's
        // `json.dumps(sort_keys=True, separators=(",", ":"))`): other implementations must
        // produce exactly these for the same config, or the fleet never converges.
        assert_eq!(
            text,
            concat!(
                r#"{"container":{"abnormal_exits":true,"enabled":true,"exit_ignore_codes":[],"#,
                r#""exit_ignore_signals":[],"oom_kills":true},"#,
                r#""container_pressure":{"cpu_throttling":true,"enabled":true,"psi":true,"#,
                r#""psi_cpu_some_avg10_percent":50,"psi_io_some_avg10_percent":30,"#,
                r#""psi_memory_some_avg10_percent":10,"rearm_margin_percent":5,"#,
                r#""throttled_periods_percent":25,"throttling_min_periods":10},"#,
                r#""dns":{"enabled":true,"failures":true,"latency_critical_ms":2000,"latency_spikes":true,"#,
                r#""latency_warning_ms":500,"report_nxdomain":false,"timeout_ms":5000,"timeouts":true},"#,
                r#""network":{"connect_failures":true,"enabled":true,"resets":true,"retransmit_count":10,"#,
                r#""retransmit_spikes":true,"retransmit_window_ms":10000,"rtt_ceiling_us":500000,"#,
                r#""rtt_degradation":true,"rtt_min_increase_us":1000,"rtt_min_samples":20,"rtt_ratio_percent":200},"#,
                r#""node":{"enabled":true,"pmc":true,"pmc_ipc_min_percent":50,"pmc_min_cycles":50000000,"#,
                r#""pmc_stall_max_percent":60,"psi":true,"psi_cpu_some_avg10_percent":50,"#,
                r#""psi_io_some_avg10_percent":30,"psi_memory_some_avg10_percent":10,"psi_rearm_margin_percent":5},"#,
                r#""storage":{"enabled":true,"io_errors":true,"latency_critical_ms":1000,"latency_spikes":true,"#,
                r#""latency_warning_ms":100}}"#
            )
        );
    }

    #[test]
    fn a_v1_config_without_the_extension_fields_still_parses() {
        // What a controller built before the extensions serves: the new switches take their
        // defaults (on), the old fields keep the values sent.
        let old = r#"{"network":{"enabled":true,"retransmit_window_ms":2000,"retransmit_count":8,
            "rtt_ratio_percent":250,"rtt_ceiling_us":500000,"rtt_min_samples":32},
            "container":{"enabled":true,"exit_ignore_codes":[1],"exit_ignore_signals":[]},
            "storage":{"enabled":false,"latency_warning_ms":50,"latency_critical_ms":500},
            "node":{"enabled":true,"psi_memory_some_avg10_percent":15,"psi_cpu_some_avg10_percent":60,
            "psi_io_some_avg10_percent":25}}"#;
        let c: CompiledConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c.network.retransmit_count, 8);
        assert!(c.network.connect_failures && c.network.rtt_degradation);
        assert_eq!(c.network.rtt_min_increase_us, NetworkConfig::default().rtt_min_increase_us);
        assert!(c.container.abnormal_exits && !c.storage.enabled && c.storage.io_errors);
        assert_eq!((c.node.psi_memory_some_avg10_percent, c.node.pmc_min_cycles), (15, 50_000_000));
    }

    #[test]
    fn hash_text_is_tagged_lowercase_hex_of_the_callers_digest() {
        let mut digest = [0u8; 32];
        digest[0] = 0xab;
        digest[31] = 0x0f;
        let text = CompiledConfig::default().config_hash_with(|bytes| {
            assert_eq!(bytes, CompiledConfig::default().canonical_json().as_slice());
            digest
        });
        assert_eq!(text, format!("sha256:ab{}0f", "0".repeat(60)));
    }
}
