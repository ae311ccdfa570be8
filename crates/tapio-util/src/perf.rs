//! `perf_event_open(2)` for hardware counters, with the first (64-byte) version of
//! `struct perf_event_attr`, which every kernel accepts. The node observer's PMC sampler
//! and `tapio doctor`'s PMU check both open counters through it.

use std::os::fd::{FromRawFd, OwnedFd};

pub const PERF_TYPE_HARDWARE: u32 = 0;
pub const PERF_COUNT_HW_CPU_CYCLES: u64 = 0;
pub const PERF_COUNT_HW_INSTRUCTIONS: u64 = 1;
pub const PERF_COUNT_HW_STALLED_CYCLES_BACKEND: u64 = 8;
pub const PERF_FORMAT_TOTAL_TIME_ENABLED: u64 = 1;
pub const PERF_FORMAT_TOTAL_TIME_RUNNING: u64 = 2;
pub const PERF_FORMAT_GROUP: u64 = 8;
/// `flags` bits of [`PerfEventAttr`].
pub const ATTR_DISABLED: u64 = 1;
pub const ATTR_EXCLUDE_KERNEL: u64 = 1 << 5;
pub const ATTR_EXCLUDE_HV: u64 = 1 << 6;
/// `perf_event_open` flag: the new descriptor is close-on-exec.
pub const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `struct perf_event_attr`, ABI version 0 (`PERF_ATTR_SIZE_VER0`, 64 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct PerfEventAttr {
    pub kind: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    /// The bit field (disabled, inherit, pinned, exclusive, exclude_user, …).
    pub flags: u64,
    pub wakeup_events: u32,
    pub bp_type: u32,
    pub config1: u64,
}

impl PerfEventAttr {
    /// A hardware counter of `config` (`PERF_COUNT_HW_*`), with its size field set.
    pub fn hardware(config: u64) -> Self {
        Self { kind: PERF_TYPE_HARDWARE, size: std::mem::size_of::<Self>() as u32, config, ..Self::default() }
    }
}

/// Opens a counter: `pid` -1 with a `cpu` counts everything on that CPU, `pid` 0 with cpu
/// -1 counts this process; `group` makes it a member of that leader's group.
pub fn perf_event_open(
    attr: &PerfEventAttr,
    pid: libc::pid_t,
    cpu: libc::c_int,
    group: Option<&OwnedFd>,
    flags: libc::c_ulong,
) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let group_fd = group.map_or(-1, |g| g.as_raw_fd());
    // SAFETY: `attr` is a live, initialised perf_event_attr whose size field is at most its
    // true size (the kernel reads no further); the other arguments are plain integers.
    let fd =
        unsafe { libc::syscall(libc::SYS_perf_event_open, attr as *const PerfEventAttr, pid, cpu, group_fd, flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attr_is_the_first_abi_version() {
        assert_eq!(std::mem::size_of::<PerfEventAttr>(), 64); // PERF_ATTR_SIZE_VER0
        let a = PerfEventAttr::hardware(PERF_COUNT_HW_INSTRUCTIONS);
        assert_eq!((a.kind, a.size, a.config), (PERF_TYPE_HARDWARE, 64, 1));
    }

    const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
    const PERF_EVENT_IOC_DISABLE: libc::c_ulong = 0x2401;

    fn is_root() -> bool {
        // SAFETY: geteuid has no memory effects.
        unsafe { libc::geteuid() == 0 }
    }

    /// Enables the counter `fd` (opened disabled), spins this thread for `work`, disables
    /// it and reads its one value (read_format 0).
    fn count_over(fd: &OwnedFd, work: std::time::Duration) -> u64 {
        use std::os::fd::AsRawFd;
        // SAFETY: ioctls without an argument on a perf event descriptor we own.
        assert_eq!(unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) }, 0, "enable");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < work {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_DISABLE, 0) }, 0, "disable");
        let mut value = 0u64;
        // SAFETY: reading 8 bytes into a u64 we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        assert_eq!(n, 8, "read the counter: {}", std::io::Error::last_os_error());
        value
    }

    /// A refusal for want of privilege, which only an unprivileged user may get
    /// (`perf_event_paranoid` 3 on some distributions refuses them even their own counters).
    fn refused_as_unprivileged(e: &std::io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) && !is_root()
    }

    /// A software clock counter exists on every kernel with perf events (VMs without a
    /// PMU included), so the syscall path itself is tested here: the counter opens (or,
    /// for an unprivileged user only, is refused), counts this thread's busy time, and a
    /// bogus event type is an error, never a descriptor.
    #[test]
    fn opens_a_counter_that_counts_or_says_why_not() {
        const PERF_TYPE_SOFTWARE: u32 = 1;
        const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            flags: ATTR_DISABLED | ATTR_EXCLUDE_KERNEL | ATTR_EXCLUDE_HV,
            ..PerfEventAttr::hardware(PERF_COUNT_SW_TASK_CLOCK)
        };
        match perf_event_open(&attr, 0, -1, None, PERF_FLAG_FD_CLOEXEC) {
            Ok(fd) => {
                let ns = count_over(&fd, std::time::Duration::from_millis(20));
                // At least a few ms of the 20 ms spun, at most a generous bound.
                assert!((1_000_000..10_000_000_000).contains(&ns), "task clock counted {ns} ns over 20 ms of work");
            }
            Err(e) => assert!(refused_as_unprivileged(&e), "task-clock counter (euid root: {}): {e}", is_root()),
        }
        let bogus = PerfEventAttr { kind: 0xffff, ..attr };
        assert!(perf_event_open(&bogus, 0, -1, None, PERF_FLAG_FD_CLOEXEC).is_err());
    }

    /// The hardware cycles counter, as the node observer opens them (this process here):
    /// where the machine has a PMU it counts; where it has none (many VMs, this test bed's
    /// too) the open fails with the errors the node observer reads as "no PMU", and the
    /// kernel lists no CPU PMU either.
    #[test]
    fn a_hardware_counter_counts_or_the_machine_has_no_pmu() {
        let attr = PerfEventAttr {
            flags: ATTR_DISABLED | ATTR_EXCLUDE_KERNEL | ATTR_EXCLUDE_HV,
            ..PerfEventAttr::hardware(PERF_COUNT_HW_CPU_CYCLES)
        };
        match perf_event_open(&attr, 0, -1, None, PERF_FLAG_FD_CLOEXEC) {
            Ok(fd) => {
                let cycles = count_over(&fd, std::time::Duration::from_millis(20));
                assert!(cycles > 0, "20 ms of work counted no cycles");
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV)) => {
                // x86's core PMU registers as `cpu` (hybrid parts: `cpu_core`, `cpu_atom`).
                if cfg!(target_arch = "x86_64") {
                    for pmu in ["cpu", "cpu_core", "cpu_atom"] {
                        let dir = std::path::Path::new("/sys/bus/event_source/devices").join(pmu);
                        assert!(!dir.exists(), "{} exists, yet cycles cannot be opened: {e}", dir.display());
                    }
                }
                eprintln!("no hardware PMU here ({e}): the cycles count is not checked");
            }
            Err(e) => assert!(refused_as_unprivileged(&e), "cycles counter (euid root: {}): {e}", is_root()),
        }
    }
}
