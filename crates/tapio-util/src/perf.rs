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

    /// A software clock counter exists on every kernel with perf events (VMs without a
    /// PMU included), so the syscall path itself is tested here; a refusal must be an
    /// error, never a descriptor.
    #[test]
    fn opens_a_counter_or_says_why_not() {
        const PERF_TYPE_SOFTWARE: u32 = 1;
        const PERF_COUNT_SW_TASK_CLOCK: u64 = 1;
        let attr = PerfEventAttr {
            kind: PERF_TYPE_SOFTWARE,
            flags: ATTR_DISABLED | ATTR_EXCLUDE_KERNEL | ATTR_EXCLUDE_HV,
            ..PerfEventAttr::hardware(PERF_COUNT_SW_TASK_CLOCK)
        };
        match perf_event_open(&attr, 0, -1, None, PERF_FLAG_FD_CLOEXEC) {
            Ok(fd) => {
                use std::os::fd::AsRawFd;
                assert!(fd.as_raw_fd() >= 0);
            }
            // perf_event_paranoid 3 (some distributions) refuses unprivileged users.
            Err(e) => assert!(matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)), "{e}"),
        }
        let bogus = PerfEventAttr { kind: 0xffff, ..attr };
        assert!(perf_event_open(&bogus, 0, -1, None, PERF_FLAG_FD_CLOEXEC).is_err());
    }
}
