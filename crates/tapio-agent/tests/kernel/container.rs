//! Container evidence on the real kernel: each scenario makes a process exit or an OOM kill
//! happen for real and checks the exact events, their key facts against what the kernel
//! itself says (the parent's wait status, the kernel's own OOM log line), and the absence
//! of wrong ones.
//!
//! Other tests start processes too, so every assertion is about the pids this test started.
//!
//! Multi-threaded workloads are small python3 programs: the scenarios need exact thread
//! choreography (a barrier, renaming one thread, a raw SYS_exit of a single thread) that a
//! shell cannot express, and a compiled helper would need a build target outside this test.
//! python3 is part of the test-bed image; without it these tests fail saying so.

use crate::support::cgroup::{Freezer, KubeCgroup, MemCgroup, V1_MEMORY, V2_UNIFIED};
use crate::support::kmsg::{KernelKill, Kmsg};
use crate::support::tmp::Dir;
use crate::support::{kernel_test, Agent, Finished};
use serde_json::Value;
use std::fs::{self};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tapio_bpf::abi::{TAPIO_CTR_OOM_VICTIM_BUCKETS, TAPIO_CTR_OOM_VICTIM_WAYS};

/// Only the container observer: the network one has nothing to say here.
const BASE: &str = "[sinks]\nstdout = true\n[network]\nenabled = false\n";
const MIB: u64 = 1 << 20;
/// Allowed distance between an event's wall time and the test's own clock readings
/// around the fact (the boot→wall offset is measured, not exact).
const CLOCK_SLACK_NS: u64 = 2_000_000_000;

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64
}

/// The container events about `pid` (any type).
fn about(run: &Finished, pid: u32) -> Vec<&Value> {
    run.events.iter().filter(|e| e["observer"] == "container" && e["facts"]["pid"] == pid).collect()
}

/// The single container event about `pid`, which must be of `kind`.
fn only<'a>(run: &'a Finished, pid: u32, kind: &str) -> &'a Value {
    let events = about(run, pid);
    assert_eq!(events.len(), 1, "exactly one container event for pid {pid}: {events:#?}");
    assert_eq!(events[0]["type"], kind, "{:#}", events[0]);
    events[0]
}

fn assert_nothing_about(run: &Finished, pid: u32, what: &str) {
    assert_eq!(about(run, pid), Vec::<&Value>::new(), "{what} (pid {pid}) must not be evidence");
}

/// The cgroup path the agent should name for processes started by this test (they inherit
/// ours): the cgroup2 path when it is a real group, else the v1 memory cgroup (hybrid nodes).
fn own_cgroup_path() -> String {
    let text = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let line = |prefix: &str| text.lines().find_map(|l| l.split_once(prefix).map(|(_, p)| p.to_string()));
    match (line("0::"), line(":memory:")) {
        (Some(unified), _) if unified != "/" => unified,
        (_, Some(memory)) => memory,
        (unified, None) => unified.expect("a cgroup2 line in /proc/self/cgroup"),
    }
}

/// The facts every abnormal_exit must get right, whatever the cause.
fn check_exit_common(e: &Value, pid: u32, comm: &str, (start, end): (u64, u64), cgroup: &str) {
    assert_eq!(e["type"], "kernel.container.abnormal_exit", "{e:#}");
    assert_eq!(e["outcome"], "failure");
    assert_eq!(e["config_generation"], 0);
    assert_eq!(e["facts"]["pid"], pid);
    assert_eq!(e["facts"]["comm"], comm, "the process's name: {e:#}");
    let ts = e["timestamp_unix_nanos"].as_u64().expect("timestamp_unix_nanos");
    assert!(
        start - CLOCK_SLACK_NS <= ts && ts <= end + CLOCK_SLACK_NS,
        "exit at {ts}, test saw it in [{start}, {end}]"
    );
    let lifetime = e["facts"]["lifetime_ns"].as_u64().expect("lifetime_ns");
    assert!(
        lifetime > 0 && lifetime <= end - start,
        "lifetime {lifetime} ns, but the test ran it for {} ns",
        end - start
    );
    assert_eq!(e["workload"]["cgroup_path"], cgroup, "{e:#}");
}

fn check_exit_code(e: &Value, code: i32) {
    assert_eq!(e["severity"], "warning");
    assert_eq!(e["error"]["code"], "NONZERO_EXIT");
    assert_eq!(e["facts"]["exit_code"], code);
    assert_eq!(e["facts"]["signal"], Value::Null);
    assert_eq!(e["facts"]["signal_name"], Value::Null);
    assert_eq!(e["facts"]["core_dumped"], false);
}

fn check_exit_signal(e: &Value, sig: i32, name: &str, core_dumped: bool) {
    assert_eq!(e["severity"], "error");
    assert_eq!(e["error"]["code"], name);
    assert_eq!(e["facts"]["exit_code"], Value::Null);
    assert_eq!(e["facts"]["signal"], sig);
    assert_eq!(e["facts"]["signal_name"], name);
    assert_eq!(e["facts"]["core_dumped"], core_dumped, "{e:#}");
}

/// A process this test started and has reaped.
struct Exited {
    pid: u32,
    status: ExitStatus,
    stdout: String,
    /// Wall clock just before spawning and just after reaping.
    window: (u64, u64),
}

fn run_to_exit(cmd: &mut Command) -> Exited {
    let start = wall_ns();
    let child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for child");
    Exited {
        pid,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        window: (start, wall_ns()),
    }
}

fn sh(script: &str) -> Exited {
    run_to_exit(Command::new("sh").arg("-c").arg(script))
}

fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    cmd
}

fn run_python(script: &str) -> Exited {
    let mut cmd = python(script);
    let start = wall_ns();
    let child = match cmd.stdout(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => panic!("python3 is needed by this test (it is on the test-bed image): {e}"),
    };
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for python3");
    Exited {
        pid,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        window: (start, wall_ns()),
    }
}

/// The python programs below print "<pid> <comm>" first: the name the kernel gave the
/// process (the exec'd binary's, whatever PATH resolved python3 to).
fn pid_and_comm(stdout: &str) -> (u32, String) {
    let first = stdout.lines().next().unwrap_or_else(|| panic!("no output from the program: {stdout:?}"));
    let (pid, comm) = first.split_once(' ').expect("'<pid> <comm>'");
    (pid.parse().expect("pid"), comm.to_string())
}

/// A child that is killed and reaped if the test fails before it is.
struct Running {
    child: Option<Child>,
    pid: u32,
    start: u64,
}

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        let start = wall_ns();
        let child = cmd.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Running { pid: child.id(), child: Some(child), start }
    }

    fn stdout(&mut self) -> ChildStdout {
        self.child.as_mut().and_then(|c| c.stdout.take()).expect("child stdout")
    }

    /// Reaps the child, failing the test if it takes longer than `timeout`.
    fn wait(&mut self, timeout: Duration) -> Exited {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("not reaped yet");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut stdout = String::new();
                if let Some(mut out) = child.stdout.take() {
                    let _ = out.read_to_string(&mut stdout);
                }
                self.child = None;
                return Exited { pid: self.pid, status, stdout, window: (self.start, wall_ns()) };
            }
            assert!(Instant::now() < deadline, "pid {} did not exit within {timeout:?}", self.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn has_exited(&mut self) -> bool {
        self.child.as_mut().expect("not reaped yet").try_wait().expect("try_wait").is_some()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // Bounded: a frozen child cannot die until its freezer is thawed (dropped later).
            for _ in 0..300 {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            eprintln!("pid {} did not die after SIGKILL", child.id());
        }
    }
}

/// Sets RLIMIT_CORE in the child before exec, so whether a core is dumped is decided here.
fn core_limit(cmd: &mut Command, limit: u64) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_CORE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------
// Exits

#[test]
#[ignore = "needs root"]
fn a_nonzero_exit_is_one_abnormal_exit_with_its_code() {
    let _turn = kernel_test("nonzero_exit");
    let agent = Agent::start(BASE);
    let three = sh("exit 3");
    // Reported under the default config (the ignore-list test below turns these off).
    let five = sh("exit 5");
    let term = sh("kill -TERM $$");
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);

    assert_eq!(three.status.code(), Some(3));
    let e = only(&run, three.pid, "kernel.container.abnormal_exit");
    check_exit_common(e, three.pid, "sh", three.window, &own_cgroup_path());
    check_exit_code(e, 3);
    assert_eq!(e["facts"]["tid"], three.pid, "a single-threaded process's last thread is itself");
    assert_eq!(e["facts"]["threads"], 1);
    assert!(e["id"].as_str().is_some_and(|id| id.len() == 26));

    assert_eq!(five.status.code(), Some(5));
    check_exit_code(only(&run, five.pid, "kernel.container.abnormal_exit"), 5);
    assert_eq!(term.status.signal(), Some(libc::SIGTERM));
    let e = only(&run, term.pid, "kernel.container.abnormal_exit");
    check_exit_common(e, term.pid, "sh", term.window, &own_cgroup_path());
    check_exit_signal(e, libc::SIGTERM, "SIGTERM", false);
}

#[test]
#[ignore = "needs root"]
fn death_by_sigsegv_reports_the_signal_and_whether_the_kernel_dumped_a_core() {
    let _turn = kernel_test("sigsegv_exit");
    // A dumped core lands in the dying process's cwd: a scratch directory, removed at the end.
    let scratch = Dir::scratch("core");
    let agent = Agent::start(BASE);
    // No core allowed: the kernel cannot dump one.
    let no_core = run_to_exit(core_limit(Command::new("sh").arg("-c").arg("kill -SEGV $$"), 0));
    // Cores allowed, in a scratch cwd: whatever the node's core_pattern makes of it, the
    // event must say what the parent's wait status says.
    let core = run_to_exit(
        core_limit(Command::new("sh").arg("-c").arg("kill -SEGV $$"), libc::RLIM_INFINITY).current_dir(&scratch.0),
    );
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);

    for p in [&no_core, &core] {
        assert_eq!(p.status.signal(), Some(libc::SIGSEGV));
        let e = only(&run, p.pid, "kernel.container.abnormal_exit");
        check_exit_common(e, p.pid, "sh", p.window, &own_cgroup_path());
        check_exit_signal(e, libc::SIGSEGV, "SIGSEGV", p.status.core_dumped());
    }
    assert!(!no_core.status.core_dumped(), "RLIMIT_CORE 0 must not dump");
    eprintln!(
        "core_pattern {:?}: core dumped = {}",
        fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default().trim(),
        core.status.core_dumped()
    );
}

/// Renames the calling thread (PR_SET_NAME), so a thread that is not the process's name is
/// visible in comm if the observer reads the wrong task.
const PY_PRELUDE: &str = r#"
import ctypes, os, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def rename(name):
    libc.prctl(15, name.encode(), 0, 0, 0)
def thread_count():
    return len(os.listdir('/proc/self/task'))
def join_cgroup():
    # argv[1] is the test cgroup's cgroup.procs: move this process into it.
    with open(sys.argv[1], 'w') as f:
        f.write(str(os.getpid()))
print(os.getpid(), open('/proc/self/comm').read().strip(), flush=True)
"#;

/// Starts four renamed workers and returns once all five threads are parked.
const PY_FIVE_PARKED_THREADS: &str = r#"
ready = threading.Barrier(5)
def work(i):
    rename('tapio-w%d' % i)
    ready.wait()
    while True:
        time.sleep(1)
for i in range(4):
    threading.Thread(target=work, args=(i,), daemon=True).start()
ready.wait()
"#;

#[test]
#[ignore = "needs root"]
fn a_five_thread_process_that_exit_groups_is_one_event_counting_five_threads() {
    let _turn = kernel_test("exit_group_five_threads");
    // All five threads are parked when main calls exit_group(4); any of them may be the
    // last to leave the kernel, and the workers carry other names.
    let script = format!(
        "{PY_PRELUDE}{PY_FIVE_PARKED_THREADS}if thread_count() != 5:
    os._exit(99)
os._exit(4)
"
    );
    let agent = Agent::start(BASE);
    let p = run_python(&script);
    let run = agent.stop();
    let (pid, comm) = pid_and_comm(&p.stdout);
    assert_eq!(pid, p.pid);
    assert_eq!(p.status.code(), Some(4), "the program had 5 threads and exited with 4");
    let e = only(&run, p.pid, "kernel.container.abnormal_exit");
    check_exit_common(e, p.pid, &comm, p.window, &own_cgroup_path());
    check_exit_code(e, 4);
    assert_eq!(e["facts"]["threads"], 5, "the threads the process had when it exited: {e:#}");
}

#[test]
#[ignore = "needs root"]
fn a_process_whose_workers_finished_first_is_one_event_for_its_main_thread() {
    let _turn = kernel_test("workers_first");
    // Four workers run and end (their exits are thread exits, not evidence); main waits
    // until the kernel has released them, then exits with 4 as a single-threaded process.
    let script = format!(
        "{PY_PRELUDE}
def work(i):
    rename('tapio-w%d' % i)
    time.sleep(0.05)
ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in ts:
    t.start()
if thread_count() != 5:
    os._exit(99)
for t in ts:
    t.join()
while thread_count() != 1:
    time.sleep(0.01)
os._exit(4)
"
    );
    let agent = Agent::start(BASE);
    let p = run_python(&script);
    let run = agent.stop();
    let (pid, comm) = pid_and_comm(&p.stdout);
    assert_eq!(pid, p.pid);
    assert_eq!(p.status.code(), Some(4));
    let e = only(&run, p.pid, "kernel.container.abnormal_exit");
    check_exit_common(e, p.pid, &comm, p.window, &own_cgroup_path());
    check_exit_code(e, 4);
    assert_eq!(e["facts"]["tid"], p.pid, "main was the last thread");
    // The workers were gone when the process exited: it had one thread then.
    assert_eq!(e["facts"]["threads"], 1, "{e:#}");
}

/// x86_64 and aarch64 numbers of SYS_exit (one thread), for the python program below.
fn sys_exit_number() -> u32 {
    match std::env::consts::ARCH {
        "x86_64" => 60,
        "aarch64" => 93,
        other => panic!("add SYS_exit for {other}"),
    }
}

#[test]
#[ignore = "needs root"]
fn a_process_whose_renamed_worker_exits_last_is_one_event_named_by_its_leader() {
    let _turn = kernel_test("worker_last");
    // Main leaves first with SYS_exit(4) (that thread only; the process lives on), then a
    // renamed worker, once main is a zombie, leaves with SYS_exit(5) as the last thread.
    // Which of the two codes the parent's wait() reports is the kernel's call (6.18 reports
    // the last thread's, 5); the event must say what wait() says, and name the process by
    // its leader, not by the worker that happened to leave last.
    let script = format!(
        "{PY_PRELUDE}
NR_EXIT = {nr}
leader = os.getpid()
def last():
    rename('tapio-last')
    while True:
        with open('/proc/%d/task/%d/stat' % (leader, leader)) as f:
            if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                break
        time.sleep(0.01)
    print(threading.get_native_id(), flush=True)
    libc.syscall(NR_EXIT, 5)
threading.Thread(target=last).start()
libc.syscall(NR_EXIT, 4)
",
        nr = sys_exit_number()
    );
    let agent = Agent::start(BASE);
    let p = run_python(&script);
    let run = agent.stop();
    let (pid, comm) = pid_and_comm(&p.stdout);
    assert_eq!(pid, p.pid);
    assert_ne!(comm, "tapio-last");
    let worker: u32 = p.stdout.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("worker tid");
    let code = p.status.code().expect("an exit, not a signal");
    assert!(code == 4 || code == 5, "{:?}", p.status);
    eprintln!("leader exit(4), last thread exit(5): the parent's wait() says {code}");
    let e = only(&run, p.pid, "kernel.container.abnormal_exit");
    check_exit_common(e, p.pid, &comm, p.window, &own_cgroup_path());
    check_exit_code(e, code);
    assert_eq!(e["facts"]["tid"], worker, "the worker was the last thread");
    // The zombie leader and the worker: what the process had when its last thread left.
    assert_eq!(e["facts"]["threads"], 2, "{e:#}");
}

#[test]
#[ignore = "needs root"]
fn a_multi_threaded_process_killed_by_a_signal_is_one_event() {
    let _turn = kernel_test("signal_five_threads");
    let script = format!(
        "{PY_PRELUDE}import signal
{PY_FIVE_PARKED_THREADS}os.kill(os.getpid(), signal.SIGSEGV)
time.sleep(10)
"
    );
    let agent = Agent::start(BASE);
    let p = run_to_exit(core_limit(&mut python(&script), 0));
    let run = agent.stop();
    let (pid, comm) = pid_and_comm(&p.stdout);
    assert_eq!(pid, p.pid);
    assert_eq!(p.status.signal(), Some(libc::SIGSEGV));
    let e = only(&run, p.pid, "kernel.container.abnormal_exit");
    check_exit_common(e, p.pid, &comm, p.window, &own_cgroup_path());
    check_exit_signal(e, libc::SIGSEGV, "SIGSEGV", false);
    assert_eq!(e["facts"]["threads"], 5, "{e:#}");
}

#[test]
#[ignore = "needs root"]
fn clean_exits_and_ignored_codes_and_signals_are_not_evidence() {
    let _turn = kernel_test("ignored_exits");
    let agent = Agent::start(&format!("{BASE}[container]\nexit_ignore_codes = [5]\nexit_ignore_signals = [15]\n"));
    let clean = sh("exit 0");
    let ignored_code = sh("exit 5");
    let ignored_signal = sh("kill -TERM $$");
    let code = sh("exit 6");
    let signal = sh("kill -USR1 $$");
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);

    assert_eq!(clean.status.code(), Some(0));
    assert_eq!(ignored_code.status.code(), Some(5));
    assert_eq!(ignored_signal.status.signal(), Some(libc::SIGTERM));
    assert_nothing_about(&run, clean.pid, "a clean exit");
    assert_nothing_about(&run, ignored_code.pid, "an exit code on the ignore list");
    assert_nothing_about(&run, ignored_signal.pid, "a signal on the ignore list");

    // The same run still reports what is not on the lists.
    assert_eq!(code.status.code(), Some(6));
    let e = only(&run, code.pid, "kernel.container.abnormal_exit");
    check_exit_common(e, code.pid, "sh", code.window, &own_cgroup_path());
    check_exit_code(e, 6);
    assert_eq!(signal.status.signal(), Some(libc::SIGUSR1));
    let e = only(&run, signal.pid, "kernel.container.abnormal_exit");
    check_exit_signal(e, libc::SIGUSR1, "SIGUSR1", false);
}

// ---------------------------------------------------------------------------------------
// OOM kills

fn within_percent(ours: u64, kernel: u64, percent: u64) -> bool {
    ours.abs_diff(kernel) * 100 <= kernel * percent
}

/// The facts of an oom_kill event against the kernel's own log line and the cgroup.
/// The kernel's own record of the OOM kill of `p`, which must have died of its SIGKILL.
fn killed_by_oom(p: &Exited, kernel: Option<KernelKill>, kmsg: &Kmsg) -> KernelKill {
    assert_eq!(p.status.signal(), Some(libc::SIGKILL), "pid {} must have been OOM-killed: {:?}", p.pid, p.status);
    kernel.unwrap_or_else(|| panic!("no 'Killed process {}' in the kernel log: {:#?}", p.pid, kmsg.lines))
}

fn check_oom(e: &Value, pid: u32, kernel: &KernelKill, cg: &MemCgroup, limit: u64, (start, end): (u64, u64)) {
    assert_eq!(e["type"], "kernel.container.oom_kill");
    assert_eq!(e["severity"], "critical");
    assert_eq!(e["outcome"], "failure");
    assert_eq!(e["error"]["code"], "OOM_KILLED");
    let ts = e["timestamp_unix_nanos"].as_u64().expect("timestamp_unix_nanos");
    assert!(
        start - CLOCK_SLACK_NS <= ts && ts <= end + CLOCK_SLACK_NS,
        "kill at {ts}, test saw it in [{start}, {end}]"
    );
    let f = &e["facts"];
    assert_eq!(f["pid"], pid);
    assert_eq!(f["comm"], kernel.comm.as_str(), "the victim, as the kernel names it");
    let bytes = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("facts.{k} in {e:#}"));
    let anon = bytes("anon_rss_bytes");
    eprintln!(
        "pid {pid}: anon rss {anon} B vs kernel {} kB; file {} B vs {} kB; shmem {} B vs {} kB; total_vm {} B vs {} kB; memcg usage {} B",
        kernel.anon_rss_kb,
        bytes("file_rss_bytes"),
        kernel.file_rss_kb,
        bytes("shmem_rss_bytes"),
        kernel.shmem_rss_kb,
        bytes("total_vm_bytes"),
        kernel.total_vm_kb,
        bytes("memory_cgroup_usage_bytes"),
    );
    assert!(
        within_percent(anon, kernel.anon_rss_kb * 1024, 10),
        "anon rss {anon} B vs the kernel's {} kB",
        kernel.anon_rss_kb
    );
    assert!(within_percent(bytes("total_vm_bytes"), kernel.total_vm_kb * 1024, 10));
    assert_eq!(f["memory_cgroup_limit_bytes"], limit);
    let usage = bytes("memory_cgroup_usage_bytes");
    assert!(usage > limit / 2 && usage <= limit, "a cgroup at its limit: usage {usage} B");
    assert_eq!(f["memory_cgroup_id"], cg.id());
    assert_eq!(e["workload"]["cgroup_path"], cg.path.as_str(), "{e:#}");
}

#[test]
#[ignore = "needs root"]
fn an_oom_kill_in_a_v1_memory_cgroup_is_one_oom_kill_matching_the_kernel_log() {
    let _turn = kernel_test("oom_kill");
    let limit = 64 * MIB;
    // Outlives the agent: the agent names the cgroup by looking its id up until it stops.
    let cg = MemCgroup::new("oom", limit);
    let mut kmsg = Kmsg::from_now();
    let agent = Agent::start(BASE);
    // dd's 256 MiB buffer is filled from /dev/zero, so every page is touched.
    let p = sh(&format!("echo $$ > {} && exec dd if=/dev/zero of=/dev/null bs=256M count=1", cg.procs()));
    let kernel = kmsg.killed(p.pid, Duration::from_secs(5));
    let run = agent.stop();
    let kernel = killed_by_oom(&p, kernel, &kmsg);
    assert_eq!(kernel.comm, "dd");

    let e = only(&run, p.pid, "kernel.container.oom_kill");
    check_oom(e, p.pid, &kernel, &cg, limit, p.window);
    assert_eq!(e["facts"]["tid"], p.pid);
    // The victim's SIGKILL death is the same fact, already reported as the OOM kill.
    assert_eq!(run.of_type("kernel.container.abnormal_exit").filter(|e| e["facts"]["pid"] == p.pid).count(), 0);
}

#[test]
#[ignore = "needs root"]
fn a_multi_threaded_oom_victim_is_one_oom_kill() {
    let _turn = kernel_test("oom_kill_threads");
    let limit = 64 * MIB;
    let cg = MemCgroup::new("oomt", limit);
    // Joins the cgroup before any thread exists, then four threads allocate at once.
    let script = format!(
        "{PY_PRELUDE}
join_cgroup()
ready = threading.Barrier(4)
def hog():
    ready.wait()
    keep = []
    while True:
        keep.append(b'x' * (1 << 20))
for i in range(3):
    threading.Thread(target=hog, daemon=True).start()
hog()
"
    );
    let mut kmsg = Kmsg::from_now();
    let agent = Agent::start(BASE);
    let p = run_to_exit(python(&script).arg(cg.procs()));
    let kernel = kmsg.killed(p.pid, Duration::from_secs(5));
    let run = agent.stop();
    let kernel = killed_by_oom(&p, kernel, &kmsg);
    let (pid, _) = pid_and_comm(&p.stdout);
    assert_eq!(pid, p.pid);
    let e = only(&run, p.pid, "kernel.container.oom_kill");
    check_oom(e, p.pid, &kernel, &cg, limit, p.window);
}

/// The agent's table of reported OOM victims, found among the kernel's maps by its name (one
/// agent runs at a time in these tests).
fn oom_victims_table() -> aya::maps::Array<aya::maps::MapData, [u64; 2 * TAPIO_CTR_OOM_VICTIM_WAYS as usize]> {
    let data = crate::support::loaded_map(tapio_bpf::container::OOM_VICTIMS_MAP);
    aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("the OOM victims map is an array of buckets")
}

#[test]
#[ignore = "needs root"]
fn an_oom_victim_whose_table_bucket_is_full_is_still_one_oom_kill_and_the_reuse_is_counted() {
    let _turn = kernel_test("oom_bucket_full");
    let limit = 64 * MIB;
    let cg = MemCgroup::new("oomfull", limit);
    // Allocates only once told to, so that its bucket can be filled first.
    let script = format!(
        "{PY_PRELUDE}
join_cgroup()
sys.stdin.readline()
keep = []
while True:
    keep.append(b'x' * (1 << 20))
"
    );
    let mut kmsg = Kmsg::from_now();
    let agent = Agent::start(BASE);
    let mut victim = Running::spawn(python(&script).arg(cg.procs()).stdin(Stdio::piped()));
    let mut out = BufReader::new(victim.stdout());
    let mut line = String::new();
    out.read_line(&mut line).expect("victim output");
    let (pid, _) = pid_and_comm(&line);
    assert_eq!(pid, victim.pid);

    // Its bucket full of victims whose exits never come (no process has these keys).
    let bucket = victim.pid % TAPIO_CTR_OOM_VICTIM_BUCKETS;
    let mut table = oom_victims_table();
    let mut full = [0u64; 2 * TAPIO_CTR_OOM_VICTIM_WAYS as usize];
    for way in 0..TAPIO_CTR_OOM_VICTIM_WAYS as usize {
        full[2 * way] = u64::from(victim.pid + (way as u32 + 1) * TAPIO_CTR_OOM_VICTIM_BUCKETS);
        full[2 * way + 1] = 1;
    }
    table.set(bucket, full, 0).expect("fill the victim's bucket");

    let mut stdin = victim.child.as_mut().and_then(|c| c.stdin.take()).expect("victim stdin");
    std::io::Write::write_all(&mut stdin, b"go\n").expect("start the allocation");
    let exited = victim.wait(Duration::from_secs(60));
    let kernel = kmsg.killed(victim.pid, Duration::from_secs(5));
    let after = table.get(&bucket, 0).expect("read the victim's bucket");
    let run = agent.stop();

    let kernel = killed_by_oom(&exited, kernel, &kmsg);
    let e = only(&run, victim.pid, "kernel.container.oom_kill");
    check_oom(e, victim.pid, &kernel, &cg, limit, exited.window);
    assert_eq!(run.counter(&["kernel", "container.oom_victim_slot_reused"]), 1, "{}", run.counters);
    // The victim took the first slot and its exit cleared it; the others are untouched.
    assert_eq!(&after[..2], &[0, 0], "{after:?}");
    assert_eq!(&after[2..], &full[2..], "{after:?}");
}

#[test]
#[ignore = "needs root"]
fn an_already_dying_process_that_the_oom_killer_only_marks_is_not_an_oom_kill() {
    let _turn = kernel_test("oom_marked_dying");
    // The kernel's OOM killer does not kill a victim that is already dying: it marks it
    // (mark_victim fires), thaws it and lets it exit, and logs nothing ("don't alarm the
    // sysadmin"). Make that happen: a frozen process holding 40 MiB gets a SIGKILL it
    // cannot act on, then another process in its memory cgroup needs 40 MiB more.
    let limit = 64 * MIB;
    let cg = MemCgroup::new("dying", limit);
    let holder_script = format!(
        "{PY_PRELUDE}
join_cgroup()
with open('/proc/self/oom_score_adj', 'w') as f:
    f.write('1000')
keep = b'x' * (40 << 20)
print('ready', flush=True)
time.sleep(3600)
"
    );
    let mut kmsg = Kmsg::from_now();
    let agent = Agent::start(BASE);
    let mut holder = Running::spawn(python(&holder_script).arg(cg.procs()));
    let mut out = BufReader::new(holder.stdout());
    let mut line = String::new();
    out.read_line(&mut line).expect("holder output");
    let (pid, holder_comm) = pid_and_comm(&line);
    assert_eq!(pid, holder.pid);
    line.clear();
    out.read_line(&mut line).expect("holder ready");
    assert_eq!(line.trim(), "ready");

    // Made after the holder, so it is dropped (thawed) before the holder is reaped.
    let freezer = Freezer::new("dying");
    freezer.freeze(holder.pid);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(holder.pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!holder.has_exited(), "a frozen process cannot act on its SIGKILL yet");

    // The holder made itself the OOM killer's first choice (oom_score_adj 1000; lowering
    // the allocator's would need CAP_SYS_RESOURCE, which the test-bed's root lacks).
    let alloc_script = format!(
        "{PY_PRELUDE}
join_cgroup()
keep = b'x' * (40 << 20)
"
    );
    let mut allocator = Running::spawn(python(&alloc_script).arg(cg.procs()));
    let allocated = allocator.wait(Duration::from_secs(60));
    let held = holder.wait(Duration::from_secs(10));
    let frozen_still = freezer.state();
    let kernel = kmsg.killed(holder.pid, Duration::from_millis(500));
    let run = agent.stop();

    assert!(allocated.status.success(), "the allocator got its memory once the holder died: {:?}", allocated.status);
    assert_eq!(held.status.signal(), Some(libc::SIGKILL));
    assert_eq!(frozen_still, "FROZEN", "only the OOM killer's mark can have thawed the holder");
    assert!(kernel.is_none(), "the kernel logged a kill it did not make: {kernel:?}");
    // No OOM kill for anyone: the holder died of the SIGKILL this test sent, and that is
    // what its evidence says.
    assert_eq!(
        run.of_type("kernel.container.oom_kill").filter(|e| e["facts"]["pid"] == holder.pid).count(),
        0,
        "{:#?}",
        about(&run, holder.pid)
    );
    let e = only(&run, holder.pid, "kernel.container.abnormal_exit");
    check_exit_common(e, holder.pid, &holder_comm, held.window, &cg.path);
    check_exit_signal(e, libc::SIGKILL, "SIGKILL", false);
    assert_nothing_about(&run, allocator.pid, "the allocator's clean exit");
}

// Workload identity of a container whose cgroup is removed the moment its process is reaped

/// The event names the container as its cgroup said, though the cgroup is gone.
fn check_identity(e: &Value, cg: &KubeCgroup) {
    let w = &e["workload"];
    assert_eq!(w["cgroup_path"], cg.path.as_str(), "{e:#}");
    assert_eq!(w["container_id"], cg.container_id.as_str(), "{e:#}");
    assert_eq!(w["pod_uid"], cg.pod_uid.as_str(), "{e:#}");
}

#[test]
#[ignore = "needs root"]
fn containers_removed_at_reap_keep_their_identity_v1_v2_cgroupfs_systemd_exit_and_oom() {
    let _turn = kernel_test("identity_after_cgroup_removal");
    // Made before the agent starts: learned by its start-up walk, not from the kernel hook.
    let mut existing = KubeCgroup::new(V1_MEMORY, false, 0, None);
    let agent = Agent::start(BASE);
    let mut exits = Vec::new();
    for (n, (mount, systemd)) in
        [(V1_MEMORY, false), (V1_MEMORY, true), (V2_UNIFIED, false), (V2_UNIFIED, true)].into_iter().enumerate()
    {
        let mut cg = KubeCgroup::new(mount, systemd, n as u32 + 1, None);
        let p = sh(&format!("echo $$ > {} && exit 7", cg.procs()));
        cg.remove();
        assert_eq!(p.status.code(), Some(7), "{mount} systemd={systemd}");
        exits.push((p, cg, format!("exit in {mount} (systemd layout: {systemd})")));
    }
    let p = sh(&format!("echo $$ > {} && exit 7", existing.procs()));
    existing.remove();
    exits.push((p, existing, "exit in a cgroup made before the agent started".into()));
    // OOM kills: the v1 memory controller (cgroup2 here has none), both layouts.
    let limit = 32 * MIB;
    let mut kills = Vec::new();
    for (n, systemd) in [false, true].into_iter().enumerate() {
        let mut cg = KubeCgroup::new(V1_MEMORY, systemd, n as u32 + 10, Some(limit));
        let p = sh(&format!("echo $$ > {} && exec dd if=/dev/zero of=/dev/null bs=128M count=1", cg.procs()));
        cg.remove();
        assert_eq!(p.status.signal(), Some(libc::SIGKILL), "dd must have been OOM-killed: {:?}", p.status);
        kills.push((p, cg, format!("OOM kill (systemd layout: {systemd})")));
    }
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    for (p, cg, what) in &exits {
        assert!(!cg.leaf.exists(), "{what}: the cgroup must be gone before the agent resolves it");
        eprintln!("{what}: {}", cg.path);
        let e = only(&run, p.pid, "kernel.container.abnormal_exit");
        check_exit_code(e, 7);
        check_identity(e, cg);
    }
    for (p, cg, what) in &kills {
        eprintln!("{what}: {}", cg.path);
        let e = only(&run, p.pid, "kernel.container.oom_kill");
        assert_eq!(e["facts"]["memory_cgroup_limit_bytes"], limit, "{e:#}");
        check_identity(e, cg);
    }
}

/// A cgroup whose path is too long for the short cgroup record (255 bytes and its NUL) comes
/// in the full one: a sub-cgroup below a container, as runtimes and workloads make them,
/// removed at reap like its container, still names the container in its evidence.
#[test]
#[ignore = "needs root"]
fn a_sub_cgroup_whose_path_needs_the_full_cgroup_record_keeps_its_containers_identity() {
    let _turn = kernel_test("identity_long_cgroup_path");
    const PATH_BYTES: usize = 300;
    let agent = Agent::start(BASE);
    let mut cg = KubeCgroup::new(V2_UNIFIED, true, 30, None);
    let name = "s".repeat(PATH_BYTES - cg.path.len() - 1);
    let sub_path = format!("{}/{name}", cg.path);
    assert_eq!(sub_path.len(), PATH_BYTES);
    let sub = cg.leaf.join(&name);
    fs::create_dir(&sub).unwrap_or_else(|e| panic!("mkdir {}: {e}", sub.display()));
    let p = sh(&format!("echo $$ > {} && exit 7", sub.join("cgroup.procs").display()));
    // Removed as soon as its process is reaped (retried while the kernel finishes the exit).
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Err(e) = fs::remove_dir(&sub) {
        assert!(Instant::now() < deadline, "rmdir {}: {e}", sub.display());
        std::thread::sleep(Duration::from_millis(1));
    }
    cg.remove();
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    assert_eq!(p.status.code(), Some(7));
    let e = only(&run, p.pid, "kernel.container.abnormal_exit");
    check_exit_code(e, 7);
    let w = &e["workload"];
    assert_eq!(w["cgroup_path"], sub_path.as_str(), "{e:#}");
    assert_eq!(w["container_id"], cg.container_id.as_str(), "{e:#}");
    assert_eq!(w["pod_uid"], cg.pod_uid.as_str(), "{e:#}");
}
