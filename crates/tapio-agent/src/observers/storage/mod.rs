//! Storage observer (userspace half): the hooks it attaches, its classifier, and the ageing
//! of in-flight requests whose completion never comes.

pub mod classify;
pub mod disks;
pub mod table_size;

use super::poll::{PollContext, Poller};
use super::{
    open_carrier, CarrierLayout, Classifier, EventRings, Follower, Hook, KernelHalf, Observer, RuntimeFacts, Start,
    Userspace,
};
use crate::config::LocalKnobs;
use crate::stamp::{Stamper, Verdict};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use aya::Pod;
use disks::DiskNames;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tapio_bpf::abi::{
    tapio_sto_config, tapio_sto_inflight, TAPIO_STO_EN_ERRORS, TAPIO_STO_EN_LATENCY, TAPIO_STO_IF_COMPLETED,
    TAPIO_STO_INFLIGHT_ENTRIES,
};
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
        ],
        event_rings: EventRings::Shared,
        sized_maps,
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

/// The in-flight table, sized for this node's disks ([`table_size`]).
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
    vec![(tapio_bpf::storage::INFLIGHT_MAP, entries)]
}

/// The userspace half: the sweeper of the in-flight table, which it takes from the object.
fn start_sweeper(start: &mut Start<'_>) -> Result<Userspace, String> {
    let mut take = |name: &str| {
        start.ebpf.as_mut().and_then(|e| e.take_map(name)).ok_or(format!("storage object has no {name} map"))
    };
    let inflight = take(tapio_bpf::storage::INFLIGHT_MAP)?;
    let ran_full = take(tapio_bpf::storage::INFLIGHT_FULL_MAP)?;
    // The size the table was created with (sized_maps), as the kernel reports it.
    let entries = match &inflight {
        aya::maps::Map::HashMap(data) => data.info().map(|info| info.max_entries()).ok(),
        _ => None,
    }
    .unwrap_or(TAPIO_STO_INFLIGHT_ENTRIES);
    let max_age = InflightMaxAge::new(*start.local, start.config);
    let sweeper = InflightSweeper::new(inflight, ran_full, entries, Arc::clone(&max_age))?;
    Ok(Userspace { pollers: vec![Box::new(sweeper)], followers: vec![max_age], state: None })
}

/// The userspace correlation drop reason for entries aged out of the in-flight table.
pub const INFLIGHT_EXPIRED: &str = "inflight_expired";

pub fn hooks() -> Vec<(&'static str, Hook)> {
    tapio_bpf::storage::BTF_TRACEPOINTS.iter().map(|&(prog, tp)| (prog, Hook::BtfTracePoint(tp))).collect()
}

pub struct StorageClassifier {
    disks: DiskNames,
}

impl StorageClassifier {
    pub fn new() -> Self {
        Self { disks: DiskNames::system() }
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
        Ok(classify::classify(&ev, disk.as_deref(), stamper))
    }
}

/// An in-flight table value, as aya reads it.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Inflight(pub tapio_sto_inflight);

// SAFETY: an ABI record: plain old data (`tapio_bpf::Record`).
unsafe impl Pod for Inflight {}

/// The moment an entry was last touched: its last issue, or its submission if not issued
/// (the kernel keeps one stamp for both).
pub fn last_seen_ns(e: &tapio_sto_inflight) -> u64 {
    e.stamp_ns
}

/// Whether an entry last touched at `seen_ns` is older than `max_age_ns` at `now_ns`.
pub fn expired(seen_ns: u64, now_ns: u64, max_age_ns: u64) -> bool {
    now_ns.saturating_sub(seen_ns) > max_age_ns
}

/// Keeps the kernel's request table bounded: reclaims the entries of completed requests
/// whose struct request has not been reused for a while (the kernel keeps them to reuse in
/// place), and ages out in-flight entries whose completion never came, each counted as
/// `inflight_expired`. Once the table has run full (the kernel then deletes entries at
/// completion), kept entries are reclaimed after a second idle: they belong to structs the
/// node stopped using and hold room that requests on other structs need.
///
/// The kernel may reuse a request struct between this reading its entry and deleting it;
/// then the fresh entry is deleted, and that request is attributed at its issue (submitter
/// unknown) or, if already issued, its completion is counted as unmatched. The window is a
/// few microseconds on a struct idle for at least `RECLAIM_IDLE`, and nothing is lost
/// silently.
pub struct InflightSweeper {
    map: BpfHashMap<MapData, u64, Inflight>,
    ran_full: Array<MapData, u32>,
    /// The table's size.
    entries: u32,
    /// Whether the table's running full has been logged (once per agent).
    ran_full_logged: bool,
    /// Follows the applied config: a new config's thresholds can lengthen it.
    max_age_ns: Arc<InflightMaxAge>,
    keys: Vec<u64>,
}

/// How often the table is scanned: one syscall or two per entry, so not often.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// A completed request's entry is reclaimed once its struct has been idle this long…
const RECLAIM_IDLE_NS: u64 = 30_000_000_000;
/// … or this long once the table has run full.
const RECLAIM_IDLE_AFTER_FULL_NS: u64 = 1_000_000_000;

/// How long a completed request's entry may sit idle before it is reclaimed.
fn reclaim_idle_ns(table_ran_full: bool) -> u64 {
    if table_ran_full {
        RECLAIM_IDLE_AFTER_FULL_NS
    } else {
        RECLAIM_IDLE_NS
    }
}

impl InflightSweeper {
    pub fn new(
        map: aya::maps::Map,
        ran_full: aya::maps::Map,
        entries: u32,
        max_age_ns: Arc<InflightMaxAge>,
    ) -> Result<Self, String> {
        let map =
            BpfHashMap::try_from(map).map_err(|e| format!("inflight map does not match this agent's ABI: {e}"))?;
        let ran_full =
            Array::try_from(ran_full).map_err(|e| format!("inflight_full map does not match this agent's ABI: {e}"))?;
        Ok(Self { map, ran_full, entries, ran_full_logged: false, max_age_ns, keys: Vec::new() })
    }

    /// Whether the kernel found the table full at least once (unreadable: as if not).
    fn table_ran_full(&self) -> bool {
        self.ran_full.get(&0, 0).is_ok_and(|v| v != 0)
    }

    /// Deletes expired entries; returns how many.
    pub fn sweep(&mut self, now_ns: u64) -> u64 {
        let ran_full = self.table_ran_full();
        if ran_full && !self.ran_full_logged {
            self.ran_full_logged = true;
            log::warn!(
                "storage: the in-flight table ({} entries) ran full: this node uses more \
                 block request structs than the table holds; completed requests now free their entries, at the \
                 cost of an insert and a delete per request, and requests that found it full are counted \
                 (inflight_table_full)",
                self.entries
            );
        }
        let reclaim_idle = reclaim_idle_ns(ran_full);
        self.keys.clear();
        // Never more keys than twice the table's size: keys deleted while iterating restart
        // the kernel's iteration.
        for key in self.map.keys().take(self.entries as usize * 2) {
            match key {
                Ok(k) => self.keys.push(k),
                Err(_) => break,
            }
        }
        let mut expired_count = 0;
        let inflight_max_age = self.max_age_ns.get();
        for key in &self.keys {
            let Ok(entry) = self.map.get(key, 0) else { continue };
            let completed = u32::from(entry.0.flags) & TAPIO_STO_IF_COMPLETED != 0;
            let max_age = if completed { reclaim_idle } else { inflight_max_age };
            if !expired(last_seen_ns(&entry.0), now_ns, max_age) || self.map.remove(key).is_err() {
                continue;
            }
            // Reclaiming a completed request's entry loses nothing.
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
    fn entries_expire_by_their_last_issue_or_submission() {
        let e = tapio_sto_inflight { stamp_ns: 5_000, ..Default::default() };
        assert_eq!(last_seen_ns(&e), 5_000);
        assert!(!expired(5_000, 15_000, 10_000));
        assert!(expired(5_000, 15_001, 10_000));
        assert!(!expired(20_000, 15_000, 10_000), "clock skew never expires an entry");
    }
}
