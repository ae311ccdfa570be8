//! From the controller's compiled config to what the observers judge with.
//!
//! The controller's values override the local thresholds; switches and knobs the compiled
//! config does not carry keep their local values. The result passes the same range checks
//! as a local config file, so a controller cannot push a value the kernel side would
//! misjudge with: such a config is refused and the last valid one stays.

use crate::carriers::ObserverSettings;
use crate::config::{AgentConfig, ConfigError};
use tapio_wire::CompiledConfig;

/// One observer's config carrier, as a step of applying a config to all of them.
pub trait SettingsCarrier {
    fn name(&self) -> &'static str;
    fn write_settings(&mut self, settings: &ObserverSettings) -> Result<(), String>;
}

/// Writes `new` into every carrier, or leaves every carrier on `previous`: when a write
/// fails, the carriers written before it get `previous` back, so no observer judges with a
/// generation the heartbeat does not report.
pub fn apply_all_or_none(
    carriers: &mut [&mut dyn SettingsCarrier],
    new: &ObserverSettings,
    previous: Option<&ObserverSettings>,
) -> Result<(), String> {
    for i in 0..carriers.len() {
        let Err(e) = carriers[i].write_settings(new) else { continue };
        let failed = format!("writing generation {} into {}: {e}", new.generation, carriers[i].name());
        let Some(previous) = previous else {
            return Err(failed);
        };
        let mut not_restored = Vec::new();
        for c in carriers[..i].iter_mut().rev() {
            if let Err(e) = c.write_settings(previous) {
                not_restored.push(format!("{}: {e}", c.name()));
            }
        }
        return Err(if not_restored.is_empty() {
            format!("{failed}; every observer stays on generation {}", previous.generation)
        } else {
            format!("{failed}; restoring generation {} failed too ({})", previous.generation, not_restored.join("; "))
        });
    }
    Ok(())
}

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
    merged.network.rtt_min_increase_us = narrow("network.rtt_min_increase_us", n.rtt_min_increase_us)?;
    merged.network.connect_failures = n.connect_failures;
    merged.network.resets = n.resets;
    merged.network.retransmit_spikes = n.retransmit_spikes;
    merged.network.rtt_degradation = n.rtt_degradation;
    let c = &compiled.container;
    merged.container.enabled = c.enabled;
    merged.container.oom_kills = c.oom_kills;
    merged.container.abnormal_exits = c.abnormal_exits;
    merged.container.exit_ignore_codes = codes("container.exit_ignore_codes", &c.exit_ignore_codes)?;
    merged.container.exit_ignore_signals = codes("container.exit_ignore_signals", &c.exit_ignore_signals)?;
    let st = &compiled.storage;
    merged.storage.enabled = st.enabled;
    merged.storage.latency_warning_ms = narrow("storage.latency_warning_ms", st.latency_warning_ms)?;
    merged.storage.latency_critical_ms = narrow("storage.latency_critical_ms", st.latency_critical_ms)?;
    merged.storage.io_errors = st.io_errors;
    merged.storage.latency_spikes = st.latency_spikes;
    let nd = &compiled.node;
    merged.node.enabled = nd.enabled;
    merged.node.psi_memory_some_avg10_percent = nd.psi_memory_some_avg10_percent;
    merged.node.psi_cpu_some_avg10_percent = nd.psi_cpu_some_avg10_percent;
    merged.node.psi_io_some_avg10_percent = nd.psi_io_some_avg10_percent;
    merged.node.psi = nd.psi;
    merged.node.psi_rearm_margin_percent = nd.psi_rearm_margin_percent;
    merged.node.pmc = nd.pmc;
    merged.node.pmc_ipc_min_percent = nd.pmc_ipc_min_percent;
    merged.node.pmc_stall_max_percent = nd.pmc_stall_max_percent;
    merged.node.pmc_min_cycles = nd.pmc_min_cycles;
    let d = &compiled.dns;
    merged.dns.enabled = d.enabled;
    merged.dns.failures = d.failures;
    merged.dns.timeouts = d.timeouts;
    merged.dns.latency_spikes = d.latency_spikes;
    merged.dns.report_nxdomain = d.report_nxdomain;
    merged.dns.timeout_ms = narrow("dns.timeout_ms", d.timeout_ms)?;
    merged.dns.latency_warning_ms = narrow("dns.latency_warning_ms", d.latency_warning_ms)?;
    merged.dns.latency_critical_ms = narrow("dns.latency_critical_ms", d.latency_critical_ms)?;
    merged.validate()?;
    Ok(ObserverSettings {
        generation,
        network: merged.network,
        container: merged.container,
        storage: merged.storage,
        node: merged.node,
        dns: merged.dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A carrier whose writes can be made to fail.
    struct Fake {
        name: &'static str,
        generation: u32,
        fail_generation: Option<u32>,
    }

    impl SettingsCarrier for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn write_settings(&mut self, s: &ObserverSettings) -> Result<(), String> {
            if self.fail_generation == Some(s.generation) {
                return Err("injected failure".into());
            }
            self.generation = s.generation;
            Ok(())
        }
    }

    fn generation(n: u32) -> ObserverSettings {
        settings_from(&AgentConfig::default(), n, &CompiledConfig::default()).unwrap()
    }

    #[test]
    fn a_failed_carrier_write_leaves_every_carrier_on_the_previous_generation() {
        let fake = |name, fail_generation| Fake { name, generation: 1, fail_generation };
        let (mut net, mut ctr, mut sto) = (fake("network", None), fake("container", None), fake("storage", Some(2)));
        let err =
            apply_all_or_none(&mut [&mut net, &mut ctr, &mut sto], &generation(2), Some(&generation(1))).unwrap_err();
        assert!(err.contains("storage") && err.contains("injected failure"), "{err}");
        assert_eq!((net.generation, ctr.generation, sto.generation), (1, 1, 1), "all or none: none");

        let (mut net, mut ctr) = (fake("network", None), fake("container", None));
        apply_all_or_none(&mut [&mut net, &mut ctr], &generation(3), Some(&generation(1))).unwrap();
        assert_eq!((net.generation, ctr.generation), (3, 3), "all or none: all");
    }

    #[test]
    fn the_wire_default_reproduces_the_local_default() {
        // A controller serving production-default (the wire default) changes nothing on a
        // node running with local defaults.
        let local = AgentConfig::default();
        let s = settings_from(&local, 1, &CompiledConfig::default()).unwrap();
        assert_eq!(s.network, local.network);
        assert_eq!(s.container, local.container);
        assert_eq!(s.storage, local.storage);
        assert_eq!(s.node, local.node);
        assert_eq!(s.dns, local.dns);
    }

    /// A profile that validates is never refused by an agent, and the agent accepts nothing
    /// a profile could not say: every range in tapio-profile's field table is this
    /// validator's range, bound for bound.
    #[test]
    fn profile_ranges_are_exactly_the_agents_ranges() {
        use tapio_profile::{FieldValue, Kind, FIELDS};
        // Storage thresholds are judged together (critical ≥ warning): a base that lets
        // each one reach both of its bounds.
        let mut base = CompiledConfig::default();
        base.storage.latency_warning_ms = 1;
        base.storage.latency_critical_ms = 3_600_000;
        // DNS thresholds are judged with the timeout too (warning ≤ critical < timeout): the
        // timeout reaches its minimum over the lowest thresholds, the rest over the highest.
        base.dns.timeout_ms = 60_000;
        base.dns.latency_warning_ms = 1;
        base.dns.latency_critical_ms = 59_000;
        let base_for = |f: &tapio_profile::Field| {
            let mut c = base.clone();
            if f.key() == "dns.timeout_ms" {
                c.dns.latency_critical_ms = 1;
            }
            c
        };
        // None: the wire type itself cannot hold the value (exit code 256 in a u8).
        let try_accept = |f: &tapio_profile::Field, v: FieldValue| {
            let mut c = base_for(f);
            f.set(&mut c, &v);
            (f.get(&c) == v).then(|| settings_from(&AgentConfig::default(), 1, &c).is_ok())
        };
        let accepts = |f: &tapio_profile::Field, v: FieldValue| {
            try_accept(f, v.clone()).unwrap_or_else(|| panic!("{}: {v} does not fit the wire type", f.key()))
        };
        let mut checked = 0;
        for f in FIELDS {
            let (range, wrap): (tapio_profile::Range, fn(u64) -> FieldValue) = match f.kind {
                Kind::Bool => {
                    assert!(accepts(f, FieldValue::Bool(false)) || f.name == "enabled", "{}", f.key());
                    continue;
                }
                Kind::Int(r) => (r, FieldValue::Int),
                Kind::List { item, .. } => (item, |n| FieldValue::List(vec![n])),
            };
            assert!(accepts(f, wrap(range.min)), "{} = {} refused", f.key(), range.min);
            assert!(accepts(f, wrap(range.max)), "{} = {} refused", f.key(), range.max);
            assert_ne!(try_accept(f, wrap(range.max + 1)), Some(true), "{} = {} accepted", f.key(), range.max + 1);
            if range.min > 0 {
                let below = range.min - 1;
                assert_eq!(accepts(f, wrap(below)), below == 0 && range.zero_means_off, "{} = {below}", f.key());
            }
            checked += 1;
        }
        assert!(checked >= 17, "only {checked} ranged fields checked");
    }

    #[test]
    fn every_switch_and_threshold_of_the_profile_reaches_the_settings() {
        let mut compiled = CompiledConfig::default();
        let n = &mut compiled.network;
        (n.connect_failures, n.resets, n.retransmit_spikes, n.rtt_degradation) = (false, true, false, true);
        n.rtt_min_increase_us = 2_500;
        compiled.container.oom_kills = false;
        compiled.storage.io_errors = false;
        let nd = &mut compiled.node;
        (nd.psi, nd.pmc, nd.psi_rearm_margin_percent) = (false, false, 7);
        (nd.pmc_ipc_min_percent, nd.pmc_stall_max_percent, nd.pmc_min_cycles) = (40, 70, 1_000);
        let s = settings_from(&AgentConfig::default(), 3, &compiled).unwrap();
        let n = &s.network;
        assert_eq!((n.connect_failures, n.resets, n.retransmit_spikes, n.rtt_degradation), (false, true, false, true));
        assert_eq!(n.rtt_min_increase_us, 2_500);
        assert!(!s.container.oom_kills && s.container.abnormal_exits);
        assert!(!s.storage.io_errors && s.storage.latency_spikes);
        assert_eq!((s.node.psi, s.node.pmc, s.node.psi_rearm_margin_percent), (false, false, 7));
        assert_eq!((s.node.pmc_ipc_min_percent, s.node.pmc_stall_max_percent, s.node.pmc_min_cycles), (40, 70, 1_000));
        // …and the kernel carriers.
        let carrier = crate::config::network_carrier(&s.network, 3, (1, 2));
        assert_eq!(carrier.enabled, tapio_bpf::abi::TAPIO_NET_EN_RESET | tapio_bpf::abi::TAPIO_NET_EN_RTT);
        assert_eq!(carrier.rtt_min_increase_us, 2_500);
        assert_eq!(crate::config::container_carrier(&s.container, 3).enabled, tapio_bpf::abi::TAPIO_CTR_EN_EXIT);

        compiled.network.rtt_min_increase_us = 60_000_001;
        let err = settings_from(&AgentConfig::default(), 4, &compiled).unwrap_err();
        assert!(err.0.contains("network.rtt_min_increase_us"), "{err}");
        let mut compiled = CompiledConfig::default();
        compiled.node.pmc_stall_max_percent = 0;
        assert!(settings_from(&AgentConfig::default(), 4, &compiled)
            .unwrap_err()
            .0
            .contains("node.pmc_stall_max_percent"));
    }

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
