//! Container pressure on the real kernel: Kubernetes-shaped cgroups (the systemd driver's
//! slice chain, with this test's tag as the kubelet's cgroup root) made on this hybrid node
//! in the cgroup1 cpu and memory hierarchies and in cgroup2 (where PSI lives), with real
//! work inside them.
//!
//! - a busy loop under a 10% CFS quota: exactly one cpu_throttling, whose counts match
//!   cpu.stat as this test reads it around the agent's run;
//! - readers thrashing a file larger than their memory limit: one memory_pressure naming
//!   the container;
//! - a healthy container next to them: nothing;
//! - a container made while the agent runs, then removed while watched: found by the
//!   rescan, no error and no event after its removal;
//! - more containers than `max_containers`: the rest are counted, not watched.

use crate::support::block::{self, Aligned};
use crate::support::tmp::{self, Dir};
use crate::support::{kernel_test, Agent};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const V1_CPU: &str = "/sys/fs/cgroup/cpu";
const V1_MEMORY: &str = "/sys/fs/cgroup/memory";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// The agent config of these tests: only the container pressure observer, polled often.
fn config(extra: &str) -> String {
    format!(
        "[sinks]\nstdout = true\n[network]\nenabled = false\n[container]\nenabled = false\n\
         [storage]\nenabled = false\n[node]\nenabled = false\n[dns]\nenabled = false\n\
         [container_pressure]\npoll_interval_ms = 500\nrescan_interval_ms = 500\n{extra}"
    )
}

/// The CFS bandwidth counters of a cpu.stat (cgroup1: throttled_time in ns → us).
#[derive(Debug, Clone, Copy)]
struct CpuStat {
    periods: u64,
    throttled: u64,
    throttled_us: u64,
}

fn cpu_stat(dir: &Path) -> CpuStat {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).expect("cpu.stat");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in cpu.stat: {text}"))
    };
    CpuStat {
        periods: field("nr_periods"),
        throttled: field("nr_throttled"),
        throttled_us: field("throttled_time") / 1_000,
    }
}

/// A container cgroup at `/<tag>.slice/<tag>-kubepods.slice/<tag>-kubepods-burstable.slice/
/// <tag>-kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope` in the cgroup1 cpu
/// and memory hierarchies and in cgroup2. Processes in it are killed and every directory
/// removed on drop (also when the test fails).
struct KubeContainer {
    rel: String,
    container_id: String,
    pod_uid: String,
    /// Created directories, parents first, in every hierarchy.
    created: Vec<PathBuf>,
    children: Vec<Child>,
    removed: bool,
}

impl KubeContainer {
    fn new(n: u32) -> KubeContainer {
        assert!(
            Path::new(V1_CPU).join("tasks").exists()
                && Path::new(V1_MEMORY).join("tasks").exists()
                && Path::new(UNIFIED).join("cgroup.procs").exists(),
            "these tests expect the test VM's hybrid layout (cgroup1 cpu and memory, cgroup2 at {UNIFIED}); \
             pure cgroup2 is covered by the kernel matrix"
        );
        let pid = std::process::id();
        let tag = format!("tapioi15pressure{pid}");
        let uid = format!("{pid:08x}-0000-4000-8000-{n:012x}");
        let container_id = format!("{:016x}{:048x}", pid, u64::from(n) + 0xc0ffee);
        let qos = format!("{tag}-kubepods-burstable");
        let rel = format!(
            "/{tag}.slice/{tag}-kubepods.slice/{qos}.slice/{qos}-pod{}.slice/cri-containerd-{container_id}.scope",
            uid.replace('-', "_")
        );
        let mut created = Vec::new();
        for root in [V1_CPU, V1_MEMORY, UNIFIED] {
            let mut dir = PathBuf::from(root);
            for segment in rel.trim_start_matches('/').split('/') {
                dir.push(segment);
                if !dir.exists() {
                    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                    created.push(dir.clone());
                }
            }
        }
        KubeContainer { rel, container_id, pod_uid: uid, created, children: Vec::new(), removed: false }
    }

    fn dir(&self, root: &str) -> PathBuf {
        Path::new(root).join(self.rel.trim_start_matches('/'))
    }

    fn set(&self, root: &str, file: &str, value: &str) {
        std::fs::write(self.dir(root).join(file), value).unwrap_or_else(|e| panic!("write {value} to {file}: {e}"));
    }

    /// Runs `script` in a shell that first joins the container in every hierarchy.
    fn spawn(&mut self, script: &str) {
        let join: Vec<String> = [V1_CPU, V1_MEMORY, UNIFIED]
            .iter()
            .map(|root| format!("echo $$ > {}/cgroup.procs", self.dir(root).display()))
            .collect();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{} && exec sh -c '{script}'", join.join(" && ")))
            .spawn()
            .expect("spawn a process in the container");
        self.children.push(child);
    }

    /// Kills everything in the container and removes its directories.
    fn remove(&mut self) {
        // Tests run on several threads and share the slices above their containers: one
        // removal at a time, so the last one always finds them empty.
        static ONE_REMOVAL_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_REMOVAL_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..50 {
            let left: Vec<i32> = [V1_CPU, V1_MEMORY, UNIFIED]
                .iter()
                .flat_map(|root| {
                    std::fs::read_to_string(self.dir(root).join("cgroup.procs"))
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect();
            if left.is_empty() {
                break;
            }
            for pid in left {
                // SAFETY: signalling a process this test started (it is in the test's cgroup).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The scope itself: a killed member may leave it a moment after it is reaped (EBUSY).
        for root in [V1_CPU, V1_MEMORY, UNIFIED] {
            let scope = self.dir(root);
            for _ in 0..50 {
                if std::fs::remove_dir(&scope).is_ok() || !scope.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // The slices above it, shared by this test's containers: whoever is removed last
        // empties them, so each is tried once, deepest first, whoever made it.
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        for root in [V1_CPU, V1_MEMORY, UNIFIED] {
            let mut dir = self.dir(root);
            while dir.pop() && dir != Path::new(root) {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => break, // still shared
                    _ => {}
                }
            }
        }
        self.removed = true;
    }

    /// This container's evidence of `kind`.
    fn evidence<'a>(&self, events: &'a [Value], kind: &str) -> Vec<&'a Value> {
        events
            .iter()
            .filter(|e| e["type"] == kind && e["workload"]["container_id"] == self.container_id.as_str())
            .collect()
    }

    fn all_evidence<'a>(&self, events: &'a [Value]) -> Vec<&'a Value> {
        events.iter().filter(|e| e["workload"]["container_id"] == self.container_id.as_str()).collect()
    }

    fn assert_names_me(&self, e: &Value) {
        let w = &e["workload"];
        assert_eq!(w["container_id"], self.container_id.as_str(), "{e}");
        assert_eq!(w["pod_uid"], self.pod_uid.as_str(), "{e}");
        assert_eq!(w["cgroup_path"], self.rel.as_str(), "{e}");
        assert_eq!(e["observer"], "container", "{e}");
    }
}

impl Drop for KubeContainer {
    fn drop(&mut self) {
        if !self.removed {
            self.remove();
        }
    }
}

fn no_warnings_from_the_observer(stderr: &str) {
    for line in stderr.lines().filter(|l| l.contains("container_pressure")) {
        assert!(!line.contains("WARN") && !line.contains("ERROR"), "{line}");
    }
}

#[test]
#[ignore = "needs root"]
fn a_throttled_container_is_one_cpu_throttling_matching_cpu_stat_and_a_healthy_one_is_nothing() {
    let _turn = kernel_test("container_cpu_throttling");
    const THRESHOLD: u32 = 50;
    let mut busy = KubeContainer::new(1);
    busy.set(V1_CPU, "cpu.cfs_period_us", "100000");
    busy.set(V1_CPU, "cpu.cfs_quota_us", "10000");
    busy.spawn("while :; do :; done");
    let mut healthy = KubeContainer::new(2);
    healthy.set(V1_CPU, "cpu.cfs_quota_us", "50000");
    healthy.spawn("sleep 60");
    // Let the busy loop run into its quota before anything is read.
    std::thread::sleep(Duration::from_millis(300));

    let before = cpu_stat(&busy.dir(V1_CPU));
    let agent = Agent::start(&config(&format!(
        "throttled_periods_percent = {THRESHOLD}\nthrottling_min_periods = 3\n\
         psi_memory_some_avg10_percent = 5\npsi_io_some_avg10_percent = 5\n"
    )));
    // Several intervals over the threshold: still one crossing.
    std::thread::sleep(Duration::from_secs(4));
    let after_last_poll = cpu_stat(&busy.dir(V1_CPU));
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    let ready = run.stderr.lines().find(|l| l.contains("ready:")).expect("ready line");
    assert!(ready.contains("container_pressure=running"), "{ready}");

    let throttled = busy.evidence(&run.events, "kernel.container.cpu_throttling");
    assert_eq!(throttled.len(), 1, "one crossing, one event: {throttled:#?}");
    let e = throttled[0];
    busy.assert_names_me(e);
    assert_eq!((e["error"]["code"].as_str(), e["severity"].as_str()), (Some("CPU_THROTTLING"), Some("warning")));
    let f = &e["facts"];
    let num = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k} in {e}"));
    assert_eq!(f["cgroup_version"], "cgroup1");
    assert_eq!((num("quota_us"), num("period_us")), (10_000, 100_000));
    assert_eq!(f["threshold_percent"], THRESHOLD);
    // The event's interval ran between two of the agent's reads, both after this test's
    // first read and before its last: its start (totals − deltas) and end (totals) lie
    // within [before, after_last_poll], counter by counter.
    let (periods, throttled_periods, throttled_us) =
        (num("periods"), num("throttled_periods"), num("throttled_time_us"));
    let end = CpuStat {
        periods: num("nr_periods_total"),
        throttled: num("nr_throttled_total"),
        throttled_us: num("throttled_time_total_us"),
    };
    let start = CpuStat {
        periods: end.periods - periods,
        throttled: end.throttled - throttled_periods,
        throttled_us: end.throttled_us - throttled_us,
    };
    for (what, s, t, b, a) in [
        ("nr_periods", start.periods, end.periods, before.periods, after_last_poll.periods),
        ("nr_throttled", start.throttled, end.throttled, before.throttled, after_last_poll.throttled),
        ("throttled_time us", start.throttled_us, end.throttled_us, before.throttled_us, after_last_poll.throttled_us),
    ] {
        assert!(b <= s && s <= t && t <= a, "{what}: test read {b}, interval {s}..{t}, test read {a} after");
    }
    // A 10% quota under a busy loop throttles (nearly) every period it runs in.
    assert!(periods >= 3 && throttled_periods * 100 >= periods * u64::from(THRESHOLD), "{e}");
    assert!(throttled_periods <= periods, "{e}");
    let share = f["throttled_periods_percent"].as_f64().expect("share");
    assert!((share - (throttled_periods * 100) as f64 / periods as f64).abs() < 0.01, "{e}");
    assert!(throttled_us > 0, "{e}");
    // Polls keep to a 500 ms grid: a late one and the next on time are closer, never this close.
    assert!(num("interval_ns") >= 250_000_000, "one poll interval (500 ms) apart: {e}");

    assert_eq!(healthy.all_evidence(&run.events), Vec::<&Value>::new(), "a healthy container is not evidence");
    assert_eq!(run.counter(&["malformed_events_total"]), 0, "every cgroup file parsed");
    no_warnings_from_the_observer(&run.stderr);
}

#[test]
#[ignore = "needs root"]
fn a_container_thrashing_past_its_memory_limit_is_one_memory_pressure_naming_it() {
    let _turn = kernel_test("container_memory_pressure");
    const THRESHOLD: u32 = 3;
    const LIMIT: u64 = 32 << 20;
    let dir = Dir::new(PathBuf::from("/var/tmp").join(tmp::unique("i15-pressure-mem")));
    let file = dir.path().join("working-set");
    // Written with O_DIRECT: its pages are charged to nobody until the readers fault them
    // in, inside the container's memory cgroup.
    {
        std::fs::File::create(&file).expect("create");
        let f = block::open_direct(&file.to_string_lossy(), true);
        let buf = Aligned::new(1 << 20, 0x42);
        for i in 0..96u64 {
            assert!(block::timed_write(&f, &buf, i << 20).0.is_ok());
        }
    }
    let mut thrashing = KubeContainer::new(3);
    thrashing.set(V1_MEMORY, "memory.limit_in_bytes", &LIMIT.to_string());
    let healthy = KubeContainer::new(4);

    let agent = Agent::start(&config(&format!(
        "cpu_throttling = false\npsi_memory_some_avg10_percent = {THRESHOLD}\n\
         psi_cpu_some_avg10_percent = 0\npsi_io_some_avg10_percent = 0\n"
    )));
    for _ in 0..4 {
        thrashing.spawn(&format!("while :; do cat {} > /dev/null; done", file.display()));
    }
    // Until the kernel's own avg10 for the container is clearly over the threshold, then a
    // few more of the agent's polls.
    let pressure = thrashing.dir(UNIFIED).join("memory.pressure");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak = 0.0f64;
    while Instant::now() < deadline && peak < f64::from(THRESHOLD + 1) {
        let text = std::fs::read_to_string(&pressure).expect("memory.pressure of a cgroup2 group");
        let avg10 = text.lines().next().and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")));
        peak = peak.max(avg10.and_then(|v| v.parse().ok()).unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(peak >= f64::from(THRESHOLD + 1), "the readers raised the container's memory pressure only to {peak}%");
    std::thread::sleep(Duration::from_secs(2));
    thrashing.remove();
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);

    let crossings = thrashing.evidence(&run.events, "kernel.container.memory_pressure");
    assert_eq!(crossings.len(), 1, "one crossing, one event: {crossings:#?}");
    let e = crossings[0];
    thrashing.assert_names_me(e);
    assert_eq!(e["error"]["code"], "MEMORY_PRESSURE");
    let f = &e["facts"];
    assert_eq!((f["resource"].as_str(), f["threshold_percent"].as_u64()), (Some("memory"), Some(u64::from(THRESHOLD))));
    let avg10 = f["some_avg10_percent"].as_f64().expect("avg10");
    assert!(avg10 >= f64::from(THRESHOLD) && avg10 <= 100.0, "{e}");
    assert_eq!(f["memory"]["limit_bytes"].as_u64(), Some(LIMIT), "{e}");
    let usage = f["memory"]["usage_bytes"].as_u64().expect("usage");
    assert!(usage > 0 && usage <= LIMIT, "usage {usage} within the limit: {e}");
    assert_eq!(healthy.all_evidence(&run.events), Vec::<&Value>::new(), "a healthy container is not evidence");
    assert_eq!(run.counter(&["malformed_events_total"]), 0);
    no_warnings_from_the_observer(&run.stderr);
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[test]
#[ignore = "needs root"]
fn a_container_made_while_watching_is_found_and_its_removal_is_quiet() {
    let _turn = kernel_test("container_pressure_removed");
    let agent = Agent::start(&config("throttled_periods_percent = 50\nthrottling_min_periods = 3\n"));
    // Made after the agent's start-up walk: only a rescan finds it.
    let mut late = KubeContainer::new(5);
    late.set(V1_CPU, "cpu.cfs_quota_us", "10000");
    late.spawn("while :; do :; done");
    std::thread::sleep(Duration::from_secs(3));
    let removed_at = unix_nanos();
    late.remove();
    // Several polls and rescans after the removal.
    std::thread::sleep(Duration::from_secs(2));
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);

    let throttled = late.evidence(&run.events, "kernel.container.cpu_throttling");
    assert_eq!(throttled.len(), 1, "found by the rescan, throttled once: {throttled:#?}");
    late.assert_names_me(throttled[0]);
    let after: Vec<_> = late
        .all_evidence(&run.events)
        .into_iter()
        .filter(|e| e["timestamp_unix_nanos"].as_u64().is_some_and(|t| t >= removed_at))
        .collect();
    assert_eq!(after, Vec::<&Value>::new(), "no stale evidence after the removal");
    assert_eq!(run.counter(&["malformed_events_total"]), 0, "a vanished cgroup is not a malformed read");
    no_warnings_from_the_observer(&run.stderr);
}

#[test]
#[ignore = "needs root"]
fn containers_beyond_the_bound_are_counted_not_watched() {
    let _turn = kernel_test("container_pressure_bound");
    let containers: Vec<KubeContainer> = (6..9).map(KubeContainer::new).collect();
    let agent = Agent::start(&config("max_containers = 1\n"));
    std::thread::sleep(Duration::from_millis(1_500));
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    let found = run.stderr.lines().find(|l| l.contains("observer container_pressure: watching")).expect("watch line");
    assert!(found.contains("watching 1 containers, "), "{found}");
    let beyond: u64 = found
        .split("containers, ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of containers beyond the bound: {found}"));
    // Other containers on the machine may take the one place: at least two of ours are left.
    assert!(beyond >= 2, "{found}");
    // Counted once per container, not once per rescan (three rescans ran).
    let skipped = run.counter(&["correlation_drops", "container_pressure.container_not_watched"]);
    assert_eq!(skipped, beyond, "{found}");
    drop(containers);
}
