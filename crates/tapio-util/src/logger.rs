//! The one log line format of the agent and the controller, for the `log` facade:
//!
//! `2026-11-21T06:12:28.123456789Z INFO tapio_agent::runtime: ready: node n`
//!
//! UTC timestamp, level, target, message; one record is one line. A line break in the
//! message (a newline in a peer's error text) becomes a space, so that no record can
//! forge or split another. Scripts and tests match on `LEVEL target: message`.
//! (env_logger and friends would cost the agent more binary than its whole logging.)

use log::{Level, LevelFilter, Log, Metadata, Record};
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
    let ts = crate::time::rfc3339_nanos(unix_ns);
    let mut line = format!("{ts} {level} {target}: {message}\n");
    let end = line.len() - 1;
    // Only CR and LF can end a line early (the time, level and target hold neither): each
    // becomes a space. A byte scan keeps this small in the agent.
    // SAFETY: only the ASCII bytes CR and LF are replaced, by the ASCII space, so the
    // String stays valid UTF-8.
    let bytes = unsafe { line.as_bytes_mut() };
    for b in &mut bytes[..end] {
        if matches!(*b, b'\n' | b'\r') {
            *b = b' ';
        }
    }
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

    // stderr is unbuffered: every line is written when it is logged.
    fn flush(&self) {}
}

/// The level a setting names (`error`, `warn`, `info`, `debug`, `trace`).
pub fn parse_level(text: &str) -> Option<LevelFilter> {
    match text {
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
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
        assert!(line.ends_with("peer said: \"x\" 1970-01-01T00:00:00Z INFO t: forged \n"), "{line}");
    }

    #[test]
    fn levels_parse_by_their_names() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("warn"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("loud"), None);
    }
}
