//! The one log line format of the agent and the controller, for the `log` facade:
//!
//! `2026-11-21T06:12:28.123456789Z INFO tapio_agent::runtime: ready: node n`
//!
//! UTC timestamp, level, target, message; one record is one line. A line break in the
//! message (a newline in a peer's error text) becomes a space, so that no record can
//! forge or split another. Scripts and tests match on `LEVEL target: message`.
//! (env_logger and friends would cost the agent more binary than its whole logging.)
//!
//! [`init`] writes each line to stderr as it is logged: a stderr nobody reads blocks the
//! caller. [`init_queued`] (the agent's) never blocks a caller: lines go to a bounded
//! queue ([`QUEUE_BYTES`]) that one thread writes out; a line that finds it full is dropped
//! and counted, and the writer says how many (`N log lines dropped`) once it can write
//! again. `log::logger().flush()` waits for the queue at most [`FLUSH_WITHIN`].

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fs::File;
use std::io::Write as _;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The most bytes of log lines waiting for the writer thread of [`init_queued`]: hundreds
/// of lines, more than the agent logs in a burst.
pub const QUEUE_BYTES: usize = 64 * 1024;

/// How long `log::logger().flush()` waits for the writer of [`init_queued`] to write out
/// the queue (at exit): a stderr nobody reads delays the exit by this much at most.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(1);

struct StderrLogger {
    level: LevelFilter,
    /// The queue of [`init_queued`]; `None`: each line is written by its caller.
    queue: Option<&'static Queue>,
}

/// Lines on their way to the writer thread.
struct Queue {
    state: Mutex<Pending>,
    /// The writer waits here for lines.
    work: Condvar,
    /// A flush waits here for the writer to go idle.
    idle: Condvar,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Lines that found the queue full since the writer last took it.
    dropped: u64,
    writing: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic elsewhere leaves whole lines behind: keep using them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A queue with its writer thread on `fd` (open for the life of the process).
    fn start(fd: RawFd) -> std::io::Result<&'static Queue> {
        let queue: &'static Queue = Box::leak(Box::new(Queue {
            state: Mutex::new(Pending::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
        }));
        // SAFETY: `fd` stays open for the life of the process, and ManuallyDrop keeps this
        // File from closing it.
        let out = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
        std::thread::Builder::new().name("tapio-log".into()).spawn(move || queue.write_out(out))?;
        Ok(queue)
    }

    /// Queues `line`, or drops and counts it when the queue is full; never waits for the
    /// writer.
    fn push(&self, line: &[u8]) {
        let mut st = self.lock();
        if st.lines.len() + line.len() <= QUEUE_BYTES {
            st.lines.extend_from_slice(line);
            self.work.notify_one();
        } else {
            st.dropped += 1;
        }
    }

    /// The writer thread: writes the queue out as it comes, one line per write (on a pipe
    /// a line of up to `PIPE_BUF` bytes lands whole, between another writer's lines), and
    /// after it the count of lines dropped meanwhile.
    fn write_out(&self, mut out: ManuallyDrop<File>) {
        let mut batch = Vec::new();
        loop {
            let dropped = {
                let mut st = self.lock();
                st.writing = false;
                self.idle.notify_all();
                while st.lines.is_empty() && st.dropped == 0 {
                    st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                // The emptied batch goes back as the next queue: the two buffers take turns.
                std::mem::swap(&mut batch, &mut st.lines);
                st.writing = true;
                std::mem::take(&mut st.dropped)
            };
            if dropped > 0 {
                let note = format_args!("{dropped} log lines dropped: stderr was not taking them");
                batch.extend_from_slice(
                    format_line(crate::time::now_unix_nanos(), Level::Warn, "tapio_util::logger", &note).as_bytes(),
                );
            }
            // A failed log write has nowhere better to go.
            for line in batch.split_inclusive(|&b| b == b'\n') {
                let _ = out.write_all(line);
            }
            batch.clear();
        }
    }

    /// Waits at most `within` for the writer to write out everything queued; false when it
    /// did not.
    fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut st = self.lock();
        while st.writing || !st.lines.is_empty() || st.dropped > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = self.idle.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
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
        match self.queue {
            Some(queue) => queue.push(line.as_bytes()),
            // One write per line so concurrent threads do not interleave; a failed log
            // write has nowhere better to go.
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    /// Unqueued, every line is written when it is logged; queued, waits for the writer at
    /// most [`FLUSH_WITHIN`].
    fn flush(&self) {
        if let Some(queue) = self.queue {
            queue.flush(FLUSH_WITHIN);
        }
    }
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

/// Installs the stderr logger at `level`, each line written by its caller (once per
/// process; later calls change nothing).
pub fn init(level: LevelFilter) {
    install(StderrLogger { level, queue: None });
}

/// Installs the stderr logger at `level` with its lines queued for a writer thread (once per
/// process; later calls change nothing). Without a thread, each line is written by its
/// caller. Call `log::logger().flush()` before exiting.
pub fn init_queued(level: LevelFilter) {
    install(StderrLogger { level, queue: Queue::start(2).ok() });
}

fn install(logger: StderrLogger) {
    // Leaked once: the logger must live as long as the program.
    let level = logger.level;
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
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

    /// A stderr nobody reads (a pipe): the callers never wait, what finds the queue full is
    /// dropped and counted, and once the pipe is read the writer says how many; every line
    /// is in the pipe whole, or counted in that line.
    #[test]
    fn a_stuck_writer_never_blocks_the_caller_and_its_drops_are_counted() {
        use std::io::Read;
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let [read_end, write_end] = fds;
        let queue = Queue::start(write_end).unwrap();
        const LINES: u64 = 4_000; // 800 KB: the 64 KiB pipe and the 64 KiB queue many times over
        let line = format!("{}\n", "x".repeat(199));
        let started = Instant::now();
        for _ in 0..LINES {
            queue.push(line.as_bytes());
        }
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "the callers waited for the writer: {took:?}");
        assert!(queue.lock().dropped > 0, "a full queue drops");
        assert!(!queue.flush(Duration::from_millis(100)), "a stuck writer cannot be flushed");
        // SAFETY: read_end is ours, and this File is its only owner.
        let mut reader = unsafe { File::from_raw_fd(read_end) };
        let read = std::thread::spawn(move || {
            let mut text = String::new();
            reader.read_to_string(&mut text).unwrap();
            text
        });
        assert!(queue.flush(Duration::from_secs(10)), "a read pipe takes the queue and the count");
        // SAFETY: write_end is ours; the writer is idle and writes no more. Closing it ends
        // the reader's read_to_string.
        unsafe { libc::close(write_end) };
        let text = read.join().unwrap();
        let (notes, lines): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.contains("log lines dropped"));
        assert!(lines.iter().all(|l| l.len() == 199), "whole lines only");
        // Usually one note; another when the writer moved on between drops.
        assert!(!notes.is_empty() && notes.iter().all(|n| n.contains(" WARN tapio_util::logger: ")), "{notes:?}");
        let dropped: u64 = notes
            .iter()
            .map(|n| n.split(": ").nth(1).and_then(|n| n.split(' ').next()).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(lines.len() as u64 + dropped, LINES, "every line in the pipe or counted dropped");
    }

    #[test]
    fn levels_parse_by_their_names() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("warn"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("loud"), None);
    }
}
