//! The ring-buffer drain: the agent's hot path.
//!
//! One thread waits on every observer's ring buffer with epoll, decodes and classifies each
//! record, and hands evidence to the sink stage through a bounded queue with `try_send`: a
//! slow or broken sink makes the queue overflow (counted), never this loop block.

use crate::clock::BootToWall;
use crate::counters::Counters;
use crate::evidence::Evidence;
use crate::observers::{read_kernel_counters, Running};
use crate::stamp::{Stamper, Verdict};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records taken from one ring before the others get a turn.
const BURST: usize = 4096;
/// Poll period: the kernel side wakes the drain only once a batch is waiting (a wake-up
/// per record would cost more than the record), so this bounds how long a lone record
/// waits, as well as shutdown latency.
const IDLE_WAIT_MS: i32 = 100;
/// How often the boot→wall offset and the kernel counters are refreshed.
const REFRESH: Duration = Duration::from_secs(1);

pub struct Drain {
    pub observers: Vec<Running>,
    pub stamper: Stamper,
    pub queue: SyncSender<Box<Evidence>>,
    pub counters: Arc<Counters>,
    pub clock: Arc<BootToWall>,
    pub shutdown: Arc<AtomicBool>,
}

fn epoll_for(observers: &[Running]) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls on fds we own; the epoll fd is wrapped in OwnedFd at once.
    unsafe {
        let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let epoll = OwnedFd::from_raw_fd(fd);
        for (i, obs) in observers.iter().enumerate() {
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            if libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, obs.loaded.ring.as_raw_fd(), &mut ev) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(epoll)
    }
}

impl Drain {
    pub fn run(mut self) {
        let epoll = match epoll_for(&self.observers) {
            Ok(fd) => Some(fd),
            Err(e) => {
                // Polling still drains everything, only with more latency.
                log::warn!("epoll unavailable ({e}); polling ring buffers every {IDLE_WAIT_MS} ms");
                None
            }
        };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let mut last_refresh = Instant::now();
        loop {
            if let Some(epoll) = &epoll {
                // SAFETY: the buffer outlives the call and its length is passed.
                unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, IDLE_WAIT_MS) };
            } else {
                std::thread::sleep(Duration::from_millis(IDLE_WAIT_MS as u64));
            }
            self.drain_all();
            if last_refresh.elapsed() >= REFRESH {
                self.refresh();
                last_refresh = Instant::now();
            }
            if self.shutdown.load(Ordering::Relaxed) {
                self.finish();
                return;
            }
        }
    }

    /// Detaches every program, then takes what is left in the rings: nothing that reached a
    /// ring before shutdown is left behind.
    fn finish(mut self) {
        for obs in &mut self.observers {
            // Dropping the object detaches and unloads its programs; the ring buffer and
            // counters were taken out of it and stay readable.
            drop(obs.loaded.ebpf.take());
        }
        self.drain_all();
        self.refresh();
        // Dropping the queue's sender lets the sink stage finish after the last record.
    }

    fn refresh(&mut self) {
        self.clock.remeasure();
        for obs in &self.observers {
            read_kernel_counters(obs.name, &obs.loaded.counters, &self.counters);
        }
    }

    fn drain_all(&mut self) {
        let Self { observers, stamper, queue, counters, .. } = self;
        for obs in observers.iter_mut() {
            let mut taken = 0;
            while taken < BURST {
                let Some(item) = obs.loaded.ring.next() else {
                    break;
                };
                taken += 1;
                match obs.classifier.classify(&item, stamper) {
                    Err(e) => {
                        counters.malformed_events_total.fetch_add(1, Ordering::Relaxed);
                        log::debug!("{}: malformed record: {e}", obs.name);
                    }
                    Ok(Verdict::Emit(ev)) => offer(queue, counters, ev),
                    Ok(Verdict::Drop(reason)) => counters.correlation_drop(obs.name, reason),
                    Ok(Verdict::Ignore) => {}
                }
            }
        }
    }
}

/// Hands one record to the sink stage without ever waiting.
pub fn offer(queue: &SyncSender<Box<Evidence>>, counters: &Counters, ev: Box<Evidence>) {
    match queue.try_send(ev) {
        Ok(()) => {
            counters.events_total.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            counters.queue_overflow_total.fetch_add(1, Ordering::Relaxed);
        }
    }
}
