//! tapio-bench: the agent's benchmark command. It measures binary size, idle footprint, the
//! kernel cost of every eBPF hook, userspace pipeline throughput and end-to-end loss
//! accounting, and prints one table with each figure next to its goal (PASS / MISS).
//!
//! Run everything with `scripts/bench` (it builds the release binaries first); run one part
//! with `tapio-bench <part>`. `size` and `pipeline` need no privileges; `idle`, `kernel`
//! and `e2e` run the real agent, which loads eBPF, so they need root and are reported as
//! SKIPPED otherwise.

mod agent;
mod budgets;
mod e2e;
mod floor;
mod idle;
mod kernel;
mod load;
mod overhead;
mod pipeline;
mod pressure;
mod procfs;
mod report;
mod size;
mod slow;
mod storage;

use report::{thousands, Report, Verdict};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
tapio-bench: Tapio agent benchmark; prints one table with every figure next to its goal

USAGE: tapio-bench [PART...] [OPTIONS]

PARTS (default: all):
  size        release binary sizes (no root)
  pipeline    userspace decode/classify/serialize throughput, one thread (no root)
  idle        idle RSS and CPU of the running agent, alone and connected to a
              controller (root)
  kernel      mean cost per invocation of each tapio_* eBPF program (root)
  e2e         refused-connect flood: made vs written vs counted losses (root)
  slow        peak RSS while a slow consumer reads the agent's stdout during a
              refused-connect flood (root)
  storage     block hook cost and agent CPU at ~10k IOPS on a loop device (root)
  overhead    connect-heavy workload: the generator's CPU per connect with the agent
              vs without, alternating rounds; network hook cost under it (root)
  budgets     eBPF object sizes and map memory against their budgets (no root)
  pressure    agent CPU per poll with 500 container cgroups watched by the
              container pressure observer (root; --idle-secs sets the window)
  all         every part above

OPTIONS:
  --agent PATH        the agent to measure and run (default: the shipping build,
                      target/agent/tapio-agent, if built; else tapio-agent next to
                      this binary)
  --release-agent PATH  release-profile agent whose size is also reported
                      (default: tapio-agent next to this binary)
  --controller PATH   controller binary: its size is reported, and the idle part
                      also runs the agent connected to it (default: tapio-controller
                      next to this binary)
  --secs N            end-to-end flood duration in seconds (default 10)
  --senders N         end-to-end sender threads (default 3, the fastest here)
  --idle-secs N       idle measurement window in seconds (default 10)
  --pipeline-secs N   duration of each of the 5 pipeline trials per phase (default 1)
  --strict            exit with status 3 if any figure misses its goal
  -h, --help          print this help

Binaries are measured as built: build the agent on its own (`cargo build --profile agent
-p tapio-agent`, and `--release` for the release-profile size); building other packages
in the same cargo invocation can unify dependency features into it. scripts/bench does this.";

/// The slow-consumer flood: long enough to fill the queue many times over.
const SLOW_SECS: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Size,
    Pipeline,
    Idle,
    Kernel,
    E2e,
    Storage,
    Overhead,
    Budgets,
    Slow,
    Pressure,
}

const ALL: [Part; 10] = [
    Part::Size,
    Part::Budgets,
    Part::Pipeline,
    Part::Idle,
    Part::Kernel,
    Part::E2e,
    Part::Slow,
    Part::Storage,
    Part::Overhead,
    Part::Pressure,
];

struct Options {
    parts: Vec<Part>,
    agent: PathBuf,
    release_agent: PathBuf,
    controller: PathBuf,
    secs: u64,
    senders: usize,
    idle_secs: u64,
    pipeline_secs: u64,
    strict: bool,
}

fn number(flag: &str, value: Option<String>, max: u64) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    match value.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{flag} {value}: expected a whole number from 1 to {max}")),
    }
}

fn parse(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/release"));
    // The shipping build (the `agent` profile) lands in target/agent, next to target/release.
    let shipped = dir.parent().map(|t| t.join("agent").join("tapio-agent"));
    let mut o = Options {
        parts: Vec::new(),
        agent: shipped.filter(|p| p.exists()).unwrap_or_else(|| dir.join("tapio-agent")),
        release_agent: dir.join("tapio-agent"),
        controller: dir.join("tapio-controller"),
        secs: 10,
        senders: 3,
        idle_secs: 10,
        pipeline_secs: 1,
        strict: false,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "size" => o.parts.push(Part::Size),
            "pipeline" => o.parts.push(Part::Pipeline),
            "idle" => o.parts.push(Part::Idle),
            "kernel" => o.parts.push(Part::Kernel),
            "e2e" => o.parts.push(Part::E2e),
            "storage" => o.parts.push(Part::Storage),
            "overhead" => o.parts.push(Part::Overhead),
            "budgets" => o.parts.push(Part::Budgets),
            "slow" => o.parts.push(Part::Slow),
            "pressure" => o.parts.push(Part::Pressure),
            "all" => o.parts.extend(ALL),
            "--agent" => o.agent = args.next().ok_or("--agent needs a path")?.into(),
            "--release-agent" => o.release_agent = args.next().ok_or("--release-agent needs a path")?.into(),
            "--controller" => o.controller = args.next().ok_or("--controller needs a path")?.into(),
            "--secs" => o.secs = number("--secs", args.next(), 600)?,
            "--senders" => o.senders = number("--senders", args.next(), 64)? as usize,
            "--idle-secs" => o.idle_secs = number("--idle-secs", args.next(), 600)?,
            "--pipeline-secs" => o.pipeline_secs = number("--pipeline-secs", args.next(), 60)?,
            "--strict" => o.strict = true,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.parts.is_empty() {
        o.parts.extend(ALL);
    }
    let mut seen = Vec::new();
    o.parts.retain(|p| {
        if seen.contains(p) {
            false
        } else {
            seen.push(*p);
            true
        }
    });
    Ok(Some(o))
}

fn pipeline_rows(secs: u64, report: &mut Report) {
    eprintln!("tapio-bench: pipeline ({} trials of {secs} s per phase)", pipeline::TRIALS);
    let t = pipeline::measure(Duration::from_secs(secs));
    let value = |p: &pipeline::Phase| {
        format!(
            "{}/s ({:.0} ns/record; trials {}..{})",
            thousands(p.median as u64),
            1e9 / p.median,
            thousands(p.min as u64),
            thousands(p.max as u64)
        )
    };
    report.row(
        "pipeline",
        "decode + classify, 1 thread (median)",
        value(&t.classify),
        ">= 1,000,000/s",
        Verdict::check(t.classify.median >= 1_000_000.0),
    );
    report.row(
        "pipeline",
        "decode + classify + JSON, 1 thread (median)",
        value(&t.serialize),
        ">= 300,000/s",
        Verdict::check(t.serialize.median >= 300_000.0),
    );
    report.note(format!(
        "pipeline: crafted kernel-layout records (per 100: 50 refused, 5 IPv6 timeout, 5 unreachable, 15 reset, \
         8 retransmit spike, 5 RTT, 11 abnormal exit, 1 OOM), {} classified, {} became evidence; the JSON phase \
         attaches a cached pod workload and serializes as the sink stage does (mean line {:.0} B); identity \
         lookups and sink I/O are not included; median of {} trials after a warm-up",
        thousands(t.classify.records),
        thousands(t.classify.emitted),
        t.serialize.bytes as f64 / t.serialize.emitted.max(1) as f64,
        pipeline::TRIALS
    ));
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("__hog") {
        // The OOM helper of the kernel part (see load::oom_kill).
        let procs = args.nth(1).unwrap_or_default();
        return ExitCode::from(load::hog(std::path::Path::new(&procs)) as u8);
    }
    let options = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tapio-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    agent::stop_agent_on_interrupt();
    let root = procfs::is_root();
    if !root
        && options.parts.iter().any(|p| {
            matches!(
                p,
                Part::Idle | Part::Kernel | Part::E2e | Part::Slow | Part::Storage | Part::Overhead | Part::Pressure
            )
        })
    {
        eprintln!("tapio-bench: NOT ROOT: the idle, kernel, e2e, slow, storage, overhead and pressure parts will be SKIPPED (they run the agent, which loads eBPF)");
    }
    let mut report = Report::default();
    for part in &options.parts {
        let needs_root = matches!(
            part,
            Part::Idle | Part::Kernel | Part::E2e | Part::Slow | Part::Storage | Part::Overhead | Part::Pressure
        );
        if needs_root && !root {
            let why = "needs root: it runs the agent, which loads eBPF (rerun with sudo)";
            match part {
                Part::Idle => {
                    report.skipped("idle", "idle RSS (VmRSS)", "<= 6 MB", why);
                    report.skipped("idle", "idle CPU (utime+stime)", "<= 0.2 %", why);
                    report.skipped("idle", "idle CPU, agent connected to a controller", "<= 0.2 %", why);
                }
                Part::Kernel => report.skipped("kernel", "mean cost per tapio_* program", "<= 250 ns", why),
                Part::Overhead => {
                    report.skipped("overhead", "connect-heavy CPU per connect, agent vs none", "<= +5 %", why)
                }
                Part::Storage => {
                    report.skipped("storage", "block hook cost and agent CPU at ~10k IOPS", "<= 300 ns, < 1 %", why)
                }
                Part::Slow => report.skipped("slow", "peak RSS, stdout read by a slow consumer", "<= 12 MB", why),
                Part::Pressure => report.skipped("pressure", "CPU per poll of 500 containers", "<= 25 ms", why),
                _ => report.skipped("e2e", "refused-connect flood accounting", "unaccounted 0", why),
            }
            continue;
        }
        match part {
            Part::Size => size::measure(&options.agent, &options.release_agent, &options.controller, &mut report),
            Part::Pipeline => pipeline_rows(options.pipeline_secs, &mut report),
            Part::Budgets => budgets::measure(&mut report),
            Part::Idle => {
                eprintln!("tapio-bench: idle ({} s window)", options.idle_secs);
                idle::measure(&options.agent, &options.controller, Duration::from_secs(options.idle_secs), &mut report);
            }
            Part::Kernel => {
                eprintln!("tapio-bench: kernel (eBPF run-time stats under load)");
                kernel::measure(&options.agent, &mut report);
            }
            Part::E2e => {
                eprintln!("tapio-bench: e2e ({} s flood, {} senders)", options.secs, options.senders);
                e2e::measure(&options.agent, Duration::from_secs(options.secs), options.senders, &mut report);
            }
            Part::Slow => {
                eprintln!(
                    "tapio-bench: slow ({} s flood, {} senders, slow stdout consumer)",
                    SLOW_SECS, options.senders
                );
                slow::measure(&options.agent, Duration::from_secs(SLOW_SECS), options.senders, &mut report);
            }
            Part::Overhead => {
                eprintln!("tapio-bench: overhead (connect-heavy rounds with and without the agent)");
                overhead::measure(&options.agent, &mut report);
            }
            Part::Storage => {
                eprintln!("tapio-bench: storage ({} s of paced random I/O on a loop device)", options.secs);
                storage::measure(&options.agent, options.secs, &mut report);
            }
            Part::Pressure => {
                eprintln!("tapio-bench: pressure (500 container cgroups, {} s window)", options.idle_secs);
                pressure::measure(&options.agent, Duration::from_secs(options.idle_secs), &mut report);
            }
        }
    }

    println!(
        "tapio-bench: kernel {}, {} CPUs, agent {}\n",
        procfs::kernel_release(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        options.agent.display()
    );
    print!("{}", report.render());
    let misses = report.count(|v| *v == Verdict::Miss);
    let unmeasured = report.count(|v| matches!(v, Verdict::NotMeasured(_) | Verdict::Skipped(_)));
    let passes = report.count(|v| *v == Verdict::Pass);
    println!("\n{passes} PASS, {misses} MISS, {unmeasured} not measured");
    if options.strict && misses > 0 {
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Option<Options>, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_to_every_part() {
        let o = p(&[]).unwrap().unwrap();
        assert_eq!(o.parts, ALL);
        assert_eq!((o.secs, o.senders, o.idle_secs), (10, 3, 10));
    }

    #[test]
    fn parses_parts_and_options() {
        let o = p(&["pipeline", "size", "--secs", "3", "--senders", "4", "--strict"]).unwrap().unwrap();
        assert_eq!(o.parts, [Part::Pipeline, Part::Size]);
        assert_eq!((o.secs, o.senders, o.strict), (3, 4, true));
        assert!(p(&["--secs", "0"]).is_err());
        assert!(p(&["--bogus"]).is_err());
        assert!(p(&["--help"]).unwrap().is_none());
    }
}
