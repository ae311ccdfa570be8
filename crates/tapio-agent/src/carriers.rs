//! The kernel config carriers of all observers, and applying one config generation to all
//! of them: at start (local defaults or the persisted controller config) and whenever the
//! controller serves a new one.

use crate::config::{self, ContainerConfig, NetworkConfig, NodeConfig, StorageConfig};
use crate::observers::node::NodeSettings;
use crate::observers::ConfigCarrier;
use std::sync::Arc;
use tapio_bpf::abi::{tapio_ctr_config, tapio_net_config, tapio_sto_config};

/// What the observers judge with: thresholds and switches, plus the generation stamped on
/// the evidence they produce.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverSettings {
    pub generation: u32,
    pub network: NetworkConfig,
    pub container: ContainerConfig,
    pub storage: StorageConfig,
    pub node: NodeConfig,
}

#[derive(Default)]
pub struct KernelCarriers {
    pub network: Option<ConfigCarrier<tapio_net_config>>,
    pub container: Option<ConfigCarrier<tapio_ctr_config>>,
    pub storage: Option<ConfigCarrier<tapio_sto_config>>,
    /// The node observer judges in userspace: its poller reads these on every sample.
    pub node: Option<Arc<NodeSettings>>,
    pub ephemeral_ports: (u16, u16),
}

impl KernelCarriers {
    /// Writes `settings` into every loaded object's carrier.
    pub fn apply(&mut self, settings: &ObserverSettings) -> Result<(), String> {
        if let Some(c) = &mut self.network {
            c.write(config::network_carrier(&settings.network, settings.generation, self.ephemeral_ports))?;
        }
        if let Some(c) = &mut self.container {
            c.write(config::container_carrier(&settings.container, settings.generation))?;
        }
        if let Some(c) = &mut self.storage {
            c.write(config::storage_carrier(&settings.storage, settings.generation))?;
        }
        if let Some(node) = &self.node {
            node.set(settings.generation, settings.node.clone());
        }
        Ok(())
    }
}
