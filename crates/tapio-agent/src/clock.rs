//! Kernel time to wall time.
//!
//! eBPF stamps facts with the boot clock (CLOCK_BOOTTIME, which keeps counting across
//! suspend). The offset to wall time moves when NTP steps the clock, so it is re-measured
//! periodically rather than computed once at start.

use std::sync::atomic::{AtomicI64, Ordering};

fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Nanoseconds since boot, on the clock `bpf_ktime_get_boot_ns()` reads.
pub fn boot_now_ns() -> u64 {
    now_ns(libc::CLOCK_BOOTTIME).max(0) as u64
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn wall_now_ns() -> u64 {
    now_ns(libc::CLOCK_REALTIME).max(0) as u64
}

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

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-21T06:12:28.123456789Z`.
pub fn rfc3339_nanos(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let nanos = unix_ns % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    // Written digit by digit: this runs once per evidence record, and the formatting
    // machinery cost several times as much. A u64 of nanoseconds ends in the year 2554.
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    for (range, value) in [
        (0..4, year as u64),
        (5..7, u64::from(month)),
        (8..10, u64::from(day)),
        (11..13, rem / 3600),
        (14..16, rem % 3600 / 60),
        (17..19, rem % 60),
        (20..29, nanos),
    ] {
        let mut v = value;
        for digit in out[range].iter_mut().rev() {
            *digit = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    out.iter().map(|&b| char::from(b)).collect()
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (the era-based algorithm: 400-year eras of 146097 days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.000000789
        assert_eq!(rfc3339_nanos(951_827_696_000_000_789), "2000-02-29T12:34:56.000000789Z");
        // 2026-11-21T06:12:28.5Z
        assert_eq!(rfc3339_nanos(1_795_241_548_500_000_000), "2026-11-21T06:12:28.500000000Z");
        assert_eq!(rfc3339_nanos(4_102_444_799_999_999_999), "2099-12-31T23:59:59.999999999Z");
        assert_eq!(rfc3339_nanos(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }

    #[test]
    fn boot_instants_map_near_now() {
        let clock = BootToWall::measured();
        let wall = clock.to_wall(boot_now_ns());
        let now = wall_now_ns();
        assert!(now.abs_diff(wall) < 50_000_000, "offset off by {} ns", now.abs_diff(wall));
    }
}
