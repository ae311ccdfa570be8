//! Storage observer (userspace half): the hooks it attaches, its classifier, and the upkeep
//! of its in-flight table: slots taken back from request structs that went idle, and
//! requests whose completion never comes aged out.

pub mod classify;
pub mod disks;
pub mod table_size;

use super::poll::{PollContext, Poller};
use super::{
    open_carrier, CarrierLayout, Classifier, EventRings, Follower, Hook, KernelHalf, Observer, RuntimeFacts, Start,
    Userspace,
};
use crate::knobs::LocalKnobs;
use crate::observers::container::classify::PageSize;
use crate::ring::Mapping;
use crate::stamp::{Stamper, Verdict};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use disks::DiskNames;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tapio_bpf::abi::{
    tapio_sto_config, tapio_sto_inflight, TAPIO_STO_EN_ERRORS, TAPIO_STO_EN_LATENCY, TAPIO_STO_IF_COMPLETED,
    TAPIO_STO_INFLIGHT_ENTRIES, TAPIO_STO_OWNER_RETIRED,
};
use tapio_bpf::storage::{INFLIGHT_CLAIMS_MAP, INFLIGHT_FACTS_MAP, INFLIGHT_FULL_MAP, INFLIGHT_MAP};
use tapio_wire::CompiledConfig;

pub const NAME: &str = "storage";

/// The storage observer: failed and slow block I/O, judged in the kernel, with the ageing
/// of its in-flight table on the poll thread.
pub static OBSERVER: Observer = Observer {
    name: NAME,
    enabled: |c| c.storage.enabled,
    kernel: Some(KernelHalf {
        object: &tapio_bpf::storage::OBJECT,
        hooks,
        carrier: open_carrier::<tapio_sto_config>,
        classifier: |_| Box::new(StorageClassifier::new()),
        counters: tapio_bpf::storage::COUNTER_NAMES,
        correlation_counters: &[
            tapio_bpf::storage::AMBIGUOUS_INFLIGHT_IO,
            tapio_bpf::storage::UNMATCHED_COMPLETION,
            tapio_bpf::storage::INFLIGHT_REPLACED,
            tapio_bpf::storage::UNISSUED_FLUSH_FAILURE,
        ],
        event_rings: EventRings::Shared,
        sized_maps,
        globals,
    }),
    userspace: start_sweeper,
};

impl CarrierLayout for tapio_sto_config {
    fn build(config: &CompiledConfig, generation: u32, facts: &RuntimeFacts) -> Self {
        let st = &config.storage;
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
        c.capture_memcg = u32::from(facts.capture_memcg);
        c.latency_warning_ns = st.latency_warning_ms.saturating_mul(1_000_000);
        c.latency_critical_ns = st.latency_critical_ms.saturating_mul(1_000_000);
        c
    }
}

/// The age at which an in-flight request leaves the table: `storage.inflight_max_age_secs`,
/// but never less than `latency_critical_ms` plus a second. A request is judged only at its
/// completion, so one aged out earlier could never be the latency spike the thresholds
/// describe: a threshold above the age would be accepted and do nothing.
pub fn inflight_max_age_ns(local: &LocalKnobs, config: &CompiledConfig) -> u64 {
    let configured = u64::from(local.inflight_max_age_secs) * 1_000_000_000;
    let judged = config.storage.latency_critical_ms.saturating_add(1_000).saturating_mul(1_000_000);
    configured.max(judged)
}

/// The in-flight age limit the sweeper reads, following the critical threshold of every
/// applied config.
pub struct InflightMaxAge {
    ns: AtomicU64,
    local: LocalKnobs,
}

impl InflightMaxAge {
    pub fn new(local: LocalKnobs, config: &CompiledConfig) -> Arc<Self> {
        Arc::new(Self { ns: AtomicU64::new(inflight_max_age_ns(&local, config)), local })
    }

    pub fn get(&self) -> u64 {
        self.ns.load(Ordering::Relaxed)
    }
}

impl Follower for InflightMaxAge {
    fn follow(&self, config: &CompiledConfig, _generation: u32) {
        self.ns.store(inflight_max_age_ns(&self.local, config), Ordering::Relaxed);
    }
}

/// The bit of the flush-sequence flag in a request's flags, where the kernel numbers it
/// in an enum CO-RE cannot name (6.12 to 6.14: `storage.bpf.c`, `rqf_flush_seq_bit`).
/// Elsewhere the global keeps its default or CO-RE's value wins.
fn globals() -> Vec<(&'static str, u32)> {
    match tapio_bpf::kernel_btf::vmlinux_enumerator("__RQF_FLUSH_SEQ").map(u32::try_from) {
        Some(Ok(bit)) if bit < 32 => {
            log::info!("storage: the kernel's BTF numbers __RQF_FLUSH_SEQ {bit} (the flush-sequence bit of rq_flags)");
            vec![("rqf_flush_seq_bit", bit)]
        }
        Some(_) => {
            log::warn!(
                "storage: this kernel's __RQF_FLUSH_SEQ is not a bit of rq_flags; flush sequences may be misread"
            );
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// The in-flight table (its slots, their claims and their facts), sized for this node's
/// disks ([`table_size`]).
fn sized_maps() -> Vec<(&'static str, u32)> {
    let max = TAPIO_STO_INFLIGHT_ENTRIES;
    let enough = u64::from(max);
    let entries = match table_size::request_structs(std::path::Path::new("/sys/block"), enough) {
        Some(structs) => {
            let entries = table_size::inflight_entries(structs, max);
            let counted = if structs >= enough { "at least " } else { "" };
            log::info!("storage: in-flight table of {entries} entries, for {counted}{structs} block request structs");
            entries
        }
        None => {
            log::warn!("storage: /sys/block is unreadable: the in-flight table takes its largest size, {max} entries");
            max
        }
    };
    vec![(INFLIGHT_MAP, entries), (INFLIGHT_CLAIMS_MAP, entries), (INFLIGHT_FACTS_MAP, entries)]
}

/// The userspace half: the sweeper of the in-flight table, which it takes from the object.
fn start_sweeper(start: &mut Start<'_>) -> Result<Userspace, String> {
    let mut take = |name: &str| {
        start.ebpf.as_mut().and_then(|e| e.take_map(name)).ok_or(format!("storage object has no {name} map"))
    };
    let slots = take(INFLIGHT_MAP)?;
    let claims = take(INFLIGHT_CLAIMS_MAP)?;
    let ran_full = take(INFLIGHT_FULL_MAP)?;
    let max_age = InflightMaxAge::new(*start.local, start.config);
    let sweeper = InflightSweeper::new(slots, claims, ran_full, Arc::clone(&max_age))?;
    Ok(Userspace { pollers: vec![Box::new(sweeper)], followers: vec![max_age], state: None })
}

/// The userspace correlation drop reason for entries aged out of the in-flight table.
pub const INFLIGHT_EXPIRED: &str = "inflight_expired";

pub fn hooks() -> Vec<(&'static str, Hook)> {
    tapio_bpf::storage::BTF_TRACEPOINTS.iter().map(|&(prog, tp)| (prog, Hook::BtfTracePoint(tp))).collect()
}

pub struct StorageClassifier {
    disks: DiskNames,
    numbering: classify::StatusNumbering,
}

impl StorageClassifier {
    pub fn new() -> Self {
        let numbering = classify::StatusNumbering::of(aya::util::KernelVersion::current().ok());
        Self { disks: DiskNames::system(), numbering }
    }
}

impl Default for StorageClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Classifier for StorageClassifier {
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError> {
        let ev = tapio_bpf::storage::decode(record)?;
        let disk = self.disks.name(ev.dev_major, ev.dev_minor);
        Ok(classify::classify(&ev, disk.as_deref(), self.numbering, stamper))
    }
}

/// Whether a slot last touched at `seen_ns` (its stamp: the request's last issue, or its
/// submission if not issued) is older than `max_age_ns` at `now_ns`.
pub fn expired(seen_ns: u64, now_ns: u64, max_age_ns: u64) -> bool {
    now_ns.saturating_sub(seen_ns) > max_age_ns
}

/// The kernel's in-flight slots, mapped into the agent: read, and marked, in place (a pass
/// over every slot costs no system call; the kernel's programs write the same memory).
pub struct SlotTable {
    mapping: Mapping,
    entries: u32,
    /// The map the mapping belongs to, kept open as long as the mapping is used.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory, only ever accessed through atomics.
unsafe impl Send for SlotTable {}

/// Offsets in a slot of the words the sweeper reads: each an aligned atomic word.
const OWNER_AT: usize = std::mem::offset_of!(tapio_sto_inflight, owner);
const FLAGS_AT: usize = std::mem::offset_of!(tapio_sto_inflight, flags);
const STAMP_AT: usize = std::mem::offset_of!(tapio_sto_inflight, stamp_ns);
const SLOT_BYTES: usize = std::mem::size_of::<tapio_sto_inflight>();

impl SlotTable {
    /// Maps the "inflight" array (created `BPF_F_MMAPABLE`), of the size the kernel reports.
    pub fn new(map: aya::maps::Map) -> Result<Self, String> {
        let aya::maps::Map::Array(data) = map else {
            return Err("the inflight map is not an array: not this agent's object".to_string());
        };
        let info = data.info().map_err(|e| format!("inflight map info: {e}"))?;
        if info.value_size() as usize != SLOT_BYTES {
            return Err(format!("inflight slots of {} bytes, this agent's are {SLOT_BYTES}", info.value_size()));
        }
        let entries = info.max_entries();
        // The kernel lays the slots out from a page boundary and maps whole pages of them.
        let page = usize::try_from(PageSize::of_this_system().0).unwrap_or(4096);
        let len = (entries as usize * SLOT_BYTES).div_ceil(page) * page;
        let mapping = Mapping::new(data.fd().as_fd().as_raw_fd(), len, true, 0)
            .map_err(|e| format!("mapping the inflight slots: {e}"))?;
        Ok(Self { mapping, entries, _map: data })
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    fn word<T>(&self, idx: u32, at: usize) -> *mut T {
        debug_assert!(idx < self.entries);
        // SAFETY: within the mapping (idx < entries, and `at` within a slot).
        unsafe { self.mapping.addr().cast::<u8>().add(idx as usize * SLOT_BYTES + at).cast::<T>() }
    }

    fn owner(&self, idx: u32) -> &AtomicU64 {
        // SAFETY: an 8-aligned word of a live shared mapping (slots are page-aligned), which
        // the kernel writes only as whole words.
        unsafe { AtomicU64::from_ptr(self.word(idx, OWNER_AT)) }
    }

    fn flags(&self, idx: u32) -> u16 {
        // SAFETY: as `owner`, a 2-aligned half-word.
        unsafe { AtomicU16::from_ptr(self.word(idx, FLAGS_AT)) }.load(Ordering::Relaxed)
    }

    fn stamp_ns(&self, idx: u32) -> u64 {
        // SAFETY: as `owner`.
        unsafe { AtomicU64::from_ptr(self.word(idx, STAMP_AT)) }.load(Ordering::Relaxed)
    }
}

/// Keeps the kernel's in-flight table bounded. A slot stays its request struct's between
/// requests (the kernel reuses it in place); the sweeper takes back slots whose struct has
/// not been reused for a while, and ages out requests whose completion never came, each
/// counted as `inflight_expired`. Once a struct has found no free slot (the kernel then
/// releases slots at completion), idle slots are taken back after a second: they belong to
/// structs the node stopped using and hold room that other structs need.
///
/// Taking a slot back is two steps a pass apart, so that it never races its owner's hooks:
/// the sweeper marks the owner word (`TAPIO_STO_OWNER_RETIRED`, by compare-and-swap, so a
/// slot that changed hands meanwhile is left alone), after which no hook matches it; a hook
/// that matched it just before is done with it long before the next pass deletes the claim
/// and frees the slot. A struct whose slot was marked claims another at its next request
/// (an issue-time claim: submitter unknown; a completion then: unmatched, counted).
pub struct InflightSweeper {
    slots: SlotTable,
    claims: BpfHashMap<MapData, u32, u64>,
    ran_full: Array<MapData, u32>,
    /// Whether the table's running full has been logged (once per agent).
    ran_full_logged: bool,
    /// Follows the applied config: a new config's thresholds can lengthen it.
    max_age_ns: Arc<InflightMaxAge>,
    /// Slots marked at the previous pass, freed at this one.
    marked: Vec<u32>,
}

/// The owner word's mark on a slot being taken back.
const RETIRED: u64 = TAPIO_STO_OWNER_RETIRED as u64;

/// How often the table is swept.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// A completed request's slot is taken back once its struct has been idle this long…
const RECLAIM_IDLE_NS: u64 = 30_000_000_000;
/// … or this long once the table has run full.
const RECLAIM_IDLE_AFTER_FULL_NS: u64 = 1_000_000_000;

/// How long a completed request's slot may sit idle before it is taken back.
fn reclaim_idle_ns(table_ran_full: bool) -> u64 {
    if table_ran_full {
        RECLAIM_IDLE_AFTER_FULL_NS
    } else {
        RECLAIM_IDLE_NS
    }
}

impl InflightSweeper {
    pub fn new(
        slots: aya::maps::Map,
        claims: aya::maps::Map,
        ran_full: aya::maps::Map,
        max_age_ns: Arc<InflightMaxAge>,
    ) -> Result<Self, String> {
        let slots = SlotTable::new(slots)?;
        let claims = BpfHashMap::try_from(claims)
            .map_err(|e| format!("inflight_claims map does not match this agent's ABI: {e}"))?;
        let ran_full =
            Array::try_from(ran_full).map_err(|e| format!("inflight_full map does not match this agent's ABI: {e}"))?;
        Ok(Self { slots, claims, ran_full, ran_full_logged: false, max_age_ns, marked: Vec::new() })
    }

    /// Whether a struct found no free slot at least once (unreadable: as if not).
    fn table_ran_full(&self) -> bool {
        self.ran_full.get(&0, 0).is_ok_and(|v| v != 0)
    }

    /// Frees the slots marked at the previous pass, and marks the slots idle too long;
    /// returns how many of those held a request that never completed.
    pub fn sweep(&mut self, now_ns: u64) -> u64 {
        let ran_full = self.table_ran_full();
        if ran_full && !self.ran_full_logged {
            self.ran_full_logged = true;
            log::warn!(
                "storage: the in-flight table ({} slots) ran full: this node uses more \
                 block request structs than the table holds; completed requests now release their slots, at the \
                 cost of a claim and a release per request, and requests that found no slot are counted \
                 (inflight_table_full)",
                self.slots.entries()
            );
        }
        for idx in std::mem::take(&mut self.marked) {
            let owner = self.slots.owner(idx);
            if owner.load(Ordering::Acquire) & RETIRED == 0 {
                continue;
            }
            // The claim goes first: while the owner word is still marked no program claims
            // the slot, and once it is 0 the claim is there to be made.
            match self.claims.remove(&idx) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => owner.store(0, Ordering::Release),
                Err(_) => self.marked.push(idx),
            }
        }
        let reclaim_idle = reclaim_idle_ns(ran_full);
        let inflight_max_age = self.max_age_ns.get();
        let mut expired_count = 0;
        for idx in 0..self.slots.entries() {
            let owner = self.slots.owner(idx);
            let held = owner.load(Ordering::Acquire);
            if held == 0 || held & RETIRED != 0 {
                continue;
            }
            let completed = u32::from(self.slots.flags(idx)) & TAPIO_STO_IF_COMPLETED != 0;
            let max_age = if completed { reclaim_idle } else { inflight_max_age };
            if !expired(self.slots.stamp_ns(idx), now_ns, max_age) {
                continue;
            }
            if owner.compare_exchange(held, held | RETIRED, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            self.marked.push(idx);
            // Taking back a completed request's slot loses nothing.
            if !completed {
                expired_count += 1;
            }
        }
        expired_count
    }
}

impl Poller for InflightSweeper {
    fn name(&self) -> &'static str {
        NAME
    }

    fn interval(&self) -> Duration {
        SWEEP_EVERY
    }

    fn poll(&mut self, ctx: &mut PollContext) {
        let n = self.sweep(crate::clock::boot_now_ns());
        for _ in 0..n {
            ctx.counters.correlation_drop(NAME, INFLIGHT_EXPIRED);
        }
        if n > 0 {
            log::debug!("storage: aged out {n} in-flight requests whose completion never came");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_requests_live_long_enough_to_be_judged_critical() {
        let mut local = LocalKnobs::default();
        let mut config = CompiledConfig::default();
        assert_eq!(
            inflight_max_age_ns(&local, &config),
            600_000_000_000,
            "the configured age when it covers the thresholds"
        );
        // Both thresholds at their maximum (accepted) are still judged: a request slower
        // than the critical threshold stays in the table past it.
        config.storage.latency_warning_ms = 600_000;
        config.storage.latency_critical_ms = 3_600_000;
        assert!(inflight_max_age_ns(&local, &config) > 3_600_000_000_000);
        local.inflight_max_age_secs = 10;
        config.storage.latency_critical_ms = 60_000;
        assert_eq!(inflight_max_age_ns(&local, &config), 61_000_000_000);
        // … and the sweeper's limit follows an applied config.
        let age = InflightMaxAge::new(local, &CompiledConfig::default());
        assert_eq!(age.get(), 10_000_000_000);
        age.follow(&config, 2);
        assert_eq!(age.get(), 61_000_000_000);
    }

    #[test]
    fn the_carrier_holds_thresholds_in_ns_and_switches() {
        let mut config = CompiledConfig::default();
        let facts = RuntimeFacts::default();
        let c = tapio_sto_config::build(&config, 4, &facts);
        assert_eq!((c.hdr.generation, c.generation_check, c.hdr.abi_version), (4, 4, tapio_bpf::ABI_VERSION));
        assert_eq!((c.latency_warning_ns, c.latency_critical_ns), (100_000_000, 1_000_000_000));
        assert_eq!(c.enabled, TAPIO_STO_EN_ERRORS | TAPIO_STO_EN_LATENCY);
        config.storage.latency_spikes = false;
        assert_eq!(tapio_sto_config::build(&config, 0, &facts).enabled, TAPIO_STO_EN_ERRORS);
        config.storage.enabled = false;
        assert_eq!(tapio_sto_config::build(&config, 0, &facts).enabled, 0);
        let memcg = RuntimeFacts { capture_memcg: true, ..facts };
        assert_eq!(tapio_sto_config::build(&config, 0, &memcg).capture_memcg, 1);
    }

    #[test]
    fn slots_expire_by_their_stamp() {
        assert!(!expired(5_000, 15_000, 10_000));
        assert!(expired(5_000, 15_001, 10_000));
        assert!(!expired(20_000, 15_000, 10_000), "clock skew never expires a slot");
    }
}
