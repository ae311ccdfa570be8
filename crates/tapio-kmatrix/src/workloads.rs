//! The scenarios' workloads: this same binary, run as a child in a scenario's cgroup. Each
//! joins its cgroup first (before it has any other thread), so everything it does is
//! accounted there.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};

const WORKER_THREADS: usize = 4;

fn join_cgroup(args: &[String]) -> Result<(), ExitCode> {
    let Some(procs) = args.first() else {
        eprintln!("workload: missing CGROUP_PROCS");
        return Err(ExitCode::from(2));
    };
    std::fs::write(procs, std::process::id().to_string()).map_err(|e| {
        eprintln!("workload: joining {procs}: {e}");
        ExitCode::from(2)
    })
}

/// A process with four workers that exits 3 from its main thread while they all still run:
/// one process exit (exit_group) of five threads, which must be one abnormal_exit.
pub fn threads_exit(args: &[String]) -> ExitCode {
    if let Err(code) = join_cgroup(args) {
        return code;
    }
    let started = Arc::new(Barrier::new(WORKER_THREADS + 1));
    for _ in 0..WORKER_THREADS {
        let started = Arc::clone(&started);
        std::thread::spawn(move || {
            started.wait();
            // Parked until the group exit takes them; bounded so a stray run ends anyway.
            for _ in 0..600 {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
    }
    started.wait();
    // The kernel's count, so the runner can tell this really was multi-threaded.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).map(str::trim).unwrap_or("?");
    println!("threads {threads}");
    let _ = std::io::stdout().flush();
    std::process::exit(3);
}

/// Touches memory a MiB at a time until its memory cgroup's OOM killer kills it. Bounded:
/// a hog that is never killed stops at 256 MiB and exits 0, which the scenario reports.
pub fn hog(args: &[String]) -> ExitCode {
    if let Err(code) = join_cgroup(args) {
        return code;
    }
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for i in 0..256u32 {
        // Filled, not just reserved: only touched pages count as anon rss.
        kept.push(vec![(i % 251) as u8 + 1; 1 << 20]);
    }
    println!("hog: allocated {} MiB without being killed", kept.len());
    ExitCode::SUCCESS
}
