//! The ring-buffer drain: the agent's hot path.
//!
//! One thread waits on every observer's ring buffer with epoll, decodes and classifies each
//! record, and hands evidence to the sink stage through a bounded queue without waiting: a
//! slow or broken sink makes the queue overflow (counted), never this loop block.

use crate::clock::BootToWall;
use crate::counters::Counters;
use crate::drain_priority::Governor;
use crate::observers::{read_kernel_counters, Classifier, Running};
use crate::queue::QueueSender;
use crate::stamp::{Stamper, Verdict};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records taken from one ring before the others get a turn (a CPU's 256 KiB network ring on
/// a two-CPU node holds about one and a half of these).
pub const BURST: usize = 1024;
/// Poll period: the kernel side wakes the drain only once a batch is waiting (a wake-up
/// per record would cost more than the record), so this bounds how long a lone record
/// waits.
const IDLE_WAIT_MS: i32 = 100;
/// Empty polls in a row (a second of them) after which the drain raises every object's
/// `drain_asleep` flag and sleeps without the poll period: any record then wakes it. An
/// idle agent's ten wake-ups a second were most of its idle CPU.
const EMPTY_POLLS_BEFORE_SLEEP: u32 = 10;
/// Asleep, the drain still wakes this often: for the counters and clock refresh, and for a
/// record whose program read the flag just before it was raised.
const ASLEEP_WAIT_MS: i32 = 1_000;
/// How often the boot→wall offset and the kernel counters are refreshed.
const REFRESH: Duration = Duration::from_secs(1);
/// At shutdown, how long the drain may take to classify what is left in the rings (a 512 KiB
/// ring holds a few thousand records: milliseconds). What is still there after it is read
/// without classifying and counted per observer (`kernel`: `<observer>.unread_at_shutdown`).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Where records come from: a ring buffer, or a list in tests.
pub trait RecordSource {
    /// Hands the next record to `f`; false when there is none.
    fn take_one(&mut self, f: &mut dyn FnMut(&[u8])) -> bool;
    /// Gives the room of the records taken back to their producers (a ring gives it back in
    /// batches: `crate::ring`).
    fn publish(&mut self) {}
}

/// Takes up to `limit` records, handing each to `handle`, and gives their room back. Returns
/// how many it took.
pub fn take_records(source: &mut dyn RecordSource, limit: usize, handle: &mut dyn FnMut(&[u8])) -> usize {
    let mut taken = 0;
    while taken < limit && source.take_one(handle) {
        taken += 1;
    }
    source.publish();
    taken
}

/// Waits until no program that started before its detach is still running: one may hold a
/// reservation in a ring, which would stop the last drain at that record (and leave it and
/// everything after it neither read nor counted). Programs run inside RCU read-side
/// sections and a global membarrier waits for an RCU grace period; where the kernel refuses
/// it (nohz_full CPUs), a pause far longer than any program runs.
fn wait_out_running_programs() {
    // SAFETY: membarrier takes no pointers.
    let waited = unsafe { libc::syscall(libc::SYS_membarrier, libc::MEMBARRIER_CMD_GLOBAL, 0, 0) } == 0;
    if !waited {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Empties a source whose producers have stopped: records are handled until it is empty or
/// `deadline` passes; the rest are read without handling and counted. Returns (handled,
/// unread).
pub fn take_until_empty(source: &mut dyn RecordSource, deadline: Instant, handle: &mut dyn FnMut(&[u8])) -> (u64, u64) {
    let mut handled = 0;
    while Instant::now() < deadline {
        let n = take_records(source, BURST, handle);
        handled += n as u64;
        if n < BURST {
            return (handled, 0);
        }
    }
    // Reading a record without classifying it is a pointer bump, and the source is finite
    // (the programs are detached): this ends quickly.
    let mut unread = 0;
    while source.take_one(&mut |_| {}) {
        unread += 1;
    }
    source.publish();
    (handled, unread)
}

pub struct Drain {
    pub observers: Vec<Running>,
    pub stamper: Stamper,
    pub queue: QueueSender,
    pub counters: Arc<Counters>,
    pub clock: Arc<BootToWall>,
    pub shutdown: Arc<AtomicBool>,
    /// Readable once shutdown is asked (`ShutdownSignal::waker`): wakes a sleeping drain.
    pub shutdown_waker: Option<OwnedFd>,
    /// Run real-time while the work is light (`drain_realtime`).
    pub realtime: bool,
}

fn epoll_for(observers: &[Running], shutdown_waker: Option<&OwnedFd>) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls on fds we own; the epoll fd is wrapped in OwnedFd at once.
    unsafe {
        let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let epoll = OwnedFd::from_raw_fd(fd);
        // Any ready ring wakes the loop, which then takes from every ring.
        for (i, ring) in observers.iter().flat_map(|obs| &obs.loaded.rings).enumerate() {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            if libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, ring.as_raw_fd(), &mut ev) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(waker) = shutdown_waker {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: u64::MAX };
            if libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, waker.as_raw_fd(), &mut ev) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(epoll)
    }
}

impl Drain {
    pub fn run(mut self) {
        // Loading parsed the kernel's BTF (tens of MB, freed again): give the freed heap
        // pages back, or they stay resident for the agent's life.
        // SAFETY: malloc_trim only releases free memory of the allocator; no pointers change.
        unsafe { libc::malloc_trim(0) };
        let epoll = match epoll_for(&self.observers, self.shutdown_waker.as_ref()) {
            Ok(fd) => Some(fd),
            Err(e) => {
                // Polling still drains everything, only with more latency.
                log::warn!("epoll unavailable ({e}); polling ring buffers every {IDLE_WAIT_MS} ms");
                None
            }
        };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let mut priority = Governor::start(self.realtime);
        let mut last_refresh = Instant::now();
        let mut empty_polls = 0u32;
        let mut asleep = false;
        loop {
            if let Some(epoll) = &epoll {
                let wait_ms = if asleep { ASLEEP_WAIT_MS } else { IDLE_WAIT_MS };
                // SAFETY: the buffer outlives the call and its length is passed.
                unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, wait_ms) };
            } else {
                std::thread::sleep(Duration::from_millis(IDLE_WAIT_MS as u64));
            }
            let taken = self.drain_all();
            // Woken with nothing to take (the backstop), it sleeps on with the flags up.
            if asleep && taken > 0 {
                // Records again: they go back to waking the drain only in bulk.
                self.set_asleep(false);
                asleep = false;
            }
            empty_polls = if taken == 0 { empty_polls.saturating_add(1) } else { 0 };
            // Only an epoll that the shutdown waker is part of may sleep without a period.
            if !asleep && epoll.is_some() && self.shutdown_waker.is_some() && empty_polls >= EMPTY_POLLS_BEFORE_SLEEP {
                asleep = self.fall_asleep();
            }
            if last_refresh.elapsed() >= REFRESH {
                self.refresh();
                priority.tick();
                last_refresh = Instant::now();
            }
            if self.shutdown.load(Ordering::Relaxed) {
                priority.stop();
                self.finish();
                return;
            }
        }
    }

    /// Detaches every program, then empties every ring: nothing that reached a ring before
    /// shutdown is left behind. If classifying it all takes longer than [`SHUTDOWN_DRAIN`],
    /// the rest is counted by observer as unread.
    fn finish(mut self) {
        for obs in &mut self.observers {
            // Dropping the object detaches and unloads its programs; the ring buffer and
            // counters were taken out of it and stay readable.
            drop(obs.loaded.ebpf.take());
        }
        wait_out_running_programs();
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        let Self { observers, stamper, queue, counters, .. } = &mut self;
        for obs in observers.iter_mut() {
            let name = obs.name;
            let classifier = &mut obs.classifier;
            let (mut handled, mut unread) = (0, 0);
            for ring in &mut obs.loaded.rings {
                let (h, u) = take_until_empty(ring, deadline, &mut |record| {
                    classify_one(name, classifier.as_mut(), record, stamper, queue, counters)
                });
                // Shutdown: what was taken goes to the queue now, lock or no lock.
                queue.hand_over_all(counters);
                handled += h;
                unread += u;
            }
            log::debug!("shutdown: {name}: {handled} records taken from its rings");
            if unread > 0 {
                log::warn!("shutdown: {name}: {unread} records left unread at the deadline (counted)");
                counters.unread_at_shutdown(name, unread);
            }
        }
        self.refresh();
        // Dropping the queue's sender lets the sink stage finish after the last record.
    }

    fn refresh(&mut self) {
        self.clock.remeasure();
        for obs in &self.observers {
            read_kernel_counters(obs.name, obs.counters, &obs.loaded, &self.counters);
        }
    }

    /// Takes a burst from every ring; returns how many records it took.
    fn drain_all(&mut self) -> usize {
        let Self { observers, stamper, queue, counters, .. } = self;
        let mut taken = 0;
        for obs in observers.iter_mut() {
            let name = obs.name;
            let classifier = &mut obs.classifier;
            for ring in &mut obs.loaded.rings {
                taken += take_records(ring, BURST, &mut |record| {
                    classify_one(name, classifier.as_mut(), record, stamper, queue, counters)
                });
                queue.hand_over(counters);
            }
        }
        taken
    }

    /// Sets every object's `drain_asleep` flag; false if one could not be written.
    fn set_asleep(&mut self, asleep: bool) -> bool {
        let mut all = true;
        for obs in &mut self.observers {
            if let Err(e) = obs.loaded.drain_asleep.set(0, u32::from(asleep), 0) {
                log::debug!("{}: drain_asleep not written: {e}", obs.name);
                all = false;
            }
        }
        all
    }

    /// Raises the flags, then takes from the rings once more: a record committed before its
    /// program could see the flag is taken now rather than at the backstop. True when the
    /// drain may sleep without its poll period.
    fn fall_asleep(&mut self) -> bool {
        if self.set_asleep(true) {
            // The flags' stores (made in the syscalls, on this CPU) before the rings' loads.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.drain_all() == 0 {
                return true;
            }
        }
        self.set_asleep(false);
        false
    }
}

fn classify_one(
    name: &'static str,
    classifier: &mut dyn Classifier,
    record: &[u8],
    stamper: &mut Stamper,
    queue: &QueueSender,
    counters: &Counters,
) {
    match classifier.classify(record, stamper) {
        Err(e) => {
            counters.malformed_events_total.fetch_add(1, Ordering::Relaxed);
            log::debug!("{name}: malformed record: {e}");
        }
        Ok(Verdict::Emit(ev)) => queue.offer_batched(counters, &ev),
        Ok(Verdict::Drop(reason)) => counters.correlation_drop(name, reason),
        Ok(Verdict::Ignore) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    struct Listed(VecDeque<Vec<u8>>);

    impl RecordSource for Listed {
        fn take_one(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
            match self.0.pop_front() {
                Some(r) => {
                    f(&r);
                    true
                }
                None => false,
            }
        }
    }

    fn records(n: usize) -> Listed {
        Listed((0..n).map(|i| (i as u32).to_le_bytes().to_vec()).collect())
    }

    /// A ring holding several bursts (a bigger ring, smaller records) is emptied at
    /// shutdown, not cut at one burst.
    #[test]
    fn shutdown_empties_a_ring_holding_many_bursts() {
        let mut ring = records(3 * BURST + 17);
        let mut seen = 0u64;
        let (handled, unread) =
            take_until_empty(&mut ring, Instant::now() + Duration::from_secs(60), &mut |_| seen += 1);
        assert_eq!((handled, unread, seen), (3 * BURST as u64 + 17, 0, 3 * BURST as u64 + 17));
        assert!(ring.0.is_empty());
    }

    /// Past the deadline the rest is read unclassified and counted, not left behind.
    #[test]
    fn what_the_deadline_leaves_is_counted_not_lost() {
        let mut ring = records(2 * BURST);
        let mut seen = 0u64;
        let (handled, unread) = take_until_empty(&mut ring, Instant::now(), &mut |_| seen += 1);
        assert_eq!((handled, unread, seen), (0, 2 * BURST as u64, 0));
        assert!(ring.0.is_empty());
    }
}
