//! Start-up and shutdown as an operator sees them: a bad config fails loudly naming the key,
//! a non-root start says what is missing, SIGINT flushes what was already observed, and the
//! loss counters reach the log periodically.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{closed_port, kernel_test};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tapio-agent"))
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("tapio-startup-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_config_with_an_unknown_key_is_refused_at_start_naming_the_key() {
    let path = write_config("typo", "[network]\nretransmit_cuont = 3\n");
    let out = agent().arg("--config").arg(&path).arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retransmit_cuont"), "{stderr}");
    let path = write_config("range", "[network]\nrtt_ratio_percent = 20\n");
    let out = agent().arg("--config").arg(&path).arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("network.rtt_ratio_percent = 20 is out of range"));
    let path = write_config("good", "[network]\nretransmit_count = 3\n");
    let out = agent().arg("--config").arg(&path).arg("--check-config").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
    let out = agent().args(["--controller-url", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown flags are errors");
}

#[test]
#[ignore = "needs root"]
fn without_privileges_the_agent_says_why_and_keeps_what_can_run() {
    if !kernel_test("startup_not_root") {
        return;
    }
    // Root drops to nobody for this one run (setpriv is in util-linux, on every Debian).
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(env!("CARGO_BIN_EXE_tapio-agent"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run setpriv");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut line = String::new();
    // It either exits (nothing could start) or says it is ready with what could.
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        log.push_str(&line);
        line.clear();
        if log.contains("ready:") {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        assert!(Instant::now() < deadline, "no end:\n{log}");
    }
    let status = child.wait().unwrap();
    for observer in ["network", "container"] {
        let failed = log
            .lines()
            .find(|l| l.contains(&format!("observer {observer}: failed")))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(failed.contains("run as root, or with CAP_BPF"), "{failed}");
    }
    if !log.contains("ready:") {
        assert!(!status.success());
        assert!(log.contains("no observer could start"), "{log}");
    }
}

#[test]
#[ignore = "needs root"]
fn sigint_flushes_what_was_observed_and_counters_are_logged_periodically() {
    if !kernel_test("startup_sigint") {
        return;
    }
    let path = write_config("sigint", "counters_log_interval_secs = 1\n");
    let mut child = agent().arg("--config").arg(&path).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Ready, then one periodic counters line.
    while !(log.contains("ready:") && log.contains("INFO tapio_agent::runtime: counters {")) {
        assert!(Instant::now() < deadline, "no ready/periodic counters line:\n{log}");
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("agent exited early:\n{log}");
        }
        log.push_str(&line);
    }
    let port = closed_port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    // At once: the record may still be in the ring buffer or the queue.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    while stderr.read_line(&mut rest).unwrap_or(0) > 0 {}
    assert!(out.status.success(), "{rest}");
    assert!(rest.contains("counters final {"), "{rest}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ours = events.iter().filter(|e| e["facts"]["dst_port"] == port).count();
    assert_eq!(ours, 1, "the refused connect observed before SIGINT must be flushed");
}

#[test]
#[ignore = "needs root"]
fn an_object_of_another_kernel_abi_is_refused_loudly() {
    if !kernel_test("abi_mismatch") {
        return;
    }
    let btf = aya::Btf::from_sys_fs().ok();
    let object = tapio_bpf::network::object();
    // The object this agent was built with loads under its ABI …
    assert!(tapio_agent::observers::load_object(object, btf.as_ref(), tapio_bpf::ABI_VERSION).is_ok());
    // … and an agent of any other ABI refuses it, saying so, instead of misreading structs.
    let other = tapio_bpf::ABI_VERSION + 1;
    let err = tapio_agent::observers::load_object(object, btf.as_ref(), other).map(|_| ()).unwrap_err();
    assert!(matches!(err, tapio_agent::observers::LoadError::AbiMismatch(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains(&format!("object was built for another kernel ABI (it lacks tapio_abi_v{other})")), "{err}");
}
