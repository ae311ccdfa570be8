//! The sink stage: the thread behind the bounded queue. It resolves workload identity (which
//! may cost syscalls, so it stays off the drain), serializes each record once, hands it to
//! every sink, writes out whenever the queue runs dry (or a sink holds 64 KiB), and counts
//! per sink the lines that reached their destination and those that failed.

use crate::counters::Counters;
use crate::evidence::WorkloadIds;
use crate::queue::{Encoded, QueueReceiver};
use crate::sinks::{Delivered, Sink, FLUSH_AT_BYTES};
use std::sync::Arc;
use tapio_identity::{CgroupHierarchy, Resolver, Workload};

/// Records after which the sinks are written out even while the queue is not dry.
const FLUSH_AT_RECORDS: usize = 256;

pub struct SinkStage {
    pub queue: QueueReceiver,
    pub sinks: Vec<Box<dyn Sink>>,
    pub identity: Option<Resolver>,
    pub counters: Arc<Counters>,
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
        // Blocks while idle (no periodic wake-ups); ends when the drain drops its sender.
        while self.queue.recv(&mut record) {
            self.deliver(&record, v1_memory, &mut line);
            let mut since_flush = 1;
            while self.queue.try_recv(&mut record) {
                self.deliver(&record, v1_memory, &mut line);
                since_flush += 1;
                // Under sustained load the queue may never run dry: write out (and count)
                // at least every 64 KiB per sink and every FLUSH_AT_RECORDS records.
                let full = self.sinks.iter().any(|s| s.buffered_bytes() >= FLUSH_AT_BYTES);
                if full || since_flush >= FLUSH_AT_RECORDS {
                    self.flush();
                    since_flush = 0;
                }
            }
            self.flush();
        }
        self.flush();
        if let Some(r) = &self.identity {
            // Learned paths pushed out before use mean evidence that may name no workload.
            log::info!("identity final {:?} learned {:?}", r.stats(), r.learned_stats());
        }
    }

    fn deliver(&mut self, ev: &Encoded, v1_memory: bool, line: &mut Vec<u8>) {
        let workload = pick_cgroup(ev.workload_ids(), v1_memory).map(|(hierarchy, id)| match &mut self.identity {
            Some(resolver) => resolver.workload(&hierarchy, id),
            None => Workload::unknown(id),
        });
        line.clear();
        if let Err(e) = ev.write_line(line, |out| serde_json::to_writer(out, &workload)) {
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
        for sink in &mut self.sinks {
            let name = sink.name();
            sink.flush(&mut |d: Delivered| {
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

    #[test]
    fn prefers_real_cgroup2_ids_then_v1_memory() {
        let ids = |cgroup_id, mem_cgroup_id| WorkloadIds { cgroup_id, mem_cgroup_id };
        assert_eq!(pick_cgroup(ids(77, 5), true), Some((CgroupHierarchy::Unified, 77)));
        assert_eq!(pick_cgroup(ids(1, 5), true), Some((CgroupHierarchy::v1("memory"), 5)));
        assert_eq!(pick_cgroup(ids(1, 5), false), Some((CgroupHierarchy::Unified, 1)));
        assert_eq!(pick_cgroup(ids(0, 0), true), None);
    }
}
