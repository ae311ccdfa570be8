//! RFC 3339 UTC time without a date library: formatting Unix nanoseconds (the evidence
//! record's `timestamp`, log lines, the CLI's table) and parsing what a user types
//! (`tapio events --since`). Calendar arithmetic is Howard Hinnant's proleptic Gregorian
//! day-count algorithm (400-year eras of 146,097 days).

const NANOS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Nanoseconds on `clock` (`libc::CLOCK_REALTIME`, `CLOCK_BOOTTIME`, …), signed as the
/// kernel keeps them.
pub fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we own; an unknown clock is an error
    // that leaves it zero.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Wall-clock nanoseconds since the Unix epoch (CLOCK_REALTIME; 0 before 1970).
pub fn now_unix_nanos() -> u64 {
    clock_ns(libc::CLOCK_REALTIME).max(0) as u64
}

/// Wall-clock seconds since the Unix epoch (0 before 1970).
pub fn now_unix_secs() -> u64 {
    now_unix_nanos() / 1_000_000_000
}

/// `unix_ns` as RFC 3339 UTC with nine fractional digits: `2026-11-21T06:12:28.123456789Z`.
pub fn rfc3339_nanos(unix_ns: u64) -> String {
    Rfc3339Nanos::default().format(unix_ns)
}

/// [`rfc3339_nanos`] for a stream of nearby instants (the agent's records): the date and
/// time of day are worked out once per second and kept, so most calls write only the nine
/// fractional digits.
#[derive(Debug, Clone)]
pub struct Rfc3339Nanos {
    /// The second `text` holds the date and time of day of (`u64::MAX`: none yet).
    secs: u64,
    text: [u8; 30],
}

impl Default for Rfc3339Nanos {
    fn default() -> Self {
        Self { secs: u64::MAX, text: *b"0000-00-00T00:00:00.000000000Z" }
    }
}

/// One instant as [`Rfc3339Nanos`] writes it, held inline (every evidence record carries one).
pub type Rfc3339Text = crate::text::AsciiText<30>;

impl Rfc3339Nanos {
    pub fn format(&mut self, unix_ns: u64) -> String {
        self.format_text(unix_ns).as_str().to_owned()
    }

    /// [`format`](Self::format) without an allocation.
    pub fn format_text(&mut self, unix_ns: u64) -> Rfc3339Text {
        let secs = unix_ns / 1_000_000_000;
        if secs != self.secs {
            let (days, sod) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days as i64);
            for (range, value) in [
                (0..4, y as u64),
                (5..7, u64::from(m)),
                (8..10, u64::from(d)),
                (11..13, sod / 3_600),
                (14..16, sod % 3_600 / 60),
                (17..19, sod % 60),
            ] {
                write_digits(&mut self.text[range], value);
            }
            self.secs = secs;
        }
        // A u64 of nanoseconds ends in 2554: four digits of year are always enough.
        write_digits(&mut self.text[20..29], unix_ns % 1_000_000_000);
        // Digits and ASCII punctuation: this never falls back.
        Rfc3339Text::from_ascii(&self.text).unwrap_or_default()
    }
}

/// `value`'s last `out.len()` decimal digits, zero-padded. Written digit by digit: this runs
/// for every record and log line the agent writes, and the formatting machinery cost
/// several times as much.
fn write_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// `unix_ns` as RFC 3339 UTC with milliseconds: `2026-11-21T06:12:28.123Z`. Instants
/// before 1970 are negative; ones beyond the calendar's reach saturate.
pub fn rfc3339_millis(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(NANOS_PER_SEC);
    let millis = unix_ns.rem_euclid(NANOS_PER_SEC) / 1_000_000;
    // About 35 million years either way: far past any real instant, far from overflow.
    let secs = secs.clamp(-(1 << 50), 1 << 50) as i64;
    let (days, sod) = (secs.div_euclid(SECS_PER_DAY), secs.rem_euclid(SECS_PER_DAY));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", sod / 3_600, sod % 3_600 / 60, sod % 60)
}

/// (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Day count since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The number `s` writes in 1 to 18 ASCII digits (no sign). A loop rather than `str::parse`:
/// a tenth of the code, for a CLI with a size budget.
pub fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 18 {
        return None;
    }
    let mut n = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(c - b'0');
    }
    Some(n)
}

/// An RFC 3339 date-time (`2026-11-21T06:00:00Z`, `…T08:00:00.5+02:00`) as Unix
/// nanoseconds; `None` for anything else (a date alone, no offset, out-of-range fields: a
/// day past its month's end, such as `2026-02-30` or `2025-02-29`, an offset past `23:59`).
/// Fractions beyond nanoseconds are cut off.
pub fn parse_rfc3339(t: &str) -> Option<i128> {
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, s) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    // The month's last day: 31 in January, March, May, July, August, October, December.
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let last = if mo == 2 { 28 + i64::from(leap) } else { 30 + ((mo + mo / 8) & 1) };
    if !(1..=12).contains(&mo) || !(1..=last).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut frac_ns: i64 = 0;
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let n = after_dot.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, c) in after_dot[..n].iter().enumerate().take(9) {
            frac_ns += i64::from(c - b'0') * 10i64.pow(8 - i as u32);
        }
        rest = &after_dot[n..];
    }
    let offset_s = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let (oh, om) = (digits(&[*oh1, *oh2])?, digits(&[*om1, *om2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let v = oh * 3_600 + om * 60;
            if *sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60 + s - offset_s;
    Some(i128::from(secs) * NANOS_PER_SEC + i128::from(frac_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants_with_nanoseconds() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(1_763_700_000_000_000_002), "2025-11-21T04:40:00.000000002Z");
        // A leap day of a century leap year, and the end of a leap year.
        assert_eq!(rfc3339_nanos(951_827_696_000_000_789), "2000-02-29T12:34:56.000000789Z");
        assert_eq!(rfc3339_nanos(1_735_603_199_999_999_999), "2024-12-30T23:59:59.999999999Z");
        assert_eq!(rfc3339_nanos(4_102_444_799_999_999_999), "2099-12-31T23:59:59.999999999Z");
        assert_eq!(rfc3339_nanos(u64::MAX), "2554-07-21T23:34:33.709551615Z");
    }

    /// One formatter kept across instants (forward, back, across seconds, days and years)
    /// writes what a fresh one writes for each.
    #[test]
    fn a_kept_formatter_matches_a_fresh_one_for_every_instant() {
        let mut kept = Rfc3339Nanos::default();
        let mut instants = vec![0, 999_999_999, 1_000_000_000, u64::MAX, 1_735_603_199_999_999_999];
        instants.extend((0..2_000u64).map(|i| 1_735_603_198_000_000_000 + i * 1_234_567));
        instants.extend((0..200u64).rev().map(|i| 1_735_603_199_999_000_000 + i * 7_000_001));
        for ns in instants {
            let fresh = Rfc3339Nanos::default().format(ns);
            assert_eq!(kept.format(ns), fresh, "{ns}");
            assert_eq!(fresh.len(), 30);
        }
    }

    #[test]
    fn formats_milliseconds_also_before_the_epoch() {
        assert_eq!(rfc3339_millis(1_795_242_384_941_531_851), "2026-11-21T06:26:24.941Z");
        assert_eq!(rfc3339_millis(951_825_600_500_000_000), "2000-02-29T12:00:00.500Z");
        assert_eq!(rfc3339_millis(-1_000_000), "1969-12-31T23:59:59.999Z");
        // Far outside the calendar: saturates instead of overflowing.
        assert!(!rfc3339_millis(i128::MAX).is_empty());
        assert!(!rfc3339_millis(i128::MIN).is_empty());
    }

    #[test]
    fn parses_what_it_formats_and_refuses_the_rest() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        // The README's example record.
        assert_eq!(parse_rfc3339("2026-11-21T06:26:24.941531851Z"), Some(1_795_242_384_941_531_851));
        assert_eq!(parse_rfc3339("2026-11-21T08:26:24+02:00"), parse_rfc3339("2026-11-21T06:26:24Z"));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00.5Z"), Some(951_825_600_500_000_000));
        for ns in [0u64, 951_827_696_000_000_789, 1_795_242_384_941_531_851, u64::MAX] {
            assert_eq!(parse_rfc3339(&rfc3339_nanos(ns)), Some(i128::from(ns)), "{ns}");
        }
        for bad in ["2026-11-21", "2026-13-01T00:00:00Z", "2026-11-21T06:26:24", "2026-11-21T06:26:24.Z", "x", ""] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    /// Each month's last day is taken and the day after it refused, leap years included
    /// (2000 and 2024 are, 1900, 2025 and 2100 are not); offsets go up to 23:59.
    #[test]
    fn days_are_checked_against_their_month_and_offsets_against_a_day() {
        for (date, ok) in [
            ("2026-01-31", true),
            ("2026-02-28", true),
            ("2026-02-29", false),
            ("2026-02-30", false),
            ("2024-02-29", true),
            ("2000-02-29", true),
            ("1900-02-29", false),
            ("2100-02-29", false),
            ("2026-04-30", true),
            ("2026-04-31", false),
            ("2026-06-31", false),
            ("2026-09-31", false),
            ("2026-11-31", false),
            ("2026-12-31", true),
            ("2026-07-31", true),
            ("2026-08-31", true),
            ("2026-03-00", false),
            ("2026-00-10", false),
        ] {
            assert_eq!(parse_rfc3339(&format!("{date}T00:00:00Z")).is_some(), ok, "{date}");
        }
        assert_eq!(parse_rfc3339("2026-03-01T00:00:00Z"), Some(1_772_323_200_000_000_000));
        assert_eq!(parse_rfc3339("2026-03-01T23:59:00+23:59"), parse_rfc3339("2026-03-01T00:00:00Z"));
        assert_eq!(parse_rfc3339("2026-03-01T00:00:00-23:59"), parse_rfc3339("2026-03-01T23:59:00Z"));
        for bad in ["+24:00", "-24:00", "+00:60", "+99:99", "+1:00", "+01:0a"] {
            assert_eq!(parse_rfc3339(&format!("2026-03-01T00:00:00{bad}")), None, "{bad}");
        }
        assert_eq!(digits(b"0042"), Some(42));
        assert_eq!(digits(b"999999999999999999"), Some(999_999_999_999_999_999));
        for bad in [&b""[..], b"-1", b"+1", b"1a", b"1 ", b"1234567890123456789"] {
            assert_eq!(digits(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        assert!(now_unix_nanos() > 1_790_000_000_000_000_000);
        assert!(now_unix_secs() > 1_790_000_000);
    }
}
