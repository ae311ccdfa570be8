//! Hardware performance counters per CPU (cycles, instructions, backend-stalled cycles),
//! opened with perf_event_open and read as deltas over each sample interval.
//!
//! The judgement is a pure function of two readings ([`delta`] then [`judge`]), unit-tested
//! with counter sequences; only [`CpuGroup`] touches the kernel (through
//! [`tapio_util::perf`]). Where the machine has no PMU (most VMs), opening the counters
//! fails and the observer reports that, with the reason.

use std::os::fd::{AsRawFd, OwnedFd};
use tapio_util::perf::{
    perf_event_open, PerfEventAttr, PERF_COUNT_HW_CPU_CYCLES, PERF_COUNT_HW_INSTRUCTIONS,
    PERF_COUNT_HW_STALLED_CYCLES_BACKEND, PERF_FLAG_FD_CLOEXEC, PERF_FORMAT_GROUP, PERF_FORMAT_TOTAL_TIME_ENABLED,
    PERF_FORMAT_TOTAL_TIME_RUNNING,
};

/// A cumulative reading of one CPU's counter group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    pub cycles: u64,
    pub instructions: u64,
    pub stalled_backend: Option<u64>,
    /// ns the group was enabled / actually counting (they differ when multiplexed).
    pub time_enabled: u64,
    pub time_running: u64,
}

/// What one CPU did over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub cycles: u64,
    pub instructions: u64,
    pub stalled_backend: Option<u64>,
    /// How long the counters counted (time running): the sample interval itself unless the
    /// PMU was shared and the group multiplexed, when the counts cover only this much.
    pub interval_ns: u64,
}

/// The interval between two readings; None when it cannot be judged: a counter went
/// backwards (reset, or not the same group), or the group did not run at all in between
/// (multiplexed out). The counters of one group run together, so their ratios need no
/// scaling for multiplexing.
pub fn delta(prev: &Reading, cur: &Reading) -> Option<Delta> {
    let running = cur.time_running.checked_sub(prev.time_running)?;
    if running == 0 {
        return None;
    }
    let stalled_backend = match (prev.stalled_backend, cur.stalled_backend) {
        (Some(a), Some(b)) => Some(b.checked_sub(a)?),
        _ => None,
    };
    Some(Delta {
        cycles: cur.cycles.checked_sub(prev.cycles)?,
        instructions: cur.instructions.checked_sub(prev.instructions)?,
        stalled_backend,
        interval_ns: running,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// IPC below this / 100 is degraded.
    pub ipc_min_percent: u32,
    /// Backend-stalled share of cycles above this percent is a stall.
    pub stall_max_percent: u32,
    /// Fewer cycles than this in an interval: too idle to judge.
    pub min_cycles: u64,
}

/// Re-arming needs IPC 10 % above its threshold, or a stall share 5 points below its own.
const IPC_REARM_PERCENT: u128 = 110;
const STALL_REARM_POINTS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    pub ipc_low: bool,
    pub ipc_rearm: bool,
    /// None when the CPU has no backend-stall counter.
    pub stall_high: Option<bool>,
    pub stall_rearm: Option<bool>,
}

/// Judges one interval; None when the CPU ran too few cycles to say anything.
pub fn judge(d: &Delta, t: &Thresholds) -> Option<Judgement> {
    if d.cycles == 0 || d.cycles < t.min_cycles {
        return None;
    }
    let cycles = u128::from(d.cycles);
    let instructions_x100 = u128::from(d.instructions) * 100;
    let ipc_limit = cycles * u128::from(t.ipc_min_percent);
    let stall = d.stalled_backend.map(|s| u128::from(s) * 100);
    Some(Judgement {
        ipc_low: instructions_x100 < ipc_limit,
        ipc_rearm: instructions_x100 * 100 >= ipc_limit * IPC_REARM_PERCENT,
        stall_high: stall.map(|s| s > cycles * u128::from(t.stall_max_percent)),
        stall_rearm: stall.map(|s| s <= cycles * u128::from(t.stall_max_percent.saturating_sub(STALL_REARM_POINTS))),
    })
}

/// Instructions per cycle, in thousandths.
pub fn ipc_milli(d: &Delta) -> u64 {
    (u128::from(d.instructions) * 1000 / u128::from(d.cycles.max(1))) as u64
}

/// Backend-stalled share of cycles, in hundredths of a percent.
pub fn stall_hundredths(d: &Delta) -> Option<u64> {
    d.stalled_backend.map(|s| (u128::from(s) * 10_000 / u128::from(d.cycles.max(1))) as u64)
}

/// One hardware counter on `cpu`, counting every task there, read as part of a group.
fn open_counter(config: u64, cpu: u32, group: Option<&OwnedFd>) -> std::io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        read_format: PERF_FORMAT_GROUP | PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING,
        ..PerfEventAttr::hardware(config)
    };
    perf_event_open(&attr, -1, cpu as libc::c_int, group, PERF_FLAG_FD_CLOEXEC)
}

/// One CPU's open counter group.
pub struct CpuGroup {
    pub cpu: u32,
    leader: OwnedFd,
    /// Kept open: closing a member removes it from the group.
    _members: Vec<OwnedFd>,
    /// Counters in the group (2, or 3 with backend stalls).
    nr: usize,
}

impl CpuGroup {
    /// Reads the group; None if the read is short or says something unexpected.
    pub fn read(&self) -> Option<Reading> {
        let mut buf = [0u64; 6];
        let want = (3 + self.nr) * 8;
        // SAFETY: the buffer holds 48 bytes and we ask for at most that.
        let n = unsafe { libc::read(self.leader.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
        if n != want as isize || buf[0] != self.nr as u64 {
            return None;
        }
        Some(Reading {
            time_enabled: buf[1],
            time_running: buf[2],
            cycles: buf[3],
            instructions: buf[4],
            stalled_backend: (self.nr == 3).then_some(buf[5]),
        })
    }
}

/// Why the counters could not be opened, in words an operator can act on.
fn explain(err: &std::io::Error, what: &str, cpu: u32) -> String {
    let hint = match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) => {
            "this machine exposes no hardware PMU (typical of VMs)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => "not permitted (needs root or CAP_PERFMON)",
        _ => "the kernel refused the counter",
    };
    format!("hardware counters unsupported: {hint}: perf_event_open({what}, cpu {cpu}): {err}")
}

/// Opens a cycles + instructions group on each CPU, with backend stalls where the PMU has
/// that event (many have no generic one: then only IPC is judged there). Err carries the
/// reason for the startup report.
pub fn open(cpus: &[u32]) -> Result<Vec<CpuGroup>, String> {
    let mut groups = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let leader = open_counter(PERF_COUNT_HW_CPU_CYCLES, cpu, None).map_err(|e| explain(&e, "cycles", cpu))?;
        let mut members = vec![open_counter(PERF_COUNT_HW_INSTRUCTIONS, cpu, Some(&leader))
            .map_err(|e| explain(&e, "instructions", cpu))?];
        if let Ok(fd) = open_counter(PERF_COUNT_HW_STALLED_CYCLES_BACKEND, cpu, Some(&leader)) {
            members.push(fd);
        }
        let nr = 1 + members.len();
        groups.push(CpuGroup { cpu, leader, _members: members, nr });
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { ipc_min_percent: 50, stall_max_percent: 60, min_cycles: 50_000_000 };

    /// Cumulative readings of one CPU sampled every 2 s: a compute phase (IPC ~1.6, 20 %
    /// backend stalls), a memory-bound phase (IPC ~0.24, ~78 % stalls), recovery, and a
    /// second memory-bound phase.
    fn sequence() -> Vec<Reading> {
        // Per-interval (cycles, instructions, stalled) in millions.
        let phases: [(u64, u64, u64); 8] = [
            (5_000, 8_000, 1_000),
            (5_000, 8_100, 950),
            (5_000, 1_200, 3_900),
            (5_000, 1_150, 3_950),
            (5_000, 1_300, 3_800),
            (5_000, 7_900, 1_100),
            (5_000, 1_250, 3_900),
            (5_000, 1_200, 3_920),
        ];
        let mut r = Reading { stalled_backend: Some(0), ..Default::default() };
        let mut out = vec![r];
        for (c, i, s) in phases {
            r.cycles += c * 1_000_000;
            r.instructions += i * 1_000_000;
            r.stalled_backend = r.stalled_backend.map(|v| v + s * 1_000_000);
            r.time_enabled += 2_000_000_000;
            r.time_running += 2_000_000_000;
            out.push(r);
        }
        out
    }

    #[test]
    fn each_degraded_phase_is_one_ipc_and_one_stall_crossing() {
        use super::super::psi::Crossing;
        let seq = sequence();
        let (mut ipc, mut stall) = (Crossing::default(), Crossing::default());
        let mut fired = Vec::new();
        for (i, w) in seq.windows(2).enumerate() {
            let d = delta(&w[0], &w[1]).unwrap();
            assert_eq!(d.interval_ns, 2_000_000_000, "deltas, not totals");
            let j = judge(&d, &T).unwrap();
            if ipc.observe(j.ipc_low, j.ipc_rearm) {
                fired.push((i, "ipc", ipc_milli(&d)));
            }
            if stall.observe(j.stall_high.unwrap(), j.stall_rearm.unwrap()) {
                fired.push((i, "stall", stall_hundredths(&d).unwrap()));
            }
        }
        assert_eq!(fired, vec![(2, "ipc", 240), (2, "stall", 7800), (6, "ipc", 250), (6, "stall", 7800)]);
    }

    /// The PMU shared with another user: the group counted half of a 2 s interval. The
    /// counts cover that second, and so does the interval reported with them.
    #[test]
    fn a_multiplexed_interval_is_the_time_the_counters_counted() {
        let prev = Reading { cycles: 0, instructions: 0, stalled_backend: None, time_enabled: 0, time_running: 0 };
        let cur = Reading {
            cycles: 3_000_000_000,
            instructions: 6_000_000_000,
            stalled_backend: None,
            time_enabled: 2_000_000_000,
            time_running: 1_000_000_000,
        };
        let d = delta(&prev, &cur).unwrap();
        assert_eq!((d.cycles, d.interval_ns), (3_000_000_000, 1_000_000_000), "3 GHz, not 1.5");
        assert_eq!(ipc_milli(&d), 2_000, "ratios need no scaling");
    }

    #[test]
    fn cumulative_totals_alone_would_hide_the_phase() {
        // The whole sequence's totals average to a healthy-looking IPC: only deltas show it.
        let seq = sequence();
        let total = delta(&seq[0], &seq[seq.len() - 1]).unwrap();
        assert!(!judge(&total, &T).unwrap().ipc_low);
    }

    #[test]
    fn idle_multiplexed_and_reset_intervals_are_not_judged() {
        let a = Reading { cycles: 1_000, instructions: 10, stalled_backend: None, time_enabled: 10, time_running: 10 };
        let idle = Reading { cycles: 2_000, instructions: 20, time_enabled: 20, time_running: 20, ..a };
        assert_eq!(judge(&delta(&a, &idle).unwrap(), &T), None, "below min_cycles");
        let not_running = Reading { time_enabled: 20, ..a };
        assert_eq!(delta(&a, &not_running), None, "multiplexed out for the whole interval");
        let reset = Reading { cycles: 5, time_enabled: 30, time_running: 30, ..a };
        assert_eq!(delta(&a, &reset), None, "a counter that went backwards is not a delta");
        let d = delta(
            &a,
            &Reading { cycles: 100_001_000, instructions: 20_000_010, time_enabled: 30, time_running: 30, ..a },
        )
        .unwrap();
        let j = judge(&d, &T).unwrap();
        assert!(j.ipc_low && j.stall_high.is_none(), "no stall counter: only IPC is judged");
    }
}
