//! The agent's local configuration: safe defaults, an optional strict TOML file, and the
//! kernel config carriers derived from it.
//!
//! Unknown keys are errors naming the key, and every number is range-checked, so a typo or
//! a bad value fails loudly at start instead of silently running with defaults.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tapio_bpf::abi::{
    tapio_ctr_config, tapio_dns_config, tapio_net_config, tapio_sto_config, TAPIO_CTR_EN_EXIT, TAPIO_CTR_EN_OOM,
    TAPIO_DNS_EN_FAILURE, TAPIO_DNS_EN_LATENCY, TAPIO_DNS_EN_NXDOMAIN, TAPIO_DNS_EN_TIMEOUT, TAPIO_NET_EN_CONNECT,
    TAPIO_NET_EN_RESET, TAPIO_NET_EN_RETRANSMIT, TAPIO_NET_EN_RTT, TAPIO_STO_EN_ERRORS, TAPIO_STO_EN_LATENCY,
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Node name stamped on evidence (default: $NODE_NAME, then the hostname).
    pub node_name: Option<String>,
    /// Capacity of the queue between the ring-buffer drain and the sinks, in events.
    pub queue_capacity: usize,
    /// How often the loss counters are written to the log.
    pub counters_log_interval_secs: u64,
    /// Bound of the cgroup-id → workload identity cache, and of the cgroup paths learned
    /// while their cgroups existed (each holds at most this many).
    pub identity_cache_capacity: usize,
    pub sinks: SinksConfig,
    pub network: NetworkConfig,
    pub container: ContainerConfig,
    pub storage: StorageConfig,
    pub node: NodeConfig,
    pub dns: DnsConfig,
    /// Controller mode (absent = standalone).
    pub controller: Option<crate::controller::ControllerConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            queue_capacity: 16_384,
            counters_log_interval_secs: 60,
            identity_cache_capacity: 4096,
            sinks: SinksConfig::default(),
            network: NetworkConfig::default(),
            container: ContainerConfig::default(),
            storage: StorageConfig::default(),
            node: NodeConfig::default(),
            dns: DnsConfig::default(),
            controller: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// JSON lines on standard output.
    pub stdout: bool,
    /// JSON lines to a file, rotated by size.
    pub file: Option<FileSinkConfig>,
}

impl Default for SinksConfig {
    fn default() -> Self {
        Self { stdout: true, file: None }
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub enabled: bool,
    pub connect_failures: bool,
    pub resets: bool,
    pub retransmit_spikes: bool,
    pub rtt_degradation: bool,
    pub retransmit_window_ms: u32,
    pub retransmit_count: u32,
    pub rtt_ratio_percent: u32,
    /// Absolute srtt ceiling; 0 turns the ceiling off.
    pub rtt_ceiling_us: u32,
    pub rtt_min_samples: u32,
    /// A ratio crossing also needs srtt to exceed the baseline by this much: same-node
    /// baselines of a few microseconds jitter by multiples without anything being wrong.
    pub rtt_min_increase_us: u32,
    /// Record the connecting task's memory-cgroup id (set by the agent on v1-hybrid nodes,
    /// where it is what names the container; not a config-file key).
    #[serde(skip)]
    pub capture_memcg: bool,
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
            capture_memcg: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerConfig {
    pub enabled: bool,
    pub oom_kills: bool,
    pub abnormal_exits: bool,
    /// Exit codes (1–255) that are not evidence, e.g. a tool's documented "not found".
    pub exit_ignore_codes: Vec<u16>,
    /// Fatal signals (1–64) that are not evidence.
    pub exit_ignore_signals: Vec<u16>,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub enabled: bool,
    pub io_errors: bool,
    pub latency_spikes: bool,
    /// Issue-to-completion latency above which a request is a warning `latency_spike`.
    pub latency_warning_ms: u32,
    /// … and a critical one (at least latency_warning_ms).
    pub latency_critical_ms: u32,
    /// An in-flight request whose completion has not come after this long is dropped from
    /// the kernel's table (counted as `inflight_expired`): the table stays bounded even if
    /// completions are lost. Never shorter than the critical threshold plus a second (see
    /// [`StorageConfig::inflight_max_age_ns`]).
    pub inflight_max_age_secs: u32,
    /// Record the submitting task's memory-cgroup id (set by the agent on v1-hybrid nodes;
    /// not a config-file key).
    #[serde(skip)]
    pub capture_memcg: bool,
}

impl StorageConfig {
    /// The age at which an in-flight request leaves the table: `inflight_max_age_secs`, but
    /// never less than `latency_critical_ms` plus a second. A request is judged only at its
    /// completion, so one aged out earlier could never be the latency spike the thresholds
    /// describe: a threshold above the age would be accepted and do nothing.
    pub fn inflight_max_age_ns(&self) -> u64 {
        let configured = u64::from(self.inflight_max_age_secs) * 1_000_000_000;
        let judged = (u64::from(self.latency_critical_ms) + 1_000) * 1_000_000;
        configured.max(judged)
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            io_errors: true,
            latency_spikes: true,
            latency_warning_ms: 100,
            latency_critical_ms: 1_000,
            inflight_max_age_secs: 600,
            capture_memcg: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub enabled: bool,
    /// How often /proc/pressure/* and the hardware counters are sampled.
    pub poll_interval_ms: u32,
    /// Pressure (PSI) evidence.
    pub psi: bool,
    /// "some avg10" thresholds in percent; 0 turns that resource off.
    pub psi_memory_some_avg10_percent: u32,
    pub psi_cpu_some_avg10_percent: u32,
    pub psi_io_some_avg10_percent: u32,
    /// After a crossing, the next one needs avg10 to fall below threshold − margin first
    /// (the margin is at most half the threshold).
    pub psi_rearm_margin_percent: u32,
    /// Hardware-counter evidence (cpu_stall, ipc_degradation).
    pub pmc: bool,
    /// A CPU whose instructions per cycle fall below this / 100 is an ipc_degradation.
    pub pmc_ipc_min_percent: u32,
    /// A CPU whose backend-stalled cycles exceed this share of its cycles is a cpu_stall.
    pub pmc_stall_max_percent: u32,
    /// CPUs that ran fewer cycles than this in one interval are not judged (near idle).
    pub pmc_min_cycles: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval_ms: 2_000,
            psi: true,
            psi_memory_some_avg10_percent: 10,
            psi_cpu_some_avg10_percent: 50,
            psi_io_some_avg10_percent: 30,
            psi_rearm_margin_percent: 5,
            pmc: true,
            pmc_ipc_min_percent: 50,
            pmc_stall_max_percent: 60,
            pmc_min_cycles: 50_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    pub enabled: bool,
    /// Answers with an error rcode (kernel.dns.failure).
    pub failures: bool,
    /// Queries unanswered within `timeout_ms` (kernel.dns.timeout).
    pub timeouts: bool,
    /// Answers slower than the thresholds (kernel.dns.latency_spike).
    pub latency_spikes: bool,
    /// NXDOMAIN is a failure too. Off by default: Kubernetes' `ndots:5` search lists make
    /// NXDOMAIN answers routine on a healthy cluster.
    pub report_nxdomain: bool,
    /// A query no answer from its server came for within this long timed out (glibc's
    /// resolver waits 5 s per try by default).
    pub timeout_ms: u32,
    pub latency_warning_ms: u32,
    /// At least the warning threshold, and below `timeout_ms`.
    pub latency_critical_ms: u32,
    /// Record the querying task's memory-cgroup id (set by the agent on v1-hybrid nodes;
    /// not a config-file key).
    #[serde(skip)]
    pub capture_memcg: bool,
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
            capture_memcg: false,
        }
    }
}

impl DnsConfig {
    /// The ranges every source of a DNS config (file, controller) is held to.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("dns.timeout_ms", self.timeout_ms.into(), 100, 60_000)?;
        check_range("dns.latency_warning_ms", self.latency_warning_ms.into(), 1, 59_000)?;
        check_range("dns.latency_critical_ms", self.latency_critical_ms.into(), 1, 59_000)?;
        if self.latency_critical_ms < self.latency_warning_ms {
            return Err(ConfigError(format!(
                "dns.latency_critical_ms = {} must be at least dns.latency_warning_ms = {}",
                self.latency_critical_ms, self.latency_warning_ms
            )));
        }
        // An answer after the timeout is a timeout: a latency threshold at or past it would
        // be accepted and never judged.
        if self.latency_critical_ms >= self.timeout_ms {
            return Err(ConfigError(format!(
                "dns.latency_critical_ms = {} must be below dns.timeout_ms = {}",
                self.latency_critical_ms, self.timeout_ms
            )));
        }
        Ok(())
    }
}

/// A config that cannot be used, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError(format!("{key} = {value} is out of range {min}..={max}")))
    }
}

impl AgentConfig {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        // TOML → JSON value → config: the TOML parser is instantiated once (for Value) instead
        // of once per config struct, which keeps ~60 KB out of every node's binary; the
        // strictness (unknown keys named) comes from serde either way.
        let value: serde_json::Value = basic_toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        let config: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                ConfigError(e.into_inner().to_string())
            } else {
                ConfigError(format!("{path}: {}", e.into_inner()))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = tapio_wire::capped::read_capped_string(path, tapio_wire::capped::caps::CONFIG_BYTES)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range("queue_capacity", self.queue_capacity as u64, 16, 1 << 20)?;
        check_range("counters_log_interval_secs", self.counters_log_interval_secs, 1, 86_400)?;
        check_range("identity_cache_capacity", self.identity_cache_capacity as u64, 16, 1 << 20)?;
        if let Some(name) = &self.node_name {
            if name.trim().is_empty() {
                return Err(ConfigError("node_name must not be blank".into()));
            }
        }
        if let Some(file) = &self.sinks.file {
            if file.path.as_os_str().is_empty() {
                return Err(ConfigError("sinks.file.path must not be empty".into()));
            }
            check_range("sinks.file.max_bytes", file.max_bytes, 4096, 1 << 40)?;
            check_range("sinks.file.keep_files", u64::from(file.keep_files), 1, 100)?;
        }
        let n = &self.network;
        check_range("network.retransmit_window_ms", n.retransmit_window_ms.into(), 10, 600_000)?;
        check_range("network.retransmit_count", n.retransmit_count.into(), 2, 100_000)?;
        check_range("network.rtt_ratio_percent", n.rtt_ratio_percent.into(), 101, 100_000)?;
        if n.rtt_ceiling_us != 0 {
            check_range("network.rtt_ceiling_us", n.rtt_ceiling_us.into(), 1_000, 60_000_000)?;
        }
        check_range("network.rtt_min_samples", n.rtt_min_samples.into(), 1, 1_000_000)?;
        check_range("network.rtt_min_increase_us", n.rtt_min_increase_us.into(), 0, 60_000_000)?;
        let st = &self.storage;
        check_range("storage.latency_warning_ms", st.latency_warning_ms.into(), 1, 600_000)?;
        check_range("storage.latency_critical_ms", st.latency_critical_ms.into(), 1, 3_600_000)?;
        if st.latency_critical_ms < st.latency_warning_ms {
            return Err(ConfigError(format!(
                "storage.latency_critical_ms = {} must be at least storage.latency_warning_ms = {}",
                st.latency_critical_ms, st.latency_warning_ms
            )));
        }
        check_range("storage.inflight_max_age_secs", st.inflight_max_age_secs.into(), 10, 86_400)?;
        self.dns.validate()?;
        let nd = &self.node;
        check_range("node.poll_interval_ms", nd.poll_interval_ms.into(), 100, 60_000)?;
        check_range("node.psi_memory_some_avg10_percent", nd.psi_memory_some_avg10_percent.into(), 0, 100)?;
        check_range("node.psi_cpu_some_avg10_percent", nd.psi_cpu_some_avg10_percent.into(), 0, 100)?;
        check_range("node.psi_io_some_avg10_percent", nd.psi_io_some_avg10_percent.into(), 0, 100)?;
        check_range("node.psi_rearm_margin_percent", nd.psi_rearm_margin_percent.into(), 0, 50)?;
        check_range("node.pmc_ipc_min_percent", nd.pmc_ipc_min_percent.into(), 1, 1_000)?;
        check_range("node.pmc_stall_max_percent", nd.pmc_stall_max_percent.into(), 1, 100)?;
        check_range("node.pmc_min_cycles", nd.pmc_min_cycles, 0, 1 << 40)?;
        for code in &self.container.exit_ignore_codes {
            check_range("container.exit_ignore_codes[]", u64::from(*code), 1, 255)?;
        }
        // 1..=63: the kernel side keeps the ignored signals in one 64-bit mask (bit n =
        // signal n); signal 64 (SIGRTMAX) has no bit, so accepting it would change nothing.
        for sig in &self.container.exit_ignore_signals {
            check_range("container.exit_ignore_signals[]", u64::from(*sig), 1, 63)?;
        }
        if let Some(c) = &self.controller {
            crate::controller::http::Endpoint::parse(&c.url)
                .map_err(|e| ConfigError(format!("controller.url: {e}")))?;
            check_range("controller.connect_timeout_ms", c.connect_timeout_ms, 10, 60_000)?;
            check_range("controller.io_timeout_ms", c.io_timeout_ms, 10, 300_000)?;
            check_range("controller.request_timeout_ms", c.request_timeout_ms, 100, 600_000)?;
            check_range("controller.heartbeat_interval_secs", c.heartbeat_interval_secs, 1, 3_600)?;
            check_range("controller.config_poll_interval_secs", c.config_poll_interval_secs, 1, 3_600)?;
            check_range("controller.queue_capacity", c.queue_capacity as u64, 1, 1 << 20)?;
            check_range("controller.max_batch_bytes", c.max_batch_bytes as u64, 1024, 64 << 20)?;
            check_range("controller.max_retries", c.max_retries.into(), 0, 100)?;
            check_range("controller.max_backoff_ms", c.max_backoff_ms, 100, 600_000)?;
            check_range("controller.max_response_bytes", c.max_response_bytes as u64, 1024, 64 << 20)?;
            if c.agent_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
                return Err(ConfigError("controller.agent_id must not be blank".into()));
            }
        }
        Ok(())
    }
}

/// The local ephemeral port range (client sockets' ports), from the kernel.
pub fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// The network object's config carrier for `generation`.
/// True when the node has a cgroup v1 memory hierarchy: there every task's cgroup2 id is the
/// root, and only the memory cgroup names the container.
pub fn v1_memory_hierarchy() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.contains(" - cgroup ") && l.split(',').any(|o| o.trim() == "memory")))
        .unwrap_or(false)
}

pub fn network_carrier(n: &NetworkConfig, generation: u32, ports: (u16, u16)) -> tapio_net_config {
    let mut enabled = 0;
    if n.enabled {
        for (on, bit) in [
            (n.connect_failures, TAPIO_NET_EN_CONNECT),
            (n.resets, TAPIO_NET_EN_RESET),
            (n.retransmit_spikes, TAPIO_NET_EN_RETRANSMIT),
            (n.rtt_degradation, TAPIO_NET_EN_RTT),
        ] {
            if on {
                enabled |= bit;
            }
        }
    }
    let mut c = tapio_net_config::default();
    c.hdr.abi_version = tapio_bpf::ABI_VERSION;
    c.hdr.generation = generation;
    c.generation_check = generation;
    c.enabled = enabled;
    c.retransmit_window_ms = n.retransmit_window_ms;
    c.retransmit_count = n.retransmit_count;
    c.rtt_ratio_percent = n.rtt_ratio_percent;
    c.rtt_ceiling_us = n.rtt_ceiling_us;
    c.rtt_min_samples = n.rtt_min_samples;
    c.rtt_min_increase_us = n.rtt_min_increase_us;
    c.ephemeral_port_min = ports.0;
    c.ephemeral_port_max = ports.1;
    c.capture_memcg = u32::from(n.capture_memcg);
    c
}

/// The container object's config carrier for `generation`.
pub fn container_carrier(cc: &ContainerConfig, generation: u32) -> tapio_ctr_config {
    let mut c = tapio_ctr_config::default();
    c.hdr.abi_version = tapio_bpf::ABI_VERSION;
    c.hdr.generation = generation;
    c.generation_check = generation;
    if cc.enabled {
        if cc.oom_kills {
            c.enabled |= TAPIO_CTR_EN_OOM;
        }
        if cc.abnormal_exits {
            c.enabled |= TAPIO_CTR_EN_EXIT;
        }
    }
    for &code in &cc.exit_ignore_codes {
        let code = usize::from(code.min(255));
        c.ignored_exit_codes[code / 64] |= 1 << (code % 64);
    }
    for &sig in &cc.exit_ignore_signals {
        c.ignored_signals |= 1u64.checked_shl(u32::from(sig)).unwrap_or(0);
    }
    c
}

/// The storage object's config carrier for `generation`.
pub fn storage_carrier(st: &StorageConfig, generation: u32) -> tapio_sto_config {
    let mut c = tapio_sto_config::default();
    c.hdr.abi_version = tapio_bpf::ABI_VERSION;
    c.hdr.generation = generation;
    c.generation_check = generation;
    if st.enabled {
        if st.io_errors {
            c.enabled |= TAPIO_STO_EN_ERRORS;
        }
        if st.latency_spikes {
            c.enabled |= TAPIO_STO_EN_LATENCY;
        }
    }
    c.capture_memcg = u32::from(st.capture_memcg);
    c.latency_warning_ns = u64::from(st.latency_warning_ms) * 1_000_000;
    c.latency_critical_ns = u64::from(st.latency_critical_ms) * 1_000_000;
    c
}

/// The DNS object's config carrier for `generation`.
pub fn dns_carrier(d: &DnsConfig, generation: u32) -> tapio_dns_config {
    let mut c = tapio_dns_config::default();
    c.hdr.abi_version = tapio_bpf::ABI_VERSION;
    c.hdr.generation = generation;
    if d.enabled {
        for (on, bit) in [
            (d.failures, TAPIO_DNS_EN_FAILURE),
            (d.failures && d.report_nxdomain, TAPIO_DNS_EN_NXDOMAIN),
            (d.latency_spikes, TAPIO_DNS_EN_LATENCY),
            (d.timeouts, TAPIO_DNS_EN_TIMEOUT),
        ] {
            // With every switch off the kernel tracks nothing (its programs test `enabled`).
            if on {
                c.enabled |= bit;
            }
        }
    }
    c.timeout_ms = d.timeout_ms;
    c.latency_warning_ms = d.latency_warning_ms;
    c.latency_critical_ms = d.latency_critical_ms;
    c.capture_memcg = u32::from(d.capture_memcg);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_thresholds_are_ordered_and_below_the_timeout() {
        assert!(AgentConfig::from_toml("[dns]\nlatency_warning_ms = 300\nlatency_critical_ms = 200\n").is_err());
        let err = AgentConfig::from_toml("[dns]\ntimeout_ms = 1000\nlatency_critical_ms = 1000\n").unwrap_err();
        assert!(err.0.contains("below dns.timeout_ms"), "{err}");
        assert!(AgentConfig::from_toml("[dns]\ntimeout_ms = 50\n").unwrap_err().0.contains("dns.timeout_ms"));
        let ok = AgentConfig::from_toml("[dns]\nreport_nxdomain = true\ntimeout_ms = 3000\n").unwrap();
        assert!(ok.dns.report_nxdomain && ok.dns.timeout_ms == 3000);
    }

    #[test]
    fn the_nxdomain_switch_reaches_the_kernel_only_with_failures_on() {
        let mut d = DnsConfig::default();
        assert_eq!(dns_carrier(&d, 1).enabled & TAPIO_DNS_EN_NXDOMAIN, 0, "off by default");
        d.report_nxdomain = true;
        assert_ne!(dns_carrier(&d, 1).enabled & TAPIO_DNS_EN_NXDOMAIN, 0);
        d.failures = false;
        assert_eq!(dns_carrier(&d, 1).enabled & (TAPIO_DNS_EN_NXDOMAIN | TAPIO_DNS_EN_FAILURE), 0);
        d.enabled = false;
        assert_eq!(dns_carrier(&d, 1).enabled, 0);
    }

    #[test]
    fn an_endless_config_file_fails_fast() {
        let err = AgentConfig::from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.0.contains("/dev/zero") && err.0.contains("larger than"), "{err}");
    }

    #[test]
    fn empty_document_is_the_defaults() {
        assert_eq!(AgentConfig::from_toml("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = AgentConfig::from_toml("[network]\nrtt_ratio = 3\n").unwrap_err();
        assert!(err.0.contains("rtt_ratio"), "{err}");
        let err = AgentConfig::from_toml("bogus = 1\n").unwrap_err();
        assert!(err.0.contains("bogus"), "{err}");
    }

    /// Every ignore value the config accepts sets exactly the bit the container program
    /// reads for it (`ignored_exit_codes[code >> 6] & 1 << (code & 63)`, `ignored_signals &
    /// 1 << (sig & 63)`): no accepted value is a no-op, and none silences another.
    #[test]
    fn every_accepted_ignore_value_sets_the_bit_the_kernel_reads() {
        for code in 1u16..=255 {
            let toml = format!("[container]\nexit_ignore_codes = [{code}]\n");
            let c = container_carrier(&AgentConfig::from_toml(&toml).unwrap().container, 1);
            let mut want = [0u64; 4];
            want[usize::from(code >> 6) & 3] = 1 << (code & 63);
            assert_eq!(c.ignored_exit_codes, want, "exit code {code}");
        }
        for sig in 1u16..=127 {
            let toml = format!("[container]\nexit_ignore_signals = [{sig}]\n");
            match AgentConfig::from_toml(&toml) {
                Ok(config) => {
                    let c = container_carrier(&config.container, 1);
                    assert_eq!(c.ignored_signals, 1u64 << (sig & 63), "signal {sig}");
                    assert!(sig < 64, "signal {sig} accepted but the kernel's mask has no bit for it");
                }
                Err(e) => assert!(sig >= 64, "signal {sig} refused: {e}"),
            }
        }
    }

    #[test]
    fn in_flight_requests_live_long_enough_to_be_judged_critical() {
        let mut st = AgentConfig::default().storage;
        assert_eq!(st.inflight_max_age_ns(), 600_000_000_000, "the configured age when it covers the thresholds");
        // Both thresholds at their maximum (accepted) are still judged: a request slower
        // than the critical threshold stays in the table past it.
        st.latency_warning_ms = 600_000;
        st.latency_critical_ms = 3_600_000;
        assert!(st.inflight_max_age_ns() > 3_600_000_000_000);
        st.inflight_max_age_secs = 10;
        st.latency_critical_ms = 60_000;
        assert_eq!(st.inflight_max_age_ns(), 61_000_000_000);
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = AgentConfig::from_toml("[network]\nrtt_ratio_percent = \"high\"\n").unwrap_err();
        assert!(err.0.starts_with("network.rtt_ratio_percent: invalid type"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_key_and_range() {
        let err = AgentConfig::from_toml("[network]\nrtt_ratio_percent = 50\n").unwrap_err();
        assert_eq!(err.0, "network.rtt_ratio_percent = 50 is out of range 101..=100000");
        let err = AgentConfig::from_toml("[container]\nexit_ignore_signals = [65]\n").unwrap_err();
        assert!(err.0.contains("exit_ignore_signals"), "{err}");
        // Signal 64 has no bit in the kernel's mask: refused rather than accepted and ignored.
        let err = AgentConfig::from_toml("[container]\nexit_ignore_signals = [64]\n").unwrap_err();
        assert_eq!(err.0, "container.exit_ignore_signals[] = 64 is out of range 1..=63");
        let err = AgentConfig::from_toml("[sinks.file]\npath = \"/tmp/x\"\nkeep_files = 0\n").unwrap_err();
        assert!(err.0.contains("sinks.file.keep_files"), "{err}");
    }

    #[test]
    fn controller_urls_must_be_plain_http() {
        let err = AgentConfig::from_toml("[controller]\nurl = \"https://c:7470\"\n").unwrap_err();
        assert!(err.0.contains("https:// is not supported"), "{err}");
        let err = AgentConfig::from_toml("[controller]\n").unwrap_err();
        assert!(err.0.contains("controller.url"), "{err}");
        let c = AgentConfig::from_toml("[controller]\nurl = \"http://c:7470\"\ntoken_file = \"/t\"\n").unwrap();
        assert_eq!(c.controller.unwrap().heartbeat_interval_secs, 10);
    }

    #[test]
    fn full_document_parses() {
        let c = AgentConfig::from_toml(
            "node_name = \"n1\"\n[sinks]\nstdout = false\n[sinks.file]\npath = \"/var/log/tapio.jsonl\"\nmax_bytes = 1048576\n\
             [network]\nretransmit_count = 3\n[container]\nexit_ignore_codes = [1, 2]\nexit_ignore_signals = [15]\n",
        )
        .unwrap();
        assert_eq!(c.node_name.as_deref(), Some("n1"));
        assert!(!c.sinks.stdout);
        assert_eq!(c.sinks.file.as_ref().unwrap().keep_files, 5);
        assert_eq!(c.network.retransmit_count, 3);
    }

    #[test]
    fn storage_and_node_sections_are_strict_and_range_checked() {
        let c = AgentConfig::from_toml(
            "[storage]\nlatency_warning_ms = 50\nlatency_critical_ms = 50\n[node]\npoll_interval_ms = 500\n\
             psi_memory_some_avg10_percent = 0\npmc = false\n",
        )
        .unwrap();
        assert_eq!((c.storage.latency_warning_ms, c.storage.latency_critical_ms), (50, 50));
        assert_eq!((c.node.poll_interval_ms, c.node.psi_memory_some_avg10_percent, c.node.pmc), (500, 0, false));
        let err =
            AgentConfig::from_toml("[storage]\nlatency_warning_ms = 200\nlatency_critical_ms = 100\n").unwrap_err();
        assert!(err.0.contains("storage.latency_critical_ms = 100 must be at least"), "{err}");
        let err = AgentConfig::from_toml("[storage]\nlatency_warning_ms = 0\n").unwrap_err();
        assert_eq!(err.0, "storage.latency_warning_ms = 0 is out of range 1..=600000");
        let err = AgentConfig::from_toml("[node]\npsi_cpu_some_avg10_percent = 101\n").unwrap_err();
        assert!(err.0.contains("node.psi_cpu_some_avg10_percent"), "{err}");
        let err = AgentConfig::from_toml("[node]\npsi_threshold = 3\n").unwrap_err();
        assert!(err.0.contains("psi_threshold"), "{err}");
        let err = AgentConfig::from_toml("[storage]\ncapture_memcg = true\n").unwrap_err();
        assert!(err.0.contains("capture_memcg"), "an internal switch is not a config key: {err}");
    }

    #[test]
    fn storage_carrier_holds_thresholds_in_ns_and_switches() {
        let st = StorageConfig { latency_warning_ms: 100, latency_critical_ms: 1_000, ..StorageConfig::default() };
        let c = storage_carrier(&st, 4);
        assert_eq!((c.hdr.generation, c.generation_check, c.hdr.abi_version), (4, 4, tapio_bpf::ABI_VERSION));
        assert_eq!((c.latency_warning_ns, c.latency_critical_ns), (100_000_000, 1_000_000_000));
        assert_eq!(c.enabled, TAPIO_STO_EN_ERRORS | TAPIO_STO_EN_LATENCY);
        let c = storage_carrier(&StorageConfig { latency_spikes: false, ..st.clone() }, 0);
        assert_eq!(c.enabled, TAPIO_STO_EN_ERRORS);
        assert_eq!(storage_carrier(&StorageConfig { enabled: false, ..st }, 0).enabled, 0);
    }

    #[test]
    fn carriers_encode_switches_generation_and_ignore_lists() {
        let cc = ContainerConfig {
            exit_ignore_codes: vec![1, 64, 255],
            exit_ignore_signals: vec![15],
            ..ContainerConfig::default()
        };
        let c = container_carrier(&cc, 7);
        assert_eq!((c.hdr.generation, c.generation_check, c.hdr.abi_version), (7, 7, tapio_bpf::ABI_VERSION));
        assert_eq!(c.enabled, TAPIO_CTR_EN_OOM | TAPIO_CTR_EN_EXIT);
        assert_eq!(c.ignored_exit_codes, [1 << 1, 1, 0, 1 << 63]);
        assert_eq!(c.ignored_signals, 1 << 15);

        let mut n = NetworkConfig { resets: false, ..NetworkConfig::default() };
        let c = network_carrier(&n, 0, (1000, 2000));
        assert_eq!(c.enabled, TAPIO_NET_EN_CONNECT | TAPIO_NET_EN_RETRANSMIT | TAPIO_NET_EN_RTT);
        assert_eq!((c.ephemeral_port_min, c.ephemeral_port_max), (1000, 2000));
        n.enabled = false;
        assert_eq!(network_carrier(&n, 0, (1, 2)).enabled, 0);
    }
}
