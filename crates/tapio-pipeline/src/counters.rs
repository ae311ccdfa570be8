//! Every place the agent can lose evidence, counted.
//!
//! Hot counters are atomics; rare, labelled ones (drop reasons, per-sink failures, the
//! kernel's own counters) live in small maps behind a mutex. A [`Snapshot`] is what the log
//! line, and later the heartbeat and metrics, report.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tapio_util::collect::btree_map;

#[derive(Debug, Default)]
pub struct Counters {
    /// Evidence records handed to the sink stage.
    pub events_total: AtomicU64,
    /// Ring-buffer records rejected by decoding.
    pub malformed_events_total: AtomicU64,
    /// Evidence dropped because the drain → sink queue was full.
    pub queue_overflow_total: AtomicU64,
    /// Failed requests to the controller (every attempt).
    pub controller_send_failures_total: AtomicU64,
    /// Evidence the controller accepted.
    pub controller_events_sent_total: AtomicU64,
    /// Controller configs refused (out of range) or that could not be applied.
    pub config_rejected_total: AtomicU64,
    /// Config polls the controller answered 304 (If-None-Match: unchanged).
    pub config_unchanged_total: AtomicU64,
    /// (observer, reason) → userspace correlation drops.
    correlation_drops: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// (observer, counter) → the kernel side's counters, as last read.
    kernel: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// sink → (written, failed), and the sinks whose books were closed at shutdown.
    sinks: Mutex<SinkBooks>,
}

#[derive(Debug, Default)]
struct SinkBooks {
    counts: BTreeMap<&'static str, SinkCounts>,
    /// Sinks settled at shutdown: what they still report after that is not counted again.
    settled: Vec<&'static str>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SinkCounts {
    pub written: u64,
    pub failed: u64,
}

/// The sink name of the controller link's outbox.
pub const CONTROLLER_SINK: &str = "controller";

/// Records of an observer's ring buffer still unread when the shutdown drain's deadline
/// passed; kept with the kernel counters (`kernel`: `<observer>.unread_at_shutdown`).
pub const UNREAD_AT_SHUTDOWN: &str = "unread_at_shutdown";

/// The kernel counters that mean evidence was lost or refused there.
const KERNEL_LOSS: &[&str] = &["ringbuf_reserve_failed", UNREAD_AT_SHUTDOWN];
/// The common kernel counters that are correlation drops; an observer's own are declared
/// in its descriptor (`KernelHalf::correlation_counters`).
const KERNEL_CORRELATION: &[&str] = &["correlation_table_full", "ambiguous", "config_torn_read"];

/// Whether `observer`'s kernel counter `name` counts a correlation drop.
fn is_correlation(observer: &str, name: &str) -> bool {
    KERNEL_CORRELATION.contains(&name)
        || crate::observers::find(observer)
            .and_then(|o| o.kernel.as_ref())
            .is_some_and(|k| k.correlation_counters.contains(&name))
}
/// Runs of an observer's programs the kernel skipped because the same program was already
/// running on that CPU (read from the kernel's program info, not from the counters map).
pub const RECURSION_MISSES: &str = "recursion_misses";

/// Kernel counters of facts a program saw but could not judge, so no evidence was produced:
/// a config carrier of another ABI, or a kernel lacking what the hook needs to read; and
/// hook events the kernel never let a program see (whether they held evidence is unknown).
const KERNEL_NOT_JUDGED: &[&str] = &["abi_mismatch", "unsupported_kernel", RECURSION_MISSES];
/// Kernel counters that lose nothing themselves (what they lead to is counted elsewhere:
/// a full in-flight table shows up as unmatched completions). The test below holds every
/// kernel counter to one of these lists.
#[cfg(test)]
const KERNEL_INFORMATIONAL: &[&str] = &[
    "requeues",
    "inflight_busy",
    "inflight_table_full",
    // DNS: an answer no query waits for (already judged timed out, a duplicate, another
    // server's), a retransmission folded into its query, a query whose owner was unseen
    // (its evidence says so with a null pid).
    tapio_bpf::dns::UNMATCHED_ANSWER,
    tapio_bpf::dns::RETRANSMISSIONS,
    tapio_bpf::dns::OWNER_UNKNOWN,
    // Container: an OOM victim forgotten before its exit was seen loses nothing; its exit,
    // if it comes, is reported as well.
    "oom_victim_slot_reused",
];

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking holder cannot leave a counter map inconsistent: keep counting.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Counters {
    pub fn correlation_drop(&self, observer: &'static str, reason: &'static str) {
        *lock(&self.correlation_drops).entry((observer, reason)).or_default() += 1;
    }

    pub fn set_kernel(&self, observer: &'static str, name: &'static str, value: u64) {
        lock(&self.kernel).insert((observer, name), value);
    }

    /// Counts lines that reached a sink's destination and lines that failed.
    pub fn sink_delivered(&self, sink: &'static str, written: u64, failed: u64) {
        let mut books = lock(&self.sinks);
        if books.settled.contains(&sink) {
            return;
        }
        let c = books.counts.entry(sink).or_default();
        c.written += written;
        c.failed += failed;
    }

    /// Counts `n` lines a sink took but could not deliver (e.g. the controller dropped them).
    pub fn sink_failures(&self, sink: &'static str, n: u64) {
        self.sink_delivered(sink, 0, n);
    }

    /// Counts evidence the controller accepted (the controller sink's delivery).
    pub fn controller_sent(&self, n: u64) {
        let books = lock(&self.sinks);
        if !books.settled.contains(&CONTROLLER_SINK) {
            self.controller_events_sent_total.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Closes a sink's books at shutdown when it could not finish in time: every record
    /// handed to the sink stage that has no outcome yet counts as failed, and whatever the
    /// sink reports later is ignored. Returns the number counted.
    pub fn settle_sink(&self, sink: &'static str) -> u64 {
        let mut books = lock(&self.sinks);
        if books.settled.contains(&sink) {
            return 0;
        }
        let events = self.events_total.load(Ordering::Relaxed);
        let c = books.counts.entry(sink).or_default();
        // The controller sink's "written" means taken into the outbox; its outcome is
        // "accepted by the controller" or failed.
        let resolved = if sink == CONTROLLER_SINK {
            self.controller_events_sent_total.load(Ordering::Relaxed) + c.failed
        } else {
            c.written + c.failed
        };
        let left = events.saturating_sub(resolved);
        c.failed += left;
        books.settled.push(sink);
        left
    }

    /// Counts records of `observer` still in its ring buffer when the shutdown deadline
    /// passed.
    pub fn unread_at_shutdown(&self, observer: &'static str, n: u64) {
        *lock(&self.kernel).entry((observer, UNREAD_AT_SHUTDOWN)).or_default() += n;
    }

    pub fn snapshot(&self) -> Snapshot {
        let kernel = lock(&self.kernel).clone();
        let drops = lock(&self.correlation_drops).clone();
        let sinks = lock(&self.sinks).counts.clone();
        let queue_overflow = self.queue_overflow_total.load(Ordering::Relaxed);
        let kernel_sum =
            |names: &[&str]| -> u64 { kernel.iter().filter(|((_, n), _)| names.contains(n)).map(|(_, v)| v).sum() };
        // Per (observer, reason): the userspace drops plus the kernel's own per-reason
        // counters, so every reason in the total is visible by name.
        let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
        for ((o, r), v) in &drops {
            *by_reason.entry(format!("{o}.{r}")).or_default() += v;
        }
        let correlation: u64 = kernel.iter().filter(|((o, n), _)| is_correlation(o, n)).map(|(_, v)| v).sum();
        for ((o, n), v) in kernel.iter().filter(|((o, n), _)| is_correlation(o, n)) {
            *by_reason.entry(format!("{o}.{n}")).or_default() += v;
        }
        Snapshot {
            events_total: self.events_total.load(Ordering::Relaxed),
            malformed_events_total: self.malformed_events_total.load(Ordering::Relaxed),
            lost_events_total: kernel_sum(KERNEL_LOSS),
            correlation_drops_total: correlation + drops.values().sum::<u64>(),
            not_judged_total: kernel_sum(KERNEL_NOT_JUDGED),
            sink_drops_total: queue_overflow + sinks.values().map(|c| c.failed).sum::<u64>(),
            queue_overflow_total: queue_overflow,
            controller_send_failures_total: self.controller_send_failures_total.load(Ordering::Relaxed),
            controller_events_sent_total: self.controller_events_sent_total.load(Ordering::Relaxed),
            config_rejected_total: self.config_rejected_total.load(Ordering::Relaxed),
            config_unchanged_total: self.config_unchanged_total.load(Ordering::Relaxed),
            kernel: btree_map(kernel.into_iter().map(|((o, n), v)| (format!("{o}.{n}"), v))),
            correlation_drops: by_reason,
            sinks: btree_map(sinks.into_iter().map(|(k, v)| (k.to_string(), v))),
        }
    }
}

/// A point-in-time copy of every counter; the totals are the heartbeat's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub events_total: u64,
    pub malformed_events_total: u64,
    pub lost_events_total: u64,
    pub correlation_drops_total: u64,
    /// Facts the kernel side saw but could not judge (`kernel`: `*.abi_mismatch`,
    /// `*.unsupported_kernel`), or never saw (`*.recursion_misses`).
    pub not_judged_total: u64,
    pub sink_drops_total: u64,
    pub queue_overflow_total: u64,
    pub controller_send_failures_total: u64,
    pub controller_events_sent_total: u64,
    pub config_rejected_total: u64,
    pub config_unchanged_total: u64,
    pub kernel: BTreeMap<String, u64>,
    pub correlation_drops: BTreeMap<String, u64>,
    pub sinks: BTreeMap<String, SinkCounts>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_every_loss_point() {
        let c = Counters::default();
        c.events_total.fetch_add(10, Ordering::Relaxed);
        c.queue_overflow_total.fetch_add(2, Ordering::Relaxed);
        c.correlation_drop("network", "ambiguous_connect_failure");
        c.set_kernel("network", "ringbuf_reserve_failed", 5);
        c.set_kernel("network", "correlation_table_full", 1);
        c.set_kernel("container", "abi_mismatch", 9);
        c.sink_delivered("stdout", 1, 0);
        c.sink_delivered("file", 0, 1);
        c.unread_at_shutdown("network", 4);
        let s = c.snapshot();
        assert_eq!(s.events_total, 10);
        assert_eq!(s.lost_events_total, 9, "kernel losses and records unread at shutdown");
        assert_eq!(s.kernel["network.unread_at_shutdown"], 4);
        assert_eq!(s.correlation_drops_total, 2);
        assert_eq!(s.sink_drops_total, 3);
        assert_eq!(s.kernel["container.abi_mismatch"], 9);
        assert_eq!(s.not_judged_total, 9);
        assert_eq!(s.sinks["file"], SinkCounts { written: 0, failed: 1 });
    }

    #[test]
    fn settling_a_stuck_sink_counts_every_record_without_an_outcome_once() {
        let c = Counters::default();
        c.events_total.fetch_add(10, Ordering::Relaxed);
        c.sink_delivered("stdout", 6, 1);
        c.sink_delivered(CONTROLLER_SINK, 10, 1); // 10 into the outbox, 1 refused there
        c.controller_sent(7);
        assert_eq!(c.settle_sink("stdout"), 3);
        assert_eq!(c.settle_sink(CONTROLLER_SINK), 2);
        // What the stuck threads report afterwards is not counted twice.
        c.sink_delivered("stdout", 3, 0);
        c.controller_sent(2);
        assert_eq!(c.settle_sink("stdout"), 0);
        let s = c.snapshot();
        assert_eq!(s.sinks["stdout"], SinkCounts { written: 6, failed: 4 });
        assert_eq!(s.sinks[CONTROLLER_SINK].failed + s.controller_events_sent_total, 10);
        assert_eq!(s.sink_drops_total, 4 + 3);
    }

    /// Every kernel counter the agent reads belongs to a total the heartbeat carries, or is
    /// declared informational: a new counter meaning "evidence not produced" cannot be
    /// added without reaching a total.
    #[test]
    fn every_kernel_counter_reaches_a_total_or_is_declared_informational() {
        let kernel_halves = crate::observers::REGISTRY.iter().filter_map(|o| o.kernel.as_ref().map(|k| (o.name, k)));
        for (observer, half) in kernel_halves {
            let own = half.counters.iter().copied();
            let read_elsewhere = [(0, RECURSION_MISSES)];
            for (_, name) in tapio_bpf::COUNTER_NAMES.into_iter().chain(own).chain(read_elsewhere) {
                let c = Counters::default();
                c.set_kernel(observer, name, 7);
                let s = c.snapshot();
                let in_totals = s.lost_events_total + s.correlation_drops_total + s.not_judged_total;
                if KERNEL_INFORMATIONAL.contains(&name) {
                    assert_eq!(in_totals, 0, "{observer}.{name} is informational yet counted");
                } else {
                    assert_eq!(in_totals, 7, "{observer}.{name} reaches no total (or more than one)");
                }
            }
        }
        let c = Counters::default();
        c.set_kernel("container", "unsupported_kernel", 2);
        c.set_kernel("network", "abi_mismatch", 3);
        c.set_kernel("storage", RECURSION_MISSES, 4);
        let s = c.snapshot();
        assert_eq!(s.not_judged_total, 9);
        assert_eq!(s.kernel["storage.recursion_misses"], 4);
        assert_eq!(s.lost_events_total + s.correlation_drops_total, 0, "a skipped run is not known to be a loss");
    }

    #[test]
    fn kernel_per_reason_drops_are_named_and_summed() {
        let c = Counters::default();
        c.set_kernel("storage", tapio_bpf::storage::AMBIGUOUS_INFLIGHT_IO, 2);
        c.set_kernel("storage", tapio_bpf::storage::UNMATCHED_COMPLETION, 3);
        c.set_kernel("storage", "requeues", 40); // informational: not a drop
        c.correlation_drop("storage", "inflight_expired");
        let s = c.snapshot();
        assert_eq!(s.correlation_drops_total, 6);
        assert_eq!(s.correlation_drops["storage.ambiguous_inflight_io"], 2);
        assert_eq!(s.correlation_drops["storage.unmatched_completion"], 3);
        assert_eq!(s.correlation_drops["storage.inflight_expired"], 1);
        assert!(!s.correlation_drops.contains_key("storage.requeues"));
        assert_eq!(s.kernel["storage.requeues"], 40);
    }
}
