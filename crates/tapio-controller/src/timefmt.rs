//! RFC 3339 UTC rendering of Unix nanoseconds (`2025-11-21T04:40:00.000000002Z`), used to
//! fill a record's `timestamp` when the agent sent only `timestamp_unix_nanos`.

use std::fmt::Write;

/// Formats `nanos` since the Unix epoch as RFC 3339 UTC with nine fractional digits.
pub fn rfc3339_nanos(nanos: u64) -> String {
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(30);
    // Writing to a String cannot fail.
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z", rem / 3600, (rem / 60) % 60, rem % 60);
    out
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm,
/// restricted to non-negative days, which is all a u64 of nanoseconds can reach).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(1_763_700_000_000_000_002), "2025-11-21T04:40:00.000000002Z");
        // Leap day and end of a leap year.
        assert_eq!(rfc3339_nanos(951_782_400_123_456_789), "2000-02-29T00:00:00.123456789Z");
        assert_eq!(rfc3339_nanos(1_735_603_199_999_999_999), "2024-12-30T23:59:59.999999999Z");
        assert_eq!(rfc3339_nanos(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }
}
