//! Userspace pipeline throughput on one thread, without the kernel: the same decode →
//! classify → stamp path the drain runs on every ring-buffer record, then the sink stage's
//! JSON serialization, over crafted records laid out byte for byte as the kernel writes
//! them. Needs no root.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tapio_agent::clock::{boot_now_ns, BootToWall};
use tapio_agent::observers::container::ContainerClassifier;
use tapio_agent::observers::network::NetworkClassifier;
use tapio_agent::observers::Classifier;
use tapio_agent::stamp::{Stamper, Verdict};
use tapio_bpf::abi::{
    tapio_exit_event, tapio_net_event, tapio_oom_event, TAPIO_CTR_EXIT, TAPIO_CTR_F_MEMCG_KNOWN, TAPIO_CTR_F_MM_KNOWN,
    TAPIO_CTR_F_START_KNOWN, TAPIO_CTR_OOM_KILL, TAPIO_NET_CONNECT_FAILED, TAPIO_NET_F_RST_IN_SYN_SENT,
    TAPIO_NET_F_START_KNOWN, TAPIO_NET_F_TASK_KNOWN, TAPIO_NET_RESET, TAPIO_NET_RETRANSMIT_SPIKE,
    TAPIO_NET_RTT_DEGRADED,
};
use tapio_bpf::record::as_bytes;
use tapio_identity::{CgroupHierarchy, Workload};

/// Distinct records in the working set (addresses, ports, pids and names vary).
const SET: usize = 4096;
const WARMUP: Duration = Duration::from_millis(300);

/// Which observer a record came from.
#[derive(Clone, Copy)]
enum Source {
    Network,
    Container,
}

/// One crafted ring-buffer record.
struct Crafted {
    source: Source,
    bytes: Vec<u8>,
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn comm(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = name.len().min(15);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&[a, b, c, d]);
    out
}

fn net_base(i: usize, kind: u32, now: u64) -> tapio_net_event {
    let mut ev = tapio_net_event::default();
    ev.hdr.boot_ns = now + i as u64 * 1000;
    ev.hdr.kind = kind;
    ev.hdr.generation = 7;
    ev.task.pid = 1000 + (i % 5000) as u32;
    ev.task.tid = ev.task.pid + 3;
    ev.task.cgroup_id = 1;
    ev.task.mem_cgroup_id = 4000 + (i % 64) as u64;
    const COMMS: [&str; 4] = ["checkout-api", "java", "envoy", "python3"];
    ev.task.comm = comm(COMMS[i % COMMS.len()]);
    ev.family = AF_INET;
    ev.saddr = v4(10, 244, (i % 7) as u8, (i % 250) as u8 + 2);
    ev.daddr = v4(10, 96, (i % 11) as u8, (i % 200) as u8 + 10);
    ev.sport = 32768 + (i % 28000) as u16;
    ev.dport = [5432, 6379, 8080, 443, 9092][i % 5];
    ev
}

/// Record `i` of the mix: per 100 records, 50 refused connects, 5 IPv6 timeouts, 5 ICMP
/// unreachables, 15 resets, 8 retransmit spikes, 5 RTT degradations, 8 non-zero exits,
/// 3 signal deaths and 1 OOM kill (the kernel side only reports abnormal exits).
fn craft(i: usize, now: u64) -> Crafted {
    let net = |ev: tapio_net_event| Crafted { source: Source::Network, bytes: tapio_bpf::network::encode(&ev) };
    let known = TAPIO_NET_F_TASK_KNOWN | TAPIO_NET_F_START_KNOWN;
    match i % 100 {
        0..=49 => {
            let mut ev = net_base(i, TAPIO_NET_CONNECT_FAILED, now);
            ev.flags = (known | TAPIO_NET_F_RST_IN_SYN_SENT) as u16;
            ev.state = 2;
            ev.sk_err = 111;
            ev.duration_ns = 40_000 + i as u64;
            net(ev)
        }
        50..=54 => {
            let mut ev = net_base(i, TAPIO_NET_CONNECT_FAILED, now);
            ev.family = AF_INET6;
            ev.saddr = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (i >> 8) as u8, i as u8];
            ev.daddr = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x10];
            ev.flags = known as u16;
            ev.state = 2;
            ev.sk_err = 110;
            ev.syn_retries = 6;
            ev.duration_ns = 127_000_000_000;
            net(ev)
        }
        55..=59 => {
            let mut ev = net_base(i, TAPIO_NET_CONNECT_FAILED, now);
            ev.flags = known as u16;
            ev.state = 2;
            ev.sk_err = 113;
            ev.duration_ns = 3_000_000;
            net(ev)
        }
        60..=74 => {
            let mut ev = net_base(i, TAPIO_NET_RESET, now);
            ev.flags = TAPIO_NET_F_TASK_KNOWN as u16;
            ev.state = 1;
            ev.bytes_acked = 1_000_000 + i as u64;
            ev.bytes_received = 20_000 + i as u64;
            ev.srtt_us = 180;
            ev.total_retransmits = 2;
            net(ev)
        }
        75..=82 => {
            let mut ev = net_base(i, TAPIO_NET_RETRANSMIT_SPIKE, now);
            ev.flags = TAPIO_NET_F_TASK_KNOWN as u16;
            ev.state = 1;
            ev.retransmits_in_window = 12;
            ev.window_ms = 10_000;
            ev.total_retransmits = 40;
            ev.srtt_us = 25_000;
            ev.cwnd = 4;
            net(ev)
        }
        83..=87 => {
            let mut ev = net_base(i, TAPIO_NET_RTT_DEGRADED, now);
            ev.flags = TAPIO_NET_F_TASK_KNOWN as u16;
            ev.srtt_us = 90_000;
            ev.baseline_us = 2_000;
            ev.baseline_samples = 50;
            ev.cwnd = 10;
            net(ev)
        }
        88..=98 => {
            let mut ev = tapio_exit_event::default();
            ev.hdr.boot_ns = now + i as u64 * 1000;
            ev.hdr.kind = TAPIO_CTR_EXIT;
            ev.hdr.generation = 7;
            ev.task.pid = 20_000 + i as u32;
            ev.task.tid = ev.task.pid;
            ev.task.cgroup_id = 1;
            ev.task.mem_cgroup_id = 4000 + (i % 64) as u64;
            ev.task.comm = comm(if i.is_multiple_of(2) { "worker" } else { "node" });
            // 3 of 11: killed by SIGSEGV with a core; the rest exit with code 1.
            ev.exit_status = if i % 100 >= 96 { 11 | 0x80 } else { 1 << 8 };
            ev.nr_threads = 1 + (i % 12) as u32;
            ev.start_boot_ns = now.saturating_sub(60_000_000_000);
            ev.flags = TAPIO_CTR_F_START_KNOWN as u16;
            Crafted { source: Source::Container, bytes: as_bytes(&ev).to_vec() }
        }
        _ => {
            let mut ev = tapio_oom_event::default();
            ev.hdr.boot_ns = now + i as u64 * 1000;
            ev.hdr.kind = TAPIO_CTR_OOM_KILL;
            ev.hdr.generation = 7;
            ev.task.pid = 30_000 + i as u32;
            ev.task.tid = ev.task.pid;
            ev.task.cgroup_id = 1;
            ev.task.mem_cgroup_id = 4000 + (i % 64) as u64;
            ev.task.comm = comm("java");
            ev.memcg_limit_pages = 131_072;
            ev.memcg_usage_pages = 131_000;
            ev.total_vm_pages = 1_200_000;
            ev.anon_rss_pages = 125_000;
            ev.file_rss_pages = 3_000;
            ev.pgtables_bytes = 1 << 20;
            ev.flags = (TAPIO_CTR_F_MM_KNOWN | TAPIO_CTR_F_MEMCG_KNOWN) as u16;
            Crafted { source: Source::Container, bytes: as_bytes(&ev).to_vec() }
        }
    }
}

/// Resolved workloads as the identity cache hands them out (cloned per record).
fn workloads() -> Vec<Workload> {
    (0..64u64)
        .map(|i| {
            let pod = format!("6f1c2a9e-0b1d-4c7e-9a3f-{:012x}", 0x5e00 + i);
            let container = format!("{:064x}", 0x00ab_cdef_0123_4567_u64.wrapping_mul(i + 1));
            Workload {
                cgroup_id: 4000 + i,
                cgroup_path: Some(format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container}.scope",
                    pod.replace('-', "_")
                )),
                container_id: Some(container),
                pod_uid: Some(pod),
            }
        })
        .collect()
}

/// Throughput figures of both phases.
pub struct Throughput {
    /// Decode + classify + stamp.
    pub classify: Phase,
    /// The same plus the sink stage's JSON serialization.
    pub serialize: Phase,
}

struct Pipeline {
    records: Vec<Crafted>,
    network: NetworkClassifier,
    container: ContainerClassifier,
    stamper: Stamper,
    workloads: Vec<Workload>,
    line: Vec<u8>,
    encoded: tapio_agent::queue::Encoded,
    workload_json: tapio_agent::sink_stage::WorkloadJson,
}

impl Pipeline {
    fn new() -> Self {
        let now = boot_now_ns();
        Self {
            records: (0..SET).map(|i| craft(i, now)).collect(),
            network: NetworkClassifier,
            container: ContainerClassifier::new(None),
            stamper: Stamper::new(Arc::from("node-bench-01"), Arc::new(BootToWall::measured())),
            workloads: workloads(),
            line: Vec::with_capacity(1024),
            encoded: Default::default(),
            workload_json: Default::default(),
        }
    }

    /// Decode + classify + stamp one record, as the drain does.
    fn classify(&mut self, i: usize) -> Verdict {
        let rec = &self.records[i];
        let result = match rec.source {
            Source::Network => self.network.classify(black_box(&rec.bytes), &mut self.stamper),
            Source::Container => self.container.classify(black_box(&rec.bytes), &mut self.stamper),
        };
        result.expect("crafted records decode")
    }

    /// One pass over the set; returns (records, emitted, json bytes).
    fn pass(&mut self, serialize: bool) -> (u64, u64, u64) {
        let mut emitted = 0;
        let mut bytes = 0;
        for i in 0..self.records.len() {
            match self.classify(i) {
                Verdict::Emit(ev) => {
                    emitted += 1;
                    if serialize {
                        // What the drain and the sink stage do per record: encode it for the
                        // queue, then attach the workload (resolved once per cgroup, as the
                        // identity cache would) and write out the line.
                        self.encoded.encode(&ev).expect("evidence encodes");
                        let workload = &self.workloads[i % self.workloads.len()];
                        let picked = Some((CgroupHierarchy::Unified, workload.cgroup_id));
                        self.line.clear();
                        let workload_json = &mut self.workload_json;
                        self.encoded
                            .write_line(&mut self.line, |out| workload_json.write(out, picked, |_, _| workload.clone()))
                            .expect("evidence serializes");
                        bytes += self.line.len() as u64;
                        black_box(&self.line);
                    }
                    black_box(ev);
                }
                other => {
                    black_box(other);
                }
            }
        }
        (self.records.len() as u64, emitted, bytes)
    }

    /// Runs passes for `duration`; returns (records/s, records, emitted, bytes).
    fn trial(&mut self, serialize: bool, duration: Duration) -> (f64, u64, u64, u64) {
        let start = Instant::now();
        let (mut n, mut e, mut b) = (0, 0, 0);
        while start.elapsed() < duration {
            let (pn, pe, pb) = self.pass(serialize);
            n += pn;
            e += pe;
            b += pb;
        }
        (n as f64 / start.elapsed().as_secs_f64(), n, e, b)
    }

    /// A warm-up, then [`TRIALS`] trials of `duration`.
    fn phase(&mut self, serialize: bool, duration: Duration) -> Phase {
        let warm = Instant::now();
        while warm.elapsed() < WARMUP {
            self.pass(serialize);
        }
        let mut rates = Vec::with_capacity(TRIALS);
        let mut phase = Phase::default();
        for _ in 0..TRIALS {
            let (rate, n, e, b) = self.trial(serialize, duration);
            rates.push(rate);
            phase.records += n;
            phase.emitted += e;
            phase.bytes += b;
        }
        rates.sort_by(f64::total_cmp);
        phase.median = rates[TRIALS / 2];
        phase.min = rates[0];
        phase.max = rates[TRIALS - 1];
        phase
    }
}

/// Trials per phase; the median is the figure (this machine is shared and noisy).
pub const TRIALS: usize = 5;

/// One phase's records per second over its trials, and what it did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Phase {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub records: u64,
    pub emitted: u64,
    pub bytes: u64,
}

/// Measures both phases, [`TRIALS`] trials of `trial` each.
pub fn measure(trial: Duration) -> Throughput {
    let mut p = Pipeline::new();
    let classify = p.phase(false, trial);
    let serialize = p.phase(true, trial);
    Throughput { classify, serialize }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crafted_record_becomes_evidence() {
        let mut p = Pipeline::new();
        let (n, emitted, bytes) = p.pass(true);
        assert_eq!(n, SET as u64);
        assert_eq!(emitted, n, "the mix is all reportable facts");
        assert!(bytes / emitted > 300, "lines look realistic: {} bytes", bytes / emitted);
        let line: serde_json::Value = serde_json::from_slice(&p.line).unwrap();
        assert!(line["workload"]["pod_uid"].is_string());
    }

    #[test]
    fn the_mix_covers_every_kind() {
        let mut p = Pipeline::new();
        let mut kinds = std::collections::BTreeSet::new();
        for i in 0..100 {
            if let Verdict::Emit(ev) = p.classify(i) {
                kinds.insert(ev.kind);
            }
        }
        assert_eq!(kinds.len(), 8, "{kinds:?}");
    }
}
