//! The kernel matrix's guest runner. `scripts/kmatrix` boots Debian kernels under qemu with
//! a busybox initramfs whose `/init` starts `tapio-kmatrix guest`; this runner then starts
//! the real release agent in the guest, makes each evidence scenario happen for real,
//! checks the agent's evidence against what the kernel itself says, and writes one result
//! line per scenario to a second serial port that the host reads (the console, ttyS0, also
//! carries the kernel's messages, which would interleave with results).
//!
//! The same binary is also every scenario's workload (`threads-exit`, `hog`, `spin`, `dns-query`), so a guest
//! needs nothing but busybox, the agent and this runner.

mod agent;
mod cgroup;
mod kmsg;
mod report;
mod scenarios;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: tapio-kmatrix guest --agent PATH [--results PATH]
       tapio-kmatrix threads-exit CGROUP_PROCS   (workload: a 5-thread process that exits 3)
       tapio-kmatrix hog CGROUP_PROCS [THREADS]  (workload: THREADS threads allocate until its memory cgroup kills it)
       tapio-kmatrix spin CGROUP_PROCS [SECS]    (workload: a busy loop for SECS seconds)
       tapio-kmatrix dns-query CGROUP_PROCS SERVER NAME [tcp]  (workload: one DNS query, prints the answer's rcode)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("guest") => guest(&args[1..]),
        Some("threads-exit") => workloads::threads_exit(&args[1..]),
        Some("hog") => workloads::hog(&args[1..]),
        Some("spin") => workloads::spin(&args[1..]),
        Some("dns-query") => workloads::dns_query(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn guest(args: &[String]) -> ExitCode {
    let mut agent = None;
    let mut results = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--agent" => agent = it.next().map(PathBuf::from),
            "--results" => results = it.next().map(PathBuf::from),
            other => {
                eprintln!("tapio-kmatrix: unknown argument {other}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(agent) = agent else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut report = report::Report::open(results.as_deref());
    scenarios::run_all(&agent, &mut report);
    report.finish();
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
