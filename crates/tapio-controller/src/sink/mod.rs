//! Event sinks: every accepted batch goes to each configured sink through that sink's own
//! bounded queue, and `/v1/events` answers 200 only once every *durable* sink holds it.
//!
//! * Durable sinks (`file`, `nats`, and `otlp` unless `--otlp-best-effort`) acknowledge
//!   each batch back to the request handler after the records are safe (file: written to
//!   the file, and fsynced under `--sink-fsync always`; JetStream: every record's PubAck;
//!   OTLP: the collector's 2xx for the export holding the batch). A full queue, a failed
//!   write or no acknowledgement within `--sink-ack-timeout-secs` refuses the batch with
//!   503 `NOT_READY`: the agent keeps it and retries, so nothing is acknowledged into the
//!   void. Refusals are counted in `sink_batches_refused_total{sink,reason}`. A durable
//!   sink that reaches a batch after its request has ended without a 200 skips it (the
//!   agent resends it; keeping it too would store it twice) and counts its records in
//!   `sink_records_dropped_total{sink,reason="refused"}`.
//! * Best-effort sinks (`stdout`, and `otlp` with `--otlp-best-effort`) get the batch only
//!   after the durable ones acknowledged it; when their queue is full the records are
//!   dropped and counted (`sink_records_dropped_total{sink,reason="queue_full"}`), never
//!   stalling ingest.
//!
//! Each sink has its own byte budget (`--sink-queue-bytes`), so a slow sink delays only
//! the requests that wait for it (durable: at most the ack timeout) and never another
//! sink. On shutdown [`SinkWriters::close`] drains what is queued and stops every sink.

pub mod config;
pub mod file;
pub mod nats;
pub mod otlp;
pub mod otlp_proto;

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use crate::metrics::{Metrics, SinkLabels, SinkReasonLabels};
use config::SinkTarget;

/// Queue slots per sink; the byte budget is the real bound, this only caps tiny batches.
const QUEUE_SLOTS: usize = 65_536;

/// One accepted batch as JSON lines (one record per line), shared by every sink.
#[derive(Debug)]
pub struct Batch {
    /// The records, each a JSON object followed by `\n`.
    pub lines: Vec<u8>,
    /// Number of records (lines).
    pub records: u64,
}

impl Batch {
    /// The record lines without their newline.
    pub fn record_lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.split(|b| *b == b'\n').filter(|l| !l.is_empty())
    }
}

/// A batch handed to one sink; `done` carries a durable sink's verdict back (true: safe).
///
/// Once enqueued, a delivery holds its bytes in its sink's queue budget until it is
/// [finished](Self::finish) or [skipped](SinkShared::skip_abandoned). Dropping it any
/// other way (a worker that panics with it, or stops with it still queued) releases the
/// bytes all the same and counts its records dropped (`reason="unhandled"`): otherwise
/// each such batch would keep its share of the budget for good, until every later batch
/// were refused as `queue_full`.
pub struct Delivery {
    /// The batch.
    pub batch: Arc<Batch>,
    /// Where the durable outcome goes; None for best-effort sinks.
    pub done: Option<oneshot::Sender<bool>>,
    /// The sink whose budget holds this batch's bytes; None before it is enqueued.
    held: Option<Arc<SinkShared>>,
}

/// `sink_records_dropped_total` reason for the records of a delivery its worker let go of
/// without handling it (a panic, or a worker that stopped with it still queued).
pub const DROPPED_UNHANDLED: &str = "unhandled";

impl Delivery {
    /// A delivery of `batch`, not yet in any sink's queue.
    pub fn new(batch: Arc<Batch>, done: Option<oneshot::Sender<bool>>) -> Self {
        Self { batch, done, held: None }
    }

    /// Gives the batch's bytes back to its sink's budget (once).
    fn release(&mut self) {
        if let Some(shared) = self.held.take() {
            shared.dequeued(self.batch.lines.len(), self.batch.records);
        }
    }

    /// True when a request waited for this batch and has ended without its answer (refused
    /// by the ack timeout or by another durable sink, or its connection closed): the agent
    /// resends the batch, so a sink that kept it now would store it twice.
    pub fn abandoned(&self) -> bool {
        self.done.as_ref().is_some_and(|tx| tx.is_closed())
    }

    /// Resolves once this delivery is [abandoned](Self::abandoned); never for a
    /// best-effort delivery (no request waits for it).
    pub async fn wait_abandoned(&mut self) {
        match self.done.as_mut() {
            Some(tx) => tx.closed().await,
            None => std::future::pending().await,
        }
    }

    /// Releases the batch's bytes from its sink's budget and reports the outcome to the
    /// waiting request, if any (it may have timed out). The worker has counted the
    /// records (written or dropped) before.
    pub fn finish(mut self, ok: bool) {
        self.release();
        if let Some(done) = self.done.take() {
            let _ = done.send(ok);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let Some(shared) = self.held.take() else { return };
        // Not finished: nobody counted these records. Only what is still in the queued
        // count is counted here, so records a shutdown already counted as `shutdown`
        // (abandon) are not counted twice. A durable request sees its sender dropped and
        // refuses the batch (`stopped`): the agent resends it.
        let records = self.batch.records;
        let before = shared.take_queued_records(records);
        shared.dropped(DROPPED_UNHANDLED, before.min(records));
        shared.release_bytes(self.batch.lines.len());
    }
}

/// `sink_records_dropped_total` reason for the records of an [abandoned](Delivery::abandoned)
/// batch that a durable sink skipped.
pub const DROPPED_REFUSED: &str = "refused";

/// What a sink's worker receives.
pub enum Msg {
    /// A batch to keep.
    Deliver(Delivery),
    /// Drain what came before, flush, stop.
    Close,
}

/// State one sink shares between its handle (request side) and its worker.
#[derive(Debug)]
pub struct SinkShared {
    /// The sink's name, also its metric label: `stdout`, `file`, `nats`, `otlp`, `discard`.
    pub name: &'static str,
    queued: AtomicUsize,
    queued_records: std::sync::atomic::AtomicU64,
    alive: AtomicBool,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Records the sink holds (file: in the file; nats: PubAck; otlp: 2xx; stdout: written).
    pub written: Counter,
    dropped: prometheus_client::metrics::family::Family<SinkReasonLabels, Counter>,
    queue_gauge: Gauge,
}

impl SinkShared {
    fn new(name: &'static str, m: &Metrics) -> Self {
        let written = m.sink_written.get_or_create(&SinkLabels { sink: name }).clone();
        let queue_gauge = m.sink_queue_bytes.get_or_create(&SinkLabels { sink: name }).clone();
        Self {
            name,
            queued: AtomicUsize::new(0),
            queued_records: std::sync::atomic::AtomicU64::new(0),
            alive: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            written,
            dropped: m.sink_dropped.clone(),
            queue_gauge,
        }
    }

    /// Counts `records` dropped for `reason`.
    pub fn dropped(&self, reason: &'static str, records: u64) {
        self.dropped.get_or_create(&SinkReasonLabels { sink: self.name, reason }).inc_by(records);
    }

    /// Lets go of an [abandoned](Delivery::abandoned) delivery without keeping it: its
    /// bytes leave the budget and its records are counted as dropped (`refused`).
    pub fn skip_abandoned(&self, mut d: Delivery) {
        self.dropped(DROPPED_REFUSED, d.batch.records);
        d.release();
    }

    /// Releases a handled batch's bytes and records from the queue's counts.
    fn dequeued(&self, bytes: usize, records: u64) {
        self.take_queued_records(records);
        self.release_bytes(bytes);
    }

    /// Takes `records` off the queued-records count, returning the count before.
    /// Saturating: a worker that finishes after shutdown gave up on it (abandon) finds the
    /// count already taken to 0.
    fn take_queued_records(&self, records: u64) -> u64 {
        self.queued_records
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(records)))
            .unwrap_or_else(|r| r)
    }

    fn release_bytes(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.queue_gauge.dec_by(gauge_value(bytes));
    }

    /// Records whether the last attempt to keep records worked (readiness).
    pub fn set_health(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if !self.healthy.swap(true, Ordering::AcqRel) {
                    log::info!("sink {} is writing again", self.name);
                }
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::AcqRel) {
                    log::warn!("sink {} cannot keep records: {e}", self.name);
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        }
    }

    /// True while the last write worked.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The last failure, for `/readyz`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Clears a sink's alive flag when its worker ends, even by a panic.
pub struct AliveGuard(Arc<SinkShared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
    }
}

/// The sending side of a sink's queue: a thread worker (file, stdout) or a task (nats, otlp).
#[derive(Clone, Debug)]
enum Queue {
    Thread(mpsc::SyncSender<Msg>),
    Task(tokio::sync::mpsc::Sender<Msg>),
    /// Counted as written at once (tests and the load generator).
    Discard,
}

/// The request side of one sink.
#[derive(Clone, Debug)]
pub struct SinkHandle {
    shared: Arc<SinkShared>,
    queue: Queue,
    budget: usize,
    durable: bool,
}

impl SinkHandle {
    /// Enqueues without blocking; false when the budget or the queue is full (the caller
    /// counts or refuses the batch then).
    fn enqueue(&self, mut d: Delivery) -> bool {
        let len = d.batch.lines.len();
        let records = d.batch.records;
        let before = self.shared.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > self.budget {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        // Counted before the hand-off: the worker may be done with the batch (and take it
        // off these counts) before try_send returns. Additions and subtractions commute, so
        // the gauge cannot be left at a stale value.
        self.shared.queued_records.fetch_add(records, Ordering::AcqRel);
        self.shared.queue_gauge.inc_by(gauge_value(len));
        d.held = Some(Arc::clone(&self.shared));
        let refused = match &self.queue {
            Queue::Thread(tx) => tx.try_send(Msg::Deliver(d)).err().map(|e| match e {
                mpsc::TrySendError::Full(m) | mpsc::TrySendError::Disconnected(m) => m,
            }),
            Queue::Task(tx) => tx.try_send(Msg::Deliver(d)).err().map(|e| e.into_inner()),
            Queue::Discard => {
                self.shared.written.inc_by(records);
                d.finish(true);
                return true;
            }
        };
        match refused {
            // Back from a full or closed queue: released here, not counted (the caller does).
            Some(Msg::Deliver(mut d)) => {
                d.release();
                false
            }
            Some(Msg::Close) => false,
            None => true,
        }
    }

    /// The sink's name.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    /// Whether a 200 waits for this sink.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// True while the worker runs.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Worker running and its last write worked.
    pub fn is_ready(&self) -> bool {
        self.is_alive() && self.shared.is_healthy()
    }

    /// Shared state (for status and tests).
    pub fn shared(&self) -> &SinkShared {
        &self.shared
    }
}

/// Why a batch was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The durable sink that could not take it.
    pub sink: &'static str,
    /// `queue_full`, `write_failed`, `ack_timeout` or `stopped`.
    pub reason: &'static str,
}

/// Every configured sink, cloned into the request handlers.
#[derive(Clone, Debug)]
pub struct Sinks {
    handles: Vec<SinkHandle>,
    ack_timeout: Duration,
    refused: prometheus_client::metrics::family::Family<SinkReasonLabels, Counter>,
}

impl Sinks {
    /// Hands a batch to every sink. Ok once every durable sink holds it; the best-effort
    /// sinks get it only then (a refused batch comes back, and would be a duplicate there).
    ///
    /// Every early return drops the receivers still held (in `waits`, or inside the timed
    /// out wait): that closes their senders, so a durable sink that has not written the
    /// batch yet skips it instead of storing what the agent will resend.
    pub async fn deliver(&self, lines: Vec<u8>, records: u64) -> Result<(), Refusal> {
        let batch = Arc::new(Batch { lines, records });
        let mut waits = Vec::new();
        for h in self.handles.iter().filter(|h| h.durable) {
            let (tx, rx) = oneshot::channel();
            if !h.enqueue(Delivery::new(Arc::clone(&batch), Some(tx))) {
                return Err(self.refuse(h.name(), if h.is_alive() { "queue_full" } else { "stopped" }));
            }
            waits.push((h.name(), rx));
        }
        let deadline = tokio::time::Instant::now() + self.ack_timeout;
        for (name, rx) in waits {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Err(self.refuse(name, "write_failed")),
                Ok(Err(_)) => return Err(self.refuse(name, "stopped")),
                Err(_) => return Err(self.refuse(name, "ack_timeout")),
            }
        }
        for h in self.handles.iter().filter(|h| !h.durable) {
            if !h.enqueue(Delivery::new(Arc::clone(&batch), None)) {
                h.shared.dropped("queue_full", records);
            }
        }
        Ok(())
    }

    fn refuse(&self, sink: &'static str, reason: &'static str) -> Refusal {
        self.refused.get_or_create(&SinkReasonLabels { sink, reason }).inc();
        Refusal { sink, reason }
    }

    /// Every sink, in configuration order.
    pub fn handles(&self) -> &[SinkHandle] {
        &self.handles
    }

    /// Each sink as `/v1/status` reports it.
    pub fn status(&self) -> Vec<tapio_wire::SinkStatus> {
        self.handles
            .iter()
            .map(|h| tapio_wire::SinkStatus {
                name: h.name().to_string(),
                durable: h.durable,
                ready: h.is_ready(),
                last_error: if h.shared.is_healthy() { None } else { h.shared.last_error() },
            })
            .collect()
    }

    /// Ready when every worker runs and every durable sink's last write worked.
    /// Returns the first sink that is not, with why.
    pub fn not_ready(&self) -> Option<String> {
        self.handles.iter().find_map(|h| {
            if !h.is_alive() {
                Some(format!("the {} sink has stopped", h.name()))
            } else if h.durable && !h.shared.is_healthy() {
                Some(format!(
                    "the {} sink cannot keep records: {}",
                    h.name(),
                    h.shared.last_error().unwrap_or_else(|| "unknown error".into())
                ))
            } else {
                None
            }
        })
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How a sink worker is stopped.
enum Worker {
    Thread { tx: mpsc::SyncSender<Msg>, thread: JoinHandle<()> },
    Task { tx: tokio::sync::mpsc::Sender<Msg>, task: tokio::task::JoinHandle<()> },
}

/// Owns every sink worker.
pub struct SinkWriters {
    workers: Vec<(Arc<SinkShared>, Worker)>,
}

/// Sink options that are not per target.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Byte budget of each sink's queue.
    pub queue_bytes: usize,
    /// How long a request waits for the durable sinks.
    pub ack_timeout: Duration,
}

/// Starts every sink in `targets` (on the current tokio runtime for the async ones).
pub async fn start(targets: &[SinkTarget], opts: &SinkOptions, metrics: &Metrics) -> io::Result<(Sinks, SinkWriters)> {
    let mut handles = Vec::new();
    let mut writers = SinkWriters { workers: Vec::new() };
    for target in targets {
        let started = start_one(target, opts, metrics).await;
        match started {
            Ok((handle, worker)) => {
                if let Some(w) = worker {
                    writers.workers.push((Arc::clone(&handle.shared), w));
                }
                handles.push(handle);
            }
            Err(e) => {
                writers.close(Duration::from_secs(1)).await;
                return Err(e);
            }
        }
    }
    Ok((Sinks { handles, ack_timeout: opts.ack_timeout, refused: metrics.sink_refused.clone() }, writers))
}

async fn start_one(
    target: &SinkTarget,
    opts: &SinkOptions,
    metrics: &Metrics,
) -> io::Result<(SinkHandle, Option<Worker>)> {
    let name = target.name();
    let shared = Arc::new(SinkShared::new(name, metrics));
    let mut handle = SinkHandle {
        shared: Arc::clone(&shared),
        queue: Queue::Discard,
        budget: opts.queue_bytes,
        durable: target.is_durable(),
    };
    let worker = match target {
        SinkTarget::Discard => None,
        SinkTarget::Stdout => {
            let (tx, rx) = mpsc::sync_channel(QUEUE_SLOTS);
            let guard = AliveGuard(Arc::clone(&shared));
            let s = Arc::clone(&shared);
            let thread = std::thread::Builder::new().name("tapio-sink-stdout".into()).spawn(move || {
                let _alive = guard;
                stdout_loop(rx, &s);
            })?;
            handle.queue = Queue::Thread(tx.clone());
            Some(Worker::Thread { tx, thread })
        }
        SinkTarget::File(cfg) => {
            let writer = file::DurableFile::open(cfg, metrics)?;
            let (tx, rx) = mpsc::sync_channel(QUEUE_SLOTS);
            let guard = AliveGuard(Arc::clone(&shared));
            let s = Arc::clone(&shared);
            let thread = std::thread::Builder::new().name("tapio-sink-file".into()).spawn(move || {
                let _alive = guard;
                writer.run(rx, &s);
            })?;
            handle.queue = Queue::Thread(tx.clone());
            Some(Worker::Thread { tx, thread })
        }
        SinkTarget::Nats(cfg) => {
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_SLOTS);
            let publisher = nats::Publisher::connect(cfg).await?;
            let guard = AliveGuard(Arc::clone(&shared));
            let task = tokio::spawn(async move {
                let shared = Arc::clone(&guard.0);
                publisher.run(rx, &shared).await;
                drop(guard);
            });
            handle.queue = Queue::Task(tx.clone());
            Some(Worker::Task { tx, task })
        }
        SinkTarget::Otlp(cfg) => {
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_SLOTS);
            let exporter = otlp::Exporter::new(cfg, metrics)?;
            let guard = AliveGuard(Arc::clone(&shared));
            let task = tokio::spawn(async move {
                let shared = Arc::clone(&guard.0);
                exporter.run(rx, &shared).await;
                drop(guard);
            });
            handle.queue = Queue::Task(tx.clone());
            Some(Worker::Task { tx, task })
        }
    };
    Ok((handle, worker))
}

/// Best-effort JSON lines on stdout, flushed when the queue goes quiet.
fn stdout_loop(rx: mpsc::Receiver<Msg>, shared: &SinkShared) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut dirty = false;
    loop {
        let msg = if dirty {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = out.flush() {
                        log::warn!("stdout sink flush failed: {e}");
                    }
                    dirty = false;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            }
        };
        match msg {
            Msg::Deliver(d) => {
                match out.write_all(&d.batch.lines) {
                    Ok(()) => {
                        shared.written.inc_by(d.batch.records);
                    }
                    Err(e) => {
                        log::warn!("stdout sink write failed: {e}");
                        shared.dropped("write_error", d.batch.records);
                    }
                }
                d.finish(true);
                dirty = true;
            }
            Msg::Close => break,
        }
    }
    let _ = out.flush();
}

impl SinkWriters {
    /// Stops every sink after it has handled what is already queued, waiting at most
    /// `timeout` for each (a wedged stdout pipe or an unreachable server must not hold
    /// shutdown forever).
    pub async fn close(mut self, timeout: Duration) {
        for (shared, worker) in self.workers.drain(..) {
            match worker {
                Worker::Thread { tx, thread } => {
                    let joined = tokio::task::spawn_blocking(move || {
                        // Blocking send is fine: this is the shutdown path, not a request.
                        let _ = tx.send(Msg::Close);
                        let (done_tx, done_rx) = mpsc::channel();
                        std::thread::spawn(move || {
                            let _ = thread.join();
                            let _ = done_tx.send(());
                        });
                        done_rx.recv_timeout(timeout).is_ok()
                    })
                    .await
                    .unwrap_or(false);
                    if !joined {
                        abandon(&shared, timeout);
                    }
                }
                Worker::Task { tx, mut task } => {
                    let stopped = tokio::time::timeout(timeout, async {
                        let _ = tx.send(Msg::Close).await;
                        let _ = (&mut task).await;
                    })
                    .await;
                    if stopped.is_err() {
                        // Counted first, then stopped: left running, the task would go on
                        // exporting what is counted here and count it a second time. Its
                        // batches, dropped with it, find nothing left to count.
                        abandon(&shared, timeout);
                        task.abort();
                        let _ = tokio::time::timeout(timeout, task).await;
                    }
                }
            }
        }
    }
}

/// A sink that did not finish in time: what it still held is dropped, and counted.
fn abandon(shared: &SinkShared, timeout: Duration) {
    let left = shared.queued_records.swap(0, Ordering::AcqRel);
    shared.dropped("shutdown", left);
    log::warn!("sink {} did not finish within {timeout:?}; {left} queued records dropped", shared.name);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(queue_bytes: usize) -> SinkOptions {
        SinkOptions { queue_bytes, ack_timeout: Duration::from_secs(5) }
    }

    fn written(m: &Metrics, sink: &'static str) -> u64 {
        m.sink_written.get_or_create(&SinkLabels { sink }).get()
    }

    #[tokio::test]
    async fn discard_counts_and_acknowledges() {
        let m = Metrics::new();
        let (sinks, writers) = start(&[SinkTarget::Discard], &opts(1 << 20), &m).await.unwrap();
        sinks.deliver(b"{}\n{}\n".to_vec(), 2).await.unwrap();
        writers.close(Duration::from_secs(5)).await;
        assert_eq!(written(&m, "discard"), 2);
        assert!(sinks.not_ready().is_none());
    }

    /// A worker that panics while it holds a batch (the NATS client once did on an id with a
    /// line break) still gives the batch's bytes back and counts its records dropped: before,
    /// each such batch kept its bytes in the budget for good, and once they filled it every
    /// later batch was refused as `queue_full`.
    #[tokio::test]
    async fn a_batch_a_worker_panics_with_is_released_and_counted_dropped() {
        let m = Metrics::new();
        let shared = Arc::new(SinkShared::new("nats", &m));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(16);
        let worker = tokio::spawn(async move {
            if let Some(Msg::Deliver(d)) = rx.recv().await {
                let _holding = d;
                panic!("a worker that panics holding the batch");
            }
        });
        let budget = 100;
        let handle = SinkHandle { shared: Arc::clone(&shared), queue: Queue::Task(tx), budget, durable: true };
        let sinks =
            Sinks { handles: vec![handle], ack_timeout: Duration::from_secs(5), refused: m.sink_refused.clone() };
        let refusal = sinks.deliver(vec![b'x'; 60], 3).await.unwrap_err();
        assert_eq!(refusal.reason, "stopped", "the request learns the batch was not kept");
        assert!(worker.await.unwrap_err().is_panic());
        assert_eq!(shared.queued.load(Ordering::Acquire), 0, "bytes back in the budget");
        assert_eq!(shared.queued_records.load(Ordering::Acquire), 0);
        assert_eq!(m.sink_queue_bytes.get_or_create(&SinkLabels { sink: "nats" }).get(), 0);
        let dropped = |reason| m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "nats", reason }).get();
        assert_eq!(dropped(DROPPED_UNHANDLED), 3, "its records counted");

        // What the dead worker's queue still held is released and counted the same way
        // when the queue goes; a batch refused at the door is not counted here.
        let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let handle = SinkHandle { shared: Arc::clone(&shared), queue: Queue::Task(tx), budget, durable: false };
        assert!(handle.enqueue(Delivery::new(Arc::new(Batch { lines: vec![b'y'; 40], records: 2 }), None)));
        assert!(!handle.enqueue(Delivery::new(Arc::new(Batch { lines: vec![b'z'; 10], records: 1 }), None)));
        assert_eq!(shared.queued.load(Ordering::Acquire), 40, "the refused one is back out of the budget");
        drop(rx);
        assert_eq!(shared.queued.load(Ordering::Acquire), 0);
        assert_eq!(dropped(DROPPED_UNHANDLED), 5);
        // The whole budget is there again.
        let (tx, _rx) = tokio::sync::mpsc::channel::<Msg>(1);
        let handle = SinkHandle { shared, queue: Queue::Task(tx), budget, durable: false };
        assert!(handle.enqueue(Delivery::new(Arc::new(Batch { lines: vec![b'w'; budget], records: 1 }), None)));
    }

    #[tokio::test]
    async fn a_full_best_effort_queue_drops_and_counts() {
        let m = Metrics::new();
        let (sinks, writers) = start(&[SinkTarget::Stdout], &opts(10), &m).await.unwrap();
        assert!(sinks.deliver(vec![b'x'; 11], 3).await.is_ok(), "best effort: the batch is still accepted");
        writers.close(Duration::from_secs(5)).await;
        let dropped = m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "stdout", reason: "queue_full" }).get();
        assert_eq!(dropped, 3);
        // After the worker is gone the sink is not ready.
        assert!(sinks.not_ready().is_some_and(|r| r.contains("stdout")));
    }
}
