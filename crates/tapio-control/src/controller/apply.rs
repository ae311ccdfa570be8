//! From the controller's compiled config to what the observers judge with.
//!
//! The controller's config replaces the observer settings whole (the agent-only knobs of
//! the config file stay). It is checked against the same field table that validated the
//! local file (tapio-profile), so a controller cannot push a value the kernel side would
//! misjudge with: such a config is refused and the last valid one stays.

use crate::carriers::ObserverSettings;
use crate::config::ConfigError;
use tapio_wire::CompiledConfig;

/// One observer's config carrier, as a step of applying a config to all of them.
pub trait SettingsCarrier {
    fn name(&self) -> &'static str;
    fn write_settings(&mut self, settings: &ObserverSettings) -> Result<(), String>;
}

/// Writes `new` into every carrier, or leaves every carrier on `previous`: when a write
/// fails, the carriers written before it and the failing one itself (whose programs may
/// already read the new copy if only its last step failed) get `previous` back, so no
/// observer judges with a generation the heartbeat does not report.
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
        for c in carriers[..=i].iter_mut().rev() {
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

/// The settings of `compiled` at `generation`, if every field is in range.
pub fn settings_from(generation: u32, compiled: &CompiledConfig) -> Result<ObserverSettings, ConfigError> {
    tapio_profile::check(compiled).map_err(crate::config::config_error)?;
    Ok(ObserverSettings { generation, config: compiled.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A carrier whose writes can be made to fail.
    struct Fake {
        name: &'static str,
        generation: u32,
        fail_generation: Option<u32>,
        /// The failing write takes effect before it fails (a carrier whose last step
        /// failed after its readers moved to the new copy).
        takes_effect_then_fails: bool,
    }

    impl SettingsCarrier for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn write_settings(&mut self, s: &ObserverSettings) -> Result<(), String> {
            if self.fail_generation == Some(s.generation) {
                if self.takes_effect_then_fails {
                    self.generation = s.generation;
                }
                return Err("injected failure".into());
            }
            self.generation = s.generation;
            Ok(())
        }
    }

    fn generation(n: u32) -> ObserverSettings {
        settings_from(n, &CompiledConfig::default()).unwrap()
    }

    #[test]
    fn a_failed_carrier_write_leaves_every_carrier_on_the_previous_generation() {
        let fake =
            |name, fail_generation| Fake { name, generation: 1, fail_generation, takes_effect_then_fails: false };
        let (mut net, mut ctr, mut sto) = (fake("network", None), fake("container", None), fake("storage", Some(2)));
        let err =
            apply_all_or_none(&mut [&mut net, &mut ctr, &mut sto], &generation(2), Some(&generation(1))).unwrap_err();
        assert!(err.contains("storage") && err.contains("injected failure"), "{err}");
        assert_eq!((net.generation, ctr.generation, sto.generation), (1, 1, 1), "all or none: none");

        // The failing carrier's readers had moved to the new copy: it is restored too.
        let (mut net, mut ctr) = (fake("network", None), fake("container", Some(2)));
        ctr.takes_effect_then_fails = true;
        let err = apply_all_or_none(&mut [&mut net, &mut ctr], &generation(2), Some(&generation(1))).unwrap_err();
        assert!(err.contains("every observer stays on generation 1"), "{err}");
        assert_eq!((net.generation, ctr.generation), (1, 1), "the failing carrier back on the previous one");

        let (mut net, mut ctr) = (fake("network", None), fake("container", None));
        apply_all_or_none(&mut [&mut net, &mut ctr], &generation(3), Some(&generation(1))).unwrap();
        assert_eq!((net.generation, ctr.generation), (3, 3), "all or none: all");
    }

    #[test]
    fn the_wire_default_reproduces_the_local_default() {
        // A controller serving production-default (the wire default) changes nothing on a
        // node running with local defaults.
        let local = crate::config::AgentConfig::default();
        assert_eq!(settings_from(1, &CompiledConfig::default()).unwrap().config, local.observers);
    }

    /// A profile that validates is never refused by an agent, and the agent accepts nothing
    /// a profile could not say: every range in tapio-profile's field table is the range a
    /// served config is checked against, bound for bound.
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
            (f.get(&c) == v).then(|| settings_from(1, &c).is_ok())
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
        use crate::observers::{CarrierLayout, RuntimeFacts};
        use tapio_bpf::abi::{
            tapio_ctr_config, tapio_net_config, TAPIO_CTR_EN_EXIT, TAPIO_NET_EN_RESET, TAPIO_NET_EN_RTT,
        };
        let mut compiled = CompiledConfig::default();
        let n = &mut compiled.network;
        (n.connect_failures, n.resets, n.retransmit_spikes, n.rtt_degradation) = (false, true, false, true);
        n.rtt_min_increase_us = 2_500;
        compiled.container.oom_kills = false;
        compiled.storage.io_errors = false;
        let nd = &mut compiled.node;
        (nd.psi, nd.pmc, nd.psi_rearm_margin_percent) = (false, false, 7);
        (nd.pmc_ipc_min_percent, nd.pmc_stall_max_percent, nd.pmc_min_cycles) = (40, 70, 1_000);
        let s = settings_from(3, &compiled).unwrap();
        assert_eq!((s.generation, &s.config), (3, &compiled));
        // …and the kernel carriers.
        let facts = RuntimeFacts::default();
        let carrier = tapio_net_config::build(&s.config, 3, &facts);
        assert_eq!(carrier.enabled, TAPIO_NET_EN_RESET | TAPIO_NET_EN_RTT);
        assert_eq!(carrier.rtt_min_increase_us, 2_500);
        assert_eq!(tapio_ctr_config::build(&s.config, 3, &facts).enabled, TAPIO_CTR_EN_EXIT);

        compiled.network.rtt_min_increase_us = 60_000_001;
        let err = settings_from(4, &compiled).unwrap_err();
        assert!(err.0.contains("network.rtt_min_increase_us"), "{err}");
        let mut compiled = CompiledConfig::default();
        compiled.node.pmc_stall_max_percent = 0;
        assert!(settings_from(4, &compiled).unwrap_err().0.contains("node.pmc_stall_max_percent"));
    }

    #[test]
    fn controller_values_replace_the_local_settings() {
        let mut compiled = CompiledConfig::default();
        compiled.network.retransmit_count = 7;
        compiled.container.exit_ignore_codes = vec![3];
        compiled.storage.latency_warning_ms = 40;
        compiled.storage.latency_critical_ms = 400;
        compiled.node.psi_memory_some_avg10_percent = 3;
        let s = settings_from(9, &compiled).unwrap();
        assert_eq!((s.generation, s.config.network.retransmit_count), (9, 7));
        assert_eq!(s.config.container.exit_ignore_codes, vec![3]);
        assert_eq!((s.config.storage.latency_warning_ms, s.config.storage.latency_critical_ms), (40, 400));
        assert_eq!(s.config.node.psi_memory_some_avg10_percent, 3);
    }

    #[test]
    fn contradictory_or_out_of_range_controller_values_are_refused() {
        let mut compiled = CompiledConfig::default();
        compiled.storage.latency_critical_ms = 10; // below the warning threshold
        let err = settings_from(6, &compiled).unwrap_err();
        assert!(err.0.contains("storage.latency_critical_ms"), "{err}");
        compiled.storage.latency_critical_ms = u64::MAX;
        assert!(settings_from(6, &compiled).is_err());
        let mut compiled = CompiledConfig::default();
        compiled.node.psi_io_some_avg10_percent = 250;
        assert!(settings_from(7, &compiled).is_err());
        let mut compiled = CompiledConfig::default();
        compiled.network.rtt_ratio_percent = 50;
        let err = settings_from(2, &compiled).unwrap_err();
        assert_eq!(err.0, "network.rtt_ratio_percent = 50 is out of range 101..=100000");
        let mut compiled = CompiledConfig::default();
        compiled.network.rtt_ceiling_us = u64::MAX;
        assert!(settings_from(2, &compiled).is_err());
        let mut compiled = CompiledConfig::default();
        compiled.container.exit_ignore_signals = vec![0];
        assert!(settings_from(2, &compiled).is_err());
    }
}
