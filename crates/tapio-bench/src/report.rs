//! The one table the benchmark prints: every figure next to its goal and a verdict.
//!
//! A figure that misses its goal says MISS; a figure that could not be taken says SKIPPED or
//! NOT MEASURED with the reason in the notes under the table. Nothing is left out silently.

use std::fmt::Write as _;

/// The verdict of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// A figure reported without a goal.
    Info,
    /// Not run in this invocation (e.g. needs root); the reason goes to the notes.
    Skipped(String),
    /// Tried, but the figure could not be obtained; the reason goes to the notes.
    NotMeasured(String),
}

impl Verdict {
    /// PASS when `ok`, else MISS.
    pub fn check(ok: bool) -> Self {
        if ok {
            Self::Pass
        } else {
            Self::Miss
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Miss => "MISS",
            Self::Info => "info",
            Self::Skipped(_) => "SKIPPED",
            Self::NotMeasured(_) => "NOT MEASURED",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: &'static str,
    pub measure: String,
    pub value: String,
    pub goal: String,
    pub verdict: Verdict,
}

/// Rows and free-form notes, printed together at the end.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    pub fn row(
        &mut self,
        section: &'static str,
        measure: impl Into<String>,
        value: impl Into<String>,
        goal: impl Into<String>,
        verdict: Verdict,
    ) {
        self.rows.push(Row { section, measure: measure.into(), value: value.into(), goal: goal.into(), verdict });
    }

    /// A row for a measurement that did not happen, with its reason.
    pub fn not_measured(&mut self, section: &'static str, measure: &str, goal: &str, why: String) {
        self.row(section, measure, "-", goal, Verdict::NotMeasured(why));
    }

    pub fn skipped(&mut self, section: &'static str, measure: &str, goal: &str, why: &str) {
        self.row(section, measure, "-", goal, Verdict::Skipped(why.to_string()));
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.rows.iter().filter(|r| f(&r.verdict)).count()
    }

    /// The table (pipe-separated, aligned, so it reads in a terminal and pastes into docs),
    /// then numbered reasons for every row that was not measured, then the notes.
    pub fn render(&self) -> String {
        let headers = ["part", "measure", "value", "goal", "result"];
        let mut reasons = Vec::new();
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                let mut result = r.verdict.label().to_string();
                if let Verdict::Skipped(why) | Verdict::NotMeasured(why) = &r.verdict {
                    reasons.push(format!("{}: {why}", r.measure));
                    write!(result, " [{}]", reasons.len()).ok();
                }
                [r.section.to_string(), r.measure.clone(), r.value.clone(), r.goal.clone(), result]
            })
            .collect();
        let mut widths = headers.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |out: &mut String, row: &[String]| {
            out.push('|');
            for (c, w) in row.iter().zip(widths) {
                let pad = w - c.chars().count();
                write!(out, " {c}{} |", " ".repeat(pad)).ok();
            }
            out.push('\n');
        };
        let mut out = String::new();
        line(&mut out, &headers.map(String::from));
        out.push('|');
        for w in widths {
            write!(out, "{}|", "-".repeat(w + 2)).ok();
        }
        out.push('\n');
        for row in &cells {
            line(&mut out, row);
        }
        if !reasons.is_empty() {
            out.push('\n');
            for (i, r) in reasons.iter().enumerate() {
                writeln!(out, "[{}] {r}", i + 1).ok();
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\nnotes:\n");
            for n in &self.notes {
                writeln!(out, "- {n}").ok();
            }
        }
        out
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The median of repeated figures (the lower middle one of an even count; NaN for none):
/// what a window or a round set is judged by, since one stalled by the host moves a mean
/// by more than the effect measured.
pub fn median(values: &[f64]) -> f64 {
    quartile(values, 2)
}

/// Quartile `q` (0 to 4: the least, the lower quartile, the median, the upper quartile, the
/// greatest) of repeated figures, taken at the sorted index at or below it; NaN for none.
pub fn quartile(values: &[f64], q: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len().saturating_sub(1) * q.min(4) / 4).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_lower_middle_and_ignores_one_outlier() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(median(&[5.0, 5.1, 598.0, 4.9, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn quartiles_run_from_the_least_to_the_greatest() {
        let sets = [28.8, 0.2, -13.9, -24.0, 0.5, 36.2, -14.7, -3.8, 13.8];
        let quartiles: Vec<f64> = (0..=4).map(|q| quartile(&sets, q)).collect();
        assert_eq!(quartiles, [-24.0, -13.9, 0.2, 13.8, 36.2]);
        assert!(quartile(&[], 1).is_nan());
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn skipped_rows_get_numbered_reasons() {
        let mut r = Report::default();
        r.row("size", "agent", "10", "<= 20", Verdict::check(true));
        r.skipped("idle", "rss", "<= 8 MB", "needs root");
        let text = r.render();
        assert!(text.contains("PASS"));
        assert!(text.contains("SKIPPED [1]"));
        assert!(text.contains("[1] rss: needs root"));
    }
}
