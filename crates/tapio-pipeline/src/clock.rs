//! Kernel time to wall time.
//!
//! eBPF stamps facts with the boot clock (CLOCK_BOOTTIME, which keeps counting across
//! suspend). The offset to wall time moves when NTP steps the clock, so it is re-measured
//! periodically rather than computed once at start.

use std::sync::atomic::{AtomicI64, Ordering};

// Reads a clock through the workspace's one clock_gettime call.
use tapio_util::time::clock_ns as now_ns;

/// Nanoseconds since boot, on the clock `bpf_ktime_get_boot_ns()` reads.
pub fn boot_now_ns() -> u64 {
    now_ns(libc::CLOCK_BOOTTIME).max(0) as u64
}

/// Wall-clock nanoseconds since the Unix epoch.
pub use tapio_util::time::now_unix_nanos as wall_now_ns;

/// The current offset between the wall clock and the boot clock.
#[derive(Debug, Default)]
pub struct BootToWall {
    offset_ns: AtomicI64,
}

impl BootToWall {
    pub fn measured() -> Self {
        let clock = Self::default();
        clock.remeasure();
        clock
    }

    /// Reads wall, boot, wall and keeps the midpoint, so a preemption between the two
    /// reads costs at most half of it.
    pub fn remeasure(&self) {
        let wall_before = now_ns(libc::CLOCK_REALTIME);
        let boot = now_ns(libc::CLOCK_BOOTTIME);
        let wall_after = now_ns(libc::CLOCK_REALTIME);
        let wall = wall_before + (wall_after - wall_before) / 2;
        self.offset_ns.store(wall - boot, Ordering::Relaxed);
    }

    /// Wall-clock nanoseconds for a boot-clock instant.
    pub fn to_wall(&self, boot_ns: u64) -> u64 {
        let wall = boot_ns as i64 + self.offset_ns.load(Ordering::Relaxed);
        wall.max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_instants_map_near_now() {
        let clock = BootToWall::measured();
        let wall = clock.to_wall(boot_now_ns());
        let now = wall_now_ns();
        assert!(now.abs_diff(wall) < 50_000_000, "offset off by {} ns", now.abs_diff(wall));
    }
}
