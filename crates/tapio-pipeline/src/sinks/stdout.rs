//! JSON lines on standard output, buffered and written out as the sink stage says (within
//! 5 ms of a quiet queue).
//!
//! It writes to file descriptor 1 directly rather than through `std::io::stdout()`: a
//! write blocked on a pipe nobody reads then holds no lock that the exit path or anything
//! else could wait for, so the agent can still count what it could not write and exit. On
//! a pipe (a container's stdout) it writes whole lines at most `PIPE_BUF` bytes at a time,
//! so a write blocked for good has delivered none of its lines.

use super::lines::Lines;
use super::{Delivered, Sink};
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

pub struct StdoutSink {
    /// Never closed by us: fd 1 belongs to the process.
    out: ManuallyDrop<File>,
    lines: Lines,
    failing: bool,
    /// `Some(PIPE_BUF)` when stdout is a pipe (see [`Lines::write_to`]).
    atomic_writes: Option<usize>,
}

fn is_pipe(fd: i32) -> bool {
    // SAFETY: fstat writes only into the struct passed.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
    }
}

impl StdoutSink {
    pub fn new() -> Self {
        // SAFETY: fd 1 is open for the life of the process, and ManuallyDrop keeps this
        // File from closing it.
        let out = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
        let atomic_writes = is_pipe(1).then_some(libc::PIPE_BUF);
        Self { out, lines: Lines::default(), failing: false, atomic_writes }
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

    fn flush(&mut self, report: &mut dyn FnMut(Delivered)) {
        if self.lines.lines() == 0 {
            return;
        }
        let w = self.lines.write_to(&mut *self.out, self.atomic_writes, report);
        report(w.delivered);
        self.failing = super::file::log_transition("stdout", self.failing, w.error.as_ref(), w.delivered.failed);
    }
}
