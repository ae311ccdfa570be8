//! Time for `tapio events`: relative durations (`--since 10m`), and RFC 3339 parsing and
//! printing (UTC) from the workspace's one implementation ([`tapio_util::time`]).

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
    let n = i128::from(tapio_util::time::digits(digits.as_bytes()).filter(|n| *n < 1_000_000_000)?);
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    Some(n * secs * NS)
}

/// RFC 3339 date-time → Unix nanoseconds.
pub use tapio_util::time::parse_rfc3339;

/// Unix nanoseconds → `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub use tapio_util::time::rfc3339_millis as format_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_too() {
        assert_eq!(parse_since("2026-11-21T06:26:24.941531851Z", 0), Ok(1_795_242_384_941_531_851));
        assert_eq!(format_ms(1_795_242_384_941_531_851), "2026-11-21T06:26:24.941Z");
        assert!(parse_since("2026-11-21", 0).is_err());
        assert!(parse_since("2026-02-30T00:00:00Z", 0).is_err(), "not March 2");
        assert!(parse_since("2026-11-21T06:00:00+99:99", 0).is_err());
    }

    #[test]
    fn relative_durations_count_back_from_now() {
        let now = 10_000 * NS;
        assert_eq!(parse_since("10m", now), Ok(now - 600 * NS));
        assert_eq!(parse_since("90s", now), Ok(now - 90 * NS));
        assert_eq!(parse_since("1d", now), Ok(now - 86_400 * NS));
        assert!(parse_since("10 minutes", now).is_err());
        assert!(parse_since("", now).is_err());
        assert!(parse_since("m", now).is_err());
        assert!(parse_since("-5m", now).is_err());
        assert!(parse_since("1000000000s", now).is_err());
        assert_eq!(parse_since("999999999s", now), Ok(now - 999_999_999 * NS));
    }
}
