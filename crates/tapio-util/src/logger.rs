//! The one log line format of the agent and the controller, for the `log` facade:
//!
//! `2026-11-21T06:12:28.123456789Z INFO tapio_agent::runtime: ready: node n`
//!
//! UTC timestamp, level, target, message; one record is one line. Control characters in
//! the message (a newline in a peer's error text) are escaped so that no record can forge
//! or split another. Scripts and tests match on `LEVEL target: message`.
//! (env_logger and friends would cost the agent more binary than its whole logging.)

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fmt::Write as _;
use std::io::Write as _;

struct StderrLogger {
    level: LevelFilter,
}

/// One record's line, newline included.
pub fn format_line(unix_ns: u64, level: Level, target: &str, message: &std::fmt::Arguments<'_>) -> String {
    let level = match level {
        Level::Error => "ERROR",
        Level::Warn => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    };
    let mut line = crate::time::rfc3339_nanos(unix_ns);
    // Writing to a String cannot fail.
    let _ = write!(line, " {level} {target}: ");
    let start = line.len();
    let _ = line.write_fmt(*message);
    if line[start..].contains(char::is_control) {
        let mut escaped = String::with_capacity(line.len() - start + 8);
        for c in line[start..].chars() {
            if c.is_control() {
                escaped.extend(c.escape_default());
            } else {
                escaped.push(c);
            }
        }
        line.truncate(start);
        line.push_str(&escaped);
    }
    line.push('\n');
    line
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(crate::time::now_unix_nanos(), record.level(), record.target(), record.args());
        // One write per line so concurrent threads do not interleave; a failed log write
        // has nowhere better to go.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// The level a setting names (`error`, `warn`, `info`, `debug`, `trace`, any case).
pub fn parse_level(text: &str) -> Option<LevelFilter> {
    text.trim().parse().ok()
}

/// Installs the stderr logger at `level` (once per process; later calls change nothing).
pub fn init(level: LevelFilter) {
    // Leaked once: the logger must live as long as the program.
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_is_one_line_in_the_shared_format() {
        let line = format_line(
            1_795_241_548_500_000_000,
            Level::Info,
            "tapio_agent::runtime",
            &format_args!("ready: {}", "node n"),
        );
        assert_eq!(line, "2026-11-21T06:12:28.500000000Z INFO tapio_agent::runtime: ready: node n\n");
        let line = format_line(0, Level::Warn, "t", &format_args!("counters {{\"a\":1}}"));
        assert_eq!(line, "1970-01-01T00:00:00.000000000Z WARN t: counters {\"a\":1}\n", "JSON stays readable");
    }

    #[test]
    fn a_message_cannot_split_or_forge_a_line() {
        let line =
            format_line(0, Level::Error, "t", &format_args!("peer said: \"x\"\n1970-01-01T00:00:00Z INFO t: forged\r"));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with("peer said: \"x\"\\n1970-01-01T00:00:00Z INFO t: forged\\r\n"), "{line}");
    }

    #[test]
    fn levels_parse_in_any_case() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("loud"), None);
    }
}
