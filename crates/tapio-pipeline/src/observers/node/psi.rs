//! Pressure stall information: parsing /proc/pressure/<resource> and deciding when "some
//! avg10" crosses its threshold. Pure: unit-tested with recorded file contents.
//!
//! A crossing is evidence once: after it, avg10 must fall below threshold − margin (the
//! margin at most half the threshold) before the next crossing counts, so a value hovering
//! around the threshold is one event, not one per poll. Recovery is not evidence: it is
//! the absence of the anomaly, and a downstream system sees it as no further crossings.

/// One line of a PSI file; percentages in hundredths (the kernel prints two decimals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PsiLine {
    pub avg10: u32,
    pub avg60: u32,
    pub avg300: u32,
    pub total_us: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PsiReading {
    pub some: PsiLine,
    /// Absent in cpu files of kernels before 5.13.
    pub full: Option<PsiLine>,
}

/// "12.34" → 1234; anything that is not a percentage with exactly two decimals is refused.
fn hundredths(text: &str) -> Option<u32> {
    let (int, frac) = text.split_once('.')?;
    if int.is_empty() || int.len() > 3 || frac.len() != 2 {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = int.parse::<u32>().ok()? * 100 + frac.parse::<u32>().ok()?;
    (value <= 10_000).then_some(value)
}

fn parse_line(fields: &str) -> Option<PsiLine> {
    let mut line = PsiLine::default();
    let mut seen = 0u8;
    for field in fields.split_whitespace() {
        let (key, value) = field.split_once('=')?;
        match key {
            "avg10" => (line.avg10, seen) = (hundredths(value)?, seen | 1),
            "avg60" => (line.avg60, seen) = (hundredths(value)?, seen | 2),
            "avg300" => (line.avg300, seen) = (hundredths(value)?, seen | 4),
            "total" => (line.total_us, seen) = (value.parse().ok()?, seen | 8),
            // Newer kernels may add fields; the known ones are enough.
            _ => {}
        }
    }
    (seen == 15).then_some(line)
}

/// Parses a PSI file; None when its "some" line is missing or malformed.
pub fn parse(text: &str) -> Option<PsiReading> {
    let mut some = None;
    let mut full = None;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("some ") {
            some = Some(parse_line(rest)?);
        } else if let Some(rest) = l.strip_prefix("full ") {
            full = Some(parse_line(rest)?);
        }
    }
    Some(PsiReading { some: some?, full })
}

/// A threshold on "some avg10", in whole percent, and its re-arm level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub percent: u32,
    pub margin_percent: u32,
}

impl Threshold {
    /// Over when avg10 reaches the threshold.
    pub fn over(&self, avg10: u32) -> bool {
        avg10 >= self.percent * 100
    }

    /// avg10 (hundredths) must fall below this before another crossing counts.
    pub fn rearm_below(&self) -> u32 {
        self.percent * 100 - (self.margin_percent * 100).min(self.percent * 50)
    }
}

/// One-event-per-crossing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    armed: bool,
}

impl Default for Crossing {
    fn default() -> Self {
        Self { armed: true }
    }
}

impl Crossing {
    /// True exactly when a crossing is to be reported: `over` while armed. Re-arms when
    /// `rearm` (the value is back on the healthy side of the margin).
    pub fn observe(&mut self, over: bool, rearm: bool) -> bool {
        if self.armed && over {
            self.armed = false;
            return true;
        }
        if !self.armed && rearm && !over {
            self.armed = true;
        }
        false
    }

    pub fn reset(&mut self) {
        self.armed = true;
    }
}

/// Hundredths of a percent as text: 1234 → "12.34".
pub fn percent_text(hundredths: u32) -> String {
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded on the project's test VM (Linux 6.18) with four readers thrashing a file
    // twice the size of their v1 memory cgroup's limit.
    const MEMORY: &str = "some avg10=21.33 avg60=6.94 avg300=1.66 total=5491750\n\
                          full avg10=15.47 avg60=4.79 avg300=1.13 total=3795234\n";
    // The cpu file at the same moment: system-wide "full" is all zeros since 5.13.
    const CPU: &str = "some avg10=16.53 avg60=11.41 avg300=14.23 total=316144448\n\
                       full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
    // A cpu file from a kernel before 5.13: no "full" line.
    const CPU_OLD: &str = "some avg10=0.00 avg60=0.15 avg300=0.30 total=1234567\n";

    #[test]
    fn parses_some_and_full_lines_in_hundredths() {
        let r = parse(MEMORY).unwrap();
        assert_eq!(r.some, PsiLine { avg10: 2133, avg60: 694, avg300: 166, total_us: 5_491_750 });
        assert_eq!(r.full.unwrap().avg10, 1547);
        let r = parse(CPU).unwrap();
        assert_eq!((r.some.avg10, r.full.map(|f| f.total_us)), (1653, Some(0)));
        let r = parse(CPU_OLD).unwrap();
        assert_eq!((r.some.avg60, r.full), (15, None));
        assert_eq!(parse("some avg10=100.00 avg60=0.00 avg300=0.00 total=0\n").unwrap().some.avg10, 10_000);
    }

    #[test]
    fn malformed_files_are_refused_not_guessed() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("full avg10=1.00 avg60=0.00 avg300=0.00 total=1\n"), None, "no some line");
        assert_eq!(parse("some avg10=1.0 avg60=0.00 avg300=0.00 total=1\n"), None, "one decimal");
        assert_eq!(parse("some avg10=101.00 avg60=0.00 avg300=0.00 total=1\n"), None, "over 100%");
        assert_eq!(parse("some avg10=-1.00 avg60=0.00 avg300=0.00 total=1\n"), None);
        assert_eq!(parse("some avg10=1.00 avg60=0.00 total=1\n"), None, "a field missing");
        assert_eq!(parse("some avg10=1.00 avg60=0.00 avg300=0.00 total=x\n"), None);
        assert_eq!(parse("some avg10=1.00 avg60=0.00 avg300=0.00 total=1\nfull garbage\n"), None);
        assert_eq!(parse("\u{0}\u{ff}some"), None);
    }

    #[test]
    fn unknown_extra_fields_are_tolerated() {
        let r = parse("some avg10=2.00 avg60=1.00 avg300=0.50 total=9 avg1=3.00\n").unwrap();
        assert_eq!(r.some.avg10, 200);
    }

    #[test]
    fn rearm_level_is_threshold_minus_margin_capped_at_half() {
        assert_eq!(Threshold { percent: 10, margin_percent: 5 }.rearm_below(), 500);
        assert_eq!(Threshold { percent: 50, margin_percent: 5 }.rearm_below(), 4500);
        assert_eq!(Threshold { percent: 4, margin_percent: 5 }.rearm_below(), 200);
        assert_eq!(Threshold { percent: 1, margin_percent: 0 }.rearm_below(), 100);
    }

    /// avg10 samples (hundredths) of a pressure episode that hovers around a 10% threshold,
    /// dips just under it (not under the re-arm level), then recovers and comes back.
    #[test]
    fn a_hovering_value_is_one_crossing_and_a_real_return_is_another() {
        let t = Threshold { percent: 10, margin_percent: 5 };
        let samples = [0, 120, 900, 1150, 990, 1010, 870, 1500, 600, 480, 300, 20, 1100, 1300];
        let mut c = Crossing::default();
        let fired: Vec<usize> = samples
            .iter()
            .enumerate()
            .filter(|&(_, &v)| c.observe(t.over(v), v < t.rearm_below()))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(fired, vec![3, 12]);
    }

    #[test]
    fn already_over_at_start_is_a_crossing() {
        let t = Threshold { percent: 10, margin_percent: 5 };
        let mut c = Crossing::default();
        assert!(c.observe(t.over(2000), false));
        assert!(!c.observe(t.over(2000), false));
    }

    #[test]
    fn percent_text_keeps_two_decimals() {
        assert_eq!(percent_text(2340), "23.40");
        assert_eq!(percent_text(5), "0.05");
        assert_eq!(percent_text(10_000), "100.00");
    }
}
