//! The outbox: serialized evidence waiting for the controller.
//!
//! The sink stage hands each line to [`OutboxSink`] without waiting; when the outbox is full
//! (controller slow or down for long) the line is refused and counted as a sink failure of
//! the `controller` sink, so observation and the local sinks never stall. A full batch
//! waiting wakes the client at once: the send interval is how long a partial batch waits,
//! not a cap on how fast evidence leaves the node.

use crate::counters::CONTROLLER_SINK;
use crate::sinks::{Delivered, Sink};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The most encoded evidence the outbox holds, whatever its line capacity: with the
/// controller down the outbox fills, and at ~0.5-1 KB a line the default 10,000 lines alone
/// would double the agent's memory (the drain queue has the same bound).
pub const OUTBOX_MAX_BYTES: usize = 4 << 20;

pub struct Outbox {
    state: Mutex<State>,
    /// Signalled when a line lands in an empty outbox, when a full batch is waiting, and by
    /// [`Outbox::stop`].
    changed: Condvar,
    capacity: usize,
}

/// What a client's wait ends on, besides its deadline and [`Outbox::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeOn {
    /// Any line waiting (the client has nothing to send).
    AnyLine,
    /// A full batch waiting (the client holds a partial batch until its send time).
    FullBatch,
    /// Only the deadline (a batch is in flight or waiting to be retried).
    Deadline,
}

struct State {
    lines: VecDeque<Vec<u8>>,
    /// The lines' bytes, each with its separator (as a batch counts them).
    bytes: usize,
    /// A full batch: this many lines, or this many bytes (see [`Outbox::set_full_batch`]).
    batch_events: usize,
    batch_bytes: usize,
    /// Set by [`Outbox::stop`]: the client is to flush and end; every wait from then on
    /// returns at once.
    stopped: bool,
}

impl State {
    fn holds_full_batch(&self) -> bool {
        self.lines.len() >= self.batch_events || self.bytes >= self.batch_bytes
    }
}

impl Outbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        let state = State {
            lines: VecDeque::new(),
            bytes: 0,
            batch_events: usize::MAX,
            batch_bytes: usize::MAX,
            stopped: false,
        };
        Arc::new(Self { state: Mutex::new(state), changed: Condvar::new(), capacity })
    }

    /// Sets what a full batch is (the client's batch size and byte limit).
    pub fn set_full_batch(&self, max_events: usize, max_bytes: usize) {
        let mut state = self.lock();
        state.batch_events = max_events.max(1);
        state.batch_bytes = max_bytes.max(1);
    }

    /// True when a full batch is waiting.
    pub fn holds_full_batch(&self) -> bool {
        self.lock().holds_full_batch()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `line`, or refuses it (false) when the outbox holds its capacity of lines or
    /// [`OUTBOX_MAX_BYTES`].
    pub fn push(&self, line: Vec<u8>) -> bool {
        let mut state = self.lock();
        if state.lines.len() >= self.capacity || state.bytes + line.len() + 1 > OUTBOX_MAX_BYTES {
            return false;
        }
        let was_full = state.holds_full_batch();
        state.bytes += line.len() + 1;
        state.lines.push_back(line);
        // Only the first line and the one that makes a full batch can end a wait.
        if state.lines.len() == 1 || (!was_full && state.holds_full_batch()) {
            self.changed.notify_all();
        }
        true
    }

    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    /// Sleeps until `deadline`, or sooner: when what `wake` names is waiting (or arrives),
    /// or once [`Outbox::stop`] was called. The client's loop sleeps here instead of waking
    /// every few milliseconds to look.
    pub fn wait(&self, deadline: Instant, wake: WakeOn) {
        let mut state = self.lock();
        loop {
            let woken = match wake {
                WakeOn::AnyLine => !state.lines.is_empty(),
                WakeOn::FullBatch => state.holds_full_batch(),
                WakeOn::Deadline => false,
            };
            if state.stopped || woken {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Puts `lines` back at the front, in their order: a batch the controller could not
    /// take whole. They came from the outbox, so it holds at most one batch more than its
    /// capacity.
    pub fn put_back(&self, lines: Vec<Vec<u8>>) {
        let mut state = self.lock();
        for line in lines.into_iter().rev() {
            state.bytes += line.len() + 1;
            state.lines.push_front(line);
        }
    }

    /// Tells the client to stop (once the sink stage has flushed into the outbox): ends
    /// every wait, now and later.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.lock().stopped
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max_events` lines whose total size stays within `max_bytes` (always at
    /// least one line if any is waiting, so one oversized line cannot wedge the queue).
    pub fn take_batch(&self, max_events: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut state = self.lock();
        let lines = &mut state.lines;
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < max_events {
            let Some(next) = lines.front() else { break };
            if !batch.is_empty() && bytes + next.len() + 1 > max_bytes {
                break;
            }
            bytes += next.len() + 1;
            if let Some(line) = lines.pop_front() {
                batch.push(line);
            }
        }
        state.bytes -= bytes;
        batch
    }
}

/// The sink side of the outbox. "Written" here means taken into the outbox; whether the
/// controller accepted it is counted by the client (`controller_events_sent_total`, or
/// failed).
pub struct OutboxSink {
    outbox: Arc<Outbox>,
    delivered: Delivered,
}

impl OutboxSink {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self { outbox, delivered: Delivered::default() }
    }
}

impl Sink for OutboxSink {
    fn name(&self) -> &'static str {
        CONTROLLER_SINK
    }

    fn write_line(&mut self, line: &[u8]) {
        let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
        // A full outbox refuses at once (counted), never blocks.
        if self.outbox.push(trimmed.to_vec()) {
            self.delivered.written += 1;
        } else {
            self.delivered.failed += 1;
        }
    }

    fn buffered_bytes(&self) -> usize {
        0
    }

    fn flush(&mut self, _may_wait: &dyn Fn() -> bool, report: &mut dyn FnMut(Delivered)) {
        report(std::mem::take(&mut self.delivered));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bounded_and_batched_by_count_and_bytes() {
        let outbox = Outbox::new(3);
        let mut sink = OutboxSink::new(Arc::clone(&outbox));
        for _ in 0..3 {
            sink.write_line(b"{\"a\":1}\n");
        }
        sink.write_line(b"{}\n");
        let mut d = Delivered::default();
        sink.flush(&|| true, &mut |x| d.add(x));
        assert_eq!(d, Delivered { written: 3, failed: 1 }, "a full outbox refuses, never blocks");
        assert_eq!(outbox.take_batch(2, 1000), vec![b"{\"a\":1}".to_vec(); 2]);
        assert_eq!(outbox.len(), 1);
        sink.write_line(b"{\"b\":2}\n");
        // 8 bytes per line + separator: a 10-byte budget takes one.
        assert_eq!(outbox.take_batch(10, 10).len(), 1);
        assert_eq!(outbox.take_batch(10, 1).len(), 1, "an oversized line still leaves");
        assert!(outbox.is_empty());
    }

    /// Large lines fill the outbox's bytes before its line capacity: the next one is
    /// refused (the sink counts it failed), and room comes back as lines leave.
    #[test]
    fn the_outbox_holds_at_most_its_bytes_whatever_its_line_capacity() {
        let outbox = Outbox::new(1 << 20);
        let line = vec![b'x'; 1023];
        let fits = OUTBOX_MAX_BYTES / 1024;
        assert!((0..fits).all(|_| outbox.push(line.clone())), "{fits} lines of 1 KiB fit");
        assert!(!outbox.push(line.clone()), "one more is refused");
        assert!(!outbox.push(vec![b'y'; 1]), "however small: the bytes are taken");
        assert_eq!(outbox.len(), fits);
        assert_eq!(outbox.take_batch(1, usize::MAX).len(), 1);
        assert!(outbox.push(line), "room again once a line left");
    }

    #[test]
    fn a_wait_for_lines_ends_when_one_arrives_and_any_wait_ends_once_woken() {
        let outbox = Outbox::new(8);
        let started = Instant::now();
        outbox.wait(started + Duration::from_millis(30), WakeOn::AnyLine);
        assert!(started.elapsed() >= Duration::from_millis(30), "nothing arrived: it waited out its deadline");

        let pusher = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                outbox.push(b"{}".to_vec());
            })
        };
        let started = Instant::now();
        outbox.wait(started + Duration::from_secs(60), WakeOn::AnyLine);
        assert_eq!(outbox.len(), 1, "woken by the line");
        assert!(started.elapsed() < Duration::from_secs(30));
        pusher.join().expect("pusher");

        // Lines waiting do not end a wait that is not for lines (the client is not due).
        let started = Instant::now();
        outbox.wait(started + Duration::from_millis(30), WakeOn::Deadline);
        assert!(started.elapsed() >= Duration::from_millis(30));

        let waker = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                outbox.stop();
            })
        };
        let started = Instant::now();
        outbox.wait(started + Duration::from_secs(60), WakeOn::Deadline);
        assert!(started.elapsed() < Duration::from_secs(30), "woken to stop");
        waker.join().expect("waker");
        let started = Instant::now();
        outbox.wait(started + Duration::from_secs(60), WakeOn::Deadline);
        assert!(started.elapsed() < Duration::from_secs(30), "and every later wait returns at once");
    }

    #[test]
    fn a_full_batch_ends_a_wait_for_one_by_count_or_by_bytes() {
        let outbox = Outbox::new(64);
        outbox.set_full_batch(3, 1000);
        outbox.push(b"{}".to_vec());
        // A partial batch does not end the wait.
        let started = Instant::now();
        outbox.wait(started + Duration::from_millis(30), WakeOn::FullBatch);
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!(!outbox.holds_full_batch());

        let pusher = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                outbox.push(b"{}".to_vec());
                outbox.push(b"{}".to_vec());
            })
        };
        let started = Instant::now();
        outbox.wait(started + Duration::from_secs(60), WakeOn::FullBatch);
        assert!(outbox.holds_full_batch(), "woken by the third line");
        assert!(started.elapsed() < Duration::from_secs(30));
        pusher.join().expect("pusher");

        // Taking a batch takes its bytes too; a few large lines are a full batch by bytes.
        assert_eq!(outbox.take_batch(3, 1000).len(), 3);
        assert!(!outbox.holds_full_batch());
        outbox.set_full_batch(100, 40);
        outbox.push(vec![b'x'; 30]);
        assert!(!outbox.holds_full_batch(), "31 of 40 bytes");
        outbox.push(vec![b'x'; 30]);
        assert!(outbox.holds_full_batch(), "62 of 40 bytes");
        assert_eq!(outbox.take_batch(100, 40).len(), 1);
        assert!(!outbox.holds_full_batch(), "the rest is 31 bytes again");
    }
}
