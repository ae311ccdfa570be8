//! What /proc says about a process: CPU time, resident memory, and which eBPF programs it
//! holds open (so kernel run-time stats are read for this agent's programs only, not for
//! another agent or test that happens to be loaded on the same machine).

use std::fs;
use std::time::{Duration, Instant};

/// utime + stime of the whole process (all threads) from `/proc/<pid>/stat`, in ns.
/// The kernel reports clock ticks, so the resolution is one tick (10 ms at USER_HZ 100).
pub fn cpu_stat_ns(pid: i32) -> Result<u64, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
    parse_stat_ticks(&text)
        .map(|ticks| ticks.saturating_mul(1_000_000_000) / clock_ticks_per_sec())
        .ok_or_else(|| format!("cannot parse /proc/{pid}/stat"))
}

/// utime + stime in clock ticks from the text of `/proc/<pid>/stat`.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: fields are counted
    // after its last ')'. Field 3 (state) is the first one there; utime and stime are 14, 15.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

/// Exact on-CPU time of every live thread of `pid` (first field of each thread's
/// `schedstat`, the scheduler's sum_exec_runtime), in ns.
pub fn cpu_sched_ns(pid: i32) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for entry in fs::read_dir(&dir).map_err(|e| format!("reading {dir}: {e}"))? {
        let Ok(entry) = entry else { continue };
        let path = entry.path().join("schedstat");
        // A thread that exits between readdir and read simply stops counting.
        if let Ok(text) = fs::read_to_string(&path) {
            total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// The on-CPU time ([`cpu_sched_ns`]) `pid` uses over `window`, measured after `settle`
/// has passed: (ns, the window's actual length).
pub fn cpu_sched_ns_over(pid: i32, settle: Duration, window: Duration) -> Result<(u64, Duration), String> {
    std::thread::sleep(settle);
    let t0 = Instant::now();
    let before = cpu_sched_ns(pid)?;
    std::thread::sleep(window);
    let after = cpu_sched_ns(pid)?;
    Ok((after.saturating_sub(before), t0.elapsed()))
}

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: i32) -> Result<u64, String> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status` (e.g. "RssAnon:", "VmHWM:"), in KiB.
pub fn status_kib(pid: i32, key: &str) -> Result<u64, String> {
    let text =
        fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status_field_kib(&text, key).ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
}

/// Resident KiB of the process's mappings of eBPF maps (its ring buffers), from smaps.
pub fn bpf_map_rss_kib(pid: i32) -> Result<u64, String> {
    let text =
        fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(|e| format!("reading /proc/{pid}/smaps: {e}"))?;
    Ok(smaps_rss_of(&text, "anon_inode:bpf-map"))
}

fn smaps_rss_of(text: &str, mapping: &str) -> u64 {
    let mut inside = false;
    let mut total = 0;
    for line in text.lines() {
        // Mapping headers start with a lowercase-hex address range; fields with a key.
        let header = line.split_whitespace().next().is_some_and(|range| {
            range.contains('-') && range.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if header {
            inside = line.split_whitespace().nth(5) == Some(mapping);
        } else if inside {
            if let Some(v) = line.strip_prefix("Rss:") {
                total += v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

fn status_field_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Ids of the eBPF programs `pid` holds open (the `prog_id:` line of each fd's fdinfo).
pub fn prog_ids(pid: i32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in entries.flatten() {
        if let Ok(text) = fs::read_to_string(entry.path()) {
            if let Some(id) = fdinfo_prog_id(&text) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    ids.sort_unstable();
    ids
}

fn fdinfo_prog_id(text: &str) -> Option<u32> {
    text.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok())
}

/// The 1-minute load average, to say how quiet the machine was.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// `uname -r`.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no memory effects.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "42 (we ird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 99 1000 200";
        assert_eq!(parse_stat_ticks(text), Some(12));
    }

    #[test]
    fn reads_status_and_fdinfo_fields() {
        assert_eq!(status_field_kib("Name:\tx\nVmRSS:\t    5120 kB\n", "VmRSS:"), Some(5120));
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_id:\t311\nrun_cnt:\t0\n";
        assert_eq!(fdinfo_prog_id(fdinfo), Some(311));
        assert_eq!(fdinfo_prog_id("pos:\t0\nmap_id:\t3\n"), None);
    }

    #[test]
    fn sums_rss_of_one_kind_of_mapping() {
        let smaps = "7f00-7f10 r--s 00000000 00:0f 1 anon_inode:bpf-map\nSize: 8 kB\nRss: 8 kB\n\
                     7f10-7f20 rw-p 00000000 00:00 0 [heap]\nRss: 100 kB\n\
                     7f20-7f30 r--s 00000000 00:0f 1 anon_inode:bpf-map\nRss: 2048 kB\n";
        assert_eq!(smaps_rss_of(smaps, "anon_inode:bpf-map"), 2056);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id() as i32;
        assert!(rss_kib(pid).unwrap() > 0);
        cpu_stat_ns(pid).unwrap();
        cpu_sched_ns(pid).unwrap();
    }
}
