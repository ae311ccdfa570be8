//! JSON lines on standard output, written by a thread of their own.
//!
//! A pipe nobody reads blocks a write for good. Written from the sink stage, that would
//! stop every other sink with it (the file, the controller's outbox), and the queue in
//! front of the stage would then overflow for all of them. So the stage only hands this
//! sink's lines to its writer thread, through a backlog of at most [`BACKLOG_BYTES`]. A
//! full backlog in front of a writer that moves (a file on a busy disk, a slow reader)
//! makes the stage wait for room while the queue in front has room for the wait: a burst
//! is delayed, not lost, and a reader slower than the evidence loses stdout's lines, not
//! the other sinks'. A writer that has moved no line for [`STUCK_AFTER`] (a reader that
//! does not read) is not waited for until it moves again. Lines that find the backlog full
//! and may not wait are counted failed at once. The writer counts each line it writes (or
//! fails to write) as its write returns.
//!
//! It writes to file descriptor 1 directly rather than through `std::io::stdout()`: a
//! write blocked on a pipe nobody reads then holds no lock that the exit path or anything
//! else could wait for, so the agent can still count what it could not write and exit. On
//! a pipe (a container's stdout) it writes whole lines at most `PIPE_BUF` bytes at a time,
//! so a write blocked for good has delivered none of its lines. Elsewhere (a file) a write
//! that fails part way through a line leaves a fragment: a newline ends it before the next
//! line, which would otherwise join it into one malformed line.

use super::lines::Lines;
use super::{Delivered, Sink};
use crate::counters::Counters;
use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most bytes of lines waiting for the writer thread (besides the write it is in): a
/// hand-over, not a store (a burst waits in the queue in front), so it stays small: it and
/// the batch in the write are both resident.
pub const BACKLOG_BYTES: usize = 128 * 1024;

/// How long a writer may go without moving a line before it is no longer waited for: a
/// slow reader moves a line far more often than this.
pub const STUCK_AFTER: Duration = Duration::from_secs(1);

/// How often a waiting flush looks at the queue in front: a flood fills its last quarter in
/// tens of milliseconds.
const WAIT_STEP: Duration = Duration::from_millis(5);

/// How long dropping the sink (the sink stage's end, at shutdown) waits for the writer to
/// write out its backlog: within the runtime's bound for the whole stage. A writer blocked
/// for good is left to the process's exit; the books count what it held as failed.
const FINISH_WITHIN: Duration = Duration::from_secs(3);

const NAME: &str = "stdout";

pub struct StdoutSink {
    /// Lines taken since the last flush.
    lines: Lines,
    shared: Arc<Shared>,
    /// Whether the writer has moved nothing for [`STUCK_AFTER`] while a flush waited: it is
    /// not waited for again until its backlog has room.
    stuck: bool,
    /// Whether lines are being dropped for want of backlog room (logged on change only).
    dropping: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The writer waits here for lines (or the close).
    work: Condvar,
    /// The closing sink waits here for the writer to go idle, and a flush for backlog room.
    idle: Condvar,
    /// Lines the writer has written or failed: a flush waiting for room sees it move.
    moved: AtomicU64,
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
        Ok(Self { lines: Lines::default(), shared, stuck: false, dropping: false })
    }
}

/// The writer thread: writes the backlog out as it comes, until the sink closes.
fn write_out(mut out: ManuallyDrop<File>, atomic_writes: Option<usize>, shared: &Shared, counters: &Counters) {
    let mut batch = Lines::default();
    let mut failing = false;
    // A write that failed part way through a line (stdout a file on a full disk) left a
    // fragment there: it is ended with a newline first, or the next line would join it.
    let mut torn = false;
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
            // The backlog has room again.
            shared.idle.notify_all();
        }
        let w = match if torn { out.write(b"\n") } else { Ok(1) } {
            Ok(1) => {
                let w = batch.write_to(&mut *out, atomic_writes, &mut |d| count(counters, shared, d));
                torn = w.torn_bytes > 0;
                w
            }
            // Still no way to end the fragment: these lines would join it.
            Ok(_) => batch.fail_all(std::io::ErrorKind::WriteZero.into()),
            Err(e) => batch.fail_all(e),
        };
        count(counters, shared, w.delivered);
        failing = super::file::log_transition(NAME, failing, w.error.as_ref(), w.delivered.failed);
    }
}

fn count(counters: &Counters, shared: &Shared, d: Delivered) {
    if d.written > 0 || d.failed > 0 {
        counters.sink_delivered(NAME, d.written, d.failed);
        shared.moved.fetch_add(d.written + d.failed, Ordering::Relaxed);
    }
}

fn has_room(st: &State, adding: usize) -> bool {
    st.backlog.lines() == 0 || st.backlog.bytes() + adding <= BACKLOG_BYTES
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

    fn flush(&mut self, may_wait: &dyn Fn() -> bool, report: &mut dyn FnMut(Delivered)) {
        if self.lines.lines() == 0 {
            return;
        }
        let adding = self.lines.bytes();
        let mut st = lock(&self.shared.state);
        if !self.stuck {
            // Wait for room while the writer moves and the queue can hold what arrives
            // meanwhile.
            let mut moved = self.shared.moved.load(Ordering::Relaxed);
            let mut last_move = Instant::now();
            while !has_room(&st, adding) && may_wait() {
                if last_move.elapsed() >= STUCK_AFTER {
                    self.stuck = true;
                    break;
                }
                st = self.shared.idle.wait_timeout(st, WAIT_STEP).unwrap_or_else(|p| p.into_inner()).0;
                let now_moved = self.shared.moved.load(Ordering::Relaxed);
                if now_moved != moved {
                    moved = now_moved;
                    last_move = Instant::now();
                }
            }
        }
        if has_room(&st, adding) {
            st.backlog.append(&mut self.lines);
            drop(st);
            self.shared.work.notify_one();
            self.stuck = false;
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
            let why = if self.stuck { "its write has moved nothing for 1 s" } else { "the queue has no room to wait" };
            log::warn!(
                "sink {NAME}: the writer is behind and {why}: {lost} lines dropped (counted failed), and later \
                 ones until it catches up; the other sinks go on"
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

    /// Opens a pipe and starts a sink writing into it: (sink, read end, write end).
    fn sink_on_a_pipe(counters: &Arc<Counters>) -> (StdoutSink, RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let [read_end, write_end] = fds;
        (StdoutSink::on_fd(write_end, Arc::clone(counters)).unwrap(), read_end, write_end)
    }

    const LINES: u64 = 8_000; // 4 MB: the 64 KiB pipe and the 128 KiB backlog many times over

    /// Runs the stage's side on its own thread: `LINES` lines, a flush every 100, with a
    /// queue in front that has room to wait (`queue_has_room`) or not; sends the lines its
    /// flushes reported dropped when it is done.
    fn stage(
        mut sink: StdoutSink,
        queue_has_room: bool,
        done: mpsc::Sender<u64>,
    ) -> std::thread::JoinHandle<StdoutSink> {
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(500));
        std::thread::spawn(move || {
            let mut dropped = 0;
            for i in 0..LINES {
                sink.write_line(line.as_bytes());
                if i % 100 == 99 {
                    sink.flush(&|| queue_has_room, &mut |d| dropped += d.failed);
                }
            }
            done.send(dropped).unwrap();
            sink
        })
    }

    /// A pipe nobody reads: the stage waits for room once, for [`STUCK_AFTER`], then its
    /// flushes return at once and what finds the backlog full is counted failed; once the
    /// pipe is read, every line is written or failed exactly once and the pipe holds
    /// exactly those counted written.
    #[test]
    fn a_pipe_nobody_reads_holds_the_stage_only_until_it_is_stuck_and_every_line_has_one_outcome() {
        let counters = Arc::new(Counters::default());
        let (sink, read_end, write_end) = sink_on_a_pipe(&counters);
        let line_len = 510; // `{"pad":"…"}` around 500 bytes
        let (done_tx, done_rx) = mpsc::channel();
        let started = Instant::now();
        let stage = stage(sink, true, done_tx);
        let dropped = done_rx.recv_timeout(Duration::from_secs(20)).expect("the stage is held once, not for good");
        assert!(started.elapsed() >= STUCK_AFTER, "the stage waited for a writer that might still move");
        assert!(dropped > 0, "a stuck writer's full backlog drops");
        let sink = stage.join().unwrap();
        assert!(sink.stuck, "the writer was found stuck");
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

    /// A reader slower than the stage that keeps reading: a burst far beyond the backlog
    /// waits for room and loses nothing.
    #[test]
    fn a_slow_reader_that_keeps_reading_loses_no_line() {
        let counters = Arc::new(Counters::default());
        let (sink, read_end, write_end) = sink_on_a_pipe(&counters);
        // SAFETY: read_end is ours, and this File is its only owner.
        let mut reader = unsafe { File::from_raw_fd(read_end) };
        let read = std::thread::spawn(move || {
            let (mut text, mut chunk) = (Vec::new(), [0u8; 4096]);
            loop {
                match reader.read(&mut chunk).unwrap() {
                    0 => return String::from_utf8(text).unwrap(),
                    n => text.extend_from_slice(&chunk[..n]),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let (done_tx, done_rx) = mpsc::channel();
        let stage = stage(sink, true, done_tx);
        let dropped = done_rx.recv_timeout(Duration::from_secs(60)).expect("the slow reader finishes");
        drop(stage.join().unwrap());
        let (written, failed) = stdout_counts(&counters);
        // SAFETY: write_end is ours; closing it ends the reader.
        unsafe { libc::close(write_end) };
        let text = read.join().unwrap();
        assert_eq!((dropped, failed), (0, 0), "nothing dropped or failed");
        assert_eq!(written, LINES);
        assert_eq!(text.lines().count() as u64, LINES, "every line in the pipe");
    }

    /// Stdout a file whose writes fail part way (a file size limit, as a full disk): the
    /// line torn by the failed write is counted failed, and its fragment is ended with a
    /// newline before the next line, so every line counted written is whole in the file.
    #[test]
    fn a_fragment_a_failed_write_left_in_a_file_is_ended_before_the_next_line() {
        if !tapio_util::test_process::alone_in_a_child(
            module_path!(),
            "a_fragment_a_failed_write_left_in_a_file_is_ended_before_the_next_line",
        ) {
            return;
        }
        use std::os::fd::IntoRawFd;
        let dir = tapio_util::test_dirs::scratch("stdout-torn");
        let path = dir.join("stdout.jsonl");
        let fd = std::fs::File::create(&path).unwrap().into_raw_fd(); // open until the child exits
        let set_file_size_limit = |soft: libc::rlim_t| {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit and setrlimit read and write only this struct; ignoring
            // SIGXFSZ makes a write past the limit fail with EFBIG instead of killing us.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
                lim.rlim_cur = soft.min(lim.rlim_max);
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
            }
        };
        let counters = Arc::new(Counters::default());
        let mut sink = StdoutSink::on_fd(fd, Arc::clone(&counters)).unwrap();
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(29)); // 40 bytes
        let settled = |lines: u64| {
            let until = Instant::now() + Duration::from_secs(10);
            while stdout_counts(&counters).0 + stdout_counts(&counters).1 < lines && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            stdout_counts(&counters)
        };
        set_file_size_limit(100); // two lines and half of the third
        for _ in 0..5 {
            sink.write_line(line.as_bytes());
        }
        sink.flush(&|| true, &mut |_| {});
        assert_eq!(settled(5), (2, 3), "the torn line and the two after it failed");
        set_file_size_limit(libc::RLIM_INFINITY);
        for _ in 0..2 {
            sink.write_line(line.as_bytes());
        }
        sink.flush(&|| true, &mut |_| {});
        assert_eq!(settled(7), (4, 3));
        drop(sink);
        let text = std::fs::read_to_string(&path).unwrap();
        let whole: Vec<_> = text.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()).collect();
        assert_eq!(whole.len(), 4, "every line counted written is whole: {text:?}");
        assert_eq!(text.lines().count(), 5, "and the fragment is a line of its own: {text:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A queue in front without room to wait: a full backlog is not waited for, even for a
    /// writer that may still move; its lines are counted failed at once.
    #[test]
    fn a_full_backlog_is_not_waited_for_when_the_queue_has_no_room() {
        let counters = Arc::new(Counters::default());
        let (sink, read_end, write_end) = sink_on_a_pipe(&counters);
        let (done_tx, done_rx) = mpsc::channel();
        let stage = stage(sink, false, done_tx);
        let dropped = done_rx.recv_timeout(Duration::from_secs(20)).expect("the stage is not held");
        let sink = stage.join().unwrap();
        assert!(dropped > 0, "a full backlog drops");
        assert!(!sink.stuck, "the stage never waited out a writer that might move");
        // SAFETY: both ends are ours. Closing the read end fails the writer's blocked write
        // (EPIPE), so dropping the sink does not wait out its bound; the write end is closed
        // once the writer is gone.
        unsafe { libc::close(read_end) };
        drop(sink);
        // SAFETY: as above; the closed sink's writer writes no more.
        unsafe { libc::close(write_end) };
    }
}
