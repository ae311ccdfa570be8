//! A buffer of whole lines written out with an exact account of which lines arrived.
//!
//! `BufWriter` cannot say how many of its lines a failed flush lost, so the stdout and file
//! sinks buffer through this instead: it remembers where each line ends, writes with plain
//! `write` calls, and on an error counts the lines whose last byte the destination took as
//! written and the rest (the torn one included) as failed, then drops them.

use std::io::{self, Write};

/// Outcome counts of lines since the last report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub written: u64,
    pub failed: u64,
}

impl Delivered {
    pub fn add(&mut self, other: Delivered) {
        self.written += other.written;
        self.failed += other.failed;
    }
}

#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// Offset just past each buffered line.
    ends: Vec<usize>,
}

/// What one write-out did.
#[derive(Debug)]
pub struct WriteOut {
    /// Outcomes not yet passed to the progress callback.
    pub delivered: Delivered,
    /// Bytes of the lines that arrived whole.
    pub complete_bytes: usize,
    /// Bytes of a line that the destination took only in part (0 when none was torn).
    pub torn_bytes: usize,
    pub error: Option<io::Error>,
}

impl Lines {
    pub fn push(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.ends.push(self.buf.len());
    }

    /// Moves every line of `other` to the end of these, leaving `other` empty.
    pub fn append(&mut self, other: &mut Lines) {
        if self.ends.is_empty() {
            // Nothing here: take the other's buffers whole (and leave it these, emptied).
            self.buf.clear();
            std::mem::swap(self, other);
            return;
        }
        let base = self.buf.len();
        self.buf.extend_from_slice(&other.buf);
        self.ends.extend(other.ends.iter().map(|end| end + base));
        other.clear();
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn lines(&self) -> usize {
        self.ends.len()
    }

    /// Drops every buffered line as failed: the outcome of a write-out that could not begin.
    pub fn fail_all(&mut self, error: io::Error) -> WriteOut {
        let failed = self.lines() as u64;
        self.clear();
        WriteOut { delivered: Delivered { written: 0, failed }, complete_bytes: 0, torn_bytes: 0, error: Some(error) }
    }

    /// Writes every buffered line to `out` and empties the buffer, whatever happens.
    ///
    /// With `atomic_writes` (for a pipe, where a write of at most `PIPE_BUF` bytes is all or
    /// nothing) each write call carries whole lines of at most that many bytes, so a write
    /// that blocks for good has put nothing of its lines in the pipe and counting them as
    /// failed is exact. A single longer line still goes in one call.
    ///
    /// In that mode `progress` hears of the lines each write delivered as soon as it
    /// returns, so a later write that never returns leaves them counted.
    pub fn write_to(
        &mut self,
        out: &mut impl Write,
        atomic_writes: Option<usize>,
        progress: &mut dyn FnMut(Delivered),
    ) -> WriteOut {
        let mut reported = 0;
        let mut done = 0;
        let mut error = None;
        let mut next_line = 0;
        while done < self.buf.len() {
            let chunk_end = match atomic_writes {
                None => self.buf.len(),
                Some(max) => {
                    // Whole lines from `done` up to `max` bytes (at least one line).
                    while next_line < self.ends.len() && self.ends[next_line] <= done {
                        next_line += 1;
                    }
                    let mut end = self.ends[next_line];
                    while next_line + 1 < self.ends.len() && self.ends[next_line + 1] - done <= max {
                        next_line += 1;
                        end = self.ends[next_line];
                    }
                    end
                }
            };
            match out.write(&self.buf[done..chunk_end]) {
                Ok(0) => {
                    error = Some(io::Error::new(io::ErrorKind::WriteZero, "the destination took no bytes"));
                    break;
                }
                Ok(n) => {
                    done += n;
                    if atomic_writes.is_some() && done == chunk_end {
                        let complete = self.ends.partition_point(|&end| end <= done);
                        progress(Delivered { written: (complete - reported) as u64, failed: 0 });
                        reported = complete;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let complete = self.ends.partition_point(|&end| end <= done);
        let last_end = if complete == 0 { 0 } else { self.ends[complete - 1] };
        let out = WriteOut {
            delivered: Delivered { written: (complete - reported) as u64, failed: (self.ends.len() - complete) as u64 },
            complete_bytes: last_end,
            torn_bytes: done - last_end,
            error,
        };
        self.buf.clear();
        self.ends.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, `chunk` at a time, then fails with ENOSPC.
    struct Limited {
        taken: Vec<u8>,
        room: usize,
        chunk: usize,
    }

    impl Write for Limited {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.taken.len()).min(self.chunk);
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_counts_arrived_and_lost_lines_exactly() {
        let mut lines = Lines::default();
        for _ in 0..5 {
            lines.push(b"0123456789\n"); // 11 bytes
        }
        // Room for 2 whole lines and 3 bytes of the third.
        let mut out = Limited { taken: Vec::new(), room: 25, chunk: 4 };
        let w = lines.write_to(&mut out, None, &mut |_| panic!("no progress without atomic writes"));
        assert_eq!(w.delivered, Delivered { written: 2, failed: 3 });
        assert_eq!((w.complete_bytes, w.torn_bytes), (22, 3));
        assert_eq!(w.error.map(|e| e.raw_os_error()), Some(Some(libc::ENOSPC)));
        assert_eq!((lines.bytes(), lines.lines()), (0, 0), "failed lines are dropped, not retried twice");

        lines.push(b"ab\n");
        let mut roomy = Limited { taken: Vec::new(), room: 100, chunk: 2 };
        let w = lines.write_to(&mut roomy, None, &mut |_| {});
        assert_eq!((w.delivered, w.torn_bytes, w.error.is_none()), (Delivered { written: 1, failed: 0 }, 0, true));
        assert_eq!(roomy.taken, b"ab\n");
    }

    #[test]
    fn appended_lines_keep_their_bounds_and_the_source_is_left_empty() {
        let mut a = Lines::default();
        let mut b = Lines::default();
        b.push(b"one\n");
        a.append(&mut b);
        assert_eq!((a.lines(), a.bytes(), b.lines(), b.bytes()), (1, 4, 0, 0), "into an empty one: taken whole");
        b.push(b"two\n");
        b.push(b"three\n");
        a.append(&mut b);
        assert_eq!((a.lines(), b.lines(), b.bytes()), (3, 0, 0));
        let mut calls = Calls(Vec::new());
        let w = a.write_to(&mut calls, Some(8), &mut |_| {});
        assert_eq!(calls.0, vec![8, 6], "whole lines per write: the appended bounds are right");
        assert_eq!(w.delivered.failed, 0);
    }

    /// Records the size of every write call.
    struct Calls(Vec<usize>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn atomic_writes_carry_whole_lines_within_the_limit() {
        let mut lines = Lines::default();
        for len in [10, 10, 10, 25, 3, 3] {
            let mut l = vec![b'x'; len - 1];
            l.push(b'\n');
            lines.push(&l);
        }
        let mut calls = Calls(Vec::new());
        let mut progress = Vec::new();
        let w = lines.write_to(&mut calls, Some(20), &mut |d| progress.push(d.written));
        // Each write's lines are reported as it returns: nothing is left for the end.
        assert_eq!(progress, vec![2, 1, 1, 2]);
        assert_eq!(w.delivered, Delivered { written: 0, failed: 0 });
        // 10+10 fit, the third starts a new write, the 25-byte line goes alone.
        assert_eq!(calls.0, vec![20, 10, 25, 6]);
    }
}
