//! The storage part: the kernel cost per invocation of the storage observer's block hooks
//! (from the kernel's BPF run-time statistics) and the agent's CPU while a loop device
//! serves sustained random 4 KiB I/O at a paced ~10,000 IOPS.
//!
//! The loop device is backed by a file on a private tmpfs, so the I/O costs no real disk
//! and only the loop device's requests reach the block hooks (tmpfs has no block device
//! underneath). Everything it sets up (tmpfs, file, loop device) is undone on drop.
//!
//! A loop device never gives a request back to the block layer, so `block_rq_requeue` does
//! not fire there. A second, short window of unpaced I/O from many threads on a file in
//! /var/tmp fills the queue of the disk under it, whose driver then requeues (a virtio disk
//! does when its ring is full), and whose scheduler merges its adjacent writes: that window
//! measures the hooks the first one did not reach.

use crate::agent::{self, Agent, Scratch};
use crate::floor;
use crate::kernel::{deltas, snapshot, ProgramCost, StatsOn};
use crate::procfs;
use crate::report::{thousands, Report, Verdict};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Mean cost goal per invocation over all block hooks, in ns.
const HOOK_GOAL_NS: f64 = 300.0;
/// Goal for each block hook on its own (the goal every Tapio hook has), in ns.
const EACH_HOOK_GOAL_NS: f64 = 250.0;
/// Goal for what submitting one request costs in total (block_io_start + block_rq_issue).
const SUBMISSION_GOAL_NS: f64 = 300.0;
/// Agent CPU goal during the I/O, in percent of one core.
const CPU_GOAL_PERCENT: f64 = 1.0;
/// The paced I/O rate.
const TARGET_IOPS: u64 = 10_000;
const THREADS: u64 = 4;
const BLOCK: usize = 4096;
const FILE_BYTES: u64 = 128 << 20;

fn sh(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A tmpfs with a loop device on a file in it; both undone on drop.
struct LoopOnTmpfs {
    mount: PathBuf,
    device: Option<String>,
}

impl LoopOnTmpfs {
    fn new(dir: &Path) -> Result<Self, String> {
        let mount = dir.join("tmpfs");
        std::fs::create_dir_all(&mount).map_err(|e| format!("mkdir {}: {e}", mount.display()))?;
        sh(&["mount", "-t", "tmpfs", "-o", "size=160m", "tapio-bench", &mount.to_string_lossy()])?;
        let mut me = Self { mount, device: None };
        let file = me.mount.join("backing.img");
        written_file(&file, FILE_BYTES)?;
        me.device = Some(sh(&["losetup", "-f", "--show", &file.to_string_lossy()])?);
        Ok(me)
    }
}

impl Drop for LoopOnTmpfs {
    fn drop(&mut self) {
        if let Some(dev) = &self.device {
            let _ = sh(&["losetup", "-d", dev]);
        }
        let _ = sh(&["umount", &self.mount.to_string_lossy()]);
    }
}

/// A new file of `bytes` (a whole number of MiB) written out, not sparse: reads of it are
/// real reads.
fn written_file(path: &Path, bytes: u64) -> Result<std::fs::File, String> {
    let file = std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..bytes >> 20 {
        file.write_all_at(&chunk, i << 20).map_err(|e| format!("filling {}: {e}", path.display()))?;
    }
    Ok(file)
}

/// `path` for reading and writing with O_DIRECT: every I/O a block request, no page cache.
fn open_direct(path: &Path) -> Result<std::fs::File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))
}

/// The I/Os the worker threads did, all of them, or the first failure.
fn io_done(workers: Vec<std::thread::JoinHandle<Result<u64, String>>>) -> Result<u64, String> {
    let mut total = 0;
    for w in workers {
        total += w.join().map_err(|_| "I/O thread panicked".to_string())??;
    }
    Ok(total)
}

/// A 4096-aligned buffer for O_DIRECT: `len` bytes at `start` of an allocation a page longer.
struct Block {
    raw: Box<[u8]>,
    start: usize,
    len: usize,
}

impl Block {
    fn new(len: usize) -> Self {
        let raw = vec![0x33u8; len + 4096].into_boxed_slice();
        let start = (4096 - (raw.as_ptr() as usize % 4096)) % 4096;
        Self { raw, start, len }
    }

    fn get(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A step of xorshift64: the I/O threads' offsets and read/write choices.
fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Random 4 KiB reads (70 %) and writes on `dev`, paced to `TARGET_IOPS` in total, for
/// `secs`. Returns the I/Os done.
fn random_io(dev: &str, secs: u64) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let per_thread = Duration::from_nanos(1_000_000_000 * THREADS / TARGET_IOPS);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let dev = dev.to_string();
            std::thread::spawn(move || -> Result<u64, String> {
                let f = open_direct(Path::new(&dev))?;
                let mut block = Block::new(BLOCK);
                let mut seed = 0x2545_f491_4f6c_dd1du64 ^ ((t + 1) << 32);
                let mut next = Instant::now();
                let mut done = 0;
                while Instant::now() < deadline {
                    let seed = next_random(&mut seed);
                    let off = (seed % (FILE_BYTES / BLOCK as u64)) * BLOCK as u64;
                    let r = if seed % 10 < 7 { f.read_at(block.get(), off) } else { f.write_at(block.get(), off) };
                    r.map_err(|e| format!("I/O on {dev}: {e}"))?;
                    done += 1;
                    next += per_thread;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else if now - next > Duration::from_millis(100) {
                        next = now; // fell behind: do not burst to catch up
                    }
                }
                Ok(done)
            })
        })
        .collect();
    io_done(workers)
}

/// The window that fills a real disk's queue: threads, seconds, I/O size, file size.
const SATURATING_THREADS: u64 = 48;
const SATURATING_SECS: u64 = 3;
const SATURATING_BLOCK: usize = 64 << 10;
const SATURATING_FILE_BYTES: u64 = 64 << 20;
/// Where its file goes: a disk-backed directory on Debian (/tmp may be a tmpfs).
const SATURATING_DIR: &str = "/var/tmp";

/// Unpaced 64 KiB O_DIRECT reads and writes (half each) from `SATURATING_THREADS` threads
/// on a file of `SATURATING_FILE_BYTES` in `dir`, for `SATURATING_SECS`; the file is written
/// out first, so that reads reach the disk. Reads go to random blocks; writes, from whichever
/// thread, to the block after the last one written, so that writes to adjacent blocks wait
/// in the disk's scheduler together and it merges them into one request (the merge hook's
/// only trigger: random I/O measured no merge here, writes in sequence 461 and 569 in 3 s).
/// Returns the I/Os done.
fn saturating_io(dir: &Path) -> Result<u64, String> {
    let path = dir.join("saturate.dat");
    let file = written_file(&path, SATURATING_FILE_BYTES)?;
    file.sync_all().map_err(|e| format!("syncing {}: {e}", path.display()))?;
    let deadline = Instant::now() + Duration::from_secs(SATURATING_SECS);
    let blocks = SATURATING_FILE_BYTES / SATURATING_BLOCK as u64;
    let next_write = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..SATURATING_THREADS)
        .map(|t| {
            let path = path.clone();
            let next_write = next_write.clone();
            std::thread::spawn(move || -> Result<u64, String> {
                let f = open_direct(&path)?;
                let mut block = Block::new(SATURATING_BLOCK);
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ ((t + 1) << 17);
                let mut done = 0;
                while Instant::now() < deadline {
                    let seed = next_random(&mut seed);
                    let r = if seed & 1 == 0 {
                        // Without the bit that chose the read, which would leave odd blocks unread.
                        f.read_at(block.get(), ((seed >> 1) % blocks) * SATURATING_BLOCK as u64)
                    } else {
                        let written = next_write.fetch_add(1, Ordering::Relaxed) % blocks;
                        f.write_at(block.get(), written * SATURATING_BLOCK as u64)
                    };
                    r.map_err(|e| format!("I/O on {}: {e}", path.display()))?;
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    io_done(workers)
}

/// The storage program a (15-character) kernel name belongs to.
fn program_of(kernel_name: &str) -> Option<&'static str> {
    tapio_bpf::storage::BTF_TRACEPOINTS
        .iter()
        .map(|t| t.0)
        .find(|p| p.starts_with(kernel_name) && !kernel_name.is_empty())
}

pub fn measure(binary: &Path, secs: u64, report: &mut Report) {
    if let Err(e) = run(binary, secs, report) {
        report.not_measured(
            "storage",
            "mean cost per block hook invocation",
            &format!("<= {HOOK_GOAL_NS} ns"),
            e.clone(),
        );
        report.not_measured("storage", "agent CPU at ~10k IOPS", &format!("< {CPU_GOAL_PERCENT} % of a core"), e);
    }
}

/// Seconds of the same paced I/O under the empty programs alone (before the agent starts).
const FLOOR_SECS: u64 = 3;

/// Mean ns per call of each empty block program over FLOOR_SECS of the same I/O, in the
/// order io_start, rq_issue, rq_complete (None: it did not attach or did not run).
fn floor_window(dev: &str) -> Result<[Option<f64>; 3], String> {
    let floors = [floor::IO_START, floor::RQ_ISSUE, floor::RQ_COMPLETE];
    let attached = floor::attach(&floors)?;
    let (_stats, _) = StatsOn::enable()?;
    let before = snapshot(&attached.ids)?;
    random_io(dev, FLOOR_SECS)?;
    let after = snapshot(&attached.ids)?;
    let measured = deltas(&before, &after);
    Ok(floors.map(|(name, _)| measured.iter().find(|m| m.0 == name).and_then(|m| m.2)))
}

fn run(binary: &Path, secs: u64, report: &mut Report) -> Result<(), String> {
    let scratch = Scratch::new("storage")?;
    let disk = LoopOnTmpfs::new(&scratch.0)?;
    let dev = disk.device.clone().ok_or("no loop device")?;
    let floors = floor_window(&dev);
    let config = agent::write_config(&scratch.0, &scratch.0.join("evidence.jsonl"))?;
    let agent = Agent::start(binary, &config)?;
    if !agent.ready_line.contains("storage=running") {
        return Err(format!("the storage observer is not running: {}", agent.ready_line));
    }
    let pid = agent.pid();
    let ids = procfs::prog_ids(pid);
    std::thread::sleep(Duration::from_millis(500));
    let (stats, how) = StatsOn::enable()?;
    let before = snapshot(&ids)?;
    let cpu0 = procfs::cpu_sched_ns(pid)?;
    let t0 = Instant::now();
    let ios = random_io(&dev, secs);
    let wall = t0.elapsed();
    let cpu1 = procfs::cpu_sched_ns(pid);
    let after = snapshot(&ids);
    // The saturating window, for the hooks the loop device does not reach.
    let saturating = Scratch::under(Path::new(SATURATING_DIR), "storage").and_then(|dir| {
        let start = snapshot(&ids)?;
        let ios = saturating_io(&dir.0)?;
        Ok((ios, deltas(&start, &snapshot(&ids)?)))
    });
    drop(stats);
    let stopped = agent.stop()?;
    let ios = ios?;
    let (cpu1, after) = (cpu1?, after?);

    let mut total_runs = 0u64;
    let mut total_ns = 0u64;
    // (time, runs) of the two submission hooks.
    let mut submission = [(0u64, 0u64); 2];
    for (id, a) in &after {
        let Some(program) = program_of(&a.kernel_name) else { continue };
        let (t0, c0) = before.get(id).map(|b| (b.run_time_ns, b.run_count)).unwrap_or((0, 0));
        let runs = a.run_count.saturating_sub(c0);
        let time = a.run_time_ns.saturating_sub(t0);
        // The paced window's runs enter the all-hooks mean whatever row this hook gets.
        total_runs += runs;
        total_ns += time;
        if runs < FEW_RUNS {
            few_runs_row(program, (runs, time), &saturating, report);
            continue;
        }
        match program {
            "tapio_io_start" => submission[0] = (time, runs),
            "tapio_rq_issue" => submission[1] = (time, runs),
            _ => {}
        }
        let mean = time as f64 / runs as f64;
        report.row(
            "storage",
            format!("{program} mean cost"),
            format!("{mean:.0} ns x {} runs", thousands(runs)),
            format!("<= {EACH_HOOK_GOAL_NS} ns"),
            Verdict::check(mean <= EACH_HOOK_GOAL_NS),
        );
    }
    if total_runs == 0 {
        return Err("no storage program ran during the I/O".into());
    }
    let submission_goal = format!("<= {SUBMISSION_GOAL_NS} ns");
    match submission_per_request(submission) {
        Some(ns) => report.row(
            "storage",
            "submission path per request (block_io_start + block_rq_issue)",
            format!("{ns:.0} ns"),
            submission_goal,
            Verdict::check(ns <= SUBMISSION_GOAL_NS),
        ),
        None => report.not_measured(
            "storage",
            "submission path per request (block_io_start + block_rq_issue)",
            &submission_goal,
            "a submission hook did not fire".into(),
        ),
    }
    let floor_measure = "floor: empty programs alone on the three block hooks, the same I/O (io_start, rq_issue, \
                         rq_complete; submission)";
    match floors {
        Ok([Some(start), Some(issue), Some(complete)]) => report.row(
            "storage",
            floor_measure,
            format!("{start:.0}, {issue:.0}, {complete:.0} ns; {:.0} ns", start + issue),
            "(diagnostic: no program costs less)",
            Verdict::Info,
        ),
        Ok(_) => report.not_measured("storage", floor_measure, "(diagnostic)", "an empty program did not run".into()),
        Err(e) => report.not_measured("storage", floor_measure, "(diagnostic)", e),
    }
    let mean = total_ns as f64 / total_runs as f64;
    report.row(
        "storage",
        "mean cost per block hook invocation (all hooks)",
        format!("{mean:.0} ns x {} runs", thousands(total_runs)),
        format!("<= {HOOK_GOAL_NS} ns"),
        Verdict::check(mean <= HOOK_GOAL_NS),
    );
    let iops = ios as f64 / wall.as_secs_f64();
    let cpu = cpu1.saturating_sub(cpu0) as f64 * 100.0 / wall.as_nanos() as f64;
    report.row(
        "storage",
        format!("agent CPU at {iops:.0} IOPS"),
        format!("{cpu:.2} % of a core"),
        format!("< {CPU_GOAL_PERCENT} % of a core"),
        Verdict::check(cpu < CPU_GOAL_PERCENT && iops >= TARGET_IOPS as f64 * 0.8),
    );
    let drops = stopped.counters.as_ref().map(|c| agent::counter(c, "correlation_drops_total")).unwrap_or(0);
    report.note(format!(
        "storage: {} random 4 KiB O_DIRECT I/Os (70 % reads) on {dev} (loop device on a tmpfs file) by {THREADS} \
         threads over {:.1} s, paced to {TARGET_IOPS} IOPS; run-time stats via {how}; agent CPU from its threads' \
         schedstat; correlation drops during both windows: {drops}",
        thousands(ios),
        wall.as_secs_f64()
    ));
    if let Ok((ios, _)) = &saturating {
        report.note(format!(
            "storage: then {} unpaced {} KiB O_DIRECT I/Os (half random reads, half writes in sequence) by {SATURATING_THREADS} threads over \
             {SATURATING_SECS} s on a {} MiB file under {SATURATING_DIR}, stats on: the rows of hooks that ran fewer than \
             {FEW_RUNS} times in the paced I/O come from this window (the other hooks' figures from it are not shown)",
            thousands(*ios),
            SATURATING_BLOCK >> 10,
            SATURATING_FILE_BYTES >> 20
        ));
    }
    Ok(())
}

/// Fewer runs than this in a window are not a mean to judge: a loop device never requeues
/// and rarely merges, and the few such runs in the paced window come from other I/O on the
/// machine meanwhile, cold.
const FEW_RUNS: u64 = 100;

/// The row of a hook the paced window ran fewer than `FEW_RUNS` times (`(runs, ns)`): from
/// the saturating window if it ran at least that often there; else its few runs' mean is
/// shown, not judged (a handful of cold runs is no mean), or it did not run at all.
fn few_runs_row(
    program: &str,
    (paced_runs, paced_ns): (u64, u64),
    saturating: &Result<(u64, Vec<ProgramCost>), String>,
    report: &mut Report,
) {
    let measure = format!("{program} mean cost");
    let goal = format!("<= {EACH_HOOK_GOAL_NS} ns");
    let there = saturating.as_ref().ok().and_then(|(_, measured)| measured.iter().find(|m| m.0 == program));
    let (saturating_runs, saturating_mean) = there.map(|m| (m.1, m.2)).unwrap_or((0, None));
    if let (true, Some(mean)) = (saturating_runs >= FEW_RUNS, saturating_mean) {
        report.row(
            "storage",
            format!("{measure} ({SATURATING_SECS} s saturating the disk under {SATURATING_DIR})"),
            format!("{mean:.0} ns x {} runs", thousands(saturating_runs)),
            goal,
            Verdict::check(mean <= EACH_HOOK_GOAL_NS),
        );
        return;
    }
    let paced_mean = mean_of(paced_runs, paced_ns as f64 / paced_runs.max(1) as f64);
    let why = match saturating {
        Ok((ios, _)) if paced_runs + saturating_runs > 0 => format!(
            "too few runs to judge: {paced_runs} in the paced loop-device I/O{paced_mean}, {saturating_runs} in {} I/Os \
             of {SATURATING_THREADS} threads over {SATURATING_SECS} s on the disk under {SATURATING_DIR}{}",
            thousands(*ios),
            mean_of(saturating_runs, saturating_mean.unwrap_or(0.0)),
        ),
        Ok((ios, _)) => format!(
            "its hook did not fire, in the paced loop-device I/O nor in {} I/Os of {SATURATING_THREADS} threads over \
             {SATURATING_SECS} s on the disk under {SATURATING_DIR}",
            thousands(*ios)
        ),
        Err(e) => format!(
            "{paced_runs} runs in the paced loop-device I/O{paced_mean}, too few to judge, and the saturating window \
             failed: {e}"
        ),
    };
    report.not_measured("storage", &measure, &goal, why);
}

/// " (mean N ns)" after a count of runs, if there were any.
fn mean_of(runs: u64, mean_ns: f64) -> String {
    if runs == 0 {
        String::new()
    } else {
        format!(" (mean {mean_ns:.0} ns)")
    }
}

/// The submission hooks' cost per request: each hook's mean, summed (a request is started
/// once and issued once, or more often when requeued, which the issue mean then covers).
fn submission_per_request([(start_ns, starts), (issue_ns, issues)]: [(u64, u64); 2]) -> Option<f64> {
    (starts > 0 && issues > 0).then(|| start_ns as f64 / starts as f64 + issue_ns as f64 / issues as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_cost_adds_the_two_hooks_means() {
        assert_eq!(submission_per_request([(2000, 10), (1000, 10)]), Some(300.0));
        assert_eq!(submission_per_request([(2000, 10), (0, 0)]), None);
    }

    #[test]
    fn a_hook_with_few_runs_is_judged_from_the_saturating_window_or_not_at_all() {
        let cost = |name: &str, runs, mean| (name.to_string(), runs, mean);
        let mut report = Report::default();
        let saturating = Ok((1_000, vec![cost("tapio_rq_requeue", 5_000, Some(140.0))]));
        few_runs_row("tapio_rq_requeue", (2, 400), &saturating, &mut report);
        assert_eq!(report.count(|v| *v == Verdict::Pass), 1);
        assert!(report.render().contains("140 ns x 5,000 runs"), "{}", report.render());

        let mut report = Report::default();
        let saturating = Ok((1_000, vec![cost("tapio_rq_merge", 3, Some(300.0))]));
        few_runs_row("tapio_rq_merge", (1, 335), &saturating, &mut report);
        assert_eq!(report.count(|v| matches!(v, Verdict::NotMeasured(_))), 1);
        let text = report.render();
        assert!(
            text.contains("too few runs to judge: 1 in the paced loop-device I/O (mean 335 ns), 3 in 1,000 I/Os"),
            "{text}"
        );

        let mut report = Report::default();
        few_runs_row("tapio_rq_merge", (0, 0), &Ok((1_000, vec![cost("tapio_rq_merge", 0, None)])), &mut report);
        assert!(report.render().contains("its hook did not fire"), "{}", report.render());
        let mut report = Report::default();
        few_runs_row("tapio_rq_merge", (0, 0), &Err("no /var/tmp".into()), &mut report);
        assert!(report.render().contains("the saturating window failed: no /var/tmp"), "{}", report.render());
    }

    #[test]
    fn kernel_names_map_to_storage_programs() {
        assert_eq!(program_of("tapio_rq_comple"), Some("tapio_rq_complete"));
        assert_eq!(program_of("tapio_io_start"), Some("tapio_io_start"));
        assert_eq!(program_of("tapio_rq_requeu"), Some("tapio_rq_requeue"));
        assert_eq!(program_of("tapio_tcp_probe"), None);
        assert_eq!(program_of(""), None);
    }
}
