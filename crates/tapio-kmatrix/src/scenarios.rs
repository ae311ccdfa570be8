//! The scenarios: each makes one kernel fact happen for real in the guest and checks the
//! agent's evidence for it: exactly the expected events, with facts that match what the
//! kernel itself reports, and nothing wrong besides.

use crate::agent::{tail, Agent, STATUS};
use crate::cgroup::{Scope, POD_UID};
use crate::kmsg::Kmsg;
use crate::report::{Report, Status};
use serde_json::Value;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long evidence may take to show up once the fact happened (TCG is slow).
const EVIDENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the expected event, how long to keep watching for duplicates or wrong ones.
const SETTLE: Duration = Duration::from_millis(1500);
const MIB: u64 = 1 << 20;
/// The OOM scenario's memory.max.
const OOM_LIMIT: u64 = 64 * MIB;
/// Observers every matrix kernel must run in full: one that does not load there is the
/// portability regression this matrix exists to catch.
const REQUIRED_OBSERVERS: [&str; 2] = ["network", "container"];

/// Container ids of the scenario workloads (64 hex, as a runtime names containers).
const EXIT_CONTAINER: &str = "0e1e2e3e4e5e6e7e8e9eaebecedeeefe0f1f2f3f4f5f6f7f8f9fafbfcfdfefff";
const OOM_CONTAINER: &str = "00aa11bb22cc33dd44ee55ff66007711882299aa33bb44cc55dd66ee77ff8800";
const THROTTLED_CONTAINER: &str = "7a7b7c7d7e7f70717273747576777879707a7b7c7d7e7f707172737475767778";
const DNS_CONTAINER: &str = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf";

pub fn run_all(agent_path: &Path, report: &mut Report) {
    let mut agent = match Agent::start(agent_path, &[]) {
        Ok(agent) => agent,
        Err(e) => {
            // Nothing else can be checked without a running agent: every scenario fails.
            for s in [
                "startup",
                "refused",
                "abnormal_exit",
                "oom_kill",
                "oom_kill_pid_hook",
                "cpu_throttling",
                "dns",
                "storage",
            ] {
                report.record(s, Status::Fail, &e);
            }
            return;
        }
    };
    let states = observer_states(&agent.log());
    report.outcome("refused", refused(&agent));
    report.outcome("abnormal_exit", abnormal_exit(&agent));
    report.outcome("oom_kill", oom_kill(&agent));
    match states.iter().find(|(n, _)| n == "storage") {
        Some((_, state)) => report.outcome("storage", storage_io_error(&agent, state == "running")),
        None => report.record("storage", Status::Fail, "no status line for observer storage"),
    }
    match states.iter().find(|(n, _)| n == "dns") {
        Some((_, state)) => report.outcome("dns", dns(&agent, state)),
        None => report.record("dns", Status::Fail, "no status line for observer dns"),
    }
    let alive = agent.alive();
    let stopped = agent.stop();
    report.outcome("startup", startup(&states, alive, &stopped));
    report.outcome("oom_kill_pid_hook", oom_kill_pid_hook(agent_path));
    report.outcome("cpu_throttling", cpu_throttling(agent_path));
}

/// The OOM path for kernels whose mark_victim passes only a pid, forced on this kernel
/// (every matrix kernel has the typed tracepoint, so the fallback would otherwise never
/// run on a real kernel): a second agent, the same OOM scenario, the same checks.
fn oom_kill_pid_hook(agent_path: &Path) -> Result<String, String> {
    let mut agent = Agent::start(agent_path, &[("TAPIO_OOM_HOOK", "pid")])?;
    let log = agent.log();
    let chosen = "OOM kills via tracepoint/oom/mark_victim";
    if !log.iter().any(|l| l.contains(chosen)) {
        return Err(format!("the agent did not say it took the pid hook ({chosen}…)"));
    }
    let states = observer_states(&log);
    match states.iter().find(|(n, _)| n == "container") {
        Some((_, state)) if state == "running" => {}
        other => return Err(format!("container observer with the pid hook: {other:?}")),
    }
    let result = oom_kill(&agent);
    let alive = agent.alive();
    let stopped = agent.stop();
    let detail = result?;
    if !alive || !stopped.exit.is_some_and(|s| s.success()) {
        return Err(format!("the agent did not stay up and exit cleanly: {}", tail(&stopped.log)));
    }
    Ok(format!("tracepoint/oom/mark_victim + tp_btf/signal_generate: {detail}"))
}

/// Each observer's state from the agent's start-up status JSON, in order: `running`,
/// `disabled`, or `<state>: <reason>`. Empty when there is no (parsable) status line.
fn observer_states(log: &[String]) -> Vec<(String, String)> {
    let status = log
        .iter()
        .find_map(|l| l.split_once(STATUS).map(|(_, json)| json))
        .and_then(|json| serde_json::from_str::<Value>(json).ok());
    let Some(observers) = status.as_ref().and_then(|s| s["observers"].as_array()) else { return Vec::new() };
    observers
        .iter()
        .filter_map(|o| {
            let name = o["name"].as_str()?;
            let state = o["state"].as_str()?;
            let text = match o["reason"].as_str() {
                Some(why) => format!("{state}: {why}"),
                None => state.to_string(),
            };
            Some((name.to_string(), text))
        })
        .collect()
}

/// Every observer said clearly where it stands, the required ones run in full, the agent
/// stayed up through every scenario, wrote only evidence to stdout, and shut down cleanly
/// with loss counters that show no kernel-side refusal.
fn startup(states: &[(String, String)], alive: bool, stopped: &crate::agent::Stopped) -> Result<String, String> {
    // Why an observer is not running is part of the result: that is what a user on this
    // kernel would read.
    let summary: Vec<String> = states
        .iter()
        .map(|(n, s)| match s.split_once(": ") {
            Some((label, why)) => format!("{n}={label} ({})", why.chars().take(200).collect::<String>()),
            None => format!("{n}={s}"),
        })
        .collect();
    let summary = summary.join(" ");
    let mut problems = Vec::new();
    for required in REQUIRED_OBSERVERS {
        match states.iter().find(|(n, _)| n == required) {
            None => problems.push(format!("no status line for observer {required}")),
            Some((_, state)) if state != "running" => problems.push(format!("observer {required}: {state}")),
            Some(_) => {}
        }
    }
    for (name, state) in states {
        // "degraded"/"failed" must say why.
        if let Some((_, why)) = state.split_once(": ") {
            if why.trim().is_empty() {
                problems.push(format!("observer {name} gives no reason: {state}"));
            }
        }
    }
    if !stopped.log.iter().any(|l| l.contains(STATUS)) {
        problems.push("no start-up status line".into());
    }
    if !alive {
        problems.push(format!("the agent died during the scenarios: {}", tail(&stopped.log)));
    }
    match stopped.exit {
        Some(status) if status.success() => {}
        Some(status) => problems.push(format!("agent exited with {status} on SIGTERM: {}", tail(&stopped.log))),
        None => problems.push("agent did not exit within its stop timeout after SIGTERM".into()),
    }
    if let Some(line) = stopped.garbage.first() {
        problems.push(format!("{} non-evidence line(s) on stdout, first: {line}", stopped.garbage.len()));
    }
    match final_counters(&stopped.log) {
        None => problems.push("no parsable `counters final` line at exit".into()),
        Some(c) => {
            if c["malformed_events_total"] != 0 {
                problems.push(format!("malformed_events_total = {}", c["malformed_events_total"]));
            }
            // A program that stood down (unsupported kernel, ABI mismatch, torn config)
            // counts it: on a matrix kernel none may.
            if let Some(kernel) = c["kernel"].as_object() {
                for (name, value) in kernel {
                    let refusal = ["unsupported_kernel", "abi_mismatch", "config_torn_read"];
                    if refusal.iter().any(|r| name.ends_with(r)) && *value != 0 {
                        problems.push(format!("kernel counter {name} = {value}"));
                    }
                }
            } else {
                problems.push("counters final has no kernel counters".into());
            }
        }
    }
    if problems.is_empty() {
        Ok(format!("{summary}; ready, stayed up, clean SIGTERM exit"))
    } else {
        Err(format!("{summary}; {}", problems.join("; ")))
    }
}

fn final_counters(log: &[String]) -> Option<Value> {
    let line = log.iter().rev().find(|l| l.contains("counters final "))?;
    let json = &line[line.find("counters final ")? + "counters final ".len()..];
    serde_json::from_str(json).ok()
}

/// The guest's NVMe disk (NVMe is built into every matrix kernel; loop is a module there).
const DISK: &str = "nvme0n1";
/// The one sector whose reads fail: scripts/kmatrix gives qemu a blkdebug rule for it.
const BAD_SECTOR: u64 = 8192;

/// A direct 4 KiB read of the disk's failing sector: exactly one io_error naming the disk,
/// the sector, the size, this process, and the error the kernel returned to the reader (the
/// driver retries the command first: retries are requeues of one request, not new ones).
/// The reader is named when every storage hook attached (`running`); an observer that said
/// it is degraded may leave it unknown (null), but never name another task.
fn storage_io_error(agent: &Agent, running: bool) -> Result<String, String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let dev_id = std::fs::read_to_string(format!("/sys/block/{DISK}/dev"))
        .map_err(|e| format!("no {DISK} in the guest ({e}): scripts/kmatrix attaches one"))?;
    let (major, minor) = dev_id.trim().split_once(':').ok_or_else(|| format!("odd dev id {dev_id:?}"))?;
    let disk = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/dev/{DISK}"))
        .map_err(|e| format!("open /dev/{DISK}: {e}"))?;
    // O_DIRECT: one 4 KiB request straight to the device, no page cache or readahead.
    let mut buf = vec![0u8; 8192];
    let start = buf.as_ptr().align_offset(4096);
    let errno = match disk.read_at(&mut buf[start..start + 4096], BAD_SECTOR * 512) {
        Ok(n) => return Err(format!("reading sector {BAD_SECTOR} succeeded ({n} bytes): no error was injected")),
        Err(e) => e.raw_os_error().ok_or_else(|| format!("read failed without an errno: {e}"))?,
    };
    let about = |e: &Value| e["observer"] == "storage" && e["facts"]["sector"] == BAD_SECTOR;
    agent.wait_for(EVIDENCE_TIMEOUT, about);
    std::thread::sleep(SETTLE);
    let events: Vec<Value> = agent.events().into_iter().filter(about).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect();
    if events.len() != 1 || events[0]["type"] != "kernel.storage.io_error" {
        return Err(format!("expected exactly one io_error at sector {BAD_SECTOR}, got {kinds:?}"));
    }
    let e = &events[0];
    let f = &e["facts"];
    let expect = [
        ("disk", Value::from(DISK)),
        ("dev_major", Value::from(major.parse::<u32>().unwrap_or(u32::MAX))),
        ("dev_minor", Value::from(minor.parse::<u32>().unwrap_or(u32::MAX))),
        ("op", Value::from("read")),
        ("bytes", Value::from(4096)),
        ("errno", Value::from(errno)),
    ];
    for (key, want) in expect {
        if f[key] != want {
            return Err(format!("facts.{key} = {} (want {want}): {e}", f[key]));
        }
    }
    let pid = std::process::id();
    let reader = match (&f["pid"], running) {
        (p, _) if *p == pid => format!("reader pid {pid} named"),
        (Value::Null, false) => "reader unknown (null), as the degraded observer said".to_string(),
        (p, _) => return Err(format!("facts.pid = {p} (want {pid}): {e}")),
    };
    let flush_bit = flush_sequence_bit(&agent.log())?;
    Ok(format!(
        "1 io_error ({DISK} {major}:{minor}, sector {BAD_SECTOR}, 4096 B read, errno {errno} as the reader got, {} requeues, {reader}); {flush_bit}",
        f["requeues"]
    ))
}

/// From 6.12 the kernel numbers its request flags in an enum (anonymous until 6.15, where
/// CO-RE cannot name it): the agent must have read RQF_FLUSH_SEQ's bit, 1, from the BTF.
/// Before, the flags were plain bits (FLUSH_SEQ the fifth) and there is nothing to read.
fn flush_sequence_bit(log: &[String]) -> Result<String, String> {
    const SAID: &str = "the kernel's BTF numbers __RQF_FLUSH_SEQ ";
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| format!("osrelease: {e}"))?;
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let enum_era = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 12);
    let said = log.iter().find_map(|l| l.split_once(SAID).map(|(_, rest)| rest.split(' ').next().unwrap_or("")));
    match (enum_era, said) {
        (true, Some("1")) => Ok("flush-sequence flag read from the BTF: bit 1".into()),
        (false, None) => Ok("flush-sequence flag: the pre-6.12 bit 4 (no enumerator in the BTF)".into()),
        (true, other) => Err(format!(
            "kernel {}: the agent did not read __RQF_FLUSH_SEQ = 1 from the BTF ({other:?})",
            release.trim()
        )),
        (false, Some(bit)) => {
            Err(format!("kernel {}: an __RQF_FLUSH_SEQ enumerator ({bit}) where none exists", release.trim()))
        }
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let kind = kind.to_string();
    events.iter().filter(move |e| e["type"] == kind.as_str())
}

/// A connect to a closed port on 127.0.0.1: one connection_refused naming this process and
/// the destination, and no timeout or unreachable for the same connect.
fn refused(agent: &Agent) -> Result<String, String> {
    const PORT: u16 = 1;
    let target = SocketAddr::from(([127, 0, 0, 1], PORT));
    match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => return Err(format!("connect to {target} failed with {e}, not ECONNREFUSED")),
        Ok(_) => return Err(format!("something listens on {target} in the guest")),
    }
    let pid = std::process::id();
    let to_port = |e: &Value| e["observer"] == "network" && e["facts"]["dst_port"] == PORT;
    agent.wait_for(EVIDENCE_TIMEOUT, |e| to_port(e) && e["type"] == "kernel.network.connection_refused");
    std::thread::sleep(SETTLE);
    let events: Vec<Value> = agent.events().into_iter().filter(to_port).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect();
    let refused: Vec<&Value> = of_type(&events, "kernel.network.connection_refused").collect();
    if refused.len() != 1 || events.len() != 1 {
        return Err(format!("expected exactly one connection_refused for {target}, got {kinds:?}"));
    }
    let f = &refused[0]["facts"];
    let expect = [
        ("pid", Value::from(pid)),
        ("comm", Value::from("tapio-kmatrix")),
        ("dst_addr", Value::from("127.0.0.1")),
        ("src_addr", Value::from("127.0.0.1")),
        ("errno", Value::from(111)),
        ("family", Value::from("ipv4")),
    ];
    for (key, want) in expect {
        if f[key] != want {
            return Err(format!("facts.{key} = {} (want {want}): {}", f[key], refused[0]));
        }
    }
    // The autobound port the SYN carried (the kernel releases it as the connect fails).
    let src_port = f["src_port"].as_u64().unwrap_or(0);
    if src_port < 1024 {
        return Err(format!("facts.src_port = {} (want the autobound port): {}", f["src_port"], refused[0]));
    }
    Ok(format!("1 connection_refused (pid {pid}, {target} from port {src_port}, errno 111), no timeout/unreachable"))
}

/// Waits for `child` up to `timeout`; kills it if it is still running then.
fn wait_child(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("workload {} did not end within {timeout:?}", child.id()));
            }
            Err(e) => return Err(format!("waiting for workload: {e}")),
        }
    }
}

fn spawn_workload(mode: &str, scope: &Scope, args: &[&str]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    Command::new(exe)
        .arg(mode)
        .arg(scope.procs())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning {mode}: {e}"))
}

/// The workload's cgroup identity as evidence must carry it.
fn check_workload(e: &Value, scope: &Scope) -> Result<(), String> {
    let w = &e["workload"];
    let expect = [("cgroup_path", scope.path.as_str()), ("container_id", &scope.container_id), ("pod_uid", POD_UID)];
    for (key, want) in expect {
        if w[key] != want {
            return Err(format!("workload.{key} = {} (want {want})", w[key]));
        }
    }
    Ok(())
}

/// Threaded exits per kernel: kernels without `group_dead` race their last threads, so one
/// run proves little.
const EXIT_REPEATS: usize = 10;

/// A five-thread process in a container exits 3 while its workers run, its container's
/// cgroup removed the moment it is reaped (as a runtime does), [`EXIT_REPEATS`] times:
/// each exactly one abnormal_exit, with its code, its name, its five threads and its
/// container.
fn abnormal_exit(agent: &Agent) -> Result<String, String> {
    let mut runs = Vec::new();
    for _ in 0..EXIT_REPEATS {
        let mut scope = Scope::new(EXIT_CONTAINER, None)?;
        let mut child = spawn_workload("threads-exit", &scope, &[])?;
        let pid = child.id();
        // Waited for first: its one line fits the pipe, and a hung workload cannot hang us.
        let status = wait_child(&mut child, Duration::from_secs(30))?;
        let path = scope.path.clone();
        scope.remove()?;
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        if status.code() != Some(3) {
            return Err(format!("workload ended with {status}, not exit code 3 (output {out:?})"));
        }
        let threads: u32 = out.trim().strip_prefix("threads ").and_then(|n| n.parse().ok()).unwrap_or(0);
        if threads != 5 {
            return Err(format!("workload had {threads} threads, not the 5 this scenario needs ({out:?})"));
        }
        runs.push((pid, scope, path));
    }
    let last = runs.last().map_or(0, |r| r.0);
    agent.wait_for(EVIDENCE_TIMEOUT, |e| e["observer"] == "container" && e["facts"]["pid"] == last);
    std::thread::sleep(SETTLE);
    let all = agent.events();
    for (pid, scope, path) in &runs {
        let about = |e: &&Value| e["observer"] == "container" && e["facts"]["pid"] == *pid;
        let events: Vec<&Value> = all.iter().filter(about).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect();
        if events.len() != 1 || events[0]["type"] != "kernel.container.abnormal_exit" {
            return Err(format!("expected exactly one abnormal_exit for pid {pid}, got {kinds:?}"));
        }
        let e = events[0];
        let f = &e["facts"];
        if f["exit_code"] != 3 || !f["signal"].is_null() || f["comm"] != "tapio-kmatrix" || f["threads"] != 5 {
            return Err(format!("wrong facts (want exit 3, 5 threads): {e}"));
        }
        check_workload(e, scope).map_err(|m| format!("{m} (cgroup {path} removed at reap)"))?;
    }
    Ok(format!(
        "{EXIT_REPEATS} five-thread exits: 1 abnormal_exit each (exit 3, facts.threads 5), container named after its cgroup was removed"
    ))
}

/// OOM kills per kernel and hook after the first, each of a victim whose threads all
/// allocate: the race a kernel without `group_dead` has needs many tries to show.
const OOM_REPEATS: usize = 30;
/// Their memory.max: small, so each kill is quick under TCG.
const OOM_REPEAT_LIMIT: u64 = 16 * MIB;
/// Allocating threads of the repeated victims, in turn.
const OOM_THREADS: [u32; 3] = [5, 9, 17];

/// A four-thread process in a container with memory.max = 64 MiB allocates until the OOM
/// killer kills it: one oom_kill naming the victim, its anon rss within 10 % of the
/// kernel's own report, its memory cgroup's limit, and its container. Then
/// [`OOM_REPEATS`] more victims of 5, 9 and 17 allocating threads, each container's cgroup
/// removed the moment its victim is reaped: each exactly one oom_kill naming its container,
/// and no abnormal_exit (its SIGKILL death is the OOM kill already reported).
fn oom_kill(agent: &Agent) -> Result<String, String> {
    let mut scope = Scope::new(OOM_CONTAINER, Some(OOM_LIMIT))?;
    let mut kmsg = Kmsg::from_now()?;
    let mut child = spawn_workload("hog", &scope, &["4"])?;
    let pid = child.id();
    let status = wait_child(&mut child, Duration::from_secs(60))?;
    scope.remove()?;
    if status.signal() != Some(libc::SIGKILL) {
        return Err(format!("the hog ended with {status}, not by the OOM killer's SIGKILL"));
    }
    let kernel = kmsg
        .killed(pid, Duration::from_secs(5))
        .ok_or_else(|| format!("no 'Killed process {pid}' line in the kernel log"))?;
    let about = |e: &Value| e["observer"] == "container" && e["facts"]["pid"] == pid;
    agent.wait_for(EVIDENCE_TIMEOUT, about);
    std::thread::sleep(SETTLE);
    let events: Vec<Value> = agent.events().into_iter().filter(about).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect();
    if events.len() != 1 || events[0]["type"] != "kernel.container.oom_kill" {
        return Err(format!("expected exactly one oom_kill (and nothing else) for pid {pid}, got {kinds:?}"));
    }
    let e = &events[0];
    let f = &e["facts"];
    if f["comm"] != kernel.comm.as_str() {
        return Err(format!("facts.comm = {} but the kernel killed {:?}", f["comm"], kernel.comm));
    }
    let anon = f["anon_rss_bytes"].as_u64().ok_or_else(|| format!("no anon_rss_bytes: {e}"))?;
    let kernel_anon = kernel.anon_rss_kb * 1024;
    if kernel_anon == 0 || anon.abs_diff(kernel_anon) * 100 > kernel_anon * 10 {
        return Err(format!("anon rss {anon} B vs the kernel's {} kB: not within 10 %", kernel.anon_rss_kb));
    }
    if f["memory_cgroup_limit_bytes"] != OOM_LIMIT {
        return Err(format!("memory_cgroup_limit_bytes = {} (want {OOM_LIMIT})", f["memory_cgroup_limit_bytes"]));
    }
    check_workload(e, &scope)?;
    let first = format!(
        "1 oom_kill (pid {pid}, 4 threads): anon rss {anon} B vs kernel {} kB, total_vm {} B vs kernel {} kB, limit 64 MiB, container named",
        kernel.anon_rss_kb, f["total_vm_bytes"], kernel.total_vm_kb
    );
    Ok(format!("{first}; {}", oom_kill_repeats(agent)?))
}

fn oom_kill_repeats(agent: &Agent) -> Result<String, String> {
    let mut victims = Vec::new();
    for i in 0..OOM_REPEATS {
        let threads = OOM_THREADS[i % OOM_THREADS.len()];
        let mut scope = Scope::new(OOM_CONTAINER, Some(OOM_REPEAT_LIMIT))?;
        let mut child = spawn_workload("hog", &scope, &[&threads.to_string()])?;
        let pid = child.id();
        let status = wait_child(&mut child, Duration::from_secs(60))?;
        scope.remove()?;
        if status.signal() != Some(libc::SIGKILL) {
            return Err(format!("hog {i} ({threads} threads) ended with {status}, not by the OOM killer's SIGKILL"));
        }
        victims.push((pid, threads, scope));
    }
    let last = victims.last().map_or(0, |v| v.0);
    agent.wait_for(EVIDENCE_TIMEOUT, |e| e["observer"] == "container" && e["facts"]["pid"] == last);
    std::thread::sleep(SETTLE);
    let all = agent.events();
    for (pid, threads, scope) in &victims {
        let events: Vec<&Value> =
            all.iter().filter(|e| e["observer"] == "container" && e["facts"]["pid"] == *pid).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect();
        if events.len() != 1 || events[0]["type"] != "kernel.container.oom_kill" {
            return Err(format!(
                "expected exactly one oom_kill and no abnormal_exit for pid {pid} ({threads} allocating threads), got {kinds:?}"
            ));
        }
        if events[0]["facts"]["memory_cgroup_limit_bytes"] != OOM_REPEAT_LIMIT {
            return Err(format!("wrong memory_cgroup_limit_bytes: {}", events[0]));
        }
        check_workload(events[0], scope).map_err(|m| format!("pid {pid}: {m} (cgroup removed at reap)"))?;
    }
    Ok(format!(
        "{OOM_REPEATS} more victims of 5/9/17 allocating threads: 1 oom_kill each, 0 abnormal_exit, container named after its cgroup was removed"
    ))
}

/// The CFS bandwidth counters of a cgroup2 cpu.stat: (nr_periods, nr_throttled, throttled_usec).
fn cpu_stat(dir: &Path) -> Result<[u64; 3], String> {
    let text = std::fs::read_to_string(dir.join("cpu.stat")).map_err(|e| format!("reading cpu.stat: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {name} in cpu.stat: {text:?}"))
    };
    Ok([field("nr_periods")?, field("nr_throttled")?, field("throttled_usec")?])
}

/// The container pressure observer's agent config: nothing else on, polled every second.
const PRESSURE_CONFIG: &str = "[sinks]\nstdout = true\n[network]\nenabled = false\n[container]\nenabled = false\n\
    [storage]\nenabled = false\n[node]\nenabled = false\n[container_pressure]\npoll_interval_ms = 1000\n\
    rescan_interval_ms = 1000\nthrottled_periods_percent = 50\nthrottling_min_periods = 3\n";

/// A busy loop in a container whose cpu.max is 10 ms per 100 ms: the container pressure
/// observer (its own agent, polling every second) runs with per-cgroup PSI on this pure
/// cgroup2 guest and reports exactly one cpu_throttling naming the container, whose
/// interval lies within cpu.stat as read before the agent started and after the event; the
/// container then removed while watched yields nothing more, and no malformed read.
fn cpu_throttling(agent_path: &Path) -> Result<String, String> {
    let dir = std::env::temp_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let config = dir.join("tapio-kmatrix-pressure.toml");
    std::fs::write(&config, PRESSURE_CONFIG).map_err(|e| format!("writing {}: {e}", config.display()))?;
    let mut scope = Scope::with_cpu(THROTTLED_CONTAINER, None, Some("10000 100000"))?;
    let mut child = spawn_workload("spin", &scope, &["300"])?;
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_stat(scope.dir())?;
    let config_arg = config.to_string_lossy().into_owned();
    let agent = Agent::start_with(agent_path, &["--config", &config_arg], &[])?;
    let states = observer_states(&agent.log());
    let about = |e: &Value| e["workload"]["container_id"] == THROTTLED_CONTAINER;
    let throttled = |e: &Value| about(e) && e["type"] == "kernel.container.cpu_throttling";
    let came = agent.wait_for(Duration::from_secs(30), throttled);
    // More intervals over the threshold: still one crossing.
    std::thread::sleep(Duration::from_secs(3));
    let after = cpu_stat(scope.dir())?;
    let _ = child.kill();
    let _ = child.wait();
    scope.remove()?;
    let removed_events = agent.events().iter().filter(|e| about(e)).count();
    // Polls and rescans after the removal.
    std::thread::sleep(Duration::from_secs(3));
    let events: Vec<Value> = agent.events().into_iter().filter(about).collect();
    let stopped = agent.stop();
    match states.iter().find(|(n, _)| n == "container_pressure") {
        Some((_, state)) if state == "running" => {}
        other => return Err(format!("container_pressure on a pure cgroup2 guest: {other:?}")),
    }
    if !came {
        return Err(format!("no cpu_throttling for the container within 30 s: {}", tail(&stopped.log)));
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect();
    if events.len() != 1 || events[0]["type"] != "kernel.container.cpu_throttling" {
        return Err(format!("expected exactly one cpu_throttling for the container, got {kinds:?}"));
    }
    if events.len() != removed_events {
        return Err(format!("evidence after the container was removed: {kinds:?}"));
    }
    let e = &events[0];
    check_workload(e, &scope)?;
    let f = &e["facts"];
    let num = |k: &str| f[k].as_u64().ok_or_else(|| format!("no facts.{k}: {e}"));
    if f["cgroup_version"] != "cgroup2" || num("quota_us")? != 10_000 || num("period_us")? != 100_000 {
        return Err(format!("want cgroup2 cpu.max 10000 100000: {e}"));
    }
    let end = [num("nr_periods_total")?, num("nr_throttled_total")?, num("throttled_time_total_us")?];
    let delta = [num("periods")?, num("throttled_periods")?, num("throttled_time_us")?];
    for (i, name) in ["nr_periods", "nr_throttled", "throttled_usec"].iter().enumerate() {
        let start = end[i].checked_sub(delta[i]).ok_or_else(|| format!("{name}: delta over total: {e}"))?;
        if !(before[i] <= start && end[i] <= after[i]) {
            return Err(format!(
                "{name}: interval {start}..{} outside cpu.stat {}..{} read around it",
                end[i], before[i], after[i]
            ));
        }
    }
    if delta[1] * 2 < delta[0] {
        return Err(format!("under half the periods throttled, below the 50 % threshold: {e}"));
    }
    match final_counters(&stopped.log) {
        Some(c) if c["malformed_events_total"] == 0 => {}
        other => return Err(format!("final counters: {other:?}")),
    }
    if !stopped.exit.is_some_and(|s| s.success()) {
        return Err(format!("the agent did not exit cleanly: {}", tail(&stopped.log)));
    }
    Ok(format!(
        "1 cpu_throttling ({} of {} periods, cpu.max 10000 100000, cgroup2 cpu.stat bracketed), container named, \
         nothing after its removal, PSI running",
        delta[1], delta[0]
    ))
}

/// A server on 127.0.0.1:53 that answers every query SERVFAIL (the runner's own thread),
/// and one on 127.0.0.2:53 that never answers: a containerized client's query to each is
/// one `failure` (SERVFAIL) and one `timeout` (the agent's default 5 s), each naming the
/// client's container, and, where the observer runs in full, its pid and name. An observer
/// that said it is degraded (its owner hooks did not attach) may leave the task unknown
/// (null), never name another one.
fn dns(agent: &Agent, state: &str) -> Result<String, String> {
    if state != "running" && !state.starts_with("degraded: ") {
        return Err(format!("dns observer: {state}"));
    }
    let running = state == "running";
    let answering = std::net::UdpSocket::bind("127.0.0.1:53").map_err(|e| format!("bind 127.0.0.1:53: {e}"))?;
    let silent = std::net::UdpSocket::bind("127.0.0.2:53").map_err(|e| format!("bind 127.0.0.2:53: {e}"))?;
    let answering_tcp =
        std::net::TcpListener::bind("127.0.0.1:53").map_err(|e| format!("bind 127.0.0.1:53 (TCP): {e}"))?;
    // Turns a query into its SERVFAIL answer (no records).
    fn servfail(message: &mut [u8]) {
        message[2] |= 0x80; // an answer
        message[3] = (message[3] & 0xf0) | 2; // SERVFAIL
        message[6..12].fill(0);
    }
    let server = std::thread::spawn(move || {
        let _ = answering.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 512];
        if let Ok((n, from)) = answering.recv_from(&mut buf) {
            if n >= 12 {
                servfail(&mut buf[..n]);
                let _ = answering.send_to(&buf[..n], from);
            }
        }
    });
    let tcp_server = std::thread::spawn(move || -> std::io::Result<()> {
        use std::io::{Read, Write};
        // Never blocks the scenario for longer than the query's own wait would.
        answering_tcp.set_nonblocking(true)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match answering_tcp.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut length = [0u8; 2];
        stream.read_exact(&mut length)?;
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut message)?;
        if message.len() >= 12 {
            servfail(&mut message);
            let mut framed = length.to_vec();
            framed.extend_from_slice(&message);
            stream.write_all(&framed)?;
        }
        Ok(())
    });
    let mut results = Vec::new();
    for (target, name, transport) in [
        ("127.0.0.1:53", "fail.kmatrix.lab", "udp"),
        ("127.0.0.1:53", "tcp-fail.kmatrix.lab", "tcp"),
        ("127.0.0.2:53", "silent.kmatrix.lab", "udp"),
    ] {
        let mut scope = Scope::new(DNS_CONTAINER, None)?;
        let mut child = spawn_workload("dns-query", &scope, &[target, name, transport])?;
        let pid = child.id();
        let status = wait_child(&mut child, Duration::from_secs(30))?;
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        results.push((pid, name, transport, scope.path.clone(), out.trim().to_string(), status));
        scope.remove()?;
    }
    let _ = server.join();
    let _ = tcp_server.join();
    drop(silent);
    let mut summary = Vec::new();
    for (pid, name, transport, path, out, status) in &results {
        let failing = name.contains("fail");
        let want_out = if failing { "rcode 2" } else { "rcode none" };
        if !status.success() || out != want_out {
            return Err(format!("dns-query {name} ended with {status}, printed {out:?} (want {want_out:?})"));
        }
        let (kind, code) =
            if failing { ("kernel.dns.failure", "SERVFAIL") } else { ("kernel.dns.timeout", "DNS_TIMEOUT") };
        let about = |e: &Value| e["observer"] == "dns" && e["facts"]["query_name"] == *name;
        // The timeout is judged 5 s (+ one sweep) after the query.
        agent.wait_for(EVIDENCE_TIMEOUT, about);
        std::thread::sleep(SETTLE);
        let events: Vec<Value> = agent.events().into_iter().filter(about).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect();
        if events.len() != 1 || events[0]["type"] != kind {
            return Err(format!("expected exactly one {kind} for {name}, got {kinds:?}"));
        }
        let e = &events[0];
        let f = &e["facts"];
        if e["error"]["code"] != code
            || f["server_port"] != 53
            || f["transport"] != *transport
            || f["query_type_name"] != "A"
        {
            return Err(format!("wrong facts (want {code}, port 53, {transport}, A): {e}"));
        }
        let who = match (&f["pid"], running) {
            (p, _) if *p == *pid && f["comm"] == "tapio-kmatrix" => format!("pid {pid}"),
            (Value::Null, false) => "task unknown (null), as the degraded observer said".to_string(),
            (p, _) => return Err(format!("facts.pid = {p} (want {pid}): {e}")),
        };
        let w = &e["workload"];
        if w["cgroup_path"] != path.as_str() || w["container_id"] != DNS_CONTAINER || w["pod_uid"] != POD_UID {
            return Err(format!("workload {w} (want {path})"));
        }
        summary.push(format!("1 {kind} ({code}, {transport}, {who}, container named)"));
    }
    Ok(summary.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_json_with_each_reason() {
        let log = [
            "2026-01-01T00:00:00Z WARN tapio_agent::runtime: observer network: degraded: tracepoint/tcp/y not attached",
            concat!(
                r#"2026-01-01T00:00:00Z INFO tapio_agent::runtime: status {"node":"n","observers":["#,
                r#"{"name":"network","state":"degraded","reason":"tracepoint/tcp/y not attached","reason_kind":null,"programs":[]},"#,
                r#"{"name":"container","state":"running","reason":null,"reason_kind":null,"programs":[]},"#,
                r#"{"name":"node","state":"disabled","reason":null,"reason_kind":null,"programs":[]}],"sinks":["stdout"]}"#
            ),
        ]
        .map(String::from);
        let states = observer_states(&log);
        assert_eq!(states.len(), 3, "{states:?}");
        assert_eq!(states[0], ("network".into(), "degraded: tracepoint/tcp/y not attached".into()));
        assert_eq!(states[1], ("container".into(), "running".into()));
        assert_eq!(states[2], ("node".into(), "disabled".into()));
        assert!(observer_states(&log[..1]).is_empty(), "prose alone is not a status");
    }

    fn stopped(log: &[&str]) -> crate::agent::Stopped {
        crate::agent::Stopped {
            exit: Some(ExitStatus::from_raw(0)),
            log: log.iter().map(|s| s.to_string()).collect(),
            garbage: Vec::new(),
        }
    }

    const STATUS_LINE: &str = r#"x INFO tapio_agent::runtime: status {"node":"n","observers":[],"sinks":[]}"#;
    const FINAL: &str =
        r#"x INFO r: counters final {"malformed_events_total":0,"kernel":{"network.unsupported_kernel":0}}"#;

    #[test]
    fn startup_passes_only_with_both_observers_running_and_a_clean_exit() {
        let running = vec![("network".to_string(), "running".to_string()), ("container".into(), "running".into())];
        let ok = stopped(&[STATUS_LINE, FINAL]);
        assert!(startup(&running, true, &ok).is_ok());
        assert!(startup(&running, false, &ok).is_err(), "an agent that died is a failure");
        assert!(startup(&running[..1], true, &ok).is_err(), "a missing observer status is a failure");
        let degraded = vec![running[0].clone(), ("container".into(), "degraded: tp_btf/x not attached".into())];
        assert!(startup(&degraded, true, &ok).is_err(), "a required observer must run in full");
        assert!(startup(&running, true, &stopped(&[STATUS_LINE])).is_err(), "no final counters");
        assert!(startup(&running, true, &stopped(&["x INFO r: ready: node n", FINAL])).is_err(), "no status JSON");
        let unsupported = FINAL.replace("unsupported_kernel\":0", "unsupported_kernel\":2");
        assert!(startup(&running, true, &stopped(&[STATUS_LINE, &unsupported])).is_err());
    }
}
