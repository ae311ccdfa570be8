//! The kernel config carriers of all observers, and applying one config generation to all
//! of them: at start (local defaults or the persisted controller config) and whenever the
//! controller serves a new one.

use crate::config::{self, ContainerConfig, DnsConfig, NetworkConfig, NodeConfig, StorageConfig};
use crate::controller::apply::{apply_all_or_none, SettingsCarrier};
use crate::observers::dns::SweepSettings;
use crate::observers::node::NodeSettings;
use crate::observers::ConfigCarrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tapio_bpf::abi::{tapio_ctr_config, tapio_dns_config, tapio_net_config, tapio_sto_config};

/// What the observers judge with: thresholds and switches, plus the generation stamped on
/// the evidence they produce.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverSettings {
    pub generation: u32,
    pub network: NetworkConfig,
    pub container: ContainerConfig,
    pub storage: StorageConfig,
    pub node: NodeConfig,
    pub dns: DnsConfig,
}

#[derive(Default)]
pub struct KernelCarriers {
    pub network: Option<ConfigCarrier<tapio_net_config>>,
    pub container: Option<ConfigCarrier<tapio_ctr_config>>,
    pub storage: Option<ConfigCarrier<tapio_sto_config>>,
    pub dns: Option<ConfigCarrier<tapio_dns_config>>,
    /// What the DNS observer's timeout sweep judges with.
    pub dns_sweep: Option<Arc<SweepSettings>>,
    /// The node observer judges in userspace: its poller reads these on every sample.
    pub node: Option<Arc<NodeSettings>>,
    pub ephemeral_ports: (u16, u16),
    /// The settings every carrier holds (what a failed apply restores).
    pub current: Option<ObserverSettings>,
    /// The storage in-flight table's age limit, read by its sweeper (it follows the
    /// critical latency threshold: `StorageConfig::inflight_max_age_ns`).
    pub storage_max_age_ns: Option<Arc<AtomicU64>>,
}

/// One kernel carrier with the function that makes its struct from the settings.
struct Step<'a, T: tapio_bpf::record::Record + 'static> {
    name: &'static str,
    carrier: &'a mut ConfigCarrier<T>,
    make: Box<dyn Fn(&ObserverSettings) -> T + 'a>,
}

impl<T: tapio_bpf::record::Record + 'static> SettingsCarrier for Step<'_, T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn write_settings(&mut self, settings: &ObserverSettings) -> Result<(), String> {
        self.carrier.write((self.make)(settings))
    }
}

impl KernelCarriers {
    /// Writes `settings` into every loaded object's carrier, or into none (see
    /// [`apply_all_or_none`]); the node observer, judged in userspace, follows only a
    /// complete write.
    pub fn apply(&mut self, settings: &ObserverSettings) -> Result<(), String> {
        let ports = self.ephemeral_ports;
        let mut steps: Vec<Box<dyn SettingsCarrier + '_>> = Vec::new();
        if let Some(carrier) = &mut self.network {
            let make = move |s: &ObserverSettings| config::network_carrier(&s.network, s.generation, ports);
            steps.push(Box::new(Step { name: "network", carrier, make: Box::new(make) }));
        }
        if let Some(carrier) = &mut self.container {
            let make = |s: &ObserverSettings| config::container_carrier(&s.container, s.generation);
            steps.push(Box::new(Step { name: "container", carrier, make: Box::new(make) }));
        }
        if let Some(carrier) = &mut self.storage {
            let make = |s: &ObserverSettings| config::storage_carrier(&s.storage, s.generation);
            steps.push(Box::new(Step { name: "storage", carrier, make: Box::new(make) }));
        }
        if let Some(carrier) = &mut self.dns {
            let make = |s: &ObserverSettings| config::dns_carrier(&s.dns, s.generation);
            steps.push(Box::new(Step { name: "dns", carrier, make: Box::new(make) }));
        }
        let mut refs: Vec<&mut dyn SettingsCarrier> = steps.iter_mut().map(|s| s.as_mut() as _).collect();
        apply_all_or_none(&mut refs, settings, self.current.as_ref())?;
        drop(refs);
        drop(steps);
        if let Some(node) = &self.node {
            node.set(settings.generation, settings.node.clone());
        }
        if let Some(sweep) = &self.dns_sweep {
            sweep.set(settings.generation, settings.dns.clone());
        }
        if let Some(age) = &self.storage_max_age_ns {
            age.store(settings.storage.inflight_max_age_ns(), Ordering::Relaxed);
        }
        self.current = Some(settings.clone());
        Ok(())
    }
}
