//! The outbox: serialized evidence waiting for the controller.
//!
//! The sink stage hands each line to [`OutboxSink`] without waiting; when the outbox is full
//! (controller slow or down for long) the line is refused and counted as a sink failure of
//! the `controller` sink, so observation and the local sinks never stall.

use crate::counters::CONTROLLER_SINK;
use crate::sinks::{Delivered, Sink};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

pub struct Outbox {
    lines: Mutex<VecDeque<Vec<u8>>>,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { lines: Mutex::new(VecDeque::new()), capacity })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, line: Vec<u8>) -> bool {
        let mut lines = self.lock();
        if lines.len() >= self.capacity {
            return false;
        }
        lines.push_back(line);
        true
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max_events` lines whose total size stays within `max_bytes` (always at
    /// least one line if any is waiting, so one oversized line cannot wedge the queue).
    pub fn take_batch(&self, max_events: usize, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut lines = self.lock();
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

    fn flush(&mut self, report: &mut dyn FnMut(Delivered)) {
        report(std::mem::take(&mut self.delivered));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_batched_by_count_and_bytes() {
        let outbox = Outbox::new(3);
        let mut sink = OutboxSink::new(Arc::clone(&outbox));
        for _ in 0..3 {
            sink.write_line(b"{\"a\":1}\n");
        }
        sink.write_line(b"{}\n");
        let mut d = Delivered::default();
        sink.flush(&mut |x| d.add(x));
        assert_eq!(d, Delivered { written: 3, failed: 1 }, "a full outbox refuses, never blocks");
        assert_eq!(outbox.take_batch(2, 1000), vec![b"{\"a\":1}".to_vec(); 2]);
        assert_eq!(outbox.len(), 1);
        sink.write_line(b"{\"b\":2}\n");
        // 8 bytes per line + separator: a 10-byte budget takes one.
        assert_eq!(outbox.take_batch(10, 10).len(), 1);
        assert_eq!(outbox.take_batch(10, 1).len(), 1, "an oversized line still leaves");
        assert!(outbox.is_empty());
    }
}
