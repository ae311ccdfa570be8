//! Storage observer (userspace half): the hooks it attaches, its classifier, and the ageing
//! of in-flight requests whose completion never comes.

pub mod classify;
pub mod disks;

use super::poll::{PollContext, Poller};
use super::{Classifier, Hook};
use crate::stamp::{Stamper, Verdict};
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Pod;
use disks::DiskNames;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tapio_bpf::abi::{tapio_sto_inflight, TAPIO_STO_IF_COMPLETED};

pub const NAME: &str = "storage";

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

/// The moment an entry was last touched (its last issue, or its submission if not issued).
pub fn last_seen_ns(e: &tapio_sto_inflight) -> u64 {
    e.issue_ns.max(e.submit_ns)
}

/// Whether an entry last touched at `seen_ns` is older than `max_age_ns` at `now_ns`.
pub fn expired(seen_ns: u64, now_ns: u64, max_age_ns: u64) -> bool {
    now_ns.saturating_sub(seen_ns) > max_age_ns
}

/// Keeps the kernel's request table bounded: reclaims the entries of completed requests
/// whose struct request has not been reused for a while (the kernel keeps them to reuse in
/// place), and ages out in-flight entries whose completion never came, each counted as
/// `inflight_expired`.
///
/// The kernel may reuse a request struct between this reading its entry and deleting it;
/// then the fresh entry is deleted, and that request is attributed at its issue (submitter
/// unknown) or, if already issued, its completion is counted as unmatched. The window is a
/// few microseconds on a struct idle for at least `RECLAIM_IDLE`, and nothing is lost
/// silently.
pub struct InflightSweeper {
    map: BpfHashMap<MapData, u64, Inflight>,
    /// Shared with the config carriers: a new config's thresholds can lengthen it.
    max_age_ns: Arc<AtomicU64>,
    keys: Vec<u64>,
}

/// How often the table is scanned: one syscall or two per entry, so not often.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// A completed request's entry is reclaimed once its struct has been idle this long.
const RECLAIM_IDLE_NS: u64 = 30_000_000_000;
/// The kernel table's size: a scan never reads more keys than twice this (keys deleted
/// while iterating restart the kernel's iteration).
const MAX_KEYS: usize = 16384 * 2;

impl InflightSweeper {
    pub fn new(map: aya::maps::Map, max_age_ns: Arc<AtomicU64>) -> Result<Self, String> {
        let map =
            BpfHashMap::try_from(map).map_err(|e| format!("inflight map does not match this agent's ABI: {e}"))?;
        Ok(Self { map, max_age_ns, keys: Vec::new() })
    }

    /// Deletes expired entries; returns how many.
    pub fn sweep(&mut self, now_ns: u64) -> u64 {
        self.keys.clear();
        for key in self.map.keys().take(MAX_KEYS) {
            match key {
                Ok(k) => self.keys.push(k),
                Err(_) => break,
            }
        }
        let mut expired_count = 0;
        let inflight_max_age = self.max_age_ns.load(Ordering::Relaxed);
        for key in &self.keys {
            let Ok(entry) = self.map.get(key, 0) else { continue };
            let completed = u32::from(entry.0.flags) & TAPIO_STO_IF_COMPLETED != 0;
            let max_age = if completed { RECLAIM_IDLE_NS } else { inflight_max_age };
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
    fn entries_expire_by_their_last_issue_or_submission() {
        let mut e = tapio_sto_inflight { submit_ns: 1_000, ..Default::default() };
        assert_eq!(last_seen_ns(&e), 1_000);
        e.issue_ns = 5_000; // requeued and issued again later: age from the last issue
        assert_eq!(last_seen_ns(&e), 5_000);
        assert!(!expired(5_000, 15_000, 10_000));
        assert!(expired(5_000, 15_001, 10_000));
        assert!(!expired(20_000, 15_000, 10_000), "clock skew never expires an entry");
    }
}
