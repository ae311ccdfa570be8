//! From the controller's compiled config to what the observers judge with.
//!
//! The controller's values override the local thresholds; switches and knobs the compiled
//! config does not carry keep their local values. The result passes the same range checks
//! as a local config file, so a controller cannot push a value the kernel side would
//! misjudge with: such a config is refused and the last valid one stays.

use crate::carriers::ObserverSettings;
use crate::config::{AgentConfig, ConfigError};
use tapio_wire::CompiledConfig;

fn narrow(key: &str, value: u64) -> Result<u32, ConfigError> {
    u32::try_from(value).map_err(|_| ConfigError(format!("{key} = {value} does not fit the kernel config")))
}

fn codes(key: &str, values: &[u8]) -> Result<Vec<u16>, ConfigError> {
    values
        .iter()
        .map(|&v| if v == 0 { Err(ConfigError(format!("{key} must not contain 0"))) } else { Ok(u16::from(v)) })
        .collect()
}

pub fn settings_from(
    local: &AgentConfig,
    generation: u32,
    compiled: &CompiledConfig,
) -> Result<ObserverSettings, ConfigError> {
    let mut merged = local.clone();
    let n = &compiled.network;
    merged.network.enabled = n.enabled;
    merged.network.retransmit_window_ms = narrow("network.retransmit_window_ms", n.retransmit_window_ms)?;
    merged.network.retransmit_count = n.retransmit_count;
    merged.network.rtt_ratio_percent = n.rtt_ratio_percent;
    merged.network.rtt_ceiling_us = narrow("network.rtt_ceiling_us", n.rtt_ceiling_us)?;
    merged.network.rtt_min_samples = n.rtt_min_samples;
    let c = &compiled.container;
    merged.container.enabled = c.enabled;
    merged.container.exit_ignore_codes = codes("container.exit_ignore_codes", &c.exit_ignore_codes)?;
    merged.container.exit_ignore_signals = codes("container.exit_ignore_signals", &c.exit_ignore_signals)?;
    let st = &compiled.storage;
    merged.storage.enabled = st.enabled;
    merged.storage.latency_warning_ms = narrow("storage.latency_warning_ms", st.latency_warning_ms)?;
    merged.storage.latency_critical_ms = narrow("storage.latency_critical_ms", st.latency_critical_ms)?;
    let nd = &compiled.node;
    merged.node.enabled = nd.enabled;
    merged.node.psi_memory_some_avg10_percent = nd.psi_memory_some_avg10_percent;
    merged.node.psi_cpu_some_avg10_percent = nd.psi_cpu_some_avg10_percent;
    merged.node.psi_io_some_avg10_percent = nd.psi_io_some_avg10_percent;
    merged.validate()?;
    Ok(ObserverSettings {
        generation,
        network: merged.network,
        container: merged.container,
        storage: merged.storage,
        node: merged.node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_values_override_local_thresholds() {
        let mut compiled = CompiledConfig::default();
        compiled.network.retransmit_count = 7;
        compiled.container.exit_ignore_codes = vec![3];
        let s = settings_from(&AgentConfig::default(), 9, &compiled).unwrap();
        assert_eq!((s.generation, s.network.retransmit_count), (9, 7));
        assert_eq!(s.container.exit_ignore_codes, vec![3]);
        // A knob the wire config does not carry keeps its local value.
        assert_eq!(s.network.rtt_min_increase_us, AgentConfig::default().network.rtt_min_increase_us);
    }

    #[test]
    fn storage_and_node_thresholds_come_from_the_controller() {
        let mut compiled = CompiledConfig::default();
        compiled.storage.latency_warning_ms = 40;
        compiled.storage.latency_critical_ms = 400;
        compiled.node.psi_memory_some_avg10_percent = 3;
        let s = settings_from(&AgentConfig::default(), 5, &compiled).unwrap();
        assert_eq!((s.storage.latency_warning_ms, s.storage.latency_critical_ms), (40, 400));
        assert_eq!(s.node.psi_memory_some_avg10_percent, 3);
        // Knobs the wire config does not carry keep their local values.
        assert_eq!(s.node.poll_interval_ms, AgentConfig::default().node.poll_interval_ms);
        assert_eq!(s.storage.inflight_max_age_secs, AgentConfig::default().storage.inflight_max_age_secs);

        compiled.storage.latency_critical_ms = 10; // below the warning threshold
        let err = settings_from(&AgentConfig::default(), 6, &compiled).unwrap_err();
        assert!(err.0.contains("storage.latency_critical_ms"), "{err}");
        compiled.storage.latency_critical_ms = u64::MAX;
        assert!(settings_from(&AgentConfig::default(), 6, &compiled).is_err());
        let mut compiled = CompiledConfig::default();
        compiled.node.psi_io_some_avg10_percent = 250;
        assert!(settings_from(&AgentConfig::default(), 7, &compiled).is_err());
    }

    #[test]
    fn out_of_range_controller_values_are_refused() {
        let mut compiled = CompiledConfig::default();
        compiled.network.rtt_ratio_percent = 50;
        let err = settings_from(&AgentConfig::default(), 2, &compiled).unwrap_err();
        assert!(err.0.contains("rtt_ratio_percent"), "{err}");
        let mut compiled = CompiledConfig::default();
        compiled.network.rtt_ceiling_us = u64::MAX;
        assert!(settings_from(&AgentConfig::default(), 2, &compiled).is_err());
        let mut compiled = CompiledConfig::default();
        compiled.container.exit_ignore_signals = vec![0];
        assert!(settings_from(&AgentConfig::default(), 2, &compiled).is_err());
    }
}
