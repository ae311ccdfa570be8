//! Observer work that runs on a timer rather than on a ring buffer: the node observer's
//! pressure and hardware-counter sampling, the container pressure observer's cgroup reads,
//! and the storage observer's ageing of its in-flight table. All of it shares one thread, which hands evidence to the sink stage
//! the same way the drain does (a non-blocking send, overflow counted).

use crate::counters::Counters;
use crate::queue::QueueSender;
use crate::stamp::{Stamper, Verdict};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
            Verdict::Emit(ev) => self.queue.offer(self.counters, &ev),
            Verdict::Drop(reason) => self.counters.correlation_drop(observer, reason),
            Verdict::Ignore => {}
        }
    }
}

/// The settings a poller judges with and their config generation, replaced whole when the
/// controller's config changes (the poller reads a copy at each poll).
#[derive(Debug)]
pub struct SharedSettings<T> {
    current: Mutex<(u32, T)>,
}

impl<T: Clone> SharedSettings<T> {
    pub fn new(generation: u32, config: T) -> Arc<Self> {
        Arc::new(Self { current: Mutex::new((generation, config)) })
    }

    pub fn set(&self, generation: u32, config: T) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (generation, config);
    }

    pub fn get(&self) -> (u32, T) {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
