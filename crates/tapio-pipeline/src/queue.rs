//! The drain → sink queue. Evidence crosses it as a compact encoded record: its final JSON
//! line without the workload (which the sink stage resolves, off the drain), packed into
//! one byte ring, instead of a boxed [`Evidence`] with its half-dozen strings. A full queue
//! of 16,384 boxed records held about 14 MB; encoded they take about a third of that, and
//! a byte budget bounds the queue whatever the records' sizes, so a slow consumer cannot
//! grow the agent past its memory goal. One ring rather than an allocation per record
//! also keeps the two threads out of each other's allocator: a record allocated by the
//! drain and freed by the sink stage made them queue on the allocator's lock.
//!
//! The queue is bounded twice: by records (`queue_capacity`) and by encoded bytes
//! ([`QUEUE_MAX_BYTES`]). A record that fits neither is dropped and counted
//! (`queue_overflow_total`); sending never waits for the sinks. The drain hands its records
//! over in batches, and only when the lock is free ([`QueueSender::offer_batched`]), so it
//! never waits for a sink stage that lost its CPU while holding the lock.

use crate::counters::Counters;
use crate::evidence::{Evidence, WorkloadIds};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Encoded bytes the queue may hold. At about 560 bytes per connection record that is some
/// 7,500 records of backlog, seconds of a flood; the record bound applies as well.
pub const QUEUE_MAX_BYTES: usize = 4 << 20;

/// The JSON key the sink stage's workload goes under; the record is encoded up to it.
const WORKLOAD_KEY: &[u8] = b",\"workload\":";
/// Bytes before the JSON: the cgroup ids (2 × u64) and the split offset (u32), little endian.
const HEADER: usize = 20;
/// Each record in the ring is preceded by its length (u32, little endian).
const FRAME: usize = 4;

/// One piece of evidence as the queue carries it: `[cgroup_id][mem_cgroup_id][split]` then
/// the JSON line up to and including `"workload":` (the head), then the rest from
/// `,"facts":` (the tail), with no newline. A reusable buffer: each thread keeps one.
#[derive(Debug, Default)]
pub struct Encoded(Vec<u8>);

impl Encoded {
    /// Encodes `ev` in place of what this buffer held (its `workload` is left to the sink
    /// stage and must still be empty).
    pub fn encode(&mut self, ev: &Evidence) -> serde_json::Result<()> {
        self.0.clear();
        encode_into(&mut self.0, ev)
    }

    /// The kernel's ids of the record's workload, for the sink stage to resolve.
    pub fn workload_ids(&self) -> WorkloadIds {
        WorkloadIds { cgroup_id: u64_at(&self.0, 0), mem_cgroup_id: u64_at(&self.0, 8) }
    }

    /// Appends the complete line to `line`: head, the workload as `write_workload` writes
    /// it (a JSON value), tail, newline.
    pub fn write_line<E>(
        &self,
        line: &mut Vec<u8>,
        write_workload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let split = u32_at(&self.0, 16) as usize;
        let (head, tail) = self.0[HEADER..].split_at(split);
        line.extend_from_slice(head);
        write_workload(line)?;
        line.extend_from_slice(tail);
        line.push(b'\n');
        Ok(())
    }

    /// Bytes this record takes in the queue.
    pub fn size(&self) -> usize {
        FRAME + self.0.len()
    }
}

/// Appends `ev` to `out` as an [`Encoded`] holds it. On an error `out` may hold part of it.
fn encode_into(out: &mut Vec<u8>, ev: &Evidence) -> serde_json::Result<()> {
    let start = out.len();
    out.extend_from_slice(&ev.workload_ids.cgroup_id.to_le_bytes());
    out.extend_from_slice(&ev.workload_ids.mem_cgroup_id.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    ev.write_head(out)?;
    out.extend_from_slice(WORKLOAD_KEY);
    let split = (out.len() - start - HEADER) as u32;
    out[start + 16..start + HEADER].copy_from_slice(&split.to_le_bytes());
    out.extend_from_slice(b",\"facts\":");
    ev.facts.write_json(out)?;
    out.push(b'}');
    Ok(())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The sending half; one per thread that emits evidence (the drain, the poll thread).
pub struct QueueSender {
    shared: Arc<Shared>,
    /// Records a batching sender has encoded and not yet handed over (see
    /// [`QueueSender::offer_batched`]).
    pending: RefCell<Pending>,
}

/// A batching sender's records waiting for their hand-over, framed as in the queue.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    records: usize,
}

/// Pending bytes at which a batching sender tries a hand-over before its batch ends.
pub const HANDOVER_AT_BYTES: usize = 32 * 1024;
/// Pending bytes past which a batching sender waits for the lock rather than keep more:
/// the bound on what the drain holds back (a sink stage holds the lock for one record's
/// copy at a time, so this is reached only if it is kept from running while it holds it).
pub const PENDING_MAX_BYTES: usize = 128 * 1024;

/// The receiving half, owned by the sink stage.
pub struct QueueReceiver {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a record arrives for a waiting receiver, or the last sender leaves.
    arrived: Condvar,
    max_records: usize,
    max_bytes: usize,
    /// How long the queue stays empty before its room beyond [`KEPT_BYTES`] is given back.
    idle_release: Duration,
}

struct State {
    /// The framed records, oldest first. It grows with the backlog and shrinks when the
    /// backlog is gone: an idle agent keeps no room for a full queue resident.
    ring: VecDeque<u8>,
    records: usize,
    senders: usize,
    receiver_waiting: bool,
}

/// Room kept when the queue has run dry; more is given back after [`IDLE_RELEASE`].
const KEPT_BYTES: usize = 64 * 1024;
/// Under a flood the queue runs dry thousands of times a second between bursts; giving its
/// room back each time made the drain grow it again, copying the backlog under the lock at
/// every doubling. It is given back once the queue has stayed empty this long.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// A queue of at most `records` records and `max_bytes` encoded bytes.
pub fn bounded(records: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    bounded_releasing_after(records, max_bytes, IDLE_RELEASE)
}

fn bounded_releasing_after(records: usize, max_bytes: usize, idle_release: Duration) -> (QueueSender, QueueReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { ring: VecDeque::new(), records: 0, senders: 1, receiver_waiting: false }),
        arrived: Condvar::new(),
        max_records: records,
        max_bytes,
        idle_release,
    });
    (QueueSender { shared: Arc::clone(&shared), pending: RefCell::default() }, QueueReceiver { shared })
}

impl Shared {
    /// The lock is held for one record's copy on either side and never across I/O, so the
    /// drain never waits for a sink; a panic while holding it cannot leave it inconsistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

thread_local! {
    /// Each sending thread's encoding buffer.
    static SCRATCH: RefCell<Encoded> = RefCell::new(Encoded(Vec::with_capacity(1024)));
}

/// Encodes `ev` into this thread's scratch buffer and passes it to `then`; a record that
/// cannot be encoded is lost at the queue, and counted there.
fn with_encoded(counters: &Counters, ev: &Evidence, then: impl FnOnce(&Encoded)) {
    SCRATCH.with(|scratch| {
        let mut encoded = scratch.borrow_mut();
        match encoded.encode(ev) {
            Ok(()) => then(&encoded),
            Err(e) => encoding_failed(counters, &e),
        }
    })
}

/// A record that could not be encoded is lost at the queue, and counted there. (Cannot
/// happen for these types: no maps with non-string keys, no failing writer.)
fn encoding_failed(counters: &Counters, e: &serde_json::Error) {
    log::error!("encoding evidence: {e}");
    counters.queue_overflow_total.fetch_add(1, Ordering::Relaxed);
}

impl QueueSender {
    /// Encodes one record and hands it to the sink stage without waiting for it: what does
    /// not fit is counted as queue overflow. Counts `events_total` for what was queued.
    pub fn offer(&self, counters: &Counters, ev: &Evidence) {
        with_encoded(counters, ev, |encoded| {
            if self.push(encoded) {
                counters.events_total.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.queue_overflow_total.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// [`offer`](Self::offer) for the drain, which must never wait for the sink stage: the
    /// record is encoded into this sender's pending batch, and the batch is handed over
    /// under one lock at [`hand_over`](Self::hand_over) (the end of each ring's burst) or
    /// once [`HANDOVER_AT_BYTES`] are pending, and only if the lock is free right then.
    /// (The sink stage, normally scheduled, can be preempted while it holds the lock; a
    /// real-time drain waiting for it would wait for that stage's next time slice while its
    /// rings fill.) Counts `events_total` or `queue_overflow_total` at the hand-over.
    pub fn offer_batched(&self, counters: &Counters, ev: &Evidence) {
        let mut pending = self.pending.borrow_mut();
        // Encoded in place, behind its frame (its length, written once known): copied from
        // a scratch buffer, each record's bytes were copied once more on the drain.
        let frame_at = pending.bytes.len();
        pending.bytes.extend_from_slice(&[0; FRAME]);
        match encode_into(&mut pending.bytes, ev) {
            Ok(()) => {
                let len = (pending.bytes.len() - frame_at - FRAME) as u32;
                pending.bytes[frame_at..frame_at + FRAME].copy_from_slice(&len.to_le_bytes());
                pending.records += 1;
            }
            Err(e) => {
                pending.bytes.truncate(frame_at);
                encoding_failed(counters, &e);
            }
        }
        let hand_over = pending.bytes.len() >= HANDOVER_AT_BYTES;
        drop(pending);
        if hand_over {
            self.hand_over(counters);
        }
    }

    /// Hands the pending batch to the queue if its lock is free, or whatever it takes once
    /// more than [`PENDING_MAX_BYTES`] are pending, and wakes a waiting receiver.
    pub fn hand_over(&self, counters: &Counters) {
        let mut pending = self.pending.borrow_mut();
        if pending.records == 0 {
            return;
        }
        let shared = &*self.shared;
        let state = match shared.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if pending.bytes.len() <= PENDING_MAX_BYTES => return,
            Err(std::sync::TryLockError::WouldBlock) => shared.lock(),
        };
        Self::queue_pending(shared, state, &mut pending, counters);
    }

    /// Hands the pending batch over, waiting for the lock if need be (at shutdown).
    pub fn hand_over_all(&self, counters: &Counters) {
        let mut pending = self.pending.borrow_mut();
        if pending.records > 0 {
            Self::queue_pending(&self.shared, self.shared.lock(), &mut pending, counters);
        }
    }

    /// Moves every pending record into the queue (what does not fit is counted as
    /// overflow), then wakes a waiting receiver.
    fn queue_pending(shared: &Shared, mut state: MutexGuard<'_, State>, pending: &mut Pending, counters: &Counters) {
        let (mut queued, mut refused) = (0u64, 0u64);
        let mut at = 0;
        while let Some(&[a, b, c, d]) = pending.bytes.get(at..at + FRAME) {
            let framed = FRAME + u32::from_le_bytes([a, b, c, d]) as usize;
            if state.records < shared.max_records && state.ring.len() + framed <= shared.max_bytes {
                state.ring.extend(&pending.bytes[at..at + framed]);
                state.records += 1;
                queued += 1;
            } else {
                refused += 1;
            }
            at += framed;
        }
        let wake = state.records > 0 && std::mem::take(&mut state.receiver_waiting);
        drop(state);
        pending.bytes.clear();
        pending.records = 0;
        if wake {
            shared.arrived.notify_one();
        }
        counters.events_total.fetch_add(queued, Ordering::Relaxed);
        if refused > 0 {
            counters.queue_overflow_total.fetch_add(refused, Ordering::Relaxed);
        }
    }

    fn push(&self, encoded: &Encoded) -> bool {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.records >= shared.max_records || state.ring.len() + encoded.size() > shared.max_bytes {
            return false;
        }
        state.ring.extend((encoded.0.len() as u32).to_le_bytes());
        state.ring.extend(&encoded.0);
        state.records += 1;
        let wake = std::mem::take(&mut state.receiver_waiting);
        drop(state);
        if wake {
            shared.arrived.notify_one();
        }
        true
    }
}

impl Clone for QueueSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self { shared: Arc::clone(&self.shared), pending: RefCell::default() }
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        let left = self.pending.get_mut().records;
        if left > 0 {
            // The drain's shutdown hands everything over (hand_over_all) before it lets go.
            log::error!("queue sender dropped with {left} records never handed over (lost)");
        }
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.shared.arrived.notify_all();
        }
    }
}

impl QueueReceiver {
    /// Moves the next record into `into`, waiting for one; false once every sender is gone
    /// and the queue is empty.
    pub fn recv(&self, into: &mut Encoded) -> bool {
        let mut state = self.shared.lock();
        loop {
            if take(&mut state, into) {
                return true;
            }
            if state.senders == 0 {
                return false;
            }
            state.receiver_waiting = true;
            if state.ring.capacity() > KEPT_BYTES {
                let (s, wait) = self
                    .shared
                    .arrived
                    .wait_timeout(state, self.shared.idle_release)
                    .unwrap_or_else(|p| p.into_inner());
                state = s;
                if wait.timed_out() && state.records == 0 {
                    state.ring.shrink_to(KEPT_BYTES);
                }
            } else {
                state = self.shared.arrived.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Moves the next record into `into` if one is waiting.
    pub fn try_recv(&self, into: &mut Encoded) -> bool {
        take(&mut self.shared.lock(), into)
    }

    /// Whether the queue is under three quarters full (by records and by bytes): the sink
    /// stage may still wait for a slow sink, with the last quarter kept for what arrives
    /// meanwhile, so a slow sink delays a burst but never makes the queue overflow for all.
    pub fn has_room_to_wait(&self) -> bool {
        let state = self.shared.lock();
        let three_quarters = |bound: usize| bound - bound / 4;
        state.records < three_quarters(self.shared.max_records)
            && state.ring.len() < three_quarters(self.shared.max_bytes)
    }

    /// Encoded bytes in the queue now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().ring.len()
    }
}

fn take(state: &mut State, into: &mut Encoded) -> bool {
    if state.records == 0 {
        return false;
    }
    let mut len = [0u8; FRAME];
    copy_front(&state.ring, &mut len);
    let len = u32::from_le_bytes(len) as usize;
    let (a, b) = state.ring.as_slices();
    // The record starts FRAME bytes in; the ring's two slices may split it anywhere.
    let skip = FRAME.min(a.len());
    let a = &a[skip..];
    let b = &b[FRAME - skip..];
    let from_a = len.min(a.len());
    into.0.clear();
    into.0.extend_from_slice(&a[..from_a]);
    into.0.extend_from_slice(&b[..len - from_a]);
    state.ring.drain(..FRAME + len);
    state.records -= 1;
    true
}

/// Copies the ring's first `out.len()` bytes into `out`.
fn copy_front(ring: &VecDeque<u8>, out: &mut [u8]) {
    let (a, b) = ring.as_slices();
    let from_a = out.len().min(a.len());
    let (head, rest) = out.split_at_mut(from_a);
    head.copy_from_slice(&a[..from_a]);
    rest.copy_from_slice(&b[..rest.len()]);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::evidence::{ConnectionFacts, ErrorInfo, Facts, Outcome, Severity};
    use std::time::Instant;
    use tapio_identity::Workload;

    pub(crate) fn evidence(message: &str) -> Evidence {
        Evidence {
            id: crate::ulid::UlidGen::new().generate(1_795_242_384_941_531_851),
            kind: "kernel.network.connection_refused",
            observer: "network",
            severity: Severity::Warning,
            outcome: Outcome::Failure,
            error: ErrorInfo { code: "ECONNREFUSED", message: message.into() },
            timestamp: tapio_util::time::Rfc3339Nanos::default().format_text(1_795_242_384_941_531_851),
            timestamp_unix_nanos: 1_795_242_384_941_531_851,
            node: "node \"a\"".into(),
            config_generation: 7,
            workload: None,
            workload_ids: WorkloadIds { cgroup_id: 2675, mem_cgroup_id: 12 },
            facts: Facts::Connection(ConnectionFacts {
                pid: Some(11100),
                comm: Some("curl".into()),
                family: "ipv4",
                src_addr: crate::evidence::ipv4_text([127, 0, 0, 1]),
                src_port: 48906,
                dst_addr: crate::evidence::ipv4_text([127, 0, 0, 1]),
                dst_port: 1,
                errno: Some(111),
                ..Default::default()
            }),
        }
    }

    /// The spliced line is byte for byte what serializing the whole record gives: the
    /// queue changes how evidence travels, never its shape. A message that spells the
    /// workload key is only data.
    #[test]
    fn a_spliced_line_is_the_record_serialized_whole() {
        for workload in [None, Some(Workload::unknown(2675)), Some(pod_workload())] {
            let mut ev = evidence("refused ,\"workload\": and \"facts\" \\ \n\u{1} é");
            let mut encoded = Encoded::default();
            encoded.encode(&ev).unwrap();
            assert_eq!(encoded.workload_ids(), WorkloadIds { cgroup_id: 2675, mem_cgroup_id: 12 });
            let mut line = b"left over ".to_vec();
            encoded.write_line(&mut line, |out| serde_json::to_writer(out, &workload)).unwrap();
            ev.workload = workload;
            let mut whole = b"left over ".to_vec();
            serde_json::to_writer(&mut whole, &ev).unwrap();
            whole.push(b'\n');
            assert_eq!(String::from_utf8(line).unwrap(), String::from_utf8(whole).unwrap());
        }
    }

    /// The hand-written head names severities and outcomes as their derived serialization.
    #[test]
    fn severity_and_outcome_names_are_their_serialized_names() {
        for s in [Severity::Warning, Severity::Error, Severity::Critical] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        for o in [Outcome::Failure, Outcome::Timeout, Outcome::Degraded] {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{}\"", o.as_str()));
        }
    }

    fn pod_workload() -> Workload {
        Workload {
            cgroup_id: 2675,
            cgroup_path: Some("/kubepods/burstable/pod1/abc".into()),
            container_id: Some("abc".into()),
            pod_uid: Some("1".into()),
        }
    }

    /// A small record, a buffer holding it encoded, and its size in the queue.
    fn small_record() -> (Evidence, Encoded, usize) {
        let ev = evidence("m");
        let mut encoded = Encoded::default();
        encoded.encode(&ev).unwrap();
        let size = encoded.size();
        (ev, encoded, size)
    }

    /// The record bound and the byte bound each refuse what does not fit, counted as
    /// overflow; what was taken frees its bytes for the next.
    #[test]
    fn both_bounds_refuse_and_count_and_taking_frees_space() {
        let counters = Counters::default();
        let (ev, mut got, size) = small_record();

        let (tx, rx) = bounded(2, usize::MAX);
        for _ in 0..3 {
            tx.offer(&counters, &ev);
        }
        assert_eq!(counters.events_total.load(Ordering::Relaxed), 2);
        assert_eq!(counters.queue_overflow_total.load(Ordering::Relaxed), 1);
        assert_eq!(rx.queued_bytes(), 2 * size);

        let (tx, rx) = bounded(100, 2 * size + size / 2);
        for _ in 0..3 {
            tx.offer(&counters, &ev);
        }
        assert_eq!(counters.events_total.load(Ordering::Relaxed), 4);
        assert_eq!(counters.queue_overflow_total.load(Ordering::Relaxed), 2);
        assert!(rx.try_recv(&mut got));
        assert_eq!(rx.queued_bytes(), size);
        tx.offer(&counters, &ev);
        assert_eq!(counters.events_total.load(Ordering::Relaxed), 5);
        assert_eq!(rx.queued_bytes(), 2 * size);
        let second = tx.clone();
        drop(tx);
        assert!(rx.recv(&mut got) && rx.recv(&mut got));
        second.offer(&counters, &ev);
        drop(second);
        assert!(rx.recv(&mut got));
        assert!(!rx.recv(&mut got), "every sender is gone and the queue is empty");
        assert_eq!(rx.queued_bytes(), 0);
    }

    /// The stage may wait for a slow sink while the queue is under three quarters full, by
    /// records and by bytes.
    #[test]
    fn there_is_room_to_wait_under_three_quarters_of_either_bound() {
        let counters = Counters::default();
        let (ev, mut got, size) = small_record();
        for (tx, rx) in [bounded(4, usize::MAX), bounded(100, 4 * size)] {
            assert!(rx.has_room_to_wait());
            for _ in 0..2 {
                tx.offer(&counters, &ev);
            }
            assert!(rx.has_room_to_wait(), "half full");
            tx.offer(&counters, &ev);
            assert!(!rx.has_room_to_wait(), "three quarters full");
            assert!(rx.try_recv(&mut got));
            assert!(rx.has_room_to_wait(), "taken back under three quarters");
        }
    }

    /// A backlog's room stays while the queue only runs dry between bursts, and is given
    /// back once the queue has stayed empty for the release delay.
    #[test]
    fn room_is_given_back_only_after_the_queue_stays_empty() {
        let counters = Arc::new(Counters::default());
        let ev = evidence(&"x".repeat(1000));
        const RELEASE_AFTER: Duration = Duration::from_secs(2);
        let (tx, rx) = bounded_releasing_after(1000, usize::MAX, RELEASE_AFTER);
        for _ in 0..200 {
            tx.offer(&counters, &ev);
        }
        let room = |rx: &QueueReceiver| rx.shared.lock().ring.capacity();
        let backlog_room = room(&rx);
        assert!(backlog_room > KEPT_BYTES * 3, "200 records of 1 KB: {backlog_room}");
        let receiver = std::thread::spawn(move || {
            let mut got = Encoded::default();
            let mut taken = 0;
            while rx.recv(&mut got) {
                taken += 1;
            }
            (taken, rx)
        });
        // The receiver empties the queue and waits; a record 50 ms later finds the room kept
        // (the delay is far longer than that, for a loaded machine's sake).
        std::thread::sleep(Duration::from_millis(50));
        tx.offer(&counters, &ev);
        std::thread::sleep(Duration::from_millis(50));
        let kept = room_of(&tx);
        assert!(kept >= backlog_room, "room kept between bursts: {kept} < {backlog_room}");
        // Empty for longer than the delay: given back.
        let given_back_by = Instant::now() + RELEASE_AFTER + Duration::from_secs(20);
        while room_of(&tx) > KEPT_BYTES {
            assert!(Instant::now() < given_back_by, "room never given back: {}", room_of(&tx));
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(tx);
        let (taken, _rx) = receiver.join().unwrap();
        assert_eq!(taken, 201);
    }

    /// A batching sender keeps its records until it hands them over (the end of a ring's
    /// burst), or until HANDOVER_AT_BYTES are pending; the hand-over queues and counts them
    /// and wakes a waiting receiver. A plain offer queues and wakes at once.
    #[test]
    fn a_batching_sender_hands_over_at_the_batch_end_or_when_enough_is_pending() {
        let counters = Counters::default();
        let ev = evidence("m");
        let mut one = Encoded::default();
        one.encode(&ev).unwrap();
        let (tx, rx) = bounded(10_000, usize::MAX);
        let waiting = |rx: &QueueReceiver| rx.shared.lock().receiver_waiting;
        let set_waiting = |rx: &QueueReceiver| rx.shared.lock().receiver_waiting = true;
        let events = |c: &Counters| c.events_total.load(Ordering::Relaxed);

        set_waiting(&rx);
        tx.offer_batched(&counters, &ev);
        assert_eq!((rx.queued_bytes(), events(&counters)), (0, 0), "pending, not queued yet");
        assert!(waiting(&rx));
        tx.hand_over(&counters);
        assert_eq!((rx.queued_bytes(), events(&counters)), (one.size(), 1));
        assert!(!waiting(&rx), "the hand-over wakes the receiver");
        tx.hand_over(&counters);
        assert_eq!(events(&counters), 1, "nothing pending: nothing handed over");

        let per_handover = HANDOVER_AT_BYTES.div_ceil(one.size());
        for _ in 0..per_handover - 1 {
            tx.offer_batched(&counters, &ev);
        }
        assert_eq!(events(&counters), 1, "below HANDOVER_AT_BYTES the records wait");
        tx.offer_batched(&counters, &ev);
        assert_eq!(events(&counters), 1 + per_handover as u64, "HANDOVER_AT_BYTES pending are handed over");

        let mut got = Encoded::default();
        while rx.try_recv(&mut got) {}
        set_waiting(&rx);
        tx.offer(&counters, &ev);
        assert!(!waiting(&rx), "a plain offer wakes at once");
    }

    /// A batched record is encoded straight into the batch behind its frame: what the sink
    /// stage takes out is, record for record, what encoding it alone gives.
    #[test]
    fn batched_records_arrive_as_they_encode_alone() {
        let counters = Counters::default();
        let (tx, rx) = bounded(10_000, usize::MAX);
        let records: Vec<Evidence> = (0..300).map(|i| evidence(&"x".repeat(i * 7 % 500))).collect();
        for ev in &records {
            tx.offer_batched(&counters, ev);
        }
        tx.hand_over_all(&counters);
        let (mut got, mut alone) = (Encoded::default(), Encoded::default());
        for ev in &records {
            assert!(rx.try_recv(&mut got));
            alone.encode(ev).unwrap();
            assert_eq!(got.0, alone.0);
        }
        assert!(!rx.try_recv(&mut got));
        assert_eq!(counters.events_total.load(Ordering::Relaxed), 300);
    }

    /// The drain never waits for the lock while it holds little: with the lock taken (by a
    /// sink stage that lost its CPU), a hand-over keeps the records for the next one. Past
    /// PENDING_MAX_BYTES it waits, and what does not fit the queue is counted at once.
    #[test]
    fn a_hand_over_does_not_wait_for_a_held_lock_until_too_much_is_pending() {
        let counters = Arc::new(Counters::default());
        let ev = evidence("m");
        let mut one = Encoded::default();
        one.encode(&ev).unwrap();
        let (tx, rx) = bounded(3, usize::MAX);
        let events = |c: &Counters| c.events_total.load(Ordering::Relaxed);

        let held = rx.shared.lock();
        tx.offer_batched(&counters, &ev);
        tx.hand_over(&counters);
        assert_eq!(events(&counters), 0, "the lock is held: kept, without waiting");
        drop(held);
        tx.hand_over(&counters);
        assert_eq!(events(&counters), 1, "the next hand-over queues it");

        // Held longer, by another thread: records up to PENDING_MAX_BYTES are kept, and the
        // one past it waits until the lock is free; the queue (3 records) counts the rest.
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let held = rx.shared.lock();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(held);
            rx
        });
        locked_rx.recv().unwrap();
        let kept = PENDING_MAX_BYTES / one.size();
        for _ in 0..kept {
            tx.offer_batched(&counters, &ev);
            tx.hand_over(&counters);
        }
        assert_eq!(events(&counters), 1, "nothing handed over while the lock is held");
        // One more: past the bound the hand-over waits for the lock, until it is released.
        let (handed_tx, handed_rx) = std::sync::mpsc::channel();
        let sender = std::thread::spawn({
            let counters = Arc::clone(&counters);
            move || {
                tx.offer_batched(&counters, &ev);
                tx.hand_over(&counters);
                handed_tx.send(()).unwrap();
            }
        });
        let waited = handed_rx.recv_timeout(Duration::from_millis(200));
        assert_eq!(waited, Err(std::sync::mpsc::RecvTimeoutError::Timeout), "past the bound it waited for the lock");
        release_tx.send(()).unwrap();
        handed_rx.recv_timeout(Duration::from_secs(20)).expect("handed over once the lock was free");
        sender.join().unwrap();
        let rx = holder.join().unwrap();
        assert_eq!(events(&counters), 3, "the queue's three records");
        assert_eq!(counters.queue_overflow_total.load(Ordering::Relaxed), kept as u64 + 1 - 2, "the rest counted");
        let mut got = Encoded::default();
        let mut taken = 0;
        while rx.try_recv(&mut got) {
            taken += 1;
        }
        assert_eq!(taken, 3);
    }

    /// At shutdown the drain hands everything over, waiting for the lock.
    #[test]
    fn hand_over_all_waits_for_the_lock() {
        let counters = Counters::default();
        let (tx, rx) = bounded(10, usize::MAX);
        tx.offer_batched(&counters, &evidence("m"));
        let holder = std::thread::spawn(move || {
            let held = rx.shared.lock();
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
            rx
        });
        std::thread::sleep(Duration::from_millis(50));
        tx.hand_over_all(&counters);
        let rx = holder.join().unwrap();
        assert_eq!(counters.events_total.load(Ordering::Relaxed), 1);
        assert!(rx.queued_bytes() > 0);
    }

    fn room_of(tx: &QueueSender) -> usize {
        tx.shared.lock().ring.capacity()
    }

    /// A receiver waiting on an empty queue wakes for a record from another thread, and
    /// ends when the last sender leaves.
    #[test]
    fn a_waiting_receiver_wakes_for_records_and_ends_with_the_senders() {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = bounded(4, usize::MAX);
        let sender = {
            let counters = Arc::clone(&counters);
            std::thread::spawn(move || {
                for i in 0..100 {
                    // The receiver keeps up; a full queue would drop (and count) instead.
                    while rx_is_full(&tx) {
                        std::thread::yield_now();
                    }
                    tx.offer(&counters, &evidence(&i.to_string()));
                }
            })
        };
        let (mut got, mut record) = (0, Encoded::default());
        while rx.recv(&mut record) {
            let mut line = Vec::new();
            record.write_line(&mut line, |out| serde_json::to_writer(out, &None::<Workload>)).unwrap();
            let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
            // In order, each one whole.
            assert_eq!(value["error"]["message"], got.to_string());
            got += 1;
        }
        sender.join().unwrap();
        assert_eq!(got, 100);
        assert_eq!(counters.queue_overflow_total.load(Ordering::Relaxed), 0);
    }

    fn rx_is_full(tx: &QueueSender) -> bool {
        tx.shared.lock().records >= tx.shared.max_records
    }
}
