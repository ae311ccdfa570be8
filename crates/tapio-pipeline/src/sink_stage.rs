//! The sink stage: the thread behind the bounded queue. It resolves workload identity (which
//! may cost syscalls, so it stays off the drain), serializes each record once, hands it to
//! every sink, writes out once the queue has run dry and its first record has waited
//! [`LINGER`] (or a sink holds 64 KiB, or 256 records are buffered), and counts
//! per sink the lines that reached their destination and those that failed.

use crate::counters::Counters;
use crate::evidence::WorkloadIds;
use crate::queue::{Encoded, QueueReceiver};
use crate::sinks::{Delivered, Sink, FLUSH_AT_BYTES};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapio_identity::{CgroupHierarchy, Resolver, Workload};

/// Records after which the sinks are written out even while the queue is not dry.
const FLUSH_AT_RECORDS: usize = 256;

/// How long a record may wait in a sink's buffer for others to share its write, once the
/// queue has run dry. Under a flood the queue runs dry between the drain's passes, thousands
/// of times a second: writing out at each of those made a write call per 20–30
/// records, 8,000–11,500 a second (tapio-bench README, ninth round).
pub const LINGER: Duration = Duration::from_millis(5);

pub struct SinkStage {
    pub queue: QueueReceiver,
    pub sinks: Vec<Box<dyn Sink>>,
    pub identity: Option<Resolver>,
    pub counters: Arc<Counters>,
    /// [`LINGER`] (tests give a longer one, to be independent of the machine's speed).
    pub linger: Duration,
}

/// Resolved workloads kept serialized ([`WorkloadJson`]); at most this many.
const WORKLOAD_JSON_ENTRIES: usize = 512;

/// The JSON of resolved workloads, by (cgroup2?, cgroup id). A busy container's records
/// otherwise each cloned its workload from the resolver and escaped its cgroup path,
/// container id and pod uid again (about a tenth of a record's serialization with
/// Kubernetes paths). Only resolved workloads are kept: a resolved id stays true (kernfs
/// ids are never reused), an unresolved one may resolve later. Bounded: when full it starts
/// over, and the resolver's own cache still answers.
#[derive(Default)]
pub struct WorkloadJson {
    entries: HashMap<(bool, u64), Box<[u8]>>,
    hits: u64,
}

impl WorkloadJson {
    /// Writes the workload of `picked` (`null` for none), asking `resolve` on a miss.
    pub fn write(
        &mut self,
        out: &mut Vec<u8>,
        picked: Option<(CgroupHierarchy, u64)>,
        resolve: impl FnOnce(&CgroupHierarchy, u64) -> Workload,
    ) -> serde_json::Result<()> {
        let Some((hierarchy, id)) = picked else {
            out.extend_from_slice(b"null");
            return Ok(());
        };
        let key = (hierarchy == CgroupHierarchy::Unified, id);
        if let Some(json) = self.entries.get(&key) {
            self.hits += 1;
            out.extend_from_slice(json);
            return Ok(());
        }
        let workload = resolve(&hierarchy, id);
        let start = out.len();
        serde_json::to_writer(&mut *out, &workload)?;
        if workload.cgroup_path.is_some() {
            self.keep(key, &out[start..]);
        }
        Ok(())
    }

    fn keep(&mut self, key: (bool, u64), json: &[u8]) {
        if self.entries.len() >= WORKLOAD_JSON_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(key, json.into());
    }
}

/// Which hierarchy names the workload: a real (non-root) cgroup2 id first; on hybrid/v1
/// nodes, where every task's cgroup2 id is the root, the v1 memory cgroup.
pub fn pick_cgroup(ids: WorkloadIds, v1_memory_mounted: bool) -> Option<(CgroupHierarchy, u64)> {
    if ids.cgroup_id > 1 {
        Some((CgroupHierarchy::Unified, ids.cgroup_id))
    } else if ids.mem_cgroup_id > 0 && v1_memory_mounted {
        Some((CgroupHierarchy::v1("memory"), ids.mem_cgroup_id))
    } else if ids.cgroup_id > 0 {
        Some((CgroupHierarchy::Unified, ids.cgroup_id))
    } else {
        None
    }
}

impl SinkStage {
    pub fn run(mut self) {
        let v1_memory = self.identity.as_ref().is_some_and(|r| r.mount_point(&CgroupHierarchy::v1("memory")).is_some());
        let mut line = Vec::with_capacity(1024);
        let mut record = Encoded::default();
        let mut workloads = WorkloadJson::default();
        // Blocks while idle (no periodic wake-ups); ends when the drain drops its sender.
        while self.queue.recv(&mut record) {
            let first = Instant::now();
            self.deliver(&record, v1_memory, &mut line, &mut workloads);
            let mut since_flush = 1;
            loop {
                while self.queue.try_recv(&mut record) {
                    self.deliver(&record, v1_memory, &mut line, &mut workloads);
                    since_flush += 1;
                    // Under sustained load the queue may never run dry: write out (and count)
                    // at least every 64 KiB per sink and every FLUSH_AT_RECORDS records.
                    let full = self.sinks.iter().any(|s| s.buffered_bytes() >= FLUSH_AT_BYTES);
                    if full || since_flush >= FLUSH_AT_RECORDS {
                        self.flush();
                        since_flush = 0;
                    }
                }
                // The queue ran dry: what is buffered waits out the linger for company.
                match self.linger.checked_sub(first.elapsed()) {
                    Some(rest) if since_flush > 0 => std::thread::sleep(rest),
                    _ => break,
                }
            }
            self.flush();
        }
        self.flush();
        if let Some(r) = &self.identity {
            // Learned paths pushed out before use mean evidence that may name no workload.
            log::info!(
                "identity final {:?} learned {:?}, serialized workloads reused {}",
                r.stats(),
                r.learned_stats(),
                workloads.hits
            );
        }
    }

    fn deliver(&mut self, ev: &Encoded, v1_memory: bool, line: &mut Vec<u8>, workloads: &mut WorkloadJson) {
        let picked = pick_cgroup(ev.workload_ids(), v1_memory);
        line.clear();
        let identity = &mut self.identity;
        let resolve = |hierarchy: &CgroupHierarchy, id| match identity {
            Some(resolver) => resolver.workload(hierarchy, id),
            None => Workload::unknown(id),
        };
        if let Err(e) = ev.write_line(line, |out| workloads.write(out, picked, resolve)) {
            // Cannot happen for these types; counted as a failure of every sink if it does.
            log::error!("serializing evidence: {e}");
            for sink in &self.sinks {
                self.counters.sink_failures(sink.name(), 1);
            }
            return;
        }
        for sink in &mut self.sinks {
            sink.write_line(line);
        }
    }

    fn flush(&mut self) {
        let counters = &self.counters;
        let queue = &self.queue;
        let may_wait = || queue.has_room_to_wait();
        for sink in &mut self.sinks {
            let name = sink.name();
            sink.flush(&may_wait, &mut |d: Delivered| {
                if d.written > 0 || d.failed > 0 {
                    counters.sink_delivered(name, d.written, d.failed);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the cache writes is what serializing the workload writes; unresolved workloads
    /// (no path) are not kept, and the cache never holds more than its bound.
    #[test]
    fn serialized_workloads_match_serde_and_only_resolved_ones_are_kept() {
        let unresolved = |_: &CgroupHierarchy, id| Workload::unknown(id);
        let mut cache = WorkloadJson::default();
        let mut out = Vec::new();
        cache.write(&mut out, None, unresolved).unwrap();
        assert_eq!(out, b"null");

        out.clear();
        cache.write(&mut out, Some((CgroupHierarchy::Unified, 42)), unresolved).unwrap();
        assert_eq!(out, serde_json::to_vec(&Some(Workload::unknown(42))).unwrap());
        assert!(cache.entries.is_empty(), "an unresolved workload may resolve later: not kept");

        let resolved = Workload::from_path(
            77,
            "/kubepods.slice/kubepods-pod6f1c2a9e_0b1d_4c7e_9a3f_000000005e01.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope".into(),
        );
        assert!(resolved.pod_uid.is_some(), "a Kubernetes path: {resolved:?}");
        let json = serde_json::to_vec(&resolved).unwrap();
        out.clear();
        cache.write(&mut out, Some((CgroupHierarchy::Unified, 77)), |_, _| resolved.clone()).unwrap();
        assert_eq!(out, json, "a miss writes the resolved workload");
        assert_eq!(cache.entries.get(&(true, 77)).map(|j| j.to_vec()), Some(json.clone()), "and keeps it");
        for _ in 0..2 {
            out.clear();
            cache
                .write(&mut out, Some((CgroupHierarchy::Unified, 77)), |_, _| {
                    panic!("a kept workload is not resolved again")
                })
                .unwrap();
            assert_eq!(out, json);
        }
        assert_eq!(cache.hits, 2);
        // The same id in another hierarchy is another cgroup.
        out.clear();
        cache.write(&mut out, Some((CgroupHierarchy::v1("memory"), 77)), unresolved).unwrap();
        assert_eq!(out, serde_json::to_vec(&Workload::unknown(77)).unwrap());

        for id in 1000..1000 + 3 * WORKLOAD_JSON_ENTRIES as u64 {
            cache.keep((true, id), &json);
            assert!(cache.entries.len() <= WORKLOAD_JSON_ENTRIES);
            assert!(cache.entries.contains_key(&(true, id)), "the newest is kept");
        }
    }

    /// Lines per write, as a sink saw them.
    struct RecordingSink {
        buffered: Vec<usize>,
        writes: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Sink for RecordingSink {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn write_line(&mut self, line: &[u8]) {
            self.buffered.push(line.len());
        }
        fn buffered_bytes(&self) -> usize {
            self.buffered.iter().sum()
        }
        fn flush(&mut self, _may_wait: &dyn Fn() -> bool, report: &mut dyn FnMut(Delivered)) {
            if self.buffered.is_empty() {
                return;
            }
            self.writes.lock().unwrap().push(self.buffered.len());
            report(Delivered { written: self.buffered.len() as u64, failed: 0 });
            self.buffered.clear();
        }
    }

    /// A line that finds the queue dry waits out the linger, and what arrives meanwhile
    /// shares its write; a line after the linger is a write of its own.
    #[test]
    fn lines_arriving_within_the_linger_share_one_write() {
        let (tx, rx) = crate::queue::bounded(100, usize::MAX);
        let writes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let counters = Arc::new(Counters::default());
        let stage = SinkStage {
            queue: rx,
            sinks: vec![Box::new(RecordingSink { buffered: Vec::new(), writes: Arc::clone(&writes) })],
            identity: None,
            counters: Arc::clone(&counters),
            // Long, so that a loaded machine's stalls stay well inside it.
            linger: Duration::from_secs(3),
        };
        let thread = std::thread::spawn(move || stage.run());
        let ev = crate::queue::tests::evidence("m");
        tx.offer(&counters, &ev);
        std::thread::sleep(Duration::from_millis(100));
        assert!(writes.lock().unwrap().is_empty(), "the first line lingers");
        tx.offer(&counters, &ev);
        let written_by = std::time::Instant::now() + Duration::from_secs(30);
        while writes.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < written_by, "the lines were never written");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*writes.lock().unwrap(), [2], "both lines in one write, once the linger is over");
        tx.offer(&counters, &ev);
        drop(tx);
        thread.join().unwrap();
        assert_eq!(*writes.lock().unwrap(), [2, 1]);
    }

    #[test]
    fn prefers_real_cgroup2_ids_then_v1_memory() {
        let ids = |cgroup_id, mem_cgroup_id| WorkloadIds { cgroup_id, mem_cgroup_id };
        assert_eq!(pick_cgroup(ids(77, 5), true), Some((CgroupHierarchy::Unified, 77)));
        assert_eq!(pick_cgroup(ids(1, 5), true), Some((CgroupHierarchy::v1("memory"), 5)));
        assert_eq!(pick_cgroup(ids(1, 5), false), Some((CgroupHierarchy::Unified, 1)));
        assert_eq!(pick_cgroup(ids(0, 0), true), None);
    }
}
