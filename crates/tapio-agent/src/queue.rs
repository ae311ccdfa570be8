//! The drain → sink queue. Evidence crosses it as one compact encoded record: its final
//! JSON line without the workload (which the sink stage resolves, off the drain), in one
//! allocation of exactly its size, instead of a boxed [`Evidence`] with its half-dozen
//! strings. A full queue of 16,384 boxed records held about 14 MB; the same records
//! encoded take about a third of that, and a byte budget bounds the queue whatever the
//! records' sizes, so a slow consumer cannot grow the agent past its memory goal.
//!
//! The queue is bounded twice: by records (`queue_capacity`) and by encoded bytes
//! ([`QUEUE_MAX_BYTES`]). A record that fits neither is dropped and counted
//! (`queue_overflow_total`); sending never waits for the sinks.

use crate::counters::Counters;
use crate::evidence::{Evidence, WorkloadIds};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Encoded bytes the queue may hold. At about 560 bytes per connection record that is some
/// 7,500 records of backlog, seconds of a flood; the record bound applies as well.
pub const QUEUE_MAX_BYTES: usize = 4 << 20;

/// The JSON key the sink stage's workload goes under; the record is encoded up to it.
const WORKLOAD_KEY: &[u8] = b",\"workload\":";
/// Bytes before the JSON: the cgroup ids (2 × u64) and the split offset (u32), little endian.
const HEADER: usize = 20;

/// One piece of evidence as the queue carries it: `[cgroup_id][mem_cgroup_id][split]` then
/// the JSON line up to and including `"workload":` (the head), then the rest from
/// `,"facts":` (the tail), with no newline.
#[derive(Debug)]
pub struct Encoded(Box<[u8]>);

impl Encoded {
    /// Encodes `ev` (its `workload` is left to the sink stage and must still be empty).
    pub fn new(ev: &Evidence, scratch: &mut Vec<u8>) -> serde_json::Result<Self> {
        scratch.clear();
        scratch.extend_from_slice(&ev.workload_ids.cgroup_id.to_le_bytes());
        scratch.extend_from_slice(&ev.workload_ids.mem_cgroup_id.to_le_bytes());
        scratch.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut *scratch, &ev.head())?;
        // The head serializes as an object: its closing brace gives way to the workload key.
        scratch.pop();
        scratch.extend_from_slice(WORKLOAD_KEY);
        let split = (scratch.len() - HEADER) as u32;
        scratch[16..HEADER].copy_from_slice(&split.to_le_bytes());
        scratch.extend_from_slice(b",\"facts\":");
        serde_json::to_writer(&mut *scratch, &ev.facts)?;
        scratch.push(b'}');
        Ok(Self(Box::from(&scratch[..])))
    }

    /// The kernel's ids of the record's workload, for the sink stage to resolve.
    pub fn workload_ids(&self) -> WorkloadIds {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.0[at..at + 8]);
            u64::from_le_bytes(b)
        };
        WorkloadIds { cgroup_id: u64_at(0), mem_cgroup_id: u64_at(8) }
    }

    /// Appends the complete line to `line`: head, the workload as `write_workload` writes
    /// it (a JSON value), tail, newline.
    pub fn write_line<E>(
        &self,
        line: &mut Vec<u8>,
        write_workload: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut split = [0u8; 4];
        split.copy_from_slice(&self.0[16..HEADER]);
        let (head, tail) = self.0[HEADER..].split_at(u32::from_le_bytes(split) as usize);
        line.extend_from_slice(head);
        write_workload(line)?;
        line.extend_from_slice(tail);
        line.push(b'\n');
        Ok(())
    }

    /// Bytes this record holds in the queue.
    pub fn size(&self) -> usize {
        self.0.len()
    }
}

/// The sending half; one per thread that emits evidence (the drain, the poll thread).
pub struct QueueSender {
    shared: Arc<Shared>,
}

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
}

struct State {
    /// Grows with the backlog and shrinks when it is gone: an idle agent does not keep the
    /// room for a full queue resident (a preallocated channel of 16,384 slots would).
    records: VecDeque<Encoded>,
    bytes: usize,
    senders: usize,
    receiver_waiting: bool,
}

/// Room kept when the queue runs dry; more is given back.
const KEPT_SLOTS: usize = 256;

/// A queue of at most `records` records and `max_bytes` encoded bytes.
pub fn bounded(records: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { records: VecDeque::new(), bytes: 0, senders: 1, receiver_waiting: false }),
        arrived: Condvar::new(),
        max_records: records,
        max_bytes,
    });
    (QueueSender { shared: Arc::clone(&shared) }, QueueReceiver { shared })
}

impl Shared {
    /// The lock is held for a few pointer moves on either side and never across I/O, so the
    /// drain never waits for a sink; a panic while holding it cannot leave it inconsistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

thread_local! {
    /// Each sending thread's encoding buffer: one allocation per record, of its exact size.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl QueueSender {
    /// Encodes one record and hands it to the sink stage without waiting for it: what does
    /// not fit is counted as queue overflow. Counts `events_total` for what was queued.
    pub fn offer(&self, counters: &Counters, ev: &Evidence) {
        let encoded = SCRATCH.with(|s| Encoded::new(ev, &mut s.borrow_mut()));
        let encoded = match encoded {
            Ok(e) => e,
            Err(e) => {
                // Cannot happen for these types (no maps with non-string keys, no failing
                // writer); if it did, the record is lost at the queue, and counted there.
                log::error!("encoding evidence: {e}");
                counters.queue_overflow_total.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.records.len() >= shared.max_records || state.bytes + encoded.size() > shared.max_bytes {
            drop(state);
            counters.queue_overflow_total.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.bytes += encoded.size();
        state.records.push_back(encoded);
        let wake = std::mem::take(&mut state.receiver_waiting);
        drop(state);
        counters.events_total.fetch_add(1, Ordering::Relaxed);
        if wake {
            shared.arrived.notify_one();
        }
    }
}

impl Clone for QueueSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        if state.senders == 0 {
            drop(state);
            self.shared.arrived.notify_all();
        }
    }
}

impl QueueReceiver {
    /// The next record, waiting for one; `None` once every sender is gone and it is empty.
    pub fn recv(&self) -> Option<Encoded> {
        let mut state = self.shared.lock();
        loop {
            if let Some(e) = take(&mut state) {
                return Some(e);
            }
            if state.senders == 0 {
                return None;
            }
            if state.records.capacity() > KEPT_SLOTS {
                state.records.shrink_to(KEPT_SLOTS);
            }
            state.receiver_waiting = true;
            state = self.shared.arrived.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The next record if one is waiting.
    pub fn try_recv(&self) -> Option<Encoded> {
        take(&mut self.shared.lock())
    }

    /// Encoded bytes in the queue now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }
}

fn take(state: &mut State) -> Option<Encoded> {
    let e = state.records.pop_front()?;
    state.bytes -= e.size();
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{ConnectionFacts, ErrorInfo, Facts, Outcome, Severity};
    use tapio_identity::Workload;

    fn evidence(message: &str) -> Evidence {
        Evidence {
            id: "01M7YCHQHDA8Q5QBQCRKCQWTAQ".into(),
            kind: "kernel.network.connection_refused",
            observer: "network",
            severity: Severity::Warning,
            outcome: Outcome::Failure,
            error: ErrorInfo { code: "ECONNREFUSED", message: message.into() },
            timestamp: "2026-11-21T06:26:24.941531851Z".into(),
            timestamp_unix_nanos: 1_795_242_384_941_531_851,
            node: "node \"a\"".into(),
            config_generation: 7,
            workload: None,
            workload_ids: WorkloadIds { cgroup_id: 2675, mem_cgroup_id: 12 },
            facts: Facts::Connection(ConnectionFacts {
                pid: Some(11100),
                comm: Some("curl".into()),
                family: "ipv4",
                src_addr: "127.0.0.1".into(),
                src_port: 48906,
                dst_addr: "127.0.0.1".into(),
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
            let mut ev = evidence("refused ,\"workload\": and \"facts\"");
            let encoded = Encoded::new(&ev, &mut Vec::new()).unwrap();
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

    fn pod_workload() -> Workload {
        Workload {
            cgroup_id: 2675,
            cgroup_path: Some("/kubepods/burstable/pod1/abc".into()),
            container_id: Some("abc".into()),
            pod_uid: Some("1".into()),
        }
    }

    /// The record bound and the byte bound each refuse what does not fit, counted as
    /// overflow; what was taken frees its bytes for the next.
    #[test]
    fn both_bounds_refuse_and_count_and_taking_frees_space() {
        let counters = Counters::default();
        let ev = evidence("m");
        let size = Encoded::new(&ev, &mut Vec::new()).unwrap().size();

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
        assert!(rx.try_recv().is_some());
        assert_eq!(rx.queued_bytes(), size);
        tx.offer(&counters, &ev);
        assert_eq!(counters.events_total.load(Ordering::Relaxed), 5);
        assert_eq!(rx.queued_bytes(), 2 * size);
        let second = tx.clone();
        drop(tx);
        assert!(rx.recv().is_some() && rx.recv().is_some());
        second.offer(&counters, &ev);
        drop(second);
        assert!(rx.recv().is_some());
        assert!(rx.recv().is_none(), "every sender is gone and the queue is empty");
        assert_eq!(rx.queued_bytes(), 0);
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
        let mut got = 0;
        while rx.recv().is_some() {
            got += 1;
        }
        sender.join().unwrap();
        assert_eq!(got, 100);
        assert_eq!(counters.queue_overflow_total.load(Ordering::Relaxed), 0);
    }

    fn rx_is_full(tx: &QueueSender) -> bool {
        tx.shared.lock().records.len() >= tx.shared.max_records
    }
}
