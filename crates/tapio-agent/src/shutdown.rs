//! SIGTERM and SIGINT as something a thread can sleep on.
//!
//! The signal handlers set the shared shutdown flag (which the drain reads between its
//! passes) and write a byte to a socket pair whose other end the main thread waits on. So
//! an idle agent's main thread sleeps until its next counters line or a signal, instead of
//! waking every few hundred milliseconds to look at the flag: each wake-up of an idle
//! thread costs tens of microseconds of CPU on a virtual machine, on every node.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct ShutdownSignal {
    flag: Arc<AtomicBool>,
    /// Readable once SIGTERM or SIGINT arrived (the handler wrote to its other end).
    woken_by: UnixStream,
}

impl ShutdownSignal {
    /// Installs the handlers for SIGTERM and SIGINT: each sets `flag` and wakes [`wait`].
    ///
    /// [`wait`]: ShutdownSignal::wait
    pub fn install(flag: Arc<AtomicBool>) -> Result<Self, String> {
        let (woken_by, waker) = UnixStream::pair().map_err(|e| format!("creating the signal socket pair: {e}"))?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&flag))
                .map_err(|e| format!("installing signal handler: {e}"))?;
            let waker = waker.try_clone().map_err(|e| format!("cloning the signal socket: {e}"))?;
            signal_hook::low_level::pipe::register(signal, waker)
                .map_err(|e| format!("installing signal handler: {e}"))?;
        }
        Ok(Self { flag, woken_by })
    }

    /// A descriptor that becomes readable (and stays so) once SIGTERM or SIGINT arrived,
    /// for a thread that sleeps in epoll (the drain).
    pub fn waker(&self) -> std::io::Result<OwnedFd> {
        self.woken_by.try_clone().map(OwnedFd::from)
    }

    /// Sleeps until a signal arrives or `timeout` has passed; true when shutdown was asked.
    pub fn wait(&self, timeout: Duration) -> bool {
        if self.flag.load(Ordering::Relaxed) {
            return true;
        }
        let mut fds = libc::pollfd { fd: self.woken_by.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fds, 1, ms) };
        // Only the two handlers write to this socket, so a readable socket is a signal even
        // if the flag's store is not visible yet.
        if ready > 0 && fds.revents & libc::POLLIN != 0 {
            self.flag.store(true, Ordering::Relaxed);
        }
        self.flag.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_signal_wakes_the_waiter_at_once() {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = ShutdownSignal::install(Arc::clone(&flag)).expect("install");
        let started = Instant::now();
        assert!(!signal.wait(Duration::from_millis(50)), "no signal yet: the wait times out");
        assert!(started.elapsed() >= Duration::from_millis(50));

        let raiser = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: raising a signal whose handler this test installed.
            unsafe { libc::raise(libc::SIGINT) };
        });
        let started = Instant::now();
        assert!(signal.wait(Duration::from_secs(60)), "the signal ends the wait as shutdown");
        assert!(started.elapsed() < Duration::from_secs(30), "woken by the signal, not by the timeout");
        assert!(flag.load(Ordering::Relaxed), "the handler set the shared flag");
        assert!(signal.wait(Duration::ZERO), "and it stays asked");
        let waker = signal.waker().expect("waker");
        let mut fds = libc::pollfd { fd: waker.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fds, 1, 0) };
        assert_eq!(ready, 1, "the waker a sleeping drain polls is readable too");
        raiser.join().expect("raiser");
    }
}
