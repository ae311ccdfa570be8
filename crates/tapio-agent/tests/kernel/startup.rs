//! Start-up and shutdown as an operator sees them: a bad config fails loudly naming the key,
//! a non-root start says what is missing, SIGINT flushes what was already observed, and the
//! loss counters reach the log periodically.

use crate::support::agent::{observer_line, ready_line, Launch, Stdout, BIN, PERIODIC_COUNTERS};
use crate::support::agent::{observer_status, startup_status, STATUS};
use crate::support::{closed_port, kernel_test, tmp, Agent};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn agent() -> Command {
    Command::new(BIN)
}

fn write_config(dir: &tmp::Dir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_config_with_an_unknown_key_is_refused_at_start_naming_the_key() {
    let dir = tmp::Dir::scratch("startup-configs");
    let path = write_config(&dir, "typo", "[network]\nretransmit_cuont = 3\n");
    let out = agent().arg("--config").arg(&path).arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retransmit_cuont"), "{stderr}");
    let path = write_config(&dir, "range", "[network]\nrtt_ratio_percent = 20\n");
    let out = agent().arg("--config").arg(&path).arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("network.rtt_ratio_percent = 20 is out of range"));
    let path = write_config(&dir, "good", "[network]\nretransmit_count = 3\n");
    let out = agent().arg("--config").arg(&path).arg("--check-config").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
    let out = agent().args(["--controller-url", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown flags are errors");
}

/// A node name or agent id the controller would refuse on every request (blank, or longer
/// than a Kubernetes node name) is refused at start, from the flag as from the file.
#[test]
fn a_node_name_or_agent_id_the_controller_refuses_fails_at_start() {
    let dir = tmp::Dir::scratch("startup-names");
    let long = "n".repeat(254);
    for (args, config, named) in [
        (vec!["--node", ""], "", "node_name"),
        (vec!["--node", "  "], "", "node_name"),
        (vec!["--node", long.as_str()], "", "node_name"),
        (vec![], "node_name = \"\"\n", "node_name"),
        (vec![], &*format!("[controller]\nurl = \"http://c:8080\"\nagent_id = \"{long}\"\n"), "agent_id"),
    ] {
        let path = write_config(&dir, "names", config);
        let out = agent().arg("--config").arg(&path).args(&args).arg("--check-config").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {config:?}: {stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
    let path =
        write_config(&dir, "names", &format!("[controller]\nurl = \"http://c:8080\"\nagent_id = \"{}\"\n", &long[1..]));
    let out = agent().arg("--config").arg(&path).args(["--node", &long[1..]]).arg("--check-config").output().unwrap();
    assert!(out.status.success(), "253 bytes is a valid name: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[ignore = "needs root"]
fn without_privileges_the_agent_says_why_and_keeps_what_can_run() {
    let _turn = kernel_test("startup_not_root");
    // Root drops to nobody for this one run (setpriv is in util-linux, on every Debian).
    let mut agent = Launch::without_config()
        .wrapped_in(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .stdout(Stdout::To(Stdio::null()))
        .spawn();
    // It either exits (nothing could start) or says it is ready with what could.
    let ready = agent.wait_ready_or_exit(Duration::from_secs(30));
    if ready {
        agent.signal(libc::SIGTERM);
    }
    let exited = agent.wait_exit(Duration::from_secs(30));
    let (status, log) = (exited.status, exited.stderr);
    if log.contains(STATUS) {
        // Ready with what could start: the status JSON says, per observer, why not.
        let startup = startup_status(&log);
        for observer in ["network", "container"] {
            let s = observer_status(&startup, observer);
            assert_eq!((&s["state"], &s["reason_kind"]), (&"failed".into(), &"not_permitted".into()), "{s}");
            assert!(s["reason"].as_str().is_some_and(|r| r.contains("run as root, or with CAP_BPF")), "{s}");
        }
    }
    for observer in ["network", "container"] {
        let failed = observer_line(&log, observer, "failed").unwrap_or_else(|| panic!("{log}"));
        assert!(failed.contains("run as root, or with CAP_BPF"), "{failed}");
    }
    if ready_line(&log).is_none() {
        assert!(!status.success());
        assert!(log.contains("no observer could start"), "{log}");
    }
}

#[test]
#[ignore = "needs root"]
fn sigint_flushes_what_was_observed_and_counters_are_logged_periodically() {
    let _turn = kernel_test("startup_sigint");
    let mut agent = Agent::start("counters_log_interval_secs = 1\n");
    // Ready, then one periodic counters line.
    agent.wait_for_log(PERIODIC_COUNTERS, Duration::from_secs(30));
    let port = closed_port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    // At once: the record may still be in the ring buffer or the queue.
    let (run, _) = agent.exit_on(libc::SIGINT, Duration::from_secs(60));
    assert!(run.exit_ok, "{}", run.stderr);
    assert!(run.stderr.contains("counters final {"), "{}", run.stderr);
    assert_eq!(run.to_port(port).len(), 1, "the refused connect observed before SIGINT must be flushed");
}

#[test]
#[ignore = "needs root"]
fn an_object_of_another_kernel_abi_is_refused_loudly() {
    let _turn = kernel_test("abi_mismatch");
    let btf = aya::Btf::from_sys_fs().ok();
    let object = tapio_bpf::network::OBJECT.inflate();
    // The object this agent was built with loads under its ABI …
    assert!(tapio_agent::observers::load_object(&object, btf.as_ref(), tapio_bpf::ABI_VERSION).is_ok());
    // … and an agent of any other ABI refuses it, saying so, instead of misreading structs.
    let other = tapio_bpf::ABI_VERSION + 1;
    let err = tapio_agent::observers::load_object(&object, btf.as_ref(), other).map(|_| ()).unwrap_err();
    assert!(matches!(err, tapio_agent::observers::LoadError::AbiMismatch(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains(&format!("object was built for another kernel ABI (it lacks tapio_abi_v{other})")), "{err}");
}

/// The agent's drain thread's `/proc/<pid>/task/<tid>` directory.
fn drain_task(pid: u32) -> std::path::PathBuf {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "tapio-drain" {
            return task.path();
        }
    }
    panic!("agent {pid} has no tapio-drain thread");
}

/// The drain thread's (scheduling policy, real-time priority): fields 41 and 40 of its
/// `/proc` stat line (SCHED_FIFO is 1, SCHED_OTHER 0).
fn drain_scheduling(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(drain_task(pid).join("stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[41 - 3].parse().unwrap(), fields[40 - 3].parse().unwrap())
}

/// How many times the drain thread has run on a CPU (the third field of its schedstat).
fn drain_runs(pid: u32) -> u64 {
    let schedstat = std::fs::read_to_string(drain_task(pid).join("schedstat")).unwrap();
    schedstat.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs root"]
fn an_idle_drain_sleeps_and_the_first_record_after_a_quiet_spell_wakes_it() {
    let _turn = kernel_test("drain_asleep");
    let out = tmp::Dir::scratch("drain-asleep");
    let lines = out.path().join("evidence.jsonl");
    let file = std::fs::File::create(&lines).unwrap();
    // Only the container observer (for the exits below): the others' records of what the
    // rest of the machine does would wake the drain too.
    let config = "[sinks]\nstdout = true\n[network]\nenabled = false\n[storage]\nenabled = false\n[node]\n\
                  enabled = false\n[dns]\nenabled = false\n[container_pressure]\nenabled = false\n";
    let agent = Launch::with_config(config).stdout(Stdout::To(Stdio::from(file))).start();
    // A second without records puts the drain to sleep; then it runs about once a second
    // (its backstop) plus once per record, where a 100 ms poll period would run it 30 times.
    // A record from elsewhere on the machine (a cgroup made, a process failing) keeps it
    // awake for a second: one quiet window of three is enough, a drain that never sleeps
    // has none.
    std::thread::sleep(Duration::from_millis(2500));
    let mut windows = Vec::new();
    for _ in 0..3 {
        let before = drain_runs(agent.pid());
        std::thread::sleep(Duration::from_secs(3));
        windows.push(drain_runs(agent.pid()) - before);
        if windows.last().is_some_and(|&runs| runs <= 15) {
            break;
        }
    }
    assert!(windows.iter().any(|&runs| runs <= 15), "the idle drain ran {windows:?} times in windows of 3 s");

    // A lone abnormal exit after each quiet spell reaches the sink at once: the program saw
    // the drain asleep and woke it (asleep, the drain's own backstop is a second).
    let mut latencies = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1500));
        let started = Instant::now();
        let child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let pid = child.id();
        let status = { child }.wait().unwrap();
        assert_eq!(status.code(), Some(3));
        let needle = format!("\"pid\":{pid},");
        while !std::fs::read_to_string(&lines).unwrap().contains(&needle) {
            assert!(started.elapsed() < Duration::from_secs(10), "the exit of {pid} never reached the sink");
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(started.elapsed());
    }
    latencies.sort();
    // Woken, a record takes milliseconds (and a drain kept awake by a record from elsewhere
    // polls every 100 ms); left to the backstop it takes up to a second.
    assert!(latencies[2] < Duration::from_millis(150), "lone records took {latencies:?} to reach the sink");
    let run = agent.stop();
    assert!(run.exit_ok, "{}", run.stderr);
}

#[test]
#[ignore = "needs root"]
fn the_drain_runs_real_time_at_the_lowest_priority_unless_switched_off() {
    let _turn = kernel_test("drain_priority");
    let mut agent = Agent::start("");
    agent.wait_for_log("drain: real-time scheduling (SCHED_FIFO 1)", Duration::from_secs(30));
    assert_eq!(drain_scheduling(agent.pid()), (libc::SCHED_FIFO as u32, 1));
    assert!(agent.stop().exit_ok);
    let agent = Agent::start("drain_realtime = false\n");
    // Past the moment the drain thread would have asked (its first step, right after ready).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(drain_scheduling(agent.pid()), (libc::SCHED_OTHER as u32, 0));
    let run = agent.stop();
    assert!(run.exit_ok);
    assert!(!run.stderr.contains("drain: real-time"), "{}", run.stderr);
}
