//! The drain thread's scheduling: real-time while its work is light, normal while it is not.
//!
//! A ring's wake-up makes the drain runnable, but under normal scheduling it may then wait
//! for the running task's time slice: measured on a two-CPU VM under a refused-connect
//! flood, 4–7 ms at the 99th percentile and up to 12 ms, while a CPU's ring holds about
//! 20 ms of that flood (tapio-bench e2e). At the lowest SCHED_FIFO priority it runs at the
//! next preemption point instead, and the rings lost records in one of 24 such floods (159
//! records) instead of in 8 of 10 (tapio-bench README, eighth round). The work per record
//! is the same either way, only when it runs changes; so that a flood cannot let it keep a
//! CPU from the workloads for long, it returns to normal scheduling for [`COOL_DOWN`]
//! whenever it used more than [`BUDGET_PERCENT`] % of a CPU over a period (a real-time
//! thread escapes a pod's CPU limit). `drain_realtime = false` keeps it normal; without
//! CAP_SYS_NICE it stays normal (logged at start).

use std::time::{Duration, Instant};

/// The lowest SCHED_FIFO priority: above every normally scheduled task, below every other
/// real-time one.
const PRIORITY: libc::c_int = 1;
/// Percent of one CPU over a period above which the drain leaves real time. (Whole percents:
/// formatting floats would cost the binary some 20 KB for two log lines.)
pub const BUDGET_PERCENT: u64 = 50;
/// How long it then stays normal before it may return.
pub const COOL_DOWN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Stay,
    Demote,
    Promote,
}

/// What to do at the end of a period: `realtime` is how the drain ran, `percent` the CPU it
/// used (100 = one CPU), `cooled` whether the cool-down since its last demotion is over.
pub fn decide(realtime: bool, percent: u64, cooled: bool) -> Step {
    match (realtime, percent > BUDGET_PERCENT) {
        (true, true) => Step::Demote,
        (false, false) if cooled => Step::Promote,
        _ => Step::Stay,
    }
}

/// Runs on the drain thread and changes only that thread's scheduling.
pub struct Governor {
    /// Real time was wanted and granted; false once refused (never asked again).
    enabled: bool,
    realtime: bool,
    demoted_at: Option<Instant>,
    demotions: u64,
    period_start: Instant,
    period_cpu: Duration,
}

impl Governor {
    /// Makes the calling thread real-time if `wanted`, saying so (or why not) in the log.
    pub fn start(wanted: bool) -> Self {
        let enabled = wanted
            && match set_realtime(true) {
                Ok(()) => {
                    log::info!(
                        "drain: real-time scheduling (SCHED_FIFO {PRIORITY}) while it uses under {BUDGET_PERCENT} % of a CPU"
                    );
                    true
                }
                Err(e) => {
                    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                    log::warn!(
                        "drain: real-time scheduling refused ({e}; {}): normal scheduling, so a flood can fill the \
                         rings before the drain runs (losses counted)",
                        refusal_hint(&e, &status)
                    );
                    false
                }
            };
        Self {
            enabled,
            realtime: enabled,
            demoted_at: None,
            demotions: 0,
            period_start: Instant::now(),
            period_cpu: thread_cpu(),
        }
    }

    /// Ends a period (the drain calls this about once a second) and applies its step.
    pub fn tick(&mut self) {
        if !self.enabled {
            return;
        }
        let (now, cpu) = (Instant::now(), thread_cpu());
        let wall_ms = now.duration_since(self.period_start).as_millis() as u64;
        if wall_ms == 0 {
            return;
        }
        let percent = cpu.saturating_sub(self.period_cpu).as_millis() as u64 * 100 / wall_ms;
        (self.period_start, self.period_cpu) = (now, cpu);
        let cooled = self.demoted_at.is_none_or(|at| now.duration_since(at) >= COOL_DOWN);
        match decide(self.realtime, percent, cooled) {
            Step::Stay => {}
            Step::Demote => {
                if set_realtime(false).is_ok() {
                    self.realtime = false;
                    self.demoted_at = Some(now);
                    self.demotions += 1;
                    log::warn!(
                        "drain: used {percent} % of a CPU over the last {wall_ms} ms: normal scheduling for {} s \
                         (demotion {})",
                        COOL_DOWN.as_secs(),
                        self.demotions
                    );
                }
            }
            Step::Promote => match set_realtime(true) {
                Ok(()) => {
                    self.realtime = true;
                    log::info!("drain: back to real-time scheduling");
                }
                Err(e) => {
                    self.enabled = false;
                    log::warn!("drain: real-time scheduling refused ({e}): normal scheduling from now on");
                }
            },
        }
    }

    /// Normal scheduling for good (at shutdown: the last drain must not hold a CPU).
    pub fn stop(&mut self) {
        if self.realtime && set_realtime(false).is_ok() {
            self.realtime = false;
        }
        self.enabled = false;
    }
}

/// Why the kernel refused real time, from the error and this process's /proc/self/status.
fn refusal_hint(error: &std::io::Error, status: &str) -> &'static str {
    const CAP_SYS_NICE: u32 = 23;
    if error.raw_os_error() != Some(libc::EPERM) {
        "the kernel refused the policy"
    } else if crate::observers::effective_capabilities(status) & (1 << CAP_SYS_NICE) == 0 {
        "it needs CAP_SYS_NICE"
    } else {
        "CAP_SYS_NICE is held: the kernel has real-time group scheduling and this process's cpu cgroup has no \
         real-time budget (cpu.rt_runtime_us 0, as container runtimes leave it)"
    }
}

/// SCHED_FIFO at [`PRIORITY`], or SCHED_OTHER, for the calling thread.
fn set_realtime(realtime: bool) -> std::io::Result<()> {
    let (policy, priority) = if realtime { (libc::SCHED_FIFO, PRIORITY) } else { (libc::SCHED_OTHER, 0) };
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: pid 0 is the calling thread (Linux schedules threads); `param` outlives the call.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer for the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_time_is_left_above_the_budget_and_regained_only_after_the_cool_down_below_it() {
        assert_eq!(decide(true, 20, true), Step::Stay);
        assert_eq!(decide(true, BUDGET_PERCENT, true), Step::Stay, "at the budget exactly it stays");
        assert_eq!(decide(true, 90, false), Step::Demote);
        assert_eq!(decide(true, 90, true), Step::Demote);
        assert_eq!(decide(false, 10, false), Step::Stay, "not before the cool-down ends");
        assert_eq!(decide(false, 90, true), Step::Stay, "not while still loaded");
        assert_eq!(decide(false, 10, true), Step::Promote);
    }

    #[test]
    fn a_refusal_names_the_missing_capability_or_the_cgroup_budget() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        let with = |cap_eff: &str| format!("Name:\ttapio-agent\nCapEff:\t{cap_eff}\nSeccomp:\t0\n");
        // BPF, PERFMON, NET_ADMIN, DAC_READ_SEARCH without SYS_NICE; then with it (bit 23).
        assert_eq!(refusal_hint(&eperm, &with("000000c000001004")), "it needs CAP_SYS_NICE");
        assert!(refusal_hint(&eperm, &with("000000c000801004")).contains("cpu.rt_runtime_us 0"));
        let einval = std::io::Error::from_raw_os_error(libc::EINVAL);
        assert_eq!(refusal_hint(&einval, &with("000000c000801004")), "the kernel refused the policy");
    }

    /// The calling thread's scheduling policy.
    fn policy() -> libc::c_int {
        // SAFETY: a plain query of the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// Busy for `ms` of this thread's CPU time.
    fn burn(ms: u64) {
        let until = thread_cpu() + Duration::from_millis(ms);
        while thread_cpu() < until {
            std::hint::spin_loop();
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn a_busy_period_demotes_the_thread_and_an_idle_one_after_the_cool_down_promotes_it() {
        // On a thread of its own: the test harness's threads keep their scheduling.
        std::thread::spawn(|| {
            let mut governor = Governor::start(true);
            assert_eq!(policy(), libc::SCHED_FIFO, "real time at start");
            governor.period_start = Instant::now();
            governor.period_cpu = thread_cpu();
            burn(150);
            governor.tick();
            assert_eq!(policy(), libc::SCHED_OTHER, "demoted after a period of work");
            assert_eq!(governor.demotions, 1);
            std::thread::sleep(Duration::from_millis(100));
            governor.tick();
            assert_eq!(policy(), libc::SCHED_OTHER, "still cooling down");
            governor.demoted_at = Instant::now().checked_sub(COOL_DOWN);
            std::thread::sleep(Duration::from_millis(100));
            governor.tick();
            assert_eq!(policy(), libc::SCHED_FIFO, "back once cooled down and idle");
            governor.stop();
            assert_eq!(policy(), libc::SCHED_OTHER, "normal for good at the end");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_thread_clock_advances_with_work() {
        let before = thread_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu() > before);
    }
}
