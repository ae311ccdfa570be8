//! Evidence sinks: where serialized records go. Each sink takes one JSON line at a time and
//! reports, per line, whether it reached its destination: a line counts as written only once
//! the file or pipe took all of its bytes, and every line a failed write held counts as
//! failed. A failure never stops the other sinks.

mod file;
mod lines;
/// The controller link's sink (it runs per record; the link itself is in tapio-control).
pub mod outbox;
mod stdout;

pub use file::FileSink;
pub use lines::{Delivered, Lines};
pub use stdout::StdoutSink;

/// Bytes a sink buffers before it writes them out, even while the queue is not dry.
pub const FLUSH_AT_BYTES: usize = 64 * 1024;

pub trait Sink: Send {
    /// A short stable name for counters ("stdout", "file", "controller").
    fn name(&self) -> &'static str;
    /// Takes one complete line (it ends with `\n`). It is not delivered yet: its outcome is
    /// reported by a later [`Sink::flush`].
    fn write_line(&mut self, line: &[u8]);
    /// Bytes taken and not yet written out.
    fn buffered_bytes(&self) -> usize;
    /// Writes out what is buffered, and passes to `report` the lines that reached the
    /// destination and those that failed since the last call (as soon as it knows them: a
    /// write that blocks for good leaves what came before it counted). `may_wait` says, as
    /// long as it is asked, whether the queue in front still has room for the stage to wait
    /// on a slow destination (the file sink writes in the stage and does not ask).
    fn flush(&mut self, may_wait: &dyn Fn() -> bool, report: &mut dyn FnMut(Delivered));
}
