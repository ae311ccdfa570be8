//! JSON lines on standard output, written by a thread of their own.
//!
//! A pipe nobody reads blocks a write for good. Written from the sink stage, that would
//! stop every other sink with it (the file, the controller's outbox), and the queue in
//! front of the stage would then overflow for all of them. So the stage only hands this
//! sink's lines to its writer thread, through a backlog of at most [`BACKLOG_BYTES`]:
//! lines that find the backlog full are counted failed at once and the stage goes on. The
//! writer counts each line it writes (or fails to write) as its write returns.
//!
//! It writes to file descriptor 1 directly rather than through `std::io::stdout()`: a
//! write blocked on a pipe nobody reads then holds no lock that the exit path or anything
//! else could wait for, so the agent can still count what it could not write and exit. On
//! a pipe (a container's stdout) it writes whole lines at most `PIPE_BUF` bytes at a time,
//! so a write blocked for good has delivered none of its lines.

use super::lines::Lines;
use super::{Delivered, Sink};
use crate::counters::Counters;
use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most bytes of lines waiting for the writer thread (besides the write it is in).
pub const BACKLOG_BYTES: usize = 512 * 1024;

/// How long dropping the sink (the sink stage's end, at shutdown) waits for the writer to
/// write out its backlog: within the runtime's bound for the whole stage. A writer blocked
/// for good is left to the process's exit; the books count what it held as failed.
const FINISH_WITHIN: Duration = Duration::from_secs(4);

const NAME: &str = "stdout";

pub struct StdoutSink {
    /// Lines taken since the last flush.
    lines: Lines,
    shared: Arc<Shared>,
    /// Whether lines are being dropped for want of backlog room (logged on change only).
    dropping: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The writer waits here for lines (or the close).
    work: Condvar,
    /// The closing sink waits here for the writer to go idle.
    idle: Condvar,
}

#[derive(Default)]
struct State {
    backlog: Lines,
    writing: bool,
    closed: bool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere leaves whole lines behind: keep using them.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: fstat writes only into the struct passed.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
    }
}

impl StdoutSink {
    /// Standard output, with its writer thread started.
    pub fn new(counters: Arc<Counters>) -> std::io::Result<Self> {
        Self::on_fd(1, counters)
    }

    /// `fd`, which stays open for the life of the process (tests give a pipe's end).
    fn on_fd(fd: RawFd, counters: Arc<Counters>) -> std::io::Result<Self> {
        // SAFETY: the caller keeps `fd` open for the life of the process, and ManuallyDrop
        // keeps this File from closing it.
        let out = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
        let atomic_writes = is_pipe(fd).then_some(libc::PIPE_BUF);
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("tapio-stdout".into())
            .spawn(move || write_out(out, atomic_writes, &theirs, &counters))?;
        Ok(Self { lines: Lines::default(), shared, dropping: false })
    }
}

/// The writer thread: writes the backlog out as it comes, until the sink closes.
fn write_out(mut out: ManuallyDrop<File>, atomic_writes: Option<usize>, shared: &Shared, counters: &Counters) {
    let mut batch = Lines::default();
    let mut failing = false;
    loop {
        {
            let mut st = lock(&shared.state);
            st.writing = false;
            shared.idle.notify_all();
            while st.backlog.lines() == 0 && !st.closed {
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.backlog.lines() == 0 {
                return;
            }
            // The emptied batch goes back as the next backlog: the two buffers take turns.
            std::mem::swap(&mut batch, &mut st.backlog);
            st.writing = true;
        }
        let w = batch.write_to(&mut *out, atomic_writes, &mut |d| count(counters, d));
        count(counters, w.delivered);
        failing = super::file::log_transition(NAME, failing, w.error.as_ref(), w.delivered.failed);
    }
}

fn count(counters: &Counters, d: Delivered) {
    if d.written > 0 || d.failed > 0 {
        counters.sink_delivered(NAME, d.written, d.failed);
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        NAME
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
        let mut st = lock(&self.shared.state);
        let room = st.backlog.lines() == 0 || st.backlog.bytes() + self.lines.bytes() <= BACKLOG_BYTES;
        if room {
            st.backlog.append(&mut self.lines);
            drop(st);
            self.shared.work.notify_one();
            if self.dropping {
                log::info!("sink {NAME}: the writer keeps up again");
                self.dropping = false;
            }
            return;
        }
        drop(st);
        let lost = self.lines.lines() as u64;
        self.lines.clear();
        if !self.dropping {
            log::warn!(
                "sink {NAME}: {BACKLOG_BYTES} bytes wait for a write that does not return (a reader that does not \
                 read?): {lost} lines dropped (counted failed), and later ones until it moves; the other sinks go on"
            );
            self.dropping = true;
        }
        report(Delivered { written: 0, failed: lost });
    }
}

impl Drop for StdoutSink {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        // What the stage did not flush (it always does before it ends) goes out too.
        st.backlog.append(&mut self.lines);
        st.closed = true;
        self.shared.work.notify_one();
        let deadline = Instant::now() + FINISH_WITHIN;
        while st.writing || st.backlog.lines() > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            st = self.shared.idle.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::mpsc;

    fn stdout_counts(counters: &Counters) -> (u64, u64) {
        let snapshot = counters.snapshot();
        snapshot.sinks.get(NAME).map(|c| (c.written, c.failed)).unwrap_or_default()
    }

    /// A pipe nobody reads: the sink's flushes all return (the stage is never blocked),
    /// what finds the backlog full is counted failed at once, and once the pipe is read,
    /// every line is written or failed exactly once and the pipe holds exactly those
    /// counted written.
    #[test]
    fn a_pipe_nobody_reads_never_blocks_the_stage_and_every_line_has_one_outcome() {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let [read_end, write_end] = fds;
        let counters = Arc::new(Counters::default());
        let mut sink = StdoutSink::on_fd(write_end, Arc::clone(&counters)).unwrap();
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(500));
        let line_len = line.len() - 1;
        const LINES: u64 = 8_000; // 4 MB: the 64 KiB pipe and the 512 KiB backlog many times over
        let (done_tx, done_rx) = mpsc::channel();
        let stage = std::thread::spawn(move || {
            let mut dropped = 0;
            for i in 0..LINES {
                sink.write_line(line.as_bytes());
                if i % 100 == 99 {
                    sink.flush(&mut |d| dropped += d.failed);
                }
            }
            done_tx.send(dropped).unwrap();
            sink
        });
        let dropped = done_rx.recv_timeout(Duration::from_secs(20)).expect("the stage's flushes never block");
        assert!(dropped > 0, "a full backlog drops at once");
        let sink = stage.join().unwrap();
        // Now read the pipe: the writer finishes its backlog, and dropping the sink waits
        // for that.
        // SAFETY: read_end is ours, and this File is its only owner.
        let mut reader = unsafe { File::from_raw_fd(read_end) };
        let read = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).unwrap();
            text
        });
        drop(sink);
        let (written, failed_by_writer) = stdout_counts(&counters);
        // SAFETY: write_end is ours; closing it ends the reader's read_to_string.
        unsafe { libc::close(write_end) };
        let text = read.join().unwrap();
        assert_eq!(text.lines().count() as u64, written, "written means in the pipe");
        assert_eq!(failed_by_writer, 0, "the writer failed nothing: the drops are the stage's, reported by flush");
        assert_eq!(written + dropped, LINES, "every line written or dropped, once");
        assert!(text.lines().all(|l| l.len() == line_len), "no torn line");
    }
}
