//! The event sink: accepted records go through a bounded queue to one writer thread.
//!
//! Request handlers never wait on the disk or a stdout pipe: [`SinkHandle::submit`] only
//! enqueues, and when the queued bytes would exceed the budget the records are dropped
//! and counted (`tapio_controller_sink_records_dropped_total{reason="queue_full"}`).
//! Write failures are counted the same way (`reason="write_error"`). On shutdown
//! [`SinkWriter::close`] drains what is queued, flushes and joins the thread.

pub mod rotate;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;
use crate::settings::SinkTarget;
use rotate::RotatingFile;

/// Queue slots; the byte budget is the real bound, this only caps tiny messages.
const QUEUE_SLOTS: usize = 65_536;

enum Msg {
    Lines { bytes: Vec<u8>, records: u64 },
    Close,
}

/// Where the writer thread writes.
enum Output {
    Stdout(io::BufWriter<io::Stdout>),
    File(RotatingFile),
    Discard,
}

impl Output {
    fn write_lines(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.write_all(buf),
            Self::File(f) => f.write_lines(buf),
            Self::Discard => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout(w) => w.flush(),
            Self::File(f) => f.flush(),
            Self::Discard => Ok(()),
        }
    }
}

/// Counters the writer and the handle share.
#[derive(Clone)]
struct SinkCounters {
    written: Counter,
    dropped_queue_full: Counter,
    dropped_write_error: Counter,
    queue_gauge: Gauge,
}

impl SinkCounters {
    fn new(m: &Metrics) -> Self {
        use crate::metrics::ReasonLabels;
        // One statement per lookup: a Family guard held across a second lookup of a new
        // label set would deadlock (the second needs the write lock).
        let dropped_queue_full = m.sink_dropped.get_or_create(&ReasonLabels { reason: "queue_full" }).clone();
        let dropped_write_error = m.sink_dropped.get_or_create(&ReasonLabels { reason: "write_error" }).clone();
        Self {
            written: m.sink_written.clone(),
            dropped_queue_full,
            dropped_write_error,
            queue_gauge: m.sink_queue_bytes.clone(),
        }
    }
}

/// Enqueues records; cloned into every request handler.
#[derive(Clone)]
pub struct SinkHandle {
    tx: SyncSender<Msg>,
    queued: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    budget: usize,
    counters: SinkCounters,
}

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkHandle")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .field("budget", &self.budget)
            .finish()
    }
}

impl SinkHandle {
    /// Enqueues JSON lines holding `records` records. Never blocks. False when dropped.
    pub fn submit(&self, bytes: Vec<u8>, records: u64) -> bool {
        let len = bytes.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > self.budget {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.counters.dropped_queue_full.inc_by(records);
            return false;
        }
        match self.tx.try_send(Msg::Lines { bytes, records }) {
            Ok(()) => {
                self.counters.queue_gauge.set(gauge_value(before + len));
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                self.counters.dropped_queue_full.inc_by(records);
                false
            }
        }
    }

    /// True while the writer thread runs (readiness).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Owns the writer thread.
pub struct SinkWriter {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer for `target`.
pub fn start(
    target: &SinkTarget,
    queue_budget_bytes: usize,
    metrics: &Metrics,
) -> io::Result<(SinkHandle, SinkWriter)> {
    let output = match target {
        SinkTarget::Stdout => Output::Stdout(io::BufWriter::with_capacity(64 * 1024, io::stdout())),
        SinkTarget::File { path, max_bytes, keep_files } => {
            Output::File(RotatingFile::open(path.clone(), *max_bytes, *keep_files)?)
        }
        SinkTarget::Discard => Output::Discard,
    };
    let (tx, rx) = mpsc::sync_channel(QUEUE_SLOTS);
    let queued = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicBool::new(true));
    let counters = SinkCounters::new(metrics);
    let thread = {
        let queued = Arc::clone(&queued);
        let counters = counters.clone();
        let alive = AliveGuard(Arc::clone(&alive));
        std::thread::Builder::new().name("tapio-sink".into()).spawn(move || {
            let _alive = alive;
            writer_loop(rx, output, &queued, &counters);
        })?
    };
    let handle = SinkHandle { tx: tx.clone(), queued, alive, budget: queue_budget_bytes, counters };
    Ok((handle, SinkWriter { tx, thread: Some(thread) }))
}

/// Clears the alive flag when the writer thread ends, even by a panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn writer_loop(rx: Receiver<Msg>, mut out: Output, queued: &AtomicUsize, c: &SinkCounters) {
    let mut dirty = false;
    loop {
        // Flush when the queue goes quiet, so lines reach the file promptly without a
        // flush per batch under load.
        let msg = if dirty {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    flush(&mut out);
                    dirty = false;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            }
        };
        match msg {
            Msg::Lines { bytes, records } => {
                match out.write_lines(&bytes) {
                    Ok(()) => {
                        c.written.inc_by(records);
                    }
                    Err(e) => {
                        log::warn!("sink write failed: {e}");
                        c.dropped_write_error.inc_by(records);
                    }
                }
                let left = queued.fetch_sub(bytes.len(), Ordering::AcqRel) - bytes.len();
                c.queue_gauge.set(gauge_value(left));
                dirty = true;
            }
            Msg::Close => break,
        }
    }
    flush(&mut out);
}

fn flush(out: &mut Output) {
    if let Err(e) = out.flush() {
        log::warn!("sink flush failed: {e}");
    }
}

impl SinkWriter {
    /// Writes everything already queued, flushes and stops the thread, waiting at most
    /// `timeout` (a wedged stdout pipe must not hold shutdown forever).
    pub fn close(mut self, timeout: Duration) {
        // Blocking send is fine here: this is the shutdown path, not a request.
        let _ = self.tx.send(Msg::Close);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let (done_tx, done_rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _ = thread.join();
            let _ = done_tx.send(());
        });
        if done_rx.recv_timeout(timeout).is_ok() {
            let _ = waiter.join();
        } else {
            log::warn!("sink writer did not finish within {timeout:?}; records may be lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_drains_and_stops_the_writer() {
        let m = Metrics::new();
        let (handle, writer) = start(&SinkTarget::Discard, 1 << 20, &m).unwrap();
        assert!(handle.is_alive());
        assert!(handle.submit(b"{}\n{}\n".to_vec(), 2));
        writer.close(Duration::from_secs(5));
        assert_eq!(m.sink_written.get(), 2, "queued records are written before stopping");
        assert!(!handle.is_alive());
        // After the writer is gone, submissions are dropped and counted, never blocked.
        assert!(!handle.submit(b"{}\n".to_vec(), 1));
        let dropped = m.sink_dropped.get_or_create(&crate::metrics::ReasonLabels { reason: "queue_full" }).get();
        assert_eq!(dropped, 1);
    }

    #[test]
    fn budget_bounds_queued_bytes() {
        let m = Metrics::new();
        let (handle, writer) = start(&SinkTarget::Discard, 10, &m).unwrap();
        assert!(!handle.submit(vec![b'x'; 11], 3), "bigger than the whole budget");
        assert!(handle.submit(vec![b'x'; 10], 1));
        writer.close(Duration::from_secs(5));
        let dropped = m.sink_dropped.get_or_create(&crate::metrics::ReasonLabels { reason: "queue_full" }).get();
        assert_eq!(dropped, 3);
    }
}
