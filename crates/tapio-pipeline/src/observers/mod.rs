//! Observers: loading each eBPF object, writing its config carrier, attaching its programs,
//! and reporting honestly what attached and what did not.
//!
//! One observer is one folder: `observers/<name>/` holds its userspace half and declares
//! its [`Observer`] descriptor (`pub static OBSERVER`); its kernel half, if it has one,
//! lives in `tapio-bpf/src/<name>/`. [`REGISTRY`] lists them, and the runtime, the
//! carriers, the counters and the bench iterate it: nothing else names an observer.

pub mod descriptor;
pub mod poll;
mod recursion;

pub use descriptor::{
    no_globals, no_sized_maps, no_userspace, open_carrier, CarrierLayout, CarrierMaps, ClassifierContext, EventRings,
    Follower, KernelCarrier, KernelHalf, Observer, RuntimeFacts, Start, Userspace,
};

/// Declares the observer modules and [`REGISTRY`] from one list of folder names.
macro_rules! registry {
    ($($name:ident),+ $(,)?) => {
        $(pub mod $name;)+
        /// Every observer this agent has, in start-up order.
        pub static REGISTRY: &[&Observer] = &[$(&$name::OBSERVER),+];
    };
}

// Adding an observer: its folder, and its name here.
registry!(network, container, storage, node, container_pressure, dns);

/// The observer called `name`.
pub fn find(name: &str) -> Option<&'static Observer> {
    REGISTRY.iter().copied().find(|o| o.name == name)
}

use crate::counters::Counters;
use crate::ring::Ring;
use crate::stamp::{Stamper, Verdict};
use aya::maps::{Array, ArrayOfMaps, Map, MapData, PerCpuArray};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, TracePoint};
use aya::programs::{ProgramError, ProgramFd, TracePointError};
use aya::{Btf, BtfError, Ebpf, EbpfError, EbpfLoader, Pod};
use std::fmt;
use std::os::fd::AsFd;
use tapio_bpf::record::Record;

/// What an observer's status says, as the heartbeat will report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserverState {
    Running,
    /// Some programs attached, some did not: the reason names them.
    Degraded(String),
    Failed(String),
    Disabled,
    /// This node (kernel or hardware) lacks what the observer needs; the reason says what.
    /// The wire carries it as the catch-all status "unsupported".
    Unsupported(String),
}

impl ObserverState {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Degraded(_) => "degraded",
            Self::Failed(_) => "failed",
            Self::Disabled => "disabled",
            Self::Unsupported(_) => "unsupported",
        }
    }
}

impl fmt::Display for ObserverState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running | Self::Disabled => f.write_str(self.label()),
            Self::Degraded(why) | Self::Failed(why) | Self::Unsupported(why) => write!(f, "{}: {why}", self.label()),
        }
    }
}

/// A hook a program attaches to.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// A classic tracepoint: (category, name).
    TracePoint(&'static str, &'static str),
    /// A BTF-typed tracepoint.
    BtfTracePoint(&'static str),
    /// A cgroup_skb program on the cgroup2 root (every socket of the node, in every network
    /// namespace): egress (true) or ingress.
    CgroupSkb(bool),
    /// A cgroup sock_addr program on the cgroup2 root (its attach type is in the object).
    CgroupSockAddr,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TracePoint(c, n) => write!(f, "tracepoint/{c}/{n}"),
            Self::BtfTracePoint(n) => write!(f, "tp_btf/{n}"),
            Self::CgroupSkb(true) => f.write_str("cgroup_skb/egress"),
            Self::CgroupSkb(false) => f.write_str("cgroup_skb/ingress"),
            Self::CgroupSockAddr => f.write_str("cgroup/sock_addr"),
        }
    }
}

/// The outcome of attaching one program.
#[derive(Debug, Clone)]
pub struct ProgramStatus {
    pub program: &'static str,
    pub hook: Hook,
    pub result: Result<(), LoadError>,
}

/// A config struct written into an object's one-entry `config` map.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Carrier<T>(T);

// SAFETY: `Carrier` wraps ABI records, which are plain old data (`Record`).
unsafe impl<T: Record + 'static> Pod for Carrier<T> {}

/// A loaded observer: the object (which owns the attached programs), its ring buffers and
/// its kernel counters.
pub struct Loaded {
    /// `None` once detached at shutdown.
    pub ebpf: Option<Ebpf>,
    /// Its one shared ring, or one ring per CPU (see [`EventRings`]).
    pub rings: Vec<Ring>,
    /// The array of per-CPU rings, held open: programs are loaded (at attach) with the map
    /// descriptors the object was relocated with.
    pub ring_slots: Option<ArrayOfMaps<MapData, MapData>>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Raised while the drain sleeps without a timer (`tapio_bpf.h`, `drain_asleep`).
    pub drain_asleep: Array<MapData, u32>,
    pub programs: Vec<ProgramStatus>,
    /// Its loaded programs, held apart from the object so that their recursion misses stay
    /// readable after it is dropped at shutdown. `None` if one could not be held (only at
    /// the descriptor limit, which fails loading first): then no sum is reported rather
    /// than an undercount.
    pub program_fds: Option<Vec<ProgramFd>>,
}

/// An object's config carrier, taken out of the object so it stays writable at any time
/// (e.g. when the controller's config changes) while the drain thread owns the rest. The
/// map's value size is checked by aya against the Rust struct, so an object with another
/// layout is refused.
///
/// The carrier is two copies of the config behind a latch sequence (`tapio_bpf.h`,
/// `TAPIO_READ_CONFIG`): programs copy the copy `seq & 1` names and copy again if `seq`
/// moved meanwhile. A write bumps `seq` (readers move to copy 1), rewrites copy 0, bumps it
/// again (readers move back to copy 0) and rewrites copy 1. Each step is one map update
/// (one syscall, which the kernel performs whole), so a program always copies a config that
/// was written in full, and never waits. This agent is the only writer.
pub struct ConfigCarrier<T: Record + 'static> {
    slots: Array<MapData, Carrier<T>>,
    latch: Latch,
}

/// The carrier's latch sequence (`config_seq`), the part of a carrier that does not depend
/// on the config struct (kept out of the generic code: one copy in the binary).
struct Latch {
    seq: Array<MapData, u64>,
    /// The sequence as this writer last set it (the map starts at 0).
    current: u64,
}

impl Latch {
    fn open(seq: aya::maps::Map) -> Result<Self, String> {
        let seq = Array::try_from(seq).map_err(|e| format!("config_seq map does not match this agent's ABI: {e}"))?;
        let current = seq.get(&0, 0).map_err(|e| format!("reading config_seq: {e}"))?;
        Ok(Self { seq, current })
    }

    /// Moves readers to the other copy; returns the copy they no longer read.
    fn advance(&mut self) -> Result<u32, String> {
        let next = self.current + 1;
        self.seq.set(0, next, 0).map_err(|e| format!("writing config_seq: {e}"))?;
        self.current = next;
        Ok(1 - (next & 1) as u32)
    }
}

fn slot_error(idle: u32, e: aya::maps::MapError) -> String {
    format!("writing config copy {idle}: {e}")
}

impl<T: Record + 'static> ConfigCarrier<T> {
    pub fn from_maps(slots: aya::maps::Map, seq: aya::maps::Map) -> Result<Self, String> {
        let slots = Array::try_from(slots).map_err(|e| format!("config map does not match this agent's ABI: {e}"))?;
        Ok(Self { slots, latch: Latch::open(seq)? })
    }

    /// Writes `value` so that every later program run judges with it. On an error the
    /// programs keep judging with one whole config (the old one, or the new one if only the
    /// last copy failed): the sequence always names a copy that was written in full.
    pub fn write(&mut self, value: T) -> Result<(), String> {
        for _ in 0..2 {
            // Readers now use the other copy: rewrite this one.
            let idle = self.latch.advance()?;
            self.slots.set(idle, Carrier(value), 0).map_err(|e| slot_error(idle, e))?;
        }
        Ok(())
    }
}

/// An error with its chain of causes ("map error: failed to create map `x`: Operation not
/// permitted"): the cause is usually what an operator can act on.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Why an object did not load or a program did not attach, told by the error's type (not
/// its wording), each with a message an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The kernel refused a BPF operation for want of privilege (capabilities, a seccomp
    /// filter or a security module; the message says which is likely).
    NotPermitted(String),
    /// The kernel exposes no BTF, which CO-RE relocation and typed tracepoints need.
    NoBtf(String),
    /// The object, or one of its maps, was built for another ABI than this agent's.
    AbiMismatch(String),
    /// This kernel lacks the hook (tracepoint) a program attaches to.
    MissingHook(String),
    /// Anything else (a verifier verdict, a malformed object, …).
    Other(String),
}

impl LoadError {
    /// A stable snake_case name of the variant (the status JSON's `reason_kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotPermitted(_) => "not_permitted",
            Self::NoBtf(_) => "no_btf",
            Self::AbiMismatch(_) => "abi_mismatch",
            Self::MissingHook(_) => "missing_hook",
            Self::Other(_) => "other",
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Self::NotPermitted(m) | Self::NoBtf(m) | Self::AbiMismatch(m) | Self::MissingHook(m) | Self::Other(m) => m,
        }
    }

    /// The same kind of error with another message.
    pub fn with_message(&self, message: String) -> Self {
        match self {
            Self::NotPermitted(_) => Self::NotPermitted(message),
            Self::NoBtf(_) => Self::NoBtf(message),
            Self::AbiMismatch(_) => Self::AbiMismatch(message),
            Self::MissingHook(_) => Self::MissingHook(message),
            Self::Other(_) => Self::Other(message),
        }
    }

    /// Classifies an aya error by its chain of causes: a refused syscall (EPERM, EACCES)
    /// is a permission problem; without kernel BTF, anything else is the missing BTF's
    /// doing; the rest is `Other`. `context` prefixes the message.
    fn from_aya(context: &str, e: &(dyn std::error::Error + 'static), btf_missing: bool) -> Self {
        let text = format!("{context}{}", with_causes(e));
        let mut cause: Option<&dyn std::error::Error> = Some(e);
        while let Some(c) = cause {
            let errno = c.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error);
            if errno == Some(libc::EPERM) || errno == Some(libc::EACCES) {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                return Self::NotPermitted(format!("{text} ({})", permission_hint(&status)));
            }
            cause = c.source();
        }
        if btf_missing {
            Self::NoBtf(format!(
                "{text} (this kernel exposes no BTF at /sys/kernel/btf/vmlinux; CO-RE needs CONFIG_DEBUG_INFO_BTF=y)"
            ))
        } else {
            Self::Other(text)
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for LoadError {}

impl From<&str> for LoadError {
    fn from(message: &str) -> Self {
        Self::Other(message.to_string())
    }
}

/// A field of a /proc/<pid>/status text, trimmed.
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(str::trim))
}

/// The effective capability set of a /proc/<pid>/status text (bit n is capability n).
pub(crate) fn effective_capabilities(status: &str) -> u64 {
    status_field(status, "CapEff").and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0)
}

/// Why the kernel refused a BPF operation, from this process's /proc/self/status: missing
/// capabilities, or (holding them) a seccomp filter, as container runtimes install, whose
/// default profile may refuse bpf() and perf_event_open() without CAP_SYS_ADMIN.
fn permission_hint(status: &str) -> String {
    const CAP_BPF: u32 = 39;
    const CAP_PERFMON: u32 = 38;
    const CAP_NET_ADMIN: u32 = 12;
    let field = |name: &str| status_field(status, name);
    let effective = effective_capabilities(status);
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| name)
        .collect();
    if !missing.is_empty() {
        format!("missing {}: run as root, or with CAP_BPF and CAP_PERFMON (kernel 5.8+)", missing.join(" and "))
    } else if field("Seccomp").is_some_and(|mode| mode != "0") {
        "CAP_BPF and CAP_PERFMON are held, but a seccomp filter is active: a container runtime's default profile \
         may allow bpf() and perf_event_open() only with CAP_SYS_ADMIN; run the agent with seccomp Unconfined, \
         or add CAP_SYS_ADMIN"
            .to_string()
    } else if effective & (1u64 << CAP_NET_ADMIN) == 0 {
        "CAP_BPF and CAP_PERFMON are held, but not CAP_NET_ADMIN, which the kernel requires to load and attach \
         network program types (the DNS observer's cgroup socket and packet programs)"
            .to_string()
    } else {
        "CAP_BPF and CAP_PERFMON are held and no seccomp filter is active: a security module (LSM) may refuse it"
            .to_string()
    }
}

/// Loads an object built for kernel ABI `abi_version`: the loader sets the object's
/// `tapio_abi_v<version>` global by name, so an object of another ABI (which lacks that
/// name) is refused here, loudly, before anything runs.
pub fn load_object(object: &[u8], btf: Option<&Btf>, abi_version: u32) -> Result<Ebpf, LoadError> {
    load_object_with(object, btf, abi_version, None, &[], &[])
}

/// [`load_object`], with the `events` array of per-CPU rings sized to `per_cpu_slots` and
/// each of `sized_maps` (name, entries) to its entries. A sized map whose object declares a
/// `<map>_mask` global (a table its programs index by a hash: `entries` is then a power of
/// two) gets that global set to `entries - 1`. Each of `globals` (name, value) is set, if
/// the object declares it.
fn load_object_with(
    object: &[u8],
    btf: Option<&Btf>,
    abi_version: u32,
    per_cpu_slots: Option<u32>,
    sized_maps: &[(&'static str, u32)],
    globals: &[(&'static str, u32)],
) -> Result<Ebpf, LoadError> {
    let abi_symbol = format!("tapio_abi_v{abi_version}");
    let mut loader = EbpfLoader::new();
    loader.btf(btf).override_global(abi_symbol.as_str(), &abi_version, true);
    if let Some(slots) = per_cpu_slots {
        loader.map_max_entries(tapio_bpf::maps::EVENTS, slots);
    }
    let masks: Vec<(String, u32)> =
        sized_maps.iter().map(|&(name, entries)| (format!("{name}_mask"), entries.wrapping_sub(1))).collect();
    for &(name, entries) in sized_maps {
        loader.map_max_entries(name, entries);
    }
    for (global, mask) in &masks {
        loader.override_global(global.as_str(), mask, false);
    }
    for (global, value) in globals {
        loader.override_global(global, value, false);
    }
    loader.load(object).map_err(|e| match &e {
        EbpfError::ParseError(aya_obj::ParseError::SymbolNotFound { name }) if *name == abi_symbol => {
            LoadError::AbiMismatch(format!("object was built for another kernel ABI (it lacks {abi_symbol}): {e}"))
        }
        _ => LoadError::from_aya("loading eBPF object: ", &e, btf.is_none()),
    })
}

/// Loads `object`, writes `initial` into its config carrier, attaches `hooks`, and returns
/// what attached with the carrier. Fails only when nothing usable remains.
pub fn load<T: Record + 'static>(
    object: &[u8],
    btf: Option<&Btf>,
    hooks: &[(&'static str, Hook)],
    initial: T,
) -> Result<(Loaded, ConfigCarrier<T>), LoadError> {
    load_with(object, btf, hooks, EventRings::Shared, &[], &[], |maps| {
        let mut carrier = ConfigCarrier::from_maps(maps.slots, maps.seq).map_err(LoadError::AbiMismatch)?;
        carrier.write(initial).map_err(LoadError::Other)?;
        Ok(carrier)
    })
}

/// Loads an observer's kernel half: its object, its carrier holding `config` at
/// `generation`, and the programs attached.
pub fn load_kernel_half(
    kernel: &KernelHalf,
    btf: Option<&Btf>,
    config: &tapio_wire::CompiledConfig,
    generation: u32,
    facts: RuntimeFacts,
) -> Result<(Loaded, Box<dyn KernelCarrier>), LoadError> {
    let sized_maps = (kernel.sized_maps)();
    let globals = (kernel.globals)();
    load_with(&kernel.object.inflate(), btf, &(kernel.hooks)(), kernel.event_rings, &sized_maps, &globals, |maps| {
        let mut carrier = (kernel.carrier)(maps, facts)?;
        carrier.write(config, generation).map_err(LoadError::Other)?;
        Ok(carrier)
    })
}

/// Loads `object`, opens its config carrier with `open` (which writes the first config:
/// programs are inert until it is there), then attaches `hooks`.
fn load_with<C>(
    object: &[u8],
    btf: Option<&Btf>,
    hooks: &[(&'static str, Hook)],
    event_rings: EventRings,
    sized_maps: &[(&'static str, u32)],
    globals: &[(&'static str, u32)],
    open: impl FnOnce(CarrierMaps) -> Result<C, LoadError>,
) -> Result<(Loaded, C), LoadError> {
    let cpus = match event_rings {
        EventRings::Shared => None,
        // A slot for every CPU id the kernel may ever run a program on.
        EventRings::PerCpu { .. } => Some(tapio_util::cpus::possible_slots().map_err(LoadError::Other)?),
    };
    let mut ebpf = load_object_with(object, btf, tapio_bpf::ABI_VERSION, cpus, sized_maps, globals)?;
    // The rings are in place before any program runs: a record never finds its CPU's slot
    // empty.
    let events = ebpf.take_map(tapio_bpf::maps::EVENTS).ok_or("object has no events map")?;
    let (rings, ring_slots) = open_event_rings(events, event_rings, cpus.unwrap_or(1))?;
    let slots = ebpf.take_map(tapio_bpf::maps::CONFIG).ok_or("object has no config map")?;
    let seq = ebpf.take_map(tapio_bpf::maps::CONFIG_SEQ).ok_or("object has no config_seq map")?;
    let carrier = open(CarrierMaps { slots, seq })?;

    let mut programs = Vec::with_capacity(hooks.len());
    for &(name, hook) in hooks {
        let result = attach(&mut ebpf, btf, name, hook);
        programs.push(ProgramStatus { program: name, hook, result });
    }
    if let Some(first) =
        programs.iter().find_map(|p| p.result.as_ref().err()).filter(|_| programs.iter().all(|p| p.result.is_err()))
    {
        let reasons: Vec<String> =
            programs.iter().filter_map(|p| p.result.as_ref().err().map(|e| format!("{}: {e}", p.hook))).collect();
        // Nothing attached: the first program's reason is the observer's kind of failure.
        return Err(first.with_message(format!("no program attached ({})", reasons.join("; "))));
    }
    let counters = ebpf
        .take_map(tapio_bpf::maps::COUNTERS)
        .ok_or("object has no counters map")
        .and_then(|m| PerCpuArray::try_from(m).map_err(|_| "counters map has the wrong type"))?;
    let drain_asleep = ebpf
        .take_map(tapio_bpf::maps::DRAIN_ASLEEP)
        .ok_or("object has no drain_asleep map")
        .and_then(|m| Array::try_from(m).map_err(|_| "drain_asleep map has the wrong type"))?;
    let program_fds =
        ebpf.programs().filter_map(|(_, p)| p.fd().ok()).map(ProgramFd::try_clone).collect::<Result<_, _>>().ok();
    Ok((Loaded { ebpf: Some(ebpf), rings, ring_slots, counters, drain_asleep, programs, program_fds }, carrier))
}

type OpenedRings = (Vec<Ring>, Option<ArrayOfMaps<MapData, MapData>>);

/// The object's event rings from its `events` map, as the observer declares it holds them:
/// the one ring, or a ring created for each of `cpus` CPUs and put in its slot.
fn open_event_rings(events: Map, declared: EventRings, cpus: u32) -> Result<OpenedRings, LoadError> {
    let ring_error = |e: aya::maps::MapError| LoadError::Other(format!("creating a per-CPU ring: {e}"));
    match (declared, events) {
        (EventRings::Shared, Map::RingBuf(events)) => {
            let ring_error = |e: String| LoadError::Other(format!("events ring: {e}"));
            let size = events.info().map_err(|e| ring_error(e.to_string()))?.max_entries();
            Ok((vec![Ring::new(events, size).map_err(|e| ring_error(e.to_string()))?], None))
        }
        (EventRings::PerCpu { total_bytes }, events @ Map::ArrayOfMaps(_)) => {
            let mut slots: ArrayOfMaps<MapData, MapData> = ArrayOfMaps::try_from(events)
                .map_err(|e| LoadError::AbiMismatch(format!("events array of rings: {e}")))?;
            let page = u32::try_from(container::classify::PageSize::of_this_system().0).unwrap_or(4096);
            let bytes = tapio_bpf::per_cpu_ring_bytes(total_bytes, cpus, page);
            let mut rings = Vec::with_capacity(cpus as usize);
            for cpu in 0..cpus {
                let definition = aya_obj::Map::new_from_params(
                    aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                    0,
                    0,
                    bytes,
                    0,
                );
                let ring = MapData::create(definition, tapio_bpf::maps::EVENTS, None).map_err(ring_error)?;
                slots.set(cpu, &ring, 0).map_err(ring_error)?;
                rings.push(
                    Ring::new(ring, bytes).map_err(|e| LoadError::Other(format!("mapping a per-CPU ring: {e}")))?,
                );
            }
            Ok((rings, Some(slots)))
        }
        (declared, events) => {
            let kind = match events {
                Map::RingBuf(_) => "a ring buffer",
                Map::ArrayOfMaps(_) => "an array of maps",
                _ => "neither a ring buffer nor an array of rings",
            };
            Err(LoadError::AbiMismatch(format!("the events map is {kind}; the observer expects {declared:?}")))
        }
    }
}

/// Loads program `name` of `ebpf` and attaches it to `hook` (also the bench's way to place
/// its empty floor programs exactly where the agent's go).
pub fn attach(ebpf: &mut Ebpf, btf: Option<&Btf>, name: &str, hook: Hook) -> Result<(), LoadError> {
    let program =
        ebpf.program_mut(name).ok_or_else(|| LoadError::AbiMismatch(format!("program {name} missing from object")))?;
    let missing = btf.is_none();
    match hook {
        Hook::TracePoint(category, tracepoint) => {
            let tp: &mut TracePoint = program.try_into().map_err(|e| LoadError::Other(format!("{e}")))?;
            tp.load().map_err(|e| LoadError::from_aya(&format!("loading {name}: "), &e, missing))?;
            tp.attach(category, tracepoint).map_err(|e| attach_error(category, tracepoint, &e, missing))?;
        }
        Hook::BtfTracePoint(tracepoint) => {
            let btf = btf.ok_or_else(|| LoadError::NoBtf("BTF-typed tracepoints need kernel BTF".into()))?;
            let tp: &mut BtfTracePoint = program.try_into().map_err(|e| LoadError::Other(format!("{e}")))?;
            tp.load(tracepoint, btf).map_err(|e| btf_load_error(name, tracepoint, &e))?;
            tp.attach().map_err(|e| LoadError::from_aya("attaching: ", &e, false))?;
        }
        Hook::CgroupSkb(egress) => {
            let root = cgroup2_root().map_err(LoadError::MissingHook)?;
            let p: &mut CgroupSkb = program.try_into().map_err(|e| LoadError::Other(format!("{e}")))?;
            p.load().map_err(|e| LoadError::from_aya(&format!("loading {name}: "), &e, missing))?;
            let direction = if egress { CgroupSkbAttachType::Egress } else { CgroupSkbAttachType::Ingress };
            // A bpf_link (every kernel Tapio supports has them) runs next to the programs
            // others attached to the root (systemd, a CNI); link_create takes no attach
            // flags, which is what aya sends for `Single`.
            p.attach(&root, direction, CgroupAttachMode::Single)
                .map_err(|e| LoadError::from_aya("attaching to the cgroup2 root: ", &e, false))?;
        }
        Hook::CgroupSockAddr => {
            let root = cgroup2_root().map_err(LoadError::MissingHook)?;
            let p: &mut CgroupSockAddr = program.try_into().map_err(|e| LoadError::Other(format!("{e}")))?;
            p.load().map_err(|e| LoadError::from_aya(&format!("loading {name}: "), &e, missing))?;
            p.attach(&root, CgroupAttachMode::Single)
                .map_err(|e| LoadError::from_aya("attaching to the cgroup2 root: ", &e, false))?;
        }
    }
    Ok(())
}

/// Why a classic tracepoint did not attach: its id file is absent when this kernel has no
/// such tracepoint.
fn attach_error(category: &str, tracepoint: &str, e: &ProgramError, btf_missing: bool) -> LoadError {
    match e {
        ProgramError::TracePointError(TracePointError::FileError { io_error, .. })
            if io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            LoadError::MissingHook(format!(
                "this kernel has no {category}/{tracepoint} tracepoint (attaching: {})",
                with_causes(e)
            ))
        }
        _ => LoadError::from_aya("attaching: ", e, btf_missing),
    }
}

/// Why a BTF-typed tracepoint program did not load: a tracepoint newer than the kernel
/// (its `btf_trace_<name>` type is absent) is not a verifier verdict.
fn btf_load_error(program: &str, tracepoint: &str, e: &ProgramError) -> LoadError {
    match e {
        ProgramError::Btf(BtfError::UnknownBtfTypeName { type_name })
            if *type_name == format!("btf_trace_{tracepoint}") =>
        {
            LoadError::MissingHook(format!("this kernel has no {tracepoint} tracepoint ({})", with_causes(e)))
        }
        _ => LoadError::from_aya(&format!("loading {program}: "), e, false),
    }
}

/// The root of the node's cgroup2 hierarchy (`/sys/fs/cgroup` on a pure cgroup2 node,
/// `/sys/fs/cgroup/unified` on a hybrid one), from this process's mount table. Programs
/// attached there run for every socket on the node, whatever its network namespace.
pub fn cgroup2_root() -> Result<std::fs::File, String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("reading mountinfo: {e}"))?;
    // Only the hierarchy's root lacks `cgroup.type` (the kernel puts it on every other
    // cgroup): that tells the node's root from a cgroup namespace's own root.
    let path = cgroup2_mounts(&mounts)
        .into_iter()
        .find(|p| !std::path::Path::new(p).join("cgroup.type").exists())
        .ok_or("no cgroup2 hierarchy root is mounted (a cgroup namespace's sub-tree sees only its own sockets)")?;
    std::fs::File::open(&path).map_err(|e| format!("opening {path}: {e}"))
}

/// The mount points of cgroup2 mounts that may be the hierarchy's root: a mount of `/`,
/// or, seen from a private cgroup namespace (Kubernetes' default on cgroup v2), a bind of
/// the node's hierarchy, whose root lies above the namespace's and reads `/..`, `/../..`.
/// A mount of a sub-tree below the namespace's root is never the root.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<String> {
    tapio_util::mountinfo::parse(mountinfo)
        .filter(|m| m.fstype == "cgroup2")
        .filter(|m| m.root_escaped == "/" || m.root_escaped.split('/').skip(1).all(|c| c == ".."))
        .map(|m| m.mount_point().to_string_lossy().into_owned())
        .collect()
}

/// The state implied by per-program results.
pub fn state_of(programs: &[ProgramStatus]) -> ObserverState {
    let failed: Vec<String> = programs
        .iter()
        .filter_map(|p| p.result.as_ref().err().map(|e| format!("{} not attached: {e}", p.hook)))
        .collect();
    if failed.is_empty() {
        ObserverState::Running
    } else {
        ObserverState::Degraded(failed.join("; "))
    }
}

/// Sums the per-CPU kernel counters of `observer` (the common ones and `own`) into
/// `counters`, with the kernel's recursion misses of its programs where it reports them.
pub fn read_kernel_counters(
    observer: &'static str,
    own: &'static [(u32, &'static str)],
    loaded: &Loaded,
    counters: &Counters,
) {
    let own = own.iter().copied();
    for (index, name) in tapio_bpf::COUNTER_NAMES.into_iter().chain(own) {
        if let Ok(values) = loaded.counters.get(&index, 0) {
            counters.set_kernel(observer, name, values.iter().sum());
        }
    }
    let programs = loaded.program_fds.iter().flatten();
    if let Some(misses) = recursion::summed(programs.map(|p| recursion::of_program(p.as_fd()))) {
        counters.set_kernel(observer, crate::counters::RECURSION_MISSES, misses);
    }
}

/// The userspace half of an observer: decodes and classifies its records.
pub trait Classifier: Send {
    /// Decodes one record; a decode error is counted as malformed by the caller.
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError>;
}

/// A running observer as the drain thread owns it.
pub struct Running {
    pub name: &'static str,
    /// Its own kernel counter slots ([`KernelHalf::counters`]).
    pub counters: &'static [(u32, &'static str)],
    pub loaded: Loaded,
    pub classifier: Box<dyn Classifier>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose cause is an OS error, as aya's map and program errors are.
    #[derive(Debug)]
    struct Caused(std::io::Error);

    impl fmt::Display for Caused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("failed to create map `x`")
        }
    }

    impl std::error::Error for Caused {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// The registry is what the runtime loads: every observer once, and every program a
    /// kernel half attaches is in its object, with the maps every carrier and drain needs.
    #[test]
    fn every_registered_observer_is_whole() {
        let names: std::collections::BTreeSet<&str> = REGISTRY.iter().map(|o| o.name).collect();
        assert_eq!(names.len(), REGISTRY.len(), "observer names are unique");
        assert!(REGISTRY.iter().any(|o| o.kernel.is_none()), "an observer without eBPF is possible (node)");
        for o in REGISTRY {
            assert_eq!(find(o.name).map(|f| f.name), Some(o.name));
            assert!((o.enabled)(&tapio_wire::CompiledConfig::default()), "{} is on by default", o.name);
            let Some(kernel) = &o.kernel else { continue };
            let object = aya_obj::Object::parse(&kernel.object.inflate()).unwrap_or_else(|e| panic!("{}: {e}", o.name));
            for (program, hook) in (kernel.hooks)() {
                assert!(object.programs.contains_key(program), "{}: {program} ({hook}) is not in its object", o.name);
            }
            for map in [
                tapio_bpf::maps::CONFIG,
                tapio_bpf::maps::CONFIG_SEQ,
                tapio_bpf::maps::EVENTS,
                tapio_bpf::maps::COUNTERS,
            ] {
                assert!(object.maps.contains_key(map), "{}: no {map} map", o.name);
            }
            for name in kernel.correlation_counters {
                assert!(
                    kernel.counters.iter().any(|(_, n)| n == name),
                    "{}: {name} is not one of its counters",
                    o.name
                );
            }
        }
    }

    #[test]
    fn load_errors_are_told_by_type_not_by_wording() {
        let eperm = Caused(std::io::Error::from_raw_os_error(libc::EPERM));
        let e = LoadError::from_aya("loading: ", &eperm, false);
        assert_eq!(e.kind(), "not_permitted", "{e}");
        assert!(e.message().starts_with("loading: failed to create map `x`"), "{e}");
        let eacces = Caused(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(LoadError::from_aya("", &eacces, true), LoadError::NotPermitted(_)));
        // The same wording with another cause is not a permission problem.
        let einval = Caused(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(LoadError::from_aya("", &einval, false), LoadError::Other(_)));
        assert!(matches!(LoadError::from_aya("", &einval, true), LoadError::NoBtf(_)));

        let unknown = ProgramError::Btf(BtfError::UnknownBtfTypeName { type_name: "btf_trace_block_io_start".into() });
        let e = btf_load_error("tapio_block_io_start", "block_io_start", &unknown);
        assert_eq!(e.kind(), "missing_hook");
        assert!(e.message().starts_with("this kernel has no block_io_start tracepoint"), "{e}");
        // Another missing type is not this hook missing.
        let other = ProgramError::Btf(BtfError::UnknownBtfTypeName { type_name: "task_struct".into() });
        assert_eq!(btf_load_error("p", "block_io_start", &other).kind(), "other");

        let absent = ProgramError::TracePointError(TracePointError::FileError {
            filename: "/sys/kernel/tracing/events/tcp/tcp_x/id".into(),
            io_error: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(attach_error("tcp", "tcp_x", &absent, false).kind(), "missing_hook");
        assert_eq!(LoadError::Other("x".into()).with_message("y".into()), LoadError::Other("y".into()));
    }

    #[test]
    fn finds_the_cgroup2_root_on_hybrid_and_pure_nodes() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      37 35 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mounts(hybrid), ["/sys/fs/cgroup/unified"]);
        let pure = "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mounts(pure), ["/sys/fs/cgroup"]);
        let namespaced = "30 22 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(cgroup2_mounts(namespaced).is_empty(), "a sub-tree is not the root");
        // The node's hierarchy bound into a container with a private cgroup namespace.
        let bound = "40 30 0:26 /../../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mounts(bound), ["/sys/fs/cgroup"]);
        assert!(cgroup2_mounts("").is_empty());
    }

    const BPF_PERFMON: &str = "000000c000000000";

    fn status(cap_eff: &str, seccomp: &str) -> String {
        format!("Name:\ttapio-agent\nCapEff:\t{cap_eff}\nNoNewPrivs:\t1\nSeccomp:\t{seccomp}\n")
    }

    #[test]
    fn names_the_missing_capabilities() {
        let hint = permission_hint(&status("0000000000000000", "0"));
        assert!(hint.starts_with("missing CAP_BPF and CAP_PERFMON"), "{hint}");
        let hint = permission_hint(&status("0000008000000000", "2"));
        assert!(hint.starts_with("missing CAP_PERFMON:"), "{hint}");
    }

    #[test]
    fn blames_a_seccomp_filter_when_the_capabilities_are_held() {
        let hint = permission_hint(&status(BPF_PERFMON, "2"));
        assert!(hint.contains("seccomp filter is active"), "{hint}");
        assert!(hint.contains("CAP_SYS_ADMIN"), "{hint}");
    }

    #[test]
    fn names_cap_net_admin_for_network_program_types() {
        let hint = permission_hint(&status(BPF_PERFMON, "0"));
        assert!(hint.contains("not CAP_NET_ADMIN"), "{hint}");
    }

    #[test]
    fn otherwise_points_at_a_security_module() {
        let hint = permission_hint(&status("000000c000001000", "0"));
        assert!(hint.contains("LSM"), "{hint}");
    }
}
