//! The durable file sink: JSON lines appended by one writer thread with group commit.
//!
//! The writer takes every batch waiting in its queue (up to [`GROUP_MAX_BYTES`]), appends
//! them in one all-or-nothing write, and under `--sink-fsync always` fdatasyncs before it
//! acknowledges: one fsync covers many concurrent requests. Under `interval` it
//! acknowledges once the records are in the file (they survive the controller being
//! killed, not the machine losing power) and fsyncs every `--sink-fsync-interval-ms`.
//!
//! A record is counted written only once it is in the file. A failed append (a full disk)
//! leaves no fragment behind (see [`tapio_util::rotate`]), counts every record it held as
//! dropped (`reason="write_error"`), refuses those batches so agents retry them, and marks
//! the sink not ready until an append works again.
//!
//! A batch whose request ended without a 200 before the writer got to it (the ack
//! timeout passed, or another durable sink refused it) is left out of the write and
//! counted as dropped (`reason="refused"`): the agent resends it. The check is made per
//! batch just before the group is written; a batch already written when its request gave
//! up stays in the file, and its retry is a duplicate (recognisable by id).
//!
//! At start a file that does not end in a newline (a write torn by a crash) has its
//! fragment moved to `<path>.torn-<unix nanos>` and counted in
//! `tapio_controller_sink_torn_tails_total`, so every line of the file parses and new
//! records never append onto a fragment.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use super::config::{FileSinkConfig, FsyncPolicy};
use super::{Delivery, Msg, SinkShared};
use crate::metrics::{Metrics, SinkLabels};
use prometheus_client::metrics::counter::Counter;
use tapio_util::rotate::{repair_torn_tail, RotatingFile};

/// Most bytes appended (and synced) in one group.
pub const GROUP_MAX_BYTES: usize = 8 * 1024 * 1024;

/// The file and its policy, owned by the writer thread.
pub struct DurableFile {
    file: RotatingFile,
    fsync: FsyncPolicy,
    /// Successful fsyncs (`tapio_controller_sink_fsyncs_total{sink="file"}`).
    fsyncs: Counter,
    buf: Vec<u8>,
    /// Size of the last group whose write failed (the probe waits for that much room).
    failed_bytes: usize,
}

impl DurableFile {
    /// Repairs a torn tail (counted), then opens the file for appending.
    pub fn open(cfg: &FileSinkConfig, metrics: &Metrics) -> io::Result<Self> {
        if let Some((bytes, aside)) = repair_torn_tail(&cfg.path)? {
            metrics.sink_torn_tails.get_or_create(&SinkLabels { sink: "file" }).inc();
            log::warn!(
                "sink file {} ended in a partial record ({bytes} bytes, from an earlier crash); moved it to {}",
                cfg.path.display(),
                aside.display()
            );
        }
        Ok(Self {
            file: RotatingFile::open(cfg.path.clone(), cfg.max_bytes, cfg.keep_files)?,
            fsync: cfg.fsync,
            fsyncs: metrics.sink_fsyncs.get_or_create(&SinkLabels { sink: "file" }).clone(),
            buf: Vec::new(),
            failed_bytes: 0,
        })
    }

    /// The writer loop: runs until Close or until every sender is gone.
    pub fn run(mut self, rx: Receiver<Msg>, shared: &SinkShared) {
        let mut unsynced_since: Option<Instant> = None;
        let mut closing = false;
        while !closing {
            // Wake up for the interval fsync, and, while the sink cannot write, to probe
            // for free space: a replica out of its Service's endpoints gets no batches
            // that could show it recovered.
            let wake = match (self.fsync, unsynced_since) {
                (FsyncPolicy::Interval(every), Some(since)) => Some(every.saturating_sub(since.elapsed())),
                _ => None,
            };
            let wake = if shared.is_healthy() { wake } else { Some(wake.map_or(PROBE_EVERY, |w| w.min(PROBE_EVERY))) };
            let first = match wake {
                Some(after) => match rx.recv_timeout(after) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        if unsynced_since.is_some_and(|since| since.elapsed() >= after) {
                            self.sync_or_flag(shared);
                            unsynced_since = None;
                        }
                        if !shared.is_healthy() {
                            self.probe(shared);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            let mut group = Vec::new();
            let mut bytes = 0;
            match first {
                Msg::Deliver(d) => {
                    bytes += d.batch.lines.len();
                    group.push(d);
                }
                Msg::Close => closing = true,
            }
            while !closing && bytes < GROUP_MAX_BYTES {
                match rx.try_recv() {
                    Ok(Msg::Deliver(d)) => {
                        bytes += d.batch.lines.len();
                        group.push(d);
                    }
                    Ok(Msg::Close) => closing = true,
                    Err(_) => break,
                }
            }
            // Checked as late as possible, right before the write: a request that gave up
            // while its batch waited here (behind a slow fsync, say) has it resent by the
            // agent, so writing it now would store it twice.
            let (gone, group): (Vec<_>, Vec<_>) = group.into_iter().partition(Delivery::abandoned);
            for d in gone {
                bytes -= d.batch.lines.len();
                shared.skip_abandoned(d);
            }
            if !group.is_empty() {
                let outcome = self.append_group(&group);
                if outcome.appended && matches!(self.fsync, FsyncPolicy::Interval(_)) && unsynced_since.is_none() {
                    unsynced_since = Some(Instant::now());
                }
                if outcome.error.is_some() {
                    self.failed_bytes = bytes;
                }
                finish_group(group, outcome, shared);
            }
            // A queue that never runs dry never lets the wait above time out: the interval
            // sync is due here then.
            if let (FsyncPolicy::Interval(every), Some(since)) = (self.fsync, unsynced_since) {
                if since.elapsed() >= every {
                    self.sync_or_flag(shared);
                    unsynced_since = None;
                }
            }
        }
        self.sync_or_flag(shared);
    }

    /// Appends the group's records in one write and, under `always`, syncs them.
    fn append_group(&mut self, group: &[Delivery]) -> Outcome {
        let appended = if let [one] = group {
            self.file.append(&one.batch.lines)
        } else {
            self.buf.clear();
            for d in group {
                self.buf.extend_from_slice(&d.batch.lines);
            }
            let r = self.file.append(&self.buf);
            // Do not keep a multi-MiB buffer around after a burst.
            if self.buf.capacity() > GROUP_MAX_BYTES * 2 {
                self.buf = Vec::new();
            }
            r
        };
        if let Err(e) = appended {
            return Outcome { appended: false, error: Some(e) };
        }
        let error = match self.fsync {
            FsyncPolicy::Always => self.sync().err(),
            FsyncPolicy::Interval(_) => None,
        };
        Outcome { appended: true, error }
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync()?;
        self.fsyncs.inc();
        Ok(())
    }

    fn sync_or_flag(&mut self, shared: &SinkShared) {
        if let Err(e) = self.sync() {
            log::warn!("sink file fsync failed: {e}");
            shared.set_health(Err(format!("fsync failed: {e}")));
        }
    }

    /// While unhealthy: ready again once the file's filesystem has room for the write
    /// that failed (at least 64 KiB).
    fn probe(&mut self, shared: &SinkShared) {
        let dir = match self.file.path().parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if free_bytes(&dir).is_some_and(|free| free >= self.failed_bytes.max(64 * 1024) as u64) {
            shared.set_health(Ok(()));
        }
    }
}

/// How often an unhealthy file sink checks for free space.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What became of a group.
struct Outcome {
    /// The records are in the file.
    appended: bool,
    /// The write or its fsync failed: not durable.
    error: Option<io::Error>,
}

/// Bytes available to unprivileged writers on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero bytes are valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a struct we own for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Counts and acknowledges (or refuses) every batch of a group. Records in the file are
/// counted written even when their fsync failed; the batch is refused all the same (not
/// durable), and its retry will be a duplicate, recognisable by id.
fn finish_group(group: Vec<Delivery>, outcome: Outcome, shared: &SinkShared) {
    let records: u64 = group.iter().map(|d| d.batch.records).sum();
    if outcome.appended {
        shared.written.inc_by(records);
    } else {
        shared.dropped("write_error", records);
    }
    let ok = match outcome.error {
        None => {
            shared.set_health(Ok(()));
            true
        }
        Some(e) => {
            shared.set_health(Err(e.to_string()));
            false
        }
    };
    for d in group {
        d.finish(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::SinkReasonLabels;
    use crate::sink::config::SinkTarget;
    use crate::sink::{start, Batch, Queue, Refusal, SinkHandle, SinkOptions, Sinks, DROPPED_REFUSED};
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::sync_channel;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::oneshot;

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("tapio-i12-file-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn opening_repairs_and_counts_then_acknowledges_after_the_write() {
        let dir = temp_dir("open");
        let path = dir.join("e.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"tor").unwrap();
        let m = Metrics::new();
        let cfg = FileSinkConfig { path: path.clone(), max_bytes: 1 << 20, keep_files: 1, fsync: FsyncPolicy::Always };
        let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
        let (sinks, writers) = start(&[SinkTarget::File(cfg)], &opts, &m).await.unwrap();
        assert_eq!(m.sink_torn_tails.get_or_create(&SinkLabels { sink: "file" }).get(), 1);
        sinks.deliver(b"{\"n\":1}\n{\"n\":2}\n".to_vec(), 2).await.unwrap();
        // Acknowledged means already in the file: no flush or close needed to see it.
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n{\"n\":1}\n{\"n\":2}\n");
        assert_eq!(m.sink_written.get_or_create(&SinkLabels { sink: "file" }).get(), 2);
        writers.close(Duration::from_secs(5)).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file deleted under the sink is created again before the next append: no batch is
    /// acknowledged into a file nobody can read. While its directory is gone batches are
    /// refused (the agent resends them) and counted; once it is back they are kept again.
    #[tokio::test]
    async fn a_deleted_file_is_created_again_and_while_its_directory_is_gone_batches_are_refused() {
        let dir = temp_dir("deleted");
        let path = dir.join("e.jsonl");
        let m = Metrics::new();
        let cfg = FileSinkConfig { path: path.clone(), max_bytes: 1 << 20, keep_files: 1, fsync: FsyncPolicy::Always };
        let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
        let (sinks, writers) = start(&[SinkTarget::File(cfg)], &opts, &m).await.unwrap();
        sinks.deliver(b"{\"n\":1}\n".to_vec(), 1).await.unwrap();
        std::fs::remove_file(&path).unwrap();
        sinks.deliver(b"{\"n\":2}\n".to_vec(), 1).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":2}\n", "acknowledged means in a file at its path");

        std::fs::remove_dir_all(&dir).unwrap();
        let refused = sinks.deliver(b"{\"n\":3}\n".to_vec(), 1).await;
        assert_eq!(refused, Err(Refusal { sink: "file", reason: "write_failed" }));
        let write_errors = m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "file", reason: "write_error" });
        assert_eq!(write_errors.get(), 1);
        std::fs::create_dir_all(&dir).unwrap();
        sinks.deliver(b"{\"n\":4}\n".to_vec(), 1).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":4}\n");
        assert_eq!(m.sink_written.get_or_create(&SinkLabels { sink: "file" }).get(), 3);
        writers.close(Duration::from_secs(5)).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file truncated under the sink (logrotate's copytruncate) is followed to its new
    /// length: it is not rotated out nearly empty, and it rotates once it really is full.
    #[tokio::test]
    async fn a_file_truncated_under_the_sink_is_followed_to_its_new_length() {
        let dir = temp_dir("truncated");
        let path = dir.join("e.jsonl");
        let m = Metrics::new();
        let cfg = FileSinkConfig { path: path.clone(), max_bytes: 100, keep_files: 2, fsync: FsyncPolicy::Always };
        let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
        let (sinks, writers) = start(&[SinkTarget::File(cfg)], &opts, &m).await.unwrap();
        let record = format!("{{\"n\":\"{}\"}}\n", "x".repeat(30)).into_bytes(); // 40 bytes
        for _ in 0..2 {
            sinks.deliver(record.clone(), 1).await.unwrap();
        }
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        for _ in 0..2 {
            sinks.deliver(record.clone(), 1).await.unwrap();
        }
        let rotated = tapio_util::rotate::rotated(&path, 1);
        assert!(!rotated.exists(), "a file of 0 bytes was rotated out");
        assert_eq!(std::fs::read(&path).unwrap(), record.repeat(2));
        sinks.deliver(record.clone(), 1).await.unwrap();
        assert_eq!(std::fs::read(&rotated).unwrap(), record.repeat(2), "rotated once full");
        assert_eq!(std::fs::read(&path).unwrap(), record);
        writers.close(Duration::from_secs(5)).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// 16 MB of batches queued at once, so the queue never runs dry while they are
    /// written: the interval fsync still comes every interval, not only once the queue
    /// is idle (it used to wait for a receive to time out, which a busy queue never does).
    #[test]
    fn under_a_queue_that_never_runs_dry_the_interval_fsync_still_comes() {
        let dir = temp_dir("interval");
        let m = Metrics::new();
        let every = Duration::from_millis(1);
        let cfg = FileSinkConfig {
            path: dir.join("e.jsonl"),
            max_bytes: 1 << 30,
            keep_files: 1,
            fsync: FsyncPolicy::Interval(every),
        };
        let writer = DurableFile::open(&cfg, &m).unwrap();
        let shared = SinkShared::new("file", &m);
        let (tx, rx) = std::sync::mpsc::sync_channel(5_000);
        let lines = b"{\"n\":1}\n".repeat(512);
        for _ in 0..4_000 {
            let batch = Arc::new(Batch { lines: lines.clone(), records: 512 });
            tx.send(Msg::Deliver(Delivery::new(batch, None))).unwrap();
        }
        tx.send(Msg::Close).unwrap();
        let started = Instant::now();
        writer.run(rx, &shared);
        let took = started.elapsed();
        let fsyncs = m.sink_fsyncs.get_or_create(&SinkLabels { sink: "file" }).get();
        assert!(took > every * 2, "written in {took:?}: too fast to tell");
        assert!(fsyncs >= 2, "{fsyncs} fsync(s) in {took:?} of writing: the interval sync waited for an idle queue");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A durable file sink (fsync always) whose writer is not running: the test runs it
    /// when it wants the writer to catch up, as after a slow fsync.
    fn held_file_sink(path: &Path, m: &Metrics) -> (SinkHandle, DurableFile, Receiver<Msg>) {
        let cfg =
            FileSinkConfig { path: path.to_path_buf(), max_bytes: 1 << 20, keep_files: 1, fsync: FsyncPolicy::Always };
        let writer = DurableFile::open(&cfg, m).unwrap();
        let (tx, rx) = sync_channel(16);
        let shared = Arc::new(SinkShared::new("file", m));
        (SinkHandle { shared, queue: Queue::Thread(tx), budget: 1 << 20, durable: true }, writer, rx)
    }

    fn delivery(lines: &[u8], records: u64, done: Option<oneshot::Sender<bool>>) -> Delivery {
        Delivery::new(Arc::new(Batch { lines: lines.to_vec(), records }), done)
    }

    fn refused_records(m: &Metrics) -> u64 {
        m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "file", reason: DROPPED_REFUSED }).get()
    }

    /// Released from the budget and the queue gauge, whether written or skipped.
    fn assert_nothing_queued(h: &SinkHandle, m: &Metrics) {
        assert_eq!(h.shared.queued.load(Ordering::Acquire), 0);
        assert_eq!(h.shared.queued_records.load(Ordering::Acquire), 0);
        assert_eq!(m.sink_queue_bytes.get_or_create(&SinkLabels { sink: "file" }).get(), 0);
    }

    /// In one group, the batch whose request has gone is left out of the write and counted;
    /// the one still awaited and a best-effort one (no request) are written.
    #[test]
    fn a_batch_whose_request_has_gone_is_left_out_of_the_write_and_counted() {
        let dir = temp_dir("gone");
        let path = dir.join("e.jsonl");
        let m = Metrics::new();
        let (handle, writer, rx) = held_file_sink(&path, &m);
        let (kept_tx, mut kept_rx) = oneshot::channel();
        let (gone_tx, gone_rx) = oneshot::channel();
        drop(gone_rx);
        assert!(handle.enqueue(delivery(b"{\"n\":1}\n", 1, Some(kept_tx))));
        assert!(handle.enqueue(delivery(b"{\"n\":2}\n{\"n\":3}\n", 2, Some(gone_tx))));
        assert!(handle.enqueue(delivery(b"{\"n\":4}\n", 1, None)));
        let Queue::Thread(tx) = &handle.queue else { unreachable!() };
        tx.send(Msg::Close).unwrap();
        writer.run(rx, &handle.shared);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":1}\n{\"n\":4}\n");
        assert_eq!(kept_rx.try_recv(), Ok(true));
        assert_eq!(refused_records(&m), 2);
        assert_eq!(handle.shared.written.get(), 2);
        assert_nothing_queued(&handle, &m);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The writer held up past the ack timeout: the request is refused (the agent will
    /// resend the batch), and once the writer catches up that batch is not written too.
    #[tokio::test]
    async fn a_batch_refused_while_the_writer_is_held_up_is_not_written_when_it_catches_up() {
        let dir = temp_dir("held");
        let path = dir.join("e.jsonl");
        let m = Metrics::new();
        let (handle, writer, rx) = held_file_sink(&path, &m);
        let impatient = Sinks {
            handles: vec![handle.clone()],
            ack_timeout: Duration::from_millis(50),
            refused: m.sink_refused.clone(),
        };
        let refused = impatient.deliver(b"{\"n\":1}\n".to_vec(), 1).await;
        assert_eq!(refused, Err(Refusal { sink: "file", reason: "ack_timeout" }));
        let shared = Arc::clone(&handle.shared);
        let thread = std::thread::spawn(move || writer.run(rx, &shared));
        // The queue is FIFO: once this batch is acknowledged the refused one was handled.
        let patient = Sinks { ack_timeout: Duration::from_secs(30), ..impatient };
        patient.deliver(b"{\"n\":2}\n".to_vec(), 1).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":2}\n");
        assert_eq!(refused_records(&m), 1);
        assert_eq!(handle.shared.written.get(), 1);
        assert_nothing_queued(&handle, &m);
        let Queue::Thread(tx) = &handle.queue else { unreachable!() };
        tx.send(Msg::Close).unwrap();
        thread.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// `--sink file --sink nats` with the second refusing at enqueue after the file sink
    /// already queued the batch: the file sink does not keep it either.
    #[tokio::test]
    async fn a_batch_another_durable_sink_refuses_is_not_written_by_the_file_sink() {
        let dir = temp_dir("other");
        let path = dir.join("e.jsonl");
        let m = Metrics::new();
        let (file, writer, rx) = held_file_sink(&path, &m);
        // A zero byte budget: every batch is refused at enqueue as queue_full.
        let full = SinkHandle {
            shared: Arc::new(SinkShared::new("nats", &m)),
            queue: Queue::Discard,
            budget: 0,
            durable: true,
        };
        let sinks = Sinks {
            handles: vec![file.clone(), full],
            ack_timeout: Duration::from_secs(30),
            refused: m.sink_refused.clone(),
        };
        let refused = sinks.deliver(b"{\"n\":1}\n".to_vec(), 1).await;
        assert_eq!(refused, Err(Refusal { sink: "nats", reason: "queue_full" }));
        let Queue::Thread(tx) = &file.queue else { unreachable!() };
        tx.send(Msg::Close).unwrap();
        writer.run(rx, &file.shared);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(refused_records(&m), 1);
        assert_eq!(file.shared.written.get(), 0);
        assert_nothing_queued(&file, &m);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
