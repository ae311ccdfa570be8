//! Memory under a slow consumer: the agent writes evidence to stdout, read by a consumer
//! far slower than a refused-connect flood, so its stdout writer blocks and its backlog
//! stays full (what finds it full is counted failed; the queue overflows if the sink stage
//! falls behind too, also counted). The figure is the agent's peak resident set while that
//! lasts: what a node pays when its log collector falls behind.

use crate::agent::{self, Agent, Scratch};
use crate::load;
use crate::procfs;
use crate::report::{thousands, Report, Verdict};
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Peak resident set goal (decimal megabytes, like the idle goal).
const PEAK_RSS_GOAL_BYTES: u64 = 12_000_000;
/// The consumer reads this much, then sleeps [`READ_PAUSE`]: about 400 KB/s, some 700 lines/s.
const READ_CHUNK: usize = 4096;
const READ_PAUSE: Duration = Duration::from_millis(10);
/// How often the agent's VmRSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Sampling goes on this long after the flood (the queue is still full then).
const AFTER: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(1);

const ROW: &str = "peak RSS, stdout read by a slow consumer";

pub fn measure(binary: &Path, duration: Duration, senders: usize, report: &mut Report) {
    if let Err(e) = run(binary, duration, senders, report) {
        report.not_measured("slow", ROW, "", e);
    }
}

fn run(binary: &Path, duration: Duration, senders: usize, report: &mut Report) -> Result<(), String> {
    let scratch = Scratch::new("slow")?;
    let config = agent::write_stdout_config(&scratch.0)?;
    let closed = load::ClosedPort::reserve().map_err(|e| format!("reserving a closed port: {e}"))?;
    let (agent, out) = Agent::start_with_stdout(binary, &config, Stdio::piped())?;
    let mut out = out.ok_or("the agent's stdout is not a pipe")?;
    if !agent.fully_attached() {
        report.note(format!("slow: not every observer attached: {}", agent.ready_line));
    }
    let pid = agent.pid();

    // The slow consumer, until EOF; once `hurry` is set (the agent is stopping) it reads at
    // full speed so that the agent's final flush is not what the run waits for.
    let hurry = Arc::new(AtomicBool::new(false));
    let read_bytes = Arc::new(AtomicU64::new(0));
    let consumer = {
        let (hurry, read_bytes) = (Arc::clone(&hurry), Arc::clone(&read_bytes));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; READ_CHUNK];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                read_bytes.fetch_add(n as u64, Ordering::Relaxed);
                if !hurry.load(Ordering::Relaxed) {
                    std::thread::sleep(READ_PAUSE);
                }
            }
        })
    };

    std::thread::sleep(SETTLE);
    let rss_before = procfs::rss_kib(pid)?;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while sampling.load(Ordering::Relaxed) {
                if let Ok(kib) = procfs::rss_kib(pid) {
                    peak = peak.max(kib);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            peak
        })
    };
    let started = Instant::now();
    let flood = load::refused_flood(closed.port, senders, duration, u64::MAX);
    std::thread::sleep(AFTER);
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.join().map_err(|_| "the RSS sampler panicked")?;
    let hwm = procfs::status_kib(pid, "VmHWM:").map(thousands).unwrap_or_else(|e| e);
    let window = started.elapsed();
    hurry.store(true, Ordering::Relaxed);
    let stopped = agent.stop()?;
    let _ = consumer.join();
    let counters =
        stopped.counters.ok_or_else(|| format!("the agent ({}) logged no final counters line", stopped.exit))?;

    let peak_bytes = peak * 1024;
    report.row(
        "slow",
        ROW,
        format!("{:.2} MB ({} KiB)", peak_bytes as f64 / 1e6, thousands(peak)),
        "<= 12 MB (12,000,000 B)",
        Verdict::check(peak_bytes <= PEAK_RSS_GOAL_BYTES),
    );
    report.note(format!(
        "slow: {} refused connects in {} s from {senders} senders while a consumer read the agent's stdout \
         {READ_CHUNK} B per {} ms ({} B read in all); VmRSS sampled every {} ms for {:.1} s: {} KiB before \
         the flood, peak {} KiB; VmHWM (which includes start-up) {hwm} KiB; events queued {}, queue overflow {}, \
         stdout written {}; agent {}",
        thousands(flood.refused),
        duration.as_secs(),
        READ_PAUSE.as_millis(),
        thousands(read_bytes.load(Ordering::Relaxed)),
        SAMPLE_EVERY.as_millis(),
        window.as_secs_f64(),
        thousands(rss_before),
        thousands(peak),
        thousands(agent::counter(&counters, "events_total")),
        thousands(agent::counter(&counters, "queue_overflow_total")),
        thousands(counters["sinks"]["stdout"]["written"].as_u64().unwrap_or(0)),
        stopped.exit
    ));
    drop(closed);
    Ok(())
}
