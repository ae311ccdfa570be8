//! Evidence sinks: where serialized records go. Each sink takes one JSON line at a time;
//! a failure is counted per sink by the caller and never stops the others.

mod file;
mod stdout;

pub use file::FileSink;
pub use stdout::StdoutSink;

use std::io;

pub trait Sink: Send {
    /// A short stable name for counters ("stdout", "file").
    fn name(&self) -> &'static str;
    /// Writes one complete line (it ends with `\n`).
    fn write_line(&mut self, line: &[u8]) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}
