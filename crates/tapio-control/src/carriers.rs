//! The config carriers of all running observers, and applying one config generation to all
//! of them: at start (local config or the persisted controller config) and whenever the
//! controller serves a new one.

use crate::controller::apply::{apply_all_or_none, SettingsCarrier};
use crate::observers::{Follower, KernelCarrier};
use std::sync::Arc;
use tapio_wire::CompiledConfig;

/// What the observers judge with: the config, plus the generation stamped on the evidence
/// they produce.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverSettings {
    pub generation: u32,
    pub config: CompiledConfig,
}

/// Every running observer's way of taking a new config.
#[derive(Default)]
pub struct Carriers {
    /// Each loaded object's kernel carrier, by observer name.
    pub kernel: Vec<(&'static str, Box<dyn KernelCarrier>)>,
    /// The userspace parts that judge with the config (they follow a complete kernel write).
    pub followers: Vec<Arc<dyn Follower>>,
    /// The settings every carrier holds (what a failed apply restores).
    pub current: Option<ObserverSettings>,
}

/// One kernel carrier as a step of applying a config to all of them.
struct Step<'a> {
    name: &'static str,
    carrier: &'a mut dyn KernelCarrier,
}

impl SettingsCarrier for Step<'_> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn write_settings(&mut self, settings: &ObserverSettings) -> Result<(), String> {
        self.carrier.write(&settings.config, settings.generation)
    }
}

impl Carriers {
    /// Writes `settings` into every loaded object's carrier, or into none (see
    /// [`apply_all_or_none`]); the userspace followers follow only a complete write.
    pub fn apply(&mut self, settings: &ObserverSettings) -> Result<(), String> {
        let mut steps: Vec<Step<'_>> =
            self.kernel.iter_mut().map(|(name, carrier)| Step { name, carrier: carrier.as_mut() }).collect();
        let mut refs: Vec<&mut dyn SettingsCarrier> = steps.iter_mut().map(|s| s as _).collect();
        apply_all_or_none(&mut refs, settings, self.current.as_ref())?;
        for follower in &self.followers {
            follower.follow(&settings.config, settings.generation);
        }
        self.current = Some(settings.clone());
        Ok(())
    }
}
