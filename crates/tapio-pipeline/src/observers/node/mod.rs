//! Node observer: whole-node pressure (PSI, from /proc/pressure) and per-CPU hardware
//! counters (cycles, instructions, backend stalls). No eBPF: a poller samples small files
//! and counter groups on the poll thread and emits on crossings.
//!
//! Status: running when everything configured works; degraded when PSI works but the
//! hardware counters do not (the reason names why, e.g. no PMU in a VM); unsupported when
//! neither does. The agent keeps running either way.

pub mod pmc;
pub mod psi;

use super::poll::{PollContext, Poller, SharedSettings};
use super::{Follower, Observer, ObserverState, Start, Userspace};
use crate::evidence::{Facts, NodeFacts, Outcome, PmcFacts, PressureFacts, Severity, WorkloadIds};
use crate::stamp::{Draft, Stamper, Verdict};
use psi::{percent_text, Crossing, PsiReading, Threshold};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tapio_wire::compiled::NodeConfig;
use tapio_wire::CompiledConfig;

pub const NAME: &str = "node";

/// Where the kernel reports pressure, and which CPUs are online.
const PRESSURE_DIR: &str = "/proc/pressure";
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";

/// The node observer: pressure and hardware counters, judged in userspace (no eBPF).
pub static OBSERVER: Observer = Observer { name: NAME, enabled: |c| c.node.enabled, kernel: None, userspace: start };

fn start(start: &mut Start<'_>) -> Result<Userspace, String> {
    let shared = NodeSettings::new(start.generation, start.config.node.clone());
    let interval = Duration::from_millis(u64::from(start.local.poll_interval_ms.max(100)));
    let (state, poller) = NodeObserver::start(Arc::clone(&shared), interval, PRESSURE_DIR, ONLINE_CPUS);
    let mut userspace = Userspace { state: Some(state), ..Userspace::default() };
    if let Some(poller) = poller {
        userspace.pollers.push(Box::new(poller));
        userspace.followers.push(shared);
    }
    Ok(userspace)
}

/// The settings the poller judges with, replaced when the controller's config changes.
pub type NodeSettings = SharedSettings<NodeConfig>;

impl Follower for NodeSettings {
    fn follow(&self, config: &CompiledConfig, generation: u32) {
        self.set(generation, config.node.clone());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Memory,
    Cpu,
    Io,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Memory, Resource::Cpu, Resource::Io];

    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Io => "io",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Memory => "kernel.node.memory_pressure",
            Self::Cpu => "kernel.node.cpu_pressure",
            Self::Io => "kernel.node.io_pressure",
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::Memory => "MEMORY_PRESSURE",
            Self::Cpu => "CPU_PRESSURE",
            Self::Io => "IO_PRESSURE",
        }
    }

    fn threshold(self, c: &NodeConfig) -> u32 {
        match self {
            Self::Memory => c.psi_memory_some_avg10_percent,
            Self::Cpu => c.psi_cpu_some_avg10_percent,
            Self::Io => c.psi_io_some_avg10_percent,
        }
    }
}

pub(crate) fn pct(hundredths: u32) -> f64 {
    f64::from(hundredths) / 100.0
}

/// The facts of one PSI crossing (the node's, or a container's without its memory use).
pub(crate) fn pressure_facts(resource: Resource, reading: &PsiReading, threshold: Threshold) -> PressureFacts {
    let some = reading.some;
    PressureFacts {
        resource: resource.name(),
        some_avg10_percent: pct(some.avg10),
        some_avg60_percent: pct(some.avg60),
        some_avg300_percent: pct(some.avg300),
        some_total_us: some.total_us,
        full_avg10_percent: reading.full.map(|f| pct(f.avg10)),
        full_avg60_percent: reading.full.map(|f| pct(f.avg60)),
        full_avg300_percent: reading.full.map(|f| pct(f.avg300)),
        full_total_us: reading.full.map(|f| f.total_us),
        threshold_percent: threshold.percent,
        rearm_below_percent: pct(threshold.rearm_below()),
        memory: None,
    }
}

/// The evidence of one PSI crossing. Pure.
pub fn pressure_evidence(
    resource: Resource,
    reading: &PsiReading,
    threshold: Threshold,
    generation: u32,
    boot_ns: u64,
    stamper: &mut Stamper,
) -> Verdict {
    let some = reading.some;
    let mut facts = pressure_facts(resource, reading, threshold);
    if resource == Resource::Cpu {
        // CPU "full" is undefined for the whole node: since 5.13 the kernel prints a line of
        // zeros there only for the file's format (a cgroup's is measured). Not a reading.
        (facts.full_avg10_percent, facts.full_avg60_percent, facts.full_avg300_percent, facts.full_total_us) =
            (None, None, None, None);
    }
    let message = format!(
        "some tasks were stalled on {} {}% of the last 10 s (threshold {}%)",
        resource.name(),
        percent_text(some.avg10),
        threshold.percent
    );
    stamper.stamp(Draft {
        kind: resource.kind(),
        observer: NAME,
        severity: Severity::Warning,
        outcome: Outcome::Degraded,
        code: resource.code(),
        message,
        boot_ns,
        generation,
        workload: WorkloadIds::default(),
        facts: Facts::Node(NodeFacts::Pressure(facts)),
    })
}

/// The evidence of one CPU's counter crossing (`stall` selects cpu_stall). Pure.
pub fn pmc_evidence(
    cpu: u32,
    d: &pmc::Delta,
    stall: bool,
    t: &pmc::Thresholds,
    generation: u32,
    boot_ns: u64,
    stamper: &mut Stamper,
) -> Verdict {
    let ipc = pmc::ipc_milli(d);
    let stall_share = pmc::stall_hundredths(d);
    let secs = format!("{}.{}", d.interval_ns / 1_000_000_000, (d.interval_ns / 100_000_000) % 10);
    let (kind, code, message, threshold) = if stall {
        let share = stall_share.unwrap_or(0);
        (
            "kernel.node.cpu_stall",
            "CPU_STALL",
            format!(
                "cpu {cpu}: {}% of cycles stalled in the backend over {secs} s (threshold {}%)",
                percent_text(share as u32),
                t.stall_max_percent
            ),
            f64::from(t.stall_max_percent),
        )
    } else {
        (
            "kernel.node.ipc_degradation",
            "IPC_DEGRADATION",
            format!(
                "cpu {cpu}: {}.{:03} instructions per cycle over {secs} s (threshold {}.{:02})",
                ipc / 1000,
                ipc % 1000,
                t.ipc_min_percent / 100,
                t.ipc_min_percent % 100
            ),
            f64::from(t.ipc_min_percent) / 100.0,
        )
    };
    stamper.stamp(Draft {
        kind,
        observer: NAME,
        severity: Severity::Warning,
        outcome: Outcome::Degraded,
        code,
        message,
        boot_ns,
        generation,
        workload: WorkloadIds::default(),
        facts: Facts::Node(NodeFacts::Pmc(PmcFacts {
            cpu,
            interval_ns: d.interval_ns,
            cycles: d.cycles,
            instructions: d.instructions,
            ipc: ipc as f64 / 1000.0,
            stalled_cycles_backend: d.stalled_backend,
            stall_percent: stall_share.map(|s| s as f64 / 100.0),
            threshold,
        })),
    })
}

struct PsiSource {
    resource: Resource,
    file: File,
    crossing: Crossing,
}

struct CpuState {
    group: pmc::CpuGroup,
    prev: Option<pmc::Reading>,
    ipc: Crossing,
    stall: Crossing,
}

pub struct NodeObserver {
    settings: Arc<NodeSettings>,
    /// The sampling interval (`node.poll_interval_ms`, an agent-only knob).
    interval: Duration,
    psi: Vec<PsiSource>,
    cpus: Vec<CpuState>,
    buf: Vec<u8>,
}

/// A PSI file is under 200 bytes; a larger read is not a PSI file.
const PSI_BUF: usize = 512;

impl NodeObserver {
    /// Opens what the config asks for and says how far that got. None when nothing can run.
    pub fn start(
        settings: Arc<NodeSettings>,
        interval: Duration,
        pressure_dir: &str,
        cpu_list: &str,
    ) -> (ObserverState, Option<Self>) {
        let (_, config) = settings.get();
        if !config.enabled {
            return (ObserverState::Disabled, None);
        }
        let mut problems = Vec::new();
        let mut psi = Vec::new();
        if config.psi {
            for resource in Resource::ALL {
                let path = format!("{pressure_dir}/{}", resource.name());
                match File::open(&path) {
                    Ok(file) => psi.push(PsiSource { resource, file, crossing: Crossing::default() }),
                    Err(e) => problems.push(format!(
                        "pressure (PSI) unsupported: {path}: {e} (a kernel without CONFIG_PSI, or booted with psi=0)"
                    )),
                }
            }
        }
        let mut cpus = Vec::new();
        if config.pmc {
            let online = std::fs::read_to_string(cpu_list).ok().and_then(|t| tapio_util::cpus::parse_list(&t));
            match online {
                None => {
                    problems.push(format!("hardware counters unsupported: cannot read the online CPUs ({cpu_list})"))
                }
                Some(list) => match pmc::open(&list) {
                    Ok(groups) => {
                        cpus = groups
                            .into_iter()
                            .map(|group| CpuState {
                                group,
                                prev: None,
                                ipc: Crossing::default(),
                                stall: Crossing::default(),
                            })
                            .collect();
                    }
                    Err(reason) => problems.push(format!("{reason}; cpu_stall and ipc_degradation are not reported")),
                },
            }
        }
        let nothing = psi.is_empty() && cpus.is_empty();
        let state = match (problems.is_empty(), nothing) {
            (true, true) => return (ObserverState::Disabled, None), // psi = false and pmc = false
            (true, false) => ObserverState::Running,
            (false, false) => ObserverState::Degraded(problems.join("; ")),
            (false, true) => return (ObserverState::Unsupported(problems.join("; ")), None),
        };
        (state, Some(Self { settings, interval, psi, cpus, buf: vec![0; PSI_BUF] }))
    }

    fn poll_psi(&mut self, config: &NodeConfig, generation: u32, ctx: &mut PollContext) {
        for src in &mut self.psi {
            let percent = src.resource.threshold(config);
            if percent == 0 {
                src.crossing.reset();
                continue;
            }
            let reading = match src.file.read_at(&mut self.buf, 0) {
                Ok(n) if n < self.buf.len() => std::str::from_utf8(&self.buf[..n]).ok().and_then(psi::parse),
                _ => None,
            };
            let Some(reading) = reading else {
                ctx.counters.malformed_events_total.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let threshold = Threshold { percent, margin_percent: config.psi_rearm_margin_percent };
            let avg10 = reading.some.avg10;
            if src.crossing.observe(threshold.over(avg10), avg10 < threshold.rearm_below()) {
                let boot_ns = crate::clock::boot_now_ns();
                let v = pressure_evidence(src.resource, &reading, threshold, generation, boot_ns, ctx.stamper);
                ctx.deliver(NAME, v);
            }
        }
    }

    fn poll_pmc(&mut self, config: &NodeConfig, generation: u32, ctx: &mut PollContext) {
        let t = pmc::Thresholds {
            ipc_min_percent: config.pmc_ipc_min_percent,
            stall_max_percent: config.pmc_stall_max_percent,
            min_cycles: config.pmc_min_cycles,
        };
        for cpu in &mut self.cpus {
            let Some(cur) = cpu.group.read() else {
                ctx.counters.malformed_events_total.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let prev = cpu.prev.replace(cur);
            let Some(d) = prev.and_then(|p| pmc::delta(&p, &cur)) else { continue };
            let Some(j) = pmc::judge(&d, &t) else { continue };
            let boot_ns = crate::clock::boot_now_ns();
            if cpu.ipc.observe(j.ipc_low, j.ipc_rearm) {
                let v = pmc_evidence(cpu.group.cpu, &d, false, &t, generation, boot_ns, ctx.stamper);
                ctx.deliver(NAME, v);
            }
            if let (Some(high), Some(rearm)) = (j.stall_high, j.stall_rearm) {
                if cpu.stall.observe(high, rearm) {
                    let v = pmc_evidence(cpu.group.cpu, &d, true, &t, generation, boot_ns, ctx.stamper);
                    ctx.deliver(NAME, v);
                }
            }
        }
    }
}

impl Poller for NodeObserver {
    fn name(&self) -> &'static str {
        NAME
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    fn poll(&mut self, ctx: &mut PollContext) {
        let (generation, config) = self.settings.get();
        if !config.enabled {
            return;
        }
        if config.psi {
            self.poll_psi(&config, generation, ctx);
        }
        if config.pmc {
            self.poll_pmc(&config, generation, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::testing::{emitted, stamper};

    #[test]
    fn a_pressure_crossing_carries_the_reading_and_threshold() {
        let reading =
            psi::parse("some avg10=23.40 avg60=8.12 avg300=1.90 total=4120331\nfull avg10=20.05 avg60=7.00 avg300=1.61 total=3650120\n")
                .unwrap();
        let t = Threshold { percent: 10, margin_percent: 5 };
        let e = emitted(pressure_evidence(Resource::Memory, &reading, t, 4, 1, &mut stamper()));
        assert_eq!(
            (e.kind, e.observer, e.error.code, e.config_generation),
            ("kernel.node.memory_pressure", "node", "MEMORY_PRESSURE", 4)
        );
        assert_eq!(e.error.message, "some tasks were stalled on memory 23.40% of the last 10 s (threshold 10%)");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["facts"]["some_avg10_percent"], 23.4);
        assert_eq!(json["facts"]["full_avg10_percent"], 20.05);
        assert_eq!(json["facts"]["some_total_us"], 4_120_331);
        assert_eq!(json["facts"]["threshold_percent"], 10);
        assert_eq!(json["facts"]["rearm_below_percent"], 5.0);
        assert_eq!(json["workload"], serde_json::Value::Null);
    }

    /// The node's cpu file has a "full" line of zeros the kernel writes only for its format
    /// (CPU full is undefined system-wide): reported as null, not as a measured 0 %. Memory
    /// and io "full" are measured, and kept.
    #[test]
    fn the_nodes_cpu_full_line_is_not_reported_as_a_reading() {
        let t = Threshold { percent: 10, margin_percent: 5 };
        let cpu = psi::parse(
            "some avg10=16.53 avg60=11.41 avg300=14.23 total=316144448\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        let e = emitted(pressure_evidence(Resource::Cpu, &cpu, t, 0, 1, &mut stamper()));
        let json = serde_json::to_value(&e).unwrap();
        for key in ["full_avg10_percent", "full_avg60_percent", "full_avg300_percent", "full_total_us"] {
            assert_eq!(json["facts"].get(key), Some(&serde_json::Value::Null), "{key}: {json}");
        }
        assert_eq!(json["facts"]["some_avg10_percent"], 16.53);
        let io = psi::parse(
            "some avg10=12.00 avg60=3.00 avg300=1.00 total=900\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        let e = emitted(pressure_evidence(Resource::Io, &io, t, 0, 1, &mut stamper()));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            (json["facts"]["full_avg10_percent"].as_f64(), json["facts"]["full_total_us"].as_u64()),
            (Some(0.0), Some(0))
        );
    }

    #[test]
    fn pmc_evidence_reports_the_interval_not_totals() {
        let d = pmc::Delta {
            cycles: 5_000_000_000,
            instructions: 1_200_000_000,
            stalled_backend: Some(3_900_000_000),
            interval_ns: 2_000_000_000,
        };
        let t = pmc::Thresholds { ipc_min_percent: 50, stall_max_percent: 60, min_cycles: 1 };
        let e = emitted(pmc_evidence(1, &d, false, &t, 0, 1, &mut stamper()));
        assert_eq!(e.kind, "kernel.node.ipc_degradation");
        assert_eq!(e.error.message, "cpu 1: 0.240 instructions per cycle over 2.0 s (threshold 0.50)");
        let e = emitted(pmc_evidence(1, &d, true, &t, 0, 1, &mut stamper()));
        assert_eq!(e.kind, "kernel.node.cpu_stall");
        assert_eq!(e.error.message, "cpu 1: 78.00% of cycles stalled in the backend over 2.0 s (threshold 60%)");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!((json["facts"]["ipc"].as_f64(), json["facts"]["stall_percent"].as_f64()), (Some(0.24), Some(78.0)));
        // The threshold in the unit of the value judged (the README says which).
        assert_eq!(json["facts"]["threshold"].as_f64(), Some(60.0));
        let e = emitted(pmc_evidence(1, &d, false, &t, 0, 1, &mut stamper()));
        assert_eq!(serde_json::to_value(&e).unwrap()["facts"]["threshold"].as_f64(), Some(0.5));
    }

    #[test]
    fn missing_psi_and_counters_make_the_observer_unsupported_with_reasons() {
        let settings = NodeSettings::new(0, NodeConfig::default());
        let (state, poller) =
            NodeObserver::start(settings, Duration::from_secs(2), "/nonexistent/pressure", "/nonexistent/online");
        assert!(poller.is_none());
        match state {
            ObserverState::Unsupported(why) => {
                assert!(why.contains("pressure (PSI) unsupported"), "{why}");
                assert!(why.contains("hardware counters unsupported"), "{why}");
            }
            other => panic!("expected unsupported, got {other:?}"),
        }
        let off = NodeConfig { psi: false, pmc: false, ..NodeConfig::default() };
        let (state, poller) = NodeObserver::start(NodeSettings::new(0, off), Duration::from_secs(2), "/x", "/y");
        assert_eq!((state, poller.is_none()), (ObserverState::Disabled, true));
    }
}
