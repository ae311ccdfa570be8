//! Observer work that runs on a timer rather than on a ring buffer: the node observer's
//! pressure and hardware-counter sampling, and the storage observer's ageing of its
//! in-flight table. All of it shares one thread, which hands evidence to the sink stage
//! the same way the drain does (a non-blocking send, overflow counted).

use crate::counters::Counters;
use crate::drain::offer;
use crate::queue::QueueSender;
use crate::stamp::{Stamper, Verdict};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a poller may touch while it runs.
pub struct PollContext<'a> {
    pub stamper: &'a mut Stamper,
    pub queue: &'a QueueSender,
    pub counters: &'a Counters,
}

impl PollContext<'_> {
    /// Emits, counts or ignores one verdict of `observer`.
    pub fn deliver(&mut self, observer: &'static str, verdict: Verdict) {
        match verdict {
            Verdict::Emit(ev) => offer(self.queue, self.counters, ev),
            Verdict::Drop(reason) => self.counters.correlation_drop(observer, reason),
            Verdict::Ignore => {}
        }
    }
}

pub trait Poller: Send {
    fn name(&self) -> &'static str;
    /// Time to the next poll, asked after every poll (settings may have changed it).
    fn interval(&self) -> Duration;
    fn poll(&mut self, ctx: &mut PollContext);
}

/// Longest sleep between checks of the shutdown flag.
const TICK: Duration = Duration::from_millis(100);

pub struct PollThread {
    pub pollers: Vec<Box<dyn Poller>>,
    pub stamper: Stamper,
    pub queue: QueueSender,
    pub counters: Arc<Counters>,
    pub shutdown: Arc<AtomicBool>,
}

impl PollThread {
    /// Polls each poller when it is due until shutdown; the first poll of each is at once.
    pub fn run(mut self) {
        let start = Instant::now();
        let mut due: Vec<Instant> = self.pollers.iter().map(|_| start).collect();
        while !self.shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            for (poller, at) in self.pollers.iter_mut().zip(due.iter_mut()) {
                if now >= *at {
                    let mut ctx =
                        PollContext { stamper: &mut self.stamper, queue: &self.queue, counters: &self.counters };
                    poller.poll(&mut ctx);
                    *at = now + poller.interval();
                }
            }
            let next = due.iter().min().copied().unwrap_or(now + TICK);
            std::thread::sleep(next.saturating_duration_since(Instant::now()).min(TICK));
        }
        // Dropping the queue's sender here is what lets the sink stage finish.
    }
}
