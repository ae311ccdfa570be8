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

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn lines(&self) -> usize {
        self.ends.len()
    }

    /// Writes every buffered line to `out` and empties the buffer, whatever happens.
    pub fn write_to(&mut self, out: &mut impl Write) -> WriteOut {
        let mut done = 0;
        let mut error = None;
        while done < self.buf.len() {
            match out.write(&self.buf[done..]) {
                Ok(0) => {
                    error = Some(io::Error::new(io::ErrorKind::WriteZero, "the destination took no bytes"));
                    break;
                }
                Ok(n) => done += n,
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
            delivered: Delivered { written: complete as u64, failed: (self.ends.len() - complete) as u64 },
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
        let w = lines.write_to(&mut out);
        assert_eq!(w.delivered, Delivered { written: 2, failed: 3 });
        assert_eq!((w.complete_bytes, w.torn_bytes), (22, 3));
        assert_eq!(w.error.map(|e| e.raw_os_error()), Some(Some(libc::ENOSPC)));
        assert_eq!((lines.bytes(), lines.lines()), (0, 0), "failed lines are dropped, not retried twice");

        lines.push(b"ab\n");
        let mut roomy = Limited { taken: Vec::new(), room: 100, chunk: 2 };
        let w = lines.write_to(&mut roomy);
        assert_eq!((w.delivered, w.torn_bytes, w.error.is_none()), (Delivered { written: 1, failed: 0 }, 0, true));
        assert_eq!(roomy.taken, b"ab\n");
    }
}
