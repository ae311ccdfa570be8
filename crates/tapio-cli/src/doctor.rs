//! `tapio doctor`: what this node offers the agent, and so what will and will not work.
//!
//! Each check reads the kernel's own interfaces (`/proc`, `/sys`, one `perf_event_open`);
//! nothing is loaded or changed. Run it with the agent's privileges (root, or its
//! capabilities): capabilities and limits are those of this process. The exit status is 1
//! when the agent cannot run at all (kernel without ring buffers or BTF, no privilege to load
//! eBPF programs, or before 5.11 a locked-memory limit below its maps), else 0.

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use serde_json::json;
use tapio_util::perf::PerfEventAttr;

use crate::{out, table};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Ok,
    /// Works, or works partly; worth knowing.
    Warn,
    /// The agent cannot run.
    Fail,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

struct Check {
    name: &'static str,
    level: Level,
    detail: String,
}

/// What the checks found, for the per-observer verdicts.
#[derive(Default)]
struct Facts {
    kernel: Option<(u32, u32)>,
    btf: bool,
    can_load: bool,
    pmu: bool,
    psi: bool,
    tracefs: Option<String>,
    /// CAP_NET_ADMIN: the kernel requires it for the DNS observer's cgroup socket programs.
    net_admin: bool,
    /// Where the cgroup2 hierarchy is mounted: the DNS observer attaches at its root.
    cgroup2: Option<String>,
    /// Whether any cgroup filesystem is mounted: the container pressure observer reads it.
    cgroups: bool,
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// One line of /proc/self/mountinfo: mount point, filesystem type, super options.
struct Mount {
    point: String,
    fstype: String,
    options: String,
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    tapio_util::mountinfo::parse(&text)
        .map(|m| Mount {
            point: m.mount_point().display().to_string(),
            fstype: m.fstype.to_string(),
            options: m.super_options.to_string(),
        })
        .collect()
}

fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn check_kernel(f: &mut Facts) -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    f.kernel = kernel_version(&release);
    let (level, detail) = match f.kernel {
        None => (Level::Warn, format!("cannot read the kernel version ({release:?})")),
        Some(v) if v < (5, 8) => (Level::Fail, format!("{release}: BPF ring buffers need Linux 5.8 or later")),
        Some(_) => (Level::Ok, format!("{release} (BPF ring buffers need 5.8 or later)")),
    };
    Check { name: "kernel", level, detail }
}

fn check_btf(f: &mut Facts) -> Check {
    let path = "/sys/kernel/btf/vmlinux";
    match std::fs::metadata(path) {
        Ok(m) => {
            f.btf = true;
            Check { name: "btf", level: Level::Ok, detail: format!("{path} present ({} bytes)", m.len()) }
        }
        Err(e) => Check {
            name: "btf",
            level: Level::Fail,
            detail: format!(
                "{path}: {e}: the CO-RE programs cannot be loaded (kernel built without CONFIG_DEBUG_INFO_BTF)"
            ),
        },
    }
}

fn check_tracefs(f: &mut Facts, mounts: &[Mount]) -> Check {
    if let Some(m) = mounts.iter().find(|m| m.fstype == "tracefs") {
        f.tracefs = Some(m.point.clone());
        return Check { name: "tracefs", level: Level::Ok, detail: format!("mounted at {}", m.point) };
    }
    Check {
        name: "tracefs",
        level: Level::Warn,
        detail: "not mounted; the agent mounts it at /sys/kernel/tracing at start (needs CAP_SYS_ADMIN)".into(),
    }
}

/// The memory the agent's eBPF maps declare, all together (README "Budgets": the kernel
/// memory the agent asks to lock is held to this; the kernel's own overhead comes on top).
const MAP_BYTES: u64 = 7_340_032;

fn check_memlock(f: &Facts) -> Check {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only this struct.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    memlock(f.kernel, lim.rlim_cur)
}

/// Before 5.11 the kernel charges eBPF maps to RLIMIT_MEMLOCK, which the agent does not raise.
fn memlock(kernel: Option<(u32, u32)>, limit: u64) -> Check {
    let (level, detail) = match kernel {
        Some(v) if v >= (5, 11) => (Level::Ok, "not used: eBPF maps are charged to the memory cgroup (5.11+)".into()),
        _ if limit < MAP_BYTES => {
            (Level::Fail, format!("{limit} B: the eBPF maps need {MAP_BYTES} B and more before 5.11"))
        }
        _ => (Level::Ok, "covers the eBPF maps (charged to it before 5.11)".into()),
    };
    Check { name: "memlock", level, detail }
}

fn check_bpffs(mounts: &[Mount]) -> Check {
    match mounts.iter().find(|m| m.fstype == "bpf") {
        Some(m) => Check { name: "bpffs", level: Level::Ok, detail: format!("mounted at {}", m.point) },
        None => {
            Check { name: "bpffs", level: Level::Ok, detail: "not mounted; not needed (the agent pins nothing)".into() }
        }
    }
}

fn check_caps(f: &mut Facts) -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    else {
        return Check { name: "capabilities", level: Level::Warn, detail: "cannot read CapEff".into() };
    };
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    let names: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .iter()
    .filter(|(b, _)| has(*b))
    .map(|(_, n)| *n)
    .collect();
    let held =
        if names.is_empty() { "none of CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN".to_string() } else { names.join(", ") };
    f.can_load = (has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN);
    f.net_admin = has(CAP_NET_ADMIN);
    if !f.can_load {
        return Check {
            name: "capabilities",
            level: Level::Fail,
            detail: format!("CapEff {eff:016x}: {held}: loading eBPF programs needs CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN); run as root or grant them"),
        };
    }
    let mut detail = format!("CapEff {eff:016x}: {held}");
    if !has(CAP_SYS_RESOURCE) {
        detail.push_str(" (CAP_SYS_RESOURCE absent: fine on 5.11+, where BPF memory is cgroup-accounted)");
    }
    if !f.net_admin {
        detail.push_str(" (CAP_NET_ADMIN absent: the DNS observer cannot attach; the others run)");
        return Check { name: "capabilities", level: Level::Warn, detail };
    }
    Check { name: "capabilities", level: Level::Ok, detail }
}

fn check_cgroups(f: &mut Facts, mounts: &[Mount]) -> Check {
    let v2: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup2").collect();
    let v1: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup").collect();
    f.cgroup2 = v2.first().map(|m| m.point.clone());
    f.cgroups = !v2.is_empty() || !v1.is_empty();
    let v1_memory = v1.iter().find(|m| m.options.split(',').any(|o| o == "memory"));
    let v2_memory = v2.iter().find(|m| {
        std::fs::read_to_string(format!("{}/cgroup.controllers", m.point))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    });
    let memory = match (v1_memory, v2_memory) {
        (Some(m), _) => format!("memory controller: v1 at {} (it names the containers)", m.point),
        (None, Some(m)) => format!("memory controller: v2 at {}", m.point),
        (None, None) => "memory controller: not found".to_string(),
    };
    let (level, layout) = match (v2.first(), v1.is_empty()) {
        (Some(m), true) => (Level::Ok, format!("unified (cgroup v2 at {})", m.point)),
        (Some(m), false) => (Level::Ok, format!("hybrid (cgroup v2 at {}, {} v1 hierarchies)", m.point, v1.len())),
        (None, false) => {
            (Level::Warn, format!("legacy (v1 only, {} hierarchies): workload identity is coarser", v1.len()))
        }
        (None, true) => (Level::Warn, "no cgroup filesystem mounted: no workload identity".to_string()),
    };
    let level = if v1_memory.is_none() && v2_memory.is_none() { Level::Warn } else { level };
    Check { name: "cgroups", level, detail: format!("{layout}; {memory}") }
}

/// Opens the counter group the agent opens on each CPU (`tapio-pipeline`'s
/// `observers/node/pmc.rs`): cycles leading instructions, every task of the CPU (pid -1,
/// kernel included), here on CPU 0; closed at once.
fn probe_pmu(
    open: impl Fn(&PerfEventAttr, libc::pid_t, libc::c_int, Option<&OwnedFd>) -> io::Result<OwnedFd>,
) -> io::Result<()> {
    use tapio_util::perf::*;
    let attr = |config| PerfEventAttr {
        read_format: PERF_FORMAT_GROUP | PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING,
        ..PerfEventAttr::hardware(config)
    };
    let leader = open(&attr(PERF_COUNT_HW_CPU_CYCLES), -1, 0, None)?;
    open(&attr(PERF_COUNT_HW_INSTRUCTIONS), -1, 0, Some(&leader)).map(drop)
}

fn check_pmu(f: &mut Facts) -> Check {
    use tapio_util::perf::{perf_event_open, PERF_FLAG_FD_CLOEXEC};
    let err = match probe_pmu(|a, pid, cpu, g| perf_event_open(a, pid, cpu, g, PERF_FLAG_FD_CLOEXEC)) {
        Ok(()) => {
            f.pmu = true;
            return Check { name: "pmu", level: Level::Ok, detail: "CPU 0's cycles + instructions group opens".into() };
        }
        Err(e) => e,
    };
    let detail = match err.raw_os_error() {
        Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV) => {
            format!("no hardware PMU ({err}): typical of VMs without PMU passthrough")
        }
        Some(libc::EACCES | libc::EPERM) => {
            let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
            format!(
                "not permitted ({err}; perf_event_paranoid = {}): CPU-wide counters need CAP_PERFMON or it <= 0",
                paranoid.trim()
            )
        }
        _ => format!("perf_event_open failed: {err}"),
    };
    Check { name: "pmu", level: Level::Warn, detail }
}

fn check_psi(f: &mut Facts) -> Check {
    let missing: Vec<&str> = ["cpu", "memory", "io"]
        .into_iter()
        .filter(|r| std::fs::read_to_string(format!("/proc/pressure/{r}")).is_err())
        .collect();
    f.psi = missing.len() < 3;
    if missing.is_empty() {
        Check { name: "psi", level: Level::Ok, detail: "/proc/pressure/{cpu,memory,io} readable".into() }
    } else {
        Check {
            name: "psi",
            level: Level::Warn,
            detail: format!(
                "/proc/pressure/{{{}}} unreadable: kernel without CONFIG_PSI or booted with psi=0",
                missing.join(",")
            ),
        }
    }
}

/// (observer or evidence, works (None: cannot be told here), why).
fn verdicts(f: &Facts) -> Vec<(&'static str, Option<bool>, String)> {
    let base = f.btf && f.can_load && f.kernel.is_none_or(|v| v >= (5, 8));
    let why_not = |extra: &str| {
        if base {
            extra.to_string()
        } else {
            "the agent cannot load eBPF programs here (see the checks above)".to_string()
        }
    };
    let tracepoint =
        |event: &str| f.tracefs.as_ref().map(|t| std::path::Path::new(&format!("{t}/events/{event}")).exists());
    // Both OOM hooks (the typed one of 6.9+ and the pid one before it) are oom:mark_victim.
    // Without tracefs which tracepoints exist cannot be read (None), and the classic ones,
    // attached by name through it, do not attach.
    let oom = tracepoint("oom/mark_victim");
    let block = tracepoint("block");
    let reader = tracepoint("block/block_io_start");
    let works = |w: Option<bool>| if base { w } else { Some(false) };
    vec![
        (
            "network",
            Some(base),
            if base && f.tracefs.is_none() { "works; retransmits need tracefs".into() } else { why_not("") },
        ),
        ("container: abnormal_exit", Some(base), why_not("")),
        (
            "container: oom_kill",
            works(oom),
            match (base, oom) {
                (true, Some(false)) => "no oom:mark_victim tracepoint on this kernel".into(),
                (true, None) => "no tracefs: the pid hook (before 6.9) needs it".into(),
                _ => why_not(""),
            },
        ),
        (
            "storage",
            works(block),
            match (base, block, reader) {
                (true, Some(false), _) => "no block tracepoints on this kernel".into(),
                (true, None, _) => "no tracefs to find its tracepoints in".into(),
                (true, _, Some(false)) => "works; the reader's pid stays unknown (no block_io_start before 6.5)".into(),
                _ => why_not(""),
            },
        ),
        (
            "dns",
            Some(base && f.net_admin && f.cgroup2.is_some()),
            match (base, f.net_admin, &f.cgroup2) {
                (true, false, _) => "needs CAP_NET_ADMIN (cgroup socket programs)".into(),
                (true, true, None) => "needs a cgroup2 hierarchy (its programs attach at its root)".into(),
                _ => why_not(""),
            },
        ),
        (
            "container_pressure",
            Some(f.cgroups),
            if f.cgroups { String::new() } else { "no cgroup filesystem mounted: no containers to read".into() },
        ),
        (
            "node: pressure (psi)",
            Some(f.psi),
            if f.psi { String::new() } else { "no /proc/pressure: PSI is off in this kernel".into() },
        ),
        (
            "node: cpu_stall / ipc_degradation (pmc)",
            Some(f.pmu),
            if f.pmu {
                String::new()
            } else {
                "no usable hardware PMU: the pmc part reports itself unsupported".into()
            },
        ),
    ]
}

pub fn run(as_json: bool) -> Result<ExitCode, String> {
    let mut f = Facts::default();
    let m = mounts();
    let checks = [
        check_kernel(&mut f),
        check_btf(&mut f),
        check_tracefs(&mut f, &m),
        check_bpffs(&m),
        check_caps(&mut f),
        check_memlock(&f),
        check_cgroups(&mut f, &m),
        check_pmu(&mut f),
        check_psi(&mut f),
    ];
    let verdicts = verdicts(&f);
    let can_run = !checks.iter().any(|c| c.level == Level::Fail);
    let warnings = checks.iter().filter(|c| c.level == Level::Warn).count();
    if as_json {
        let v = json!({
            "agent_can_run": can_run,
            "checks": checks.iter().map(|c| json!({"name": c.name, "result": c.level.as_str().to_ascii_lowercase(), "detail": c.detail})).collect::<Vec<_>>(),
            "observers": verdicts.iter().map(|(n, w, d)| json!({"name": n, "works": w, "detail": d})).collect::<Vec<_>>(),
        });
        out(&format!("{v}\n"));
    } else {
        let rows: Vec<Vec<String>> =
            checks.iter().map(|c| vec![c.name.to_string(), c.level.as_str().to_string(), c.detail.clone()]).collect();
        let mut text = table::render(&["CHECK", "RESULT", "DETAIL"], &rows);
        text.push('\n');
        let rows: Vec<Vec<String>> = verdicts
            .iter()
            .map(|(n, w, d)| {
                vec![n.to_string(), w.map_or("unknown", |w| if w { "yes" } else { "no" }).into(), d.clone()]
            })
            .collect();
        text.push_str(&table::render(&["EVIDENCE", "WORKS", "WHY NOT"], &rows));
        text.push('\n');
        text.push_str(&if can_run {
            format!("verdict: the agent can run here ({warnings} warning{})\n", if warnings == 1 { "" } else { "s" })
        } else {
            "verdict: the agent cannot run here (see FAIL above)\n".to_string()
        });
        out(&text);
    }
    Ok(if can_run { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_facts_found() {
        let dir = std::env::temp_dir().join(format!("tapio-doctor-verdicts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("events/oom/mark_victim")).unwrap();
        std::fs::create_dir_all(dir.join("events/block/block_rq_issue")).unwrap();
        let mut f = Facts {
            kernel: Some((6, 1)),
            btf: true,
            can_load: true,
            tracefs: Some(dir.display().to_string()),
            cgroups: true,
            cgroup2: Some("/sys/fs/cgroup".into()),
            ..Facts::default()
        };
        let verdict = |f: &Facts, name: &str| verdicts(f).into_iter().find(|(n, ..)| *n == name).unwrap();
        assert_eq!(verdict(&f, "container: oom_kill").1, Some(true), "6.1 has oom:mark_victim: the pid hook works");
        let (_, works, why) = verdict(&f, "storage");
        assert!(works == Some(true) && why.contains("before 6.5"), "{why}");
        let (_, works, why) = verdict(&f, "dns");
        assert!(works == Some(false) && why.contains("CAP_NET_ADMIN"), "{why}");
        f.net_admin = true;
        assert_eq!(verdict(&f, "dns").1, Some(true));
        f.cgroup2 = None;
        let (_, works, why) = verdict(&f, "dns");
        assert!(works == Some(false) && why.contains("cgroup2"), "{why}");
        std::fs::remove_dir_all(dir.join("events/oom")).unwrap();
        let (_, works, why) = verdict(&f, "container: oom_kill");
        assert!(works == Some(false) && why.contains("mark_victim"), "{why}");
        assert_eq!(verdict(&f, "container_pressure").1, Some(true));
        f.cgroups = false;
        assert_eq!(verdict(&f, "container_pressure").1, Some(false));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without tracefs nothing says whether a tracepoint exists, and the classic tracepoints
    /// (the pid OOM hook, tcp_retransmit_skb) cannot attach: never a plain "yes".
    #[test]
    fn without_tracefs_tracepoint_verdicts_are_unknown_not_yes() {
        let mut f = Facts { kernel: Some((5, 10)), btf: true, can_load: true, ..Facts::default() };
        let verdict = |f: &Facts, name: &str| verdicts(f).into_iter().find(|(n, ..)| *n == name).unwrap();
        let (_, works, why) = verdict(&f, "container: oom_kill");
        assert!(works.is_none() && why.contains("tracefs"), "{why}");
        let (_, works, why) = verdict(&f, "storage");
        assert!(works.is_none() && why.contains("tracefs"), "{why}");
        let (_, works, why) = verdict(&f, "network");
        assert!(works == Some(true) && why.contains("retransmit"), "{why}");
        f.can_load = false;
        assert_eq!(verdict(&f, "container: oom_kill").1, Some(false), "nothing loads: no, not unknown");
    }

    /// Before 5.11 eBPF maps are charged to RLIMIT_MEMLOCK (a container runtime's default
    /// is often 64 KiB, or 8 MiB): below the maps' total the agent cannot run.
    #[test]
    fn a_memlock_limit_below_the_maps_fails_only_before_5_11() {
        assert_eq!(memlock(Some((5, 10)), 64 << 10).level, Level::Fail);
        assert_eq!(memlock(Some((5, 8)), MAP_BYTES - 1).level, Level::Fail);
        assert_eq!(memlock(None, 64 << 10).level, Level::Fail, "an unknown kernel may be an old one");
        assert_eq!(memlock(Some((5, 10)), 8 << 20).level, Level::Ok);
        assert_eq!(memlock(Some((5, 10)), libc::RLIM_INFINITY).level, Level::Ok);
        assert_eq!(memlock(Some((5, 11)), 64 << 10).level, Level::Ok, "5.11+: the memory cgroup is charged");
    }

    /// The probe opens what the agent opens: CPU 0's cycles + instructions group, counting
    /// every task (pid -1) in kernel and user mode, read as a group.
    #[test]
    fn the_pmu_probe_opens_the_agents_cpu_wide_group() {
        use tapio_util::perf::*;
        let calls = std::cell::RefCell::new(Vec::new());
        probe_pmu(|a, pid, cpu, group| {
            calls.borrow_mut().push((a.kind, a.config, a.flags, a.read_format, pid, cpu, group.is_some()));
            Ok(std::fs::File::open("/dev/null")?.into())
        })
        .unwrap();
        let group = PERF_FORMAT_GROUP | PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING;
        assert_eq!(
            calls.into_inner(),
            [
                (PERF_TYPE_HARDWARE, PERF_COUNT_HW_CPU_CYCLES, 0, group, -1, 0, false),
                (PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS, 0, group, -1, 0, true),
            ]
        );
        let refused = probe_pmu(|_, _, _, _| Err(io::Error::from_raw_os_error(libc::EACCES)));
        assert_eq!(refused.unwrap_err().raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("x"), None);
    }
}
