//! Container pressure polling cost: the agent's CPU while its container pressure observer
//! watches 500 Kubernetes-shaped container cgroups (systemd-driver layout, one container
//! per pod), polled every second, with every other observer off so the agent's CPU is the
//! poller's. The cgroups are made in every hierarchy that holds container files here (the
//! cgroup1 cpu and memory hierarchies and cgroup2 on a hybrid node, cgroup2 alone on a pure
//! one) and removed afterwards. They are empty: an idle container costs the poller the same
//! reads as a busy one (cpu.stat and three pressure files per poll).

use crate::agent::{self, Agent, Scratch};
use crate::procfs;
use crate::report::{Report, Verdict};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONTAINERS: u32 = 500;
const POLL_MS: u64 = 1_000;
/// Time after "ready:" before measuring (the start-up walk is not the steady state).
const SETTLE: Duration = Duration::from_secs(2);
/// Per poll of all 500 containers, CPU time of one core. At the default 5 s interval this
/// goal is at most 0.5 % of one core.
const PER_POLL_GOAL_MS: f64 = 25.0;
const MEASURE: &str = "CPU per poll of 500 containers";

pub fn measure(binary: &Path, window: Duration, report: &mut Report) {
    if let Err(e) = run(binary, window, report) {
        report.not_measured("pressure", MEASURE, "", e);
    }
}

/// The hierarchies a container has files in on this node.
fn roots() -> Vec<PathBuf> {
    let candidates = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"];
    let hybrid: Vec<PathBuf> =
        candidates.iter().map(PathBuf::from).filter(|p| p.join("cgroup.procs").exists()).collect();
    if hybrid.is_empty() {
        vec![PathBuf::from("/sys/fs/cgroup")]
    } else {
        hybrid
    }
}

/// The container cgroups, removed (deepest first) on drop.
struct Containers {
    created: Vec<PathBuf>,
}

impl Containers {
    fn make(n: u32) -> Result<Self, String> {
        let pid = std::process::id();
        let tag = format!("tapiobench{pid}");
        let qos = format!("{tag}-kubepods-besteffort");
        let mut this = Containers { created: Vec::new() };
        for root in roots() {
            let mut make = |dir: PathBuf| -> Result<PathBuf, String> {
                std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
                this.created.push(dir.clone());
                Ok(dir)
            };
            let top = make(root.join(format!("{tag}.slice")))?;
            let kubepods = make(top.join(format!("{tag}-kubepods.slice")))?;
            let qos_dir = make(kubepods.join(format!("{qos}.slice")))?;
            for i in 0..n {
                let pod = make(qos_dir.join(format!("{qos}-pod{pid:08x}_0000_4000_8000_{i:012x}.slice")))?;
                make(pod.join(format!("cri-containerd-{pid:016x}{i:048x}.scope")))?;
            }
        }
        Ok(this)
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn run(binary: &Path, window: Duration, report: &mut Report) -> Result<(), String> {
    let containers = Containers::make(CONTAINERS)?;
    let scratch = Scratch::new("pressure")?;
    let config = agent::write_config(&scratch.0, &scratch.0.join("evidence.jsonl"))?;
    let mut text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    text.push_str(&format!(
        "\n[network]\nenabled = false\n[container]\nenabled = false\n[storage]\nenabled = false\n\
         [node]\nenabled = false\n[container_pressure]\npoll_interval_ms = {POLL_MS}\n"
    ));
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let agent = Agent::start(binary, &config)?;
    // A poller that found none of the containers costs next to nothing and would pass: the
    // row is measured only if the observer runs and watches every one of them.
    let watched = watched_containers(&agent)?;
    let (cpu_ns, wall) = procfs::cpu_sched_ns_over(agent.pid(), SETTLE, window)?;
    let stopped = agent.stop()?;
    drop(containers);

    let polls = (wall.as_millis() as u64 / POLL_MS).max(1);
    let per_poll_ms = cpu_ns as f64 / polls as f64 / 1e6;
    report.row(
        "pressure",
        MEASURE,
        format!(
            "{per_poll_ms:.2} ms ({:.1} us per container; {:.2} % of one core at 1 s, {:.2} % at the default 5 s)",
            per_poll_ms * 1e3 / f64::from(CONTAINERS),
            per_poll_ms / POLL_MS as f64 * 100.0,
            per_poll_ms / 5_000.0 * 100.0
        ),
        format!("<= {PER_POLL_GOAL_MS} ms"),
        Verdict::check(per_poll_ms <= PER_POLL_GOAL_MS),
    );
    let events = stopped.counters.as_ref().map(|c| agent::counter(c, "events_total")).unwrap_or(0);
    let malformed = stopped.counters.as_ref().map(|c| agent::counter(c, "malformed_events_total")).unwrap_or(0);
    report.note(format!(
        "pressure: {CONTAINERS} empty container cgroups in {} hierarch{} (the agent watched {watched} containers), \
         polled every {POLL_MS} ms for {} s (schedstat CPU of the whole agent, every other observer off, rescans \
         every 10 s included); {events} evidence records, {malformed} malformed reads; agent {}",
        roots().len(),
        if roots().len() == 1 { "y" } else { "ies" },
        wall.as_secs(),
        stopped.exit
    ));
    Ok(())
}

/// What the agent's start-up says of the container pressure observer: it must be running
/// (`container_pressure=running` in its ready line) and watching at least the containers
/// made here (`observer container_pressure: watching N containers`). The count of
/// containers it watches, or why the row cannot be measured.
fn watched_containers(agent: &Agent) -> Result<u64, String> {
    if !agent.ready_line.contains("container_pressure=running") {
        return Err(format!("the container pressure observer is not running: {}", agent.ready_line));
    }
    const WATCHING: &str = "observer container_pressure: watching ";
    let line = agent
        .startup_line(WATCHING)
        .ok_or_else(|| format!("the agent did not log how many containers it watches ({WATCHING:?})"))?;
    let count = watching_count(&line).ok_or_else(|| format!("no container count in {line:?}"))?;
    if count < u64::from(CONTAINERS) {
        return Err(format!("the agent watches {count} containers, not the {CONTAINERS} made here: {line}"));
    }
    Ok(count)
}

/// N in a `… watching N containers, …` line.
fn watching_count(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("watching ")?;
    let (n, rest) = rest.split_once(' ')?;
    rest.starts_with("containers").then(|| n.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_count_is_read_from_the_start_up_line() {
        let line = "2026-01-01T00:00:00Z INFO tapio_pipeline::observers::container_pressure: observer \
                    container_pressure: watching 500 containers, 0 beyond max_containers not watched, 0 without \
                    per-cgroup PSI (throttling only)";
        assert_eq!(watching_count(line), Some(500));
        assert_eq!(watching_count("observer container_pressure: watching 0 containers, …"), Some(0));
        assert_eq!(watching_count("observer container_pressure: watching many containers"), None);
        assert_eq!(watching_count("observer container_pressure: watching 5 pods"), None);
    }
}
