//! A minimal structured logger: one logfmt line per record on stderr
//! (`ts=… level=… target=… msg="…"`). Small on purpose; the controller logs little.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

use crate::timefmt::rfc3339_nanos;

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        // Debug-formatting the message quotes and escapes it: one record, one line.
        let msg = record.args().to_string();
        let line = format!("ts={} level={level} target={} msg={msg:?}\n", rfc3339_nanos(nanos), record.target());
        // Nothing useful can be done if stderr is gone.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger (once; later calls are ignored).
pub fn init(level: LevelFilter) {
    // Leaked once per process: the logger must live as long as the program.
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
