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

/// Longest sleep between checks of the shutdown flag. The runtime unparks this thread
/// when shutdown begins, so this is only a backstop; an idle thread that woke every 100 ms
/// to look at the flag cost the idle agent more CPU than its polls.
const LONGEST_SLEEP: Duration = Duration::from_secs(5);

/// A poller's next due time: on its own grid from its first poll, so that pollers whose
/// intervals are multiples of one another come due together and share a wake-up (each
/// wake-up of an idle agent costs more than most polls); a poll that overran its slot
/// starts the grid afresh.
fn next_due(was_due: Instant, now: Instant, interval: Duration) -> Instant {
    let next = was_due + interval;
    if next > now {
        next
    } else {
        now + interval
    }
}

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
                    *at = next_due(*at, now, poller.interval());
                }
            }
            let next = due.iter().min().copied().unwrap_or(now + LONGEST_SLEEP);
            // Parked, not asleep: the runtime's unpark ends the wait at shutdown (a spurious
            // wake-up only runs this loop once more).
            std::thread::park_timeout(next.saturating_duration_since(Instant::now()).min(LONGEST_SLEEP));
        }
        // Dropping the queue's sender here is what lets the sink stage finish.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::BootToWall;
    use std::sync::atomic::AtomicU32;

    /// Counts its polls; due again only after a minute.
    struct Rare(Arc<AtomicU32>);

    impl Poller for Rare {
        fn name(&self) -> &'static str {
            "rare"
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn poll(&mut self, _ctx: &mut PollContext) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn pollers_keep_to_their_grid_so_that_multiples_share_wake_ups() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        // Polled 3 ms late: still due at its next slot, not 3 ms after it.
        assert_eq!(next_due(start, start + ms(3), ms(500)), start + ms(500));
        // A 2 s poller and a 500 ms one started together meet every 2 s.
        let (mut fast, mut slow) = (start, start);
        for _ in 0..4 {
            fast = next_due(fast, fast + ms(1), ms(500));
        }
        slow = next_due(slow, slow + ms(1), ms(2000));
        assert_eq!(fast, slow);
        // A poll that overran its whole slot starts again from now.
        assert_eq!(next_due(start, start + ms(700), ms(500)), start + ms(1200));
    }

    #[test]
    fn an_idle_poll_thread_sleeps_until_unparked_for_shutdown() {
        let polls = Arc::new(AtomicU32::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let (queue, _rx) = crate::queue::bounded(16, 1 << 16);
        let thread = PollThread {
            pollers: vec![Box::new(Rare(Arc::clone(&polls)))],
            stamper: Stamper::new(Arc::from("node"), Arc::new(BootToWall::measured())),
            queue,
            counters: Arc::new(Counters::default()),
            shutdown: Arc::clone(&shutdown),
        };
        let handle = std::thread::spawn(move || thread.run());
        let polled_by = Instant::now() + Duration::from_secs(20);
        while polls.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < polled_by, "never polled at start");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once at start, then asleep until due");
        assert!(!handle.is_finished());

        shutdown.store(true, Ordering::Relaxed);
        handle.thread().unpark();
        let asked = Instant::now();
        while !handle.is_finished() {
            // The backstop would end it after LONGEST_SLEEP; the unpark must, well before.
            assert!(asked.elapsed() < LONGEST_SLEEP - Duration::from_secs(1), "the unpark did not end the sleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        handle.join().expect("poll thread");
        assert_eq!(polls.load(Ordering::Relaxed), 1);
    }
}
