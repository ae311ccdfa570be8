//! Idle footprint of the running agent: resident memory and CPU with every observer
//! attached and nothing happening (beyond whatever else runs on the machine, which the
//! load average in the notes shows); then its CPU once more, registered to a real
//! controller, as it runs when deployed.

use crate::agent::{self, Agent, Scratch};
use crate::procfs;
use crate::report::{thousands, Report, Verdict};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Resident set goal (decimal megabytes, like the size goal).
const RSS_GOAL_BYTES: u64 = 6_000_000;
/// CPU goal, percent of one core.
const CPU_GOAL_PERCENT: f64 = 0.2;
/// Time after "ready:" before measuring: start-up work (BTF parsing, loading) is not idle.
const SETTLE: Duration = Duration::from_secs(3);

/// The connected measurement's row.
const CONNECTED_CPU: &str = "idle CPU, agent connected to a controller (schedstat)";

pub fn measure(binary: &Path, controller: &Path, window: Duration, report: &mut Report) {
    if let Err(e) = run(binary, window, report) {
        for m in ["idle RSS (VmRSS)", "idle CPU (utime+stime)"] {
            report.not_measured("idle", m, "", e.clone());
        }
    }
    if let Err(e) = run_connected(binary, controller, window, report) {
        report.not_measured("idle", CONNECTED_CPU, &format!("<= {CPU_GOAL_PERCENT} %"), e);
    }
}

fn run(binary: &Path, window: Duration, report: &mut Report) -> Result<(), String> {
    let scratch = Scratch::new("idle")?;
    let config = agent::write_config(&scratch.0, &scratch.0.join("evidence.jsonl"))?;
    let agent = Agent::start(binary, &config)?;
    // The idle footprint is the whole agent's: with an observer missing that this machine
    // could run, it is a smaller agent's and not measured.
    let short = short_of_this_machine(&agent.ready_line);
    if !short.is_empty() {
        return Err(format!("not every observer this machine supports attached: {}", short.join("; ")));
    }
    if !agent.fully_attached() {
        report.note(format!(
            "idle: the node observer runs as far as this machine allows (no hardware PMU or no PSI here): {}",
            agent.ready_line
        ));
    }
    let pid = agent.pid();
    std::thread::sleep(SETTLE);
    let load_before = procfs::loadavg();
    let t0 = Instant::now();
    let stat0 = procfs::cpu_stat_ns(pid)?;
    let sched0 = procfs::cpu_sched_ns(pid)?;
    std::thread::sleep(window);
    let stat1 = procfs::cpu_stat_ns(pid)?;
    let sched1 = procfs::cpu_sched_ns(pid)?;
    let wall = t0.elapsed().as_nanos() as f64;
    let rss = procfs::rss_kib(pid)?;
    let breakdown = format!(
        "RssAnon {} KiB, RssFile {} KiB, of which eBPF ring-buffer mappings {} KiB; peak VmHWM {} KiB",
        procfs::status_kib(pid, "RssAnon:").map(thousands).unwrap_or_else(|e| e),
        procfs::status_kib(pid, "RssFile:").map(thousands).unwrap_or_else(|e| e),
        procfs::bpf_map_rss_kib(pid).map(thousands).unwrap_or_else(|e| e),
        procfs::status_kib(pid, "VmHWM:").map(thousands).unwrap_or_else(|e| e),
    );
    let stopped = agent.stop()?;

    let rss_bytes = rss * 1024;
    report.row(
        "idle",
        "idle RSS (VmRSS)",
        format!("{:.2} MB ({} KiB)", rss_bytes as f64 / 1e6, thousands(rss)),
        "<= 6 MB (6,000,000 B)",
        Verdict::check(rss_bytes <= RSS_GOAL_BYTES),
    );
    report.note(format!("idle: RSS breakdown: {breakdown}"));
    let pct = |ns: u64| ns as f64 / wall * 100.0;
    let stat_pct = pct(stat1.saturating_sub(stat0));
    report.row(
        "idle",
        format!("idle CPU (utime+stime, {} s)", window.as_secs()),
        format!("{stat_pct:.3} % of one core"),
        format!("<= {CPU_GOAL_PERCENT} %"),
        Verdict::check(stat_pct <= CPU_GOAL_PERCENT),
    );
    let sched_pct = pct(sched1.saturating_sub(sched0));
    report.row(
        "idle",
        "idle CPU cross-check (schedstat, exact ns)",
        format!("{sched_pct:.3} % of one core"),
        format!("<= {CPU_GOAL_PERCENT} %"),
        Verdict::check(sched_pct <= CPU_GOAL_PERCENT),
    );
    let events = stopped.counters.as_ref().map(|c| agent::counter(c, "events_total")).unwrap_or(0);
    report.note(format!(
        "idle: {} s window starting {} s after ready; 1-min load average {load_before} before, {} after; \
         the agent emitted {events} evidence records over its whole run (activity elsewhere on the machine); utime+stime \
         has one-tick (10 ms) resolution, schedstat is exact",
        window.as_secs(),
        SETTLE.as_secs(),
        procfs::loadavg()
    ));
    Ok(())
}

/// The observers of a `ready:` line (`observers [network=running, node=degraded, …]`) that
/// are not as far along as this machine allows, each as `name=state (expected …)`; empty
/// when every one is.
///
/// The rule: every observer must be `running`, except the node observer, whose state is
/// expected from what the bench itself finds on the machine, as the agent looks for it:
/// a hardware PMU (the cycles counter of CPU 0 for every task, the agent's group leader,
/// failing with ENOENT, EOPNOTSUPP or ENODEV: none, as on VMs without PMU passthrough such as
/// the test VM) and pressure stall information (/proc/pressure/{memory,cpu,io}). With
/// both it must run, with one of them it is `degraded`, with neither `unsupported`. Any other
/// failure to open the counter (a refusal) counts as a machine that has one. Every other
/// observer short of `running` (a kernel without one of its hooks, a refused program,
/// cgroups without PSI) leaves the rows unmeasured: the footprint is then not the full
/// agent's, and the reason names the observer.
fn short_of_this_machine(ready_line: &str) -> Vec<String> {
    let Some((list, _)) = ready_line.split_once("observers [").and_then(|(_, rest)| rest.split_once(']')) else {
        return vec![format!("no observer list in the ready line: {ready_line}")];
    };
    let mut short = Vec::new();
    for entry in list.split(", ") {
        let Some((name, state)) = entry.split_once('=') else {
            short.push(format!("unreadable entry {entry:?} in the ready line"));
            continue;
        };
        let expected = if name == "node" { node_state_on_this_machine() } else { "running" };
        if state != expected {
            short.push(format!("{name}={state} (expected {expected} on this machine)"));
        }
    }
    short
}

/// The node observer's state on this machine: `running` with a PMU and PSI, `degraded`
/// with one of them, `unsupported` with neither.
fn node_state_on_this_machine() -> &'static str {
    let pmu = !no_pmu(&open_cycles_counter());
    let psi = ["memory", "cpu", "io"].iter().all(|r| std::fs::File::open(format!("/proc/pressure/{r}")).is_ok());
    match (pmu, psi) {
        (true, true) => "running",
        (false, false) => "unsupported",
        _ => "degraded",
    }
}

/// Opens (and closes) the counter the node observer leads each CPU's group with.
fn open_cycles_counter() -> std::io::Result<()> {
    use tapio_util::perf::{
        perf_event_open, PerfEventAttr, PERF_COUNT_HW_CPU_CYCLES, PERF_FLAG_FD_CLOEXEC, PERF_FORMAT_GROUP,
        PERF_FORMAT_TOTAL_TIME_ENABLED, PERF_FORMAT_TOTAL_TIME_RUNNING,
    };
    let attr = PerfEventAttr {
        read_format: PERF_FORMAT_GROUP | PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING,
        ..PerfEventAttr::hardware(PERF_COUNT_HW_CPU_CYCLES)
    };
    perf_event_open(&attr, -1, 0, None, PERF_FLAG_FD_CLOEXEC).map(drop)
}

/// Whether opening a hardware counter failed because the machine has no PMU.
fn no_pmu(opened: &std::io::Result<()>) -> bool {
    matches!(
        opened.as_ref().map_err(std::io::Error::raw_os_error),
        Err(Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV))
    )
}

/// A controller on a loopback port, killed on drop.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The deployed mode: the same idle window with the agent registered to a real controller
/// (its link's heartbeats, config polls and loop included).
fn run_connected(binary: &Path, controller: &Path, window: Duration, report: &mut Report) -> Result<(), String> {
    if !controller.exists() {
        return Err(format!("{} does not exist (scripts/bench builds it)", controller.display()));
    }
    let scratch = Scratch::new("idle-connected")?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let log = std::fs::File::create(scratch.0.join("controller.log")).map_err(|e| format!("controller log: {e}"))?;
    let _controller = Controller(
        Command::new(controller)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--sink", "file", "--sink-path"])
            .arg(scratch.0.join("controller-sink.jsonl"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", controller.display()))?,
    );
    let listening = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if listening.elapsed() > Duration::from_secs(20) {
            return Err(format!("the controller did not listen on port {port} within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = scratch.0.join("agent-state.json");
    let config = agent::write_config(&scratch.0, &scratch.0.join("evidence.jsonl"))?;
    let mut text = std::fs::read_to_string(&config).map_err(|e| format!("reading {}: {e}", config.display()))?;
    text.push_str(&format!(
        "\n[controller]\nurl = \"http://127.0.0.1:{port}\"\nagent_id = \"tapio-bench-idle\"\nstate_file = \"{}\"\n",
        state.display()
    ));
    std::fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
    let agent = Agent::start(binary, &config)?;
    let short = short_of_this_machine(&agent.ready_line);
    if !short.is_empty() {
        return Err(format!("not every observer this machine supports attached: {}", short.join("; ")));
    }
    let (cpu_ns, wall) = procfs::cpu_sched_ns_over(agent.pid(), SETTLE, window)?;
    agent.stop()?;
    // The agent saves the controller's config once it registered and fetched it: proof the
    // window was spent connected, not retrying.
    if !state.exists() {
        return Err("the agent never registered with the controller (no state file)".into());
    }
    let pct = cpu_ns as f64 / wall.as_nanos() as f64 * 100.0;
    report.row(
        "idle",
        CONNECTED_CPU,
        format!("{pct:.3} % of one core"),
        format!("<= {CPU_GOAL_PERCENT} %"),
        Verdict::check(pct <= CPU_GOAL_PERCENT),
    );
    report.note(format!(
        "idle: connected: the same window with the agent registered to tapio-controller on 127.0.0.1:{port} \
         (default heartbeat and config-poll intervals)"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observer_short_of_running_is_named_and_the_node_is_judged_by_the_machine() {
        let line = |node: &str, dns: &str| {
            format!(
                "INFO tapio_agent::runtime: ready: node x, observers [network=running, container=running, \
                 storage=running, node={node}, container_pressure=running, dns={dns}], sinks [stdout]"
            )
        };
        let node_here = node_state_on_this_machine();
        assert_eq!(short_of_this_machine(&line(node_here, "running")), Vec::<String>::new());
        let short = short_of_this_machine(&line(node_here, "failed"));
        assert_eq!(short, vec!["dns=failed (expected running on this machine)".to_string()]);
        let other = if node_here == "running" { "degraded" } else { "running" };
        let short = short_of_this_machine(&line(other, "running"));
        assert_eq!(short, vec![format!("node={other} (expected {node_here} on this machine)")]);
        assert_eq!(short_of_this_machine("ready: nothing").len(), 1);
    }

    #[test]
    fn only_the_errors_of_a_machine_without_a_pmu_mean_none() {
        for errno in [libc::ENOENT, libc::EOPNOTSUPP, libc::ENODEV] {
            assert!(no_pmu(&Err(std::io::Error::from_raw_os_error(errno))));
        }
        for errno in [libc::EACCES, libc::EPERM, libc::EINVAL] {
            assert!(!no_pmu(&Err(std::io::Error::from_raw_os_error(errno))));
        }
        assert!(!no_pmu(&Ok(())));
    }
}
