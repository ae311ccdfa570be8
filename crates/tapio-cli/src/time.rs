//! Time for `tapio events`: RFC 3339 parsing and printing (UTC) and relative durations,
//! without a date library (civil-date arithmetic from Howard Hinnant's algorithms).

use std::time::{SystemTime, UNIX_EPOCH};

const NS: i128 = 1_000_000_000;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}

/// `--since`: RFC 3339 (`2026-11-21T06:00:00Z`, offsets and fractions allowed) or a duration
/// before now (`90s`, `10m`, `2h`, `1d`). Returns Unix nanoseconds.
pub fn parse_since(text: &str, now: i128) -> Result<i128, String> {
    let t = text.trim();
    if let Some(d) = parse_relative(t) {
        return Ok(now - d);
    }
    parse_rfc3339(t).ok_or_else(|| {
        format!("--since {text:?} is neither RFC 3339 (2026-11-21T06:00:00Z) nor a duration (90s, 10m, 2h, 1d)")
    })
}

fn parse_relative(t: &str) -> Option<i128> {
    let unit_at = t.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = t.split_at(unit_at);
    let n: i128 = digits.parse().ok().filter(|n| *n < 1_000_000_000)?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    Some(n * secs * NS)
}

fn digits(s: &[u8]) -> Option<i128> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// RFC 3339 date-time → Unix nanoseconds.
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
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut frac_ns: i128 = 0;
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let n = after_dot.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, c) in after_dot[..n].iter().enumerate().take(9) {
            frac_ns += i128::from(c - b'0') * 10i128.pow(8 - i as u32);
        }
        rest = &after_dot[n..];
    }
    let offset_s = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let v = digits(&[*oh1, *oh2])? * 3_600 + digits(&[*om1, *om2])? * 60;
            if *sign == b'+' {
                v
            } else {
                -v
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3_600 + mi * 60 + s) - offset_s) * NS + frac_ns)
}

fn days_from_civil(y: i128, m: i128, d: i128) -> i128 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix nanoseconds → `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_ms(ns: i128) -> String {
    let secs = ns.div_euclid(NS);
    let ms = ns.rem_euclid(NS) / 1_000_000;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i128::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", sod / 3_600, sod % 3_600 / 60, sod % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_known_instants() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        // The README's example record.
        assert_eq!(parse_rfc3339("2026-11-21T06:26:24.941531851Z"), Some(1_795_242_384_941_531_851));
        assert_eq!(format_ms(1_795_242_384_941_531_851), "2026-11-21T06:26:24.941Z");
        assert_eq!(parse_rfc3339("2026-11-21T08:26:24+02:00"), parse_rfc3339("2026-11-21T06:26:24Z"));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00.5Z"), Some(951_825_600_500_000_000));
        assert_eq!(format_ms(951_825_600_500_000_000), "2000-02-29T12:00:00.500Z");
        for bad in ["2026-11-21", "2026-13-01T00:00:00Z", "2026-11-21T06:26:24", "2026-11-21T06:26:24.Z", "x"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn relative_durations_count_back_from_now() {
        let now = 10_000 * NS;
        assert_eq!(parse_since("10m", now), Ok(now - 600 * NS));
        assert_eq!(parse_since("90s", now), Ok(now - 90 * NS));
        assert_eq!(parse_since("1d", now), Ok(now - 86_400 * NS));
        assert!(parse_since("10 minutes", now).is_err());
        assert!(parse_since("", now).is_err());
    }
}
