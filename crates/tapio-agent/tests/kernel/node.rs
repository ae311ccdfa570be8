//! Node evidence on the real kernel: memory pressure made for real (readers thrashing a file
//! in a v1 memory cgroup smaller than it) must cross the configured PSI threshold exactly
//! once; and the hardware-counter half must say honestly whether this machine has a PMU,
//! while everything else keeps running.

use crate::support::agent::{observer_state, observer_status};
use crate::support::block::{self, Aligned};
use crate::support::cgroup::Cgroup;
use crate::support::tmp::{self, Dir};
use crate::support::{kernel_test, Agent};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Readers started in a cgroup; killed (with everything left in the cgroup) on drop.
struct Readers {
    children: Vec<Child>,
    cgroup: Cgroup,
}

impl Readers {
    fn start(cgroup: Cgroup, file: &str, n: usize) -> Readers {
        let procs = cgroup.path.join("cgroup.procs");
        let children = (0..n)
            .map(|_| {
                // The shell joins the cgroup before it starts reading, so every page it
                // faults in is charged there.
                let script =
                    format!("echo $$ > {} && exec sh -c 'while :; do cat {file} > /dev/null; done'", procs.display());
                Command::new("sh").arg("-c").arg(script).spawn().expect("spawn reader")
            })
            .collect();
        Readers { children, cgroup }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The readers' `cat` children, started by our shells.
        for _ in 0..20 {
            let left = std::fs::read_to_string(self.cgroup.path.join("cgroup.procs")).unwrap_or_default();
            if left.trim().is_empty() {
                break;
            }
            for pid in left.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: signalling a process this test started (it is in our cgroup).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// "some avg10" of /proc/pressure/memory, in hundredths of a percent.
fn memory_some_avg10() -> u32 {
    let text = std::fs::read_to_string("/proc/pressure/memory").expect("/proc/pressure/memory");
    let field = text
        .lines()
        .find(|l| l.starts_with("some "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("avg10=")))
        .expect("some avg10");
    let (int, frac) = field.split_once('.').expect("two decimals");
    int.parse::<u32>().expect("int") * 100 + frac.parse::<u32>().expect("frac")
}

#[test]
#[ignore = "needs root"]
fn memory_reclaim_in_a_small_cgroup_is_one_memory_pressure_crossing() {
    let _turn = kernel_test("node_memory_pressure");
    const THRESHOLD: u32 = 3;
    let dir = Dir::new(std::path::PathBuf::from("/var/tmp").join(tmp::unique("psi")));
    let file = dir.path().join("working-set");
    // Written with O_DIRECT: its pages are not in the page cache (charged to nobody) until
    // the readers fault them in, inside their cgroup.
    {
        std::fs::File::create(&file).expect("create");
        let f = block::open_direct(&file.to_string_lossy(), true);
        let buf = Aligned::new(1 << 20, 0x42);
        for i in 0..96u64 {
            assert!(block::timed_write(&f, &buf, i << 20).0.is_ok());
        }
    }
    let cg = Cgroup::new("memory", &tmp::unique("psi"));
    cg.set("memory.limit_in_bytes", &(32u64 << 20).to_string());

    let agent = Agent::start(&format!(
        "[sinks]\nstdout = true\n[network]\nenabled = false\n[container]\nenabled = false\n[storage]\nenabled = false\n\
         [node]\npoll_interval_ms = 500\npmc = false\npsi_memory_some_avg10_percent = {THRESHOLD}\n\
         psi_cpu_some_avg10_percent = 0\npsi_io_some_avg10_percent = 0\n"
    ));
    let readers = Readers::start(cg, &file.to_string_lossy(), 4);
    // Keep the cgroup reclaiming until the kernel's own avg10 is clearly over the
    // threshold, then long enough for a few of the agent's samples.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak = 0;
    while Instant::now() < deadline {
        peak = peak.max(memory_some_avg10());
        if peak >= (THRESHOLD + 1) * 100 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(peak >= (THRESHOLD + 1) * 100, "the readers raised memory pressure only to {peak}/100 %");
    std::thread::sleep(Duration::from_secs(3));
    drop(readers);
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);

    let crossings: Vec<_> = run.of_type("kernel.node.memory_pressure").collect();
    assert_eq!(crossings.len(), 1, "one crossing, one event: {crossings:#?}");
    let e = crossings[0];
    let f = &e["facts"];
    assert_eq!(
        (e["observer"].as_str(), e["severity"].as_str(), e["outcome"].as_str()),
        (Some("node"), Some("warning"), Some("degraded"))
    );
    assert_eq!(e["error"]["code"], "MEMORY_PRESSURE");
    assert_eq!(e["config_generation"], 0);
    assert_eq!(f["resource"], "memory");
    assert_eq!(f["threshold_percent"], THRESHOLD);
    assert_eq!(f["rearm_below_percent"], 1.5);
    let avg10 = f["some_avg10_percent"].as_f64().expect("some avg10");
    assert!(avg10 >= f64::from(THRESHOLD) && avg10 <= 100.0, "{e}");
    assert!(f["full_avg10_percent"].as_f64().is_some_and(|full| full <= avg10), "full is a subset of some: {e}");
    assert!(f["some_total_us"].as_u64().is_some_and(|t| t > 0));
    assert!(e["workload"].is_null(), "a node-wide fact names no workload");
    // Switched off (0): not evidence whatever their values.
    assert_eq!(run.of_type("kernel.node.cpu_pressure").count(), 0);
    assert_eq!(run.of_type("kernel.node.io_pressure").count(), 0);
    assert_eq!(run.counter(&["malformed_events_total"]), 0, "every PSI read parsed");
}

/// Whether this machine lets a process count its own CPU cycles (a hardware PMU).
fn has_pmu() -> bool {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        kind: u32,
        size: u32,
        config: u64,
        rest: [u64; 6],
    }
    let attr = Attr { size: std::mem::size_of::<Attr>() as u32, ..Default::default() };
    // SAFETY: attr outlives the call; pid 0 / cpu -1 counts this process only.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &attr as *const Attr, 0, -1, -1, 0) };
    if fd >= 0 {
        // SAFETY: closing the descriptor we just opened.
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0
}

#[test]
#[ignore = "needs root"]
fn hardware_counters_report_themselves_and_the_rest_keeps_running() {
    let _turn = kernel_test("node_pmc_status");
    let agent = Agent::start(
        "[sinks]\nstdout = true\n[network]\nenabled = false\n[container]\nenabled = false\n[node]\npoll_interval_ms = 200\n",
    );
    std::thread::sleep(Duration::from_millis(600));
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    assert_eq!(observer_state(&run.status, "storage"), "running", "the other observers keep running");
    if has_pmu() {
        eprintln!("this machine has a hardware PMU: the node observer runs with counters");
        assert_eq!(observer_state(&run.status, "node"), "running", "{}", run.status);
    } else {
        eprintln!("no hardware PMU here: the node observer must say so and keep its PSI half");
        let node = observer_status(&run.status, "node");
        assert_eq!(node["state"], "degraded", "{node}");
        let reason = node["reason"].as_str().expect("a degraded observer says why");
        assert!(reason.contains("hardware counters unsupported"), "{reason}");
        assert!(reason.contains("perf_event_open(cycles, cpu 0)"), "the reason names what failed: {reason}");
        assert!(reason.contains("cpu_stall and ipc_degradation are not reported"), "{reason}");
        // The prose line for people says the same, as a warning.
        let status = run.stderr.lines().find(|l| l.contains("observer node:")).expect("node status line");
        assert!(status.contains("WARN") && status.contains("hardware counters unsupported"), "{status}");
        assert_eq!(
            run.of_type("kernel.node.cpu_stall").count() + run.of_type("kernel.node.ipc_degradation").count(),
            0
        );
    }
}
