//! The observer descriptor: everything the runtime, the counters, the controller link and
//! the bench need to know of one observer, declared once in the observer's own folder
//! (`observers/<name>/mod.rs`, `pub static OBSERVER: Observer`) and listed once in
//! [`super::REGISTRY`]. Nothing outside an observer's folder names it.

use super::poll::Poller;
use super::{Classifier, Hook, LoadError, ObserverState, ProgramStatus};
use crate::knobs::LocalKnobs;
use aya::Ebpf;
use std::sync::Arc;
use tapio_bpf::record::Record;
use tapio_wire::CompiledConfig;

/// One observer.
pub struct Observer {
    /// Its name in status lines, counters and evidence (`observer`).
    pub name: &'static str,
    /// Whether a config switches it on (its section's `enabled`). Read at start-up: an
    /// observer off at start stays off until the agent restarts.
    pub enabled: fn(&CompiledConfig) -> bool,
    /// Its eBPF half; `None` for an observer judged wholly in userspace.
    pub kernel: Option<KernelHalf>,
    /// Starts its userspace half once the kernel half (if any) has loaded: pollers, and
    /// the parts that judge in userspace and must see every new config. An error fails the
    /// observer.
    pub userspace: fn(&mut Start<'_>) -> Result<Userspace, String>,
}

/// The eBPF half of an observer.
pub struct KernelHalf {
    /// The embedded CO-RE object (`tapio_bpf::<name>::OBJECT`), inflated for loading.
    pub object: &'static tapio_bpf::EmbeddedObject,
    /// The programs to attach, for this kernel.
    pub hooks: fn() -> Vec<(&'static str, Hook)>,
    /// Opens the object's config carrier: `open_carrier::<T>`, where `T` is the object's
    /// config struct and its [`CarrierLayout`] builds it from a config.
    pub carrier: fn(CarrierMaps, RuntimeFacts) -> Result<Box<dyn KernelCarrier>, LoadError>,
    /// The classifier of its records, fitted to what attached.
    pub classifier: fn(&mut ClassifierContext<'_>) -> Box<dyn Classifier>,
    /// Slots of its own in the `counters` map (after `tapio_bpf::COUNTER_NAMES`), with the
    /// names the agent reports.
    pub counters: &'static [(u32, &'static str)],
    /// Which of [`KernelHalf::counters`] count a correlation drop (evidence lost because a
    /// fact could not be attributed); the others are informational.
    pub correlation_counters: &'static [&'static str],
    /// How its `events` map holds its records.
    pub event_rings: EventRings,
    /// Maps sized for this node at load, as (map, entries): the object declares each one's
    /// largest size (what the budgets hold). [`no_sized_maps`] for none.
    pub sized_maps: fn() -> Vec<(&'static str, u32)>,
    /// Read-only globals set at load from facts of the running kernel that CO-RE cannot
    /// read, as (global, value). [`no_globals`] for none.
    pub globals: fn() -> Vec<(&'static str, u32)>,
}

/// [`KernelHalf::sized_maps`] of an object whose maps keep their declared sizes.
pub fn no_sized_maps() -> Vec<(&'static str, u32)> {
    Vec::new()
}

/// [`KernelHalf::globals`] of an object that needs none.
pub fn no_globals() -> Vec<(&'static str, u32)> {
    Vec::new()
}

/// How an object's `events` map holds its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRings {
    /// One ring buffer, which every CPU writes to.
    Shared,
    /// One ring per CPU (`TAPIO_EVENT_RINGS_PER_CPU`), which the agent creates at load, the
    /// rings together sharing `total_bytes` (`tapio_bpf::per_cpu_ring_bytes`).
    PerCpu { total_bytes: u32 },
}

/// What the node is, as the kernel carriers need it: facts read at start, not settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeFacts {
    /// The local ephemeral port range (client sockets' ports).
    pub ephemeral_ports: (u16, u16),
    /// Record tasks' memory-cgroup ids: on cgroup v1 (hybrid) nodes the memory cgroup, not
    /// the cgroup2 one, names the container.
    pub capture_memcg: bool,
}

impl Default for RuntimeFacts {
    fn default() -> Self {
        Self { ephemeral_ports: (32_768, 60_999), capture_memcg: false }
    }
}

impl RuntimeFacts {
    /// This node's facts.
    pub fn of_this_node() -> Self {
        Self { ephemeral_ports: ephemeral_port_range(), capture_memcg: v1_memory_hierarchy() }
    }
}

/// The local ephemeral port range (client sockets' ports), from the kernel.
fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or(RuntimeFacts::default().ephemeral_ports)
}

/// True when the node has a cgroup v1 memory hierarchy: there every task's cgroup2 id is the
/// root, and only the memory cgroup names the container.
fn v1_memory_hierarchy() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.contains(" - cgroup ") && l.split(',').any(|o| o.trim() == "memory")))
        .unwrap_or(false)
}

/// How an object's config struct is made from a config: implemented by each kernel
/// observer for its `tapio_<x>_config`.
pub trait CarrierLayout: Record + Send + 'static {
    /// The struct for `config` at `generation` on a node with `facts`.
    fn build(config: &CompiledConfig, generation: u32, facts: &RuntimeFacts) -> Self;
}

/// An object's config carrier, whatever its struct: written with each new config.
pub trait KernelCarrier: Send {
    /// Writes the struct for `config` at `generation` (see `ConfigCarrier::write`).
    fn write(&mut self, config: &CompiledConfig, generation: u32) -> Result<(), String>;
}

/// The two maps of an object's config carrier (`config`, `config_seq`).
pub struct CarrierMaps {
    pub slots: aya::maps::Map,
    pub seq: aya::maps::Map,
}

struct TypedCarrier<T: CarrierLayout> {
    carrier: super::ConfigCarrier<T>,
    facts: RuntimeFacts,
}

impl<T: CarrierLayout> KernelCarrier for TypedCarrier<T> {
    fn write(&mut self, config: &CompiledConfig, generation: u32) -> Result<(), String> {
        self.carrier.write(T::build(config, generation, &self.facts))
    }
}

/// Opens a carrier of config struct `T` (the value of [`KernelHalf::carrier`]).
pub fn open_carrier<T: CarrierLayout>(
    maps: CarrierMaps,
    facts: RuntimeFacts,
) -> Result<Box<dyn KernelCarrier>, LoadError> {
    let carrier = super::ConfigCarrier::<T>::from_maps(maps.slots, maps.seq).map_err(LoadError::AbiMismatch)?;
    Ok(Box::new(TypedCarrier { carrier, facts }))
}

/// What a classifier is fitted to.
pub struct ClassifierContext<'a> {
    /// What attached (and what did not).
    pub programs: &'a [ProgramStatus],
    /// Where kernel reports of new cgroups go; `None` when the agent resolves no identity.
    pub learner: Option<tapio_identity::Learner>,
    /// The config it judges with first, and its generation.
    pub config: &'a CompiledConfig,
    pub generation: u32,
    /// A classifier that judges with settings in userspace registers here what must follow
    /// each new config (shared with it, e.g. through an `Arc`).
    pub followers: &'a mut Vec<Arc<dyn Follower>>,
}

/// What an observer's userspace half starts with.
pub struct Start<'a> {
    /// The config it judges with first.
    pub config: &'a CompiledConfig,
    pub generation: u32,
    pub local: &'a LocalKnobs,
    /// The loaded object, for maps the userspace half owns; `None` without a kernel half.
    pub ebpf: Option<&'a mut Ebpf>,
}

/// An observer's userspace half, as started.
#[derive(Default)]
pub struct Userspace {
    /// Timer work, run on the poll thread.
    pub pollers: Vec<Box<dyn Poller>>,
    /// Parts that judge in userspace and follow every applied config.
    pub followers: Vec<Arc<dyn Follower>>,
    /// The observer's state, when its userspace half decides it (an observer without a
    /// kernel half); `None`: the state follows from what attached.
    pub state: Option<ObserverState>,
}

/// A userspace part that follows config changes (applied after every kernel carrier took
/// the new config).
pub trait Follower: Send + Sync {
    fn follow(&self, config: &CompiledConfig, generation: u32);
}

/// A userspace half with nothing to start.
pub fn no_userspace(_: &mut Start<'_>) -> Result<Userspace, String> {
    Ok(Userspace::default())
}
