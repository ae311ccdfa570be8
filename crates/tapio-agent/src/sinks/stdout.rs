//! JSON lines on standard output, buffered and written out whenever the queue runs dry.
//!
//! It writes to file descriptor 1 directly rather than through `std::io::stdout()`: a
//! write blocked on a pipe nobody reads then holds no lock that the exit path or anything
//! else could wait for, so the agent can still count what it could not write and exit.

use super::lines::Lines;
use super::{Delivered, Sink};
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

pub struct StdoutSink {
    /// Never closed by us: fd 1 belongs to the process.
    out: ManuallyDrop<File>,
    lines: Lines,
    delivered: Delivered,
    failing: bool,
}

impl StdoutSink {
    pub fn new() -> Self {
        // SAFETY: fd 1 is open for the life of the process, and ManuallyDrop keeps this
        // File from closing it.
        let out = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
        Self { out, lines: Lines::default(), delivered: Delivered::default(), failing: false }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn write_line(&mut self, line: &[u8]) {
        self.lines.push(line);
    }

    fn buffered_bytes(&self) -> usize {
        self.lines.bytes()
    }

    fn flush(&mut self) {
        if self.lines.lines() == 0 {
            return;
        }
        let w = self.lines.write_to(&mut *self.out);
        self.delivered.add(w.delivered);
        self.failing = super::file::log_transition("stdout", self.failing, w.error.as_ref(), w.delivered.failed);
    }

    fn take_delivered(&mut self) -> Delivered {
        std::mem::take(&mut self.delivered)
    }
}
