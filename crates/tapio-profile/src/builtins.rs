//! The builtin profiles a document names as its `base`.
//!
//! `production-default` is the agent's own default (and `CompiledConfig::default()`), so a
//! fleet moved under a controller with no overrides judges exactly as before. `quiet` and
//! `sensitive` move every threshold one way: fewer, surer events, or earlier ones. The
//! README's table lists each difference; a test keeps it honest.

use tapio_wire::compiled::{ContainerConfig, NetworkConfig, NodeConfig, StorageConfig};
use tapio_wire::CompiledConfig;

/// A builtin profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// The agent's defaults.
    ProductionDefault,
    /// Higher thresholds, routine signal deaths ignored: for noisy or batch-heavy fleets.
    Quiet,
    /// Lower thresholds: for canaries, incident hunts and latency-critical nodes.
    Sensitive,
}

impl Builtin {
    /// Every builtin, in documentation order.
    pub const ALL: [Builtin; 3] = [Builtin::ProductionDefault, Builtin::Quiet, Builtin::Sensitive];

    /// The name a document uses in `base`.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::ProductionDefault => "production-default",
            Builtin::Quiet => "quiet",
            Builtin::Sensitive => "sensitive",
        }
    }

    /// One line for people.
    pub fn description(self) -> &'static str {
        match self {
            Builtin::ProductionDefault => "the agent's defaults: balanced thresholds, nothing ignored",
            Builtin::Quiet => "fewer, surer events: higher thresholds, SIGPIPE and SIGTERM deaths ignored",
            Builtin::Sensitive => "earlier events: lower thresholds, shorter baselines",
        }
    }

    /// The builtin called `name`.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Every builtin name.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|b| b.name()).collect()
    }

    /// The compiled config of this builtin.
    #[inline]
    pub fn config(self) -> CompiledConfig {
        match self {
            Builtin::ProductionDefault => CompiledConfig::default(),
            Builtin::Quiet => CompiledConfig {
                network: NetworkConfig {
                    retransmit_count: 25,
                    rtt_ratio_percent: 300,
                    rtt_ceiling_us: 1_000_000,
                    rtt_min_samples: 50,
                    rtt_min_increase_us: 5_000,
                    ..NetworkConfig::default()
                },
                container: ContainerConfig {
                    // SIGPIPE: a reader closed its pipe (routine in pipelines); SIGTERM: an
                    // orderly stop (routine in rollouts).
                    exit_ignore_signals: vec![13, 15],
                    ..ContainerConfig::default()
                },
                storage: StorageConfig {
                    latency_warning_ms: 250,
                    latency_critical_ms: 2_000,
                    ..StorageConfig::default()
                },
                node: NodeConfig {
                    psi_memory_some_avg10_percent: 20,
                    psi_cpu_some_avg10_percent: 80,
                    psi_io_some_avg10_percent: 50,
                    psi_rearm_margin_percent: 10,
                    pmc_ipc_min_percent: 30,
                    pmc_stall_max_percent: 80,
                    pmc_min_cycles: 100_000_000,
                    ..NodeConfig::default()
                },
            },
            Builtin::Sensitive => CompiledConfig {
                network: NetworkConfig {
                    retransmit_count: 5,
                    rtt_ratio_percent: 150,
                    rtt_ceiling_us: 250_000,
                    rtt_min_samples: 10,
                    rtt_min_increase_us: 500,
                    ..NetworkConfig::default()
                },
                container: ContainerConfig::default(),
                storage: StorageConfig { latency_warning_ms: 50, latency_critical_ms: 500, ..StorageConfig::default() },
                node: NodeConfig {
                    psi_memory_some_avg10_percent: 5,
                    psi_cpu_some_avg10_percent: 25,
                    psi_io_some_avg10_percent: 15,
                    psi_rearm_margin_percent: 2,
                    pmc_ipc_min_percent: 70,
                    pmc_stall_max_percent: 40,
                    pmc_min_cycles: 20_000_000,
                    ..NodeConfig::default()
                },
            },
        }
    }
}
