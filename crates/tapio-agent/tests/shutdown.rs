//! Shutdown under pressure, against the real kernel: a ring buffer filled while the agent
//! was stopped is emptied at SIGTERM; stdout closed by its reader, or a pipe nobody reads,
//! ends in an exit within the documented bound with every record accounted for.
//!
//! Only the network observer's connect failures are on in these tests, so every kernel loss
//! counted is a loss of the refused connects the test makes (or of another process's
//! refused connect at the same moment: on a busy shared machine that can add to the losses;
//! CI runs alone).

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{closed_port, counter_at, kernel_test};

/// The agent's documented shutdown bound (README "Start-up, status and shutdown") plus
/// slack for a loaded 2-core machine.
const EXIT_BOUND: Duration = Duration::from_secs(20);

/// Refused/failed connects only: other processes on a shared machine (resets, RTT
/// samples, exits, block I/O) then cannot crowd the scenario's records out.
const NETWORK_ONLY: &str = "[network]\nresets = false\nretransmit_spikes = false\nrtt_degradation = false\n\
                            [container]\nenabled = false\n[storage]\nenabled = false\n[node]\nenabled = false\n";

/// One agent at a time: each sees every refused connect on the machine.
static ONE_AGENT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
    log: String,
    config: PathBuf,
}

impl Running {
    fn start(name: &str, stdout: Stdio) -> Running {
        let config = std::env::temp_dir().join(format!("tapio-i14l-shutdown-{name}-{}.toml", std::process::id()));
        std::fs::write(&config, NETWORK_ONLY).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tapio-agent"))
            .arg("--config")
            .arg(&config)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tapio-agent");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut r = Running { child, stderr: rx, log: String::new(), config };
        r.wait_for("ready:", Duration::from_secs(30));
        r
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log.contains(needle) {
            match self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                }
                Err(_) => panic!("agent did not log {needle:?} in {timeout:?}:\n{}", self.log),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM (and SIGCONT, for a stopped agent); waits for the exit within [`EXIT_BOUND`]
    /// and returns (exit success, time to exit, final counters).
    fn terminate(mut self) -> (bool, Duration, Value, String) {
        let asked = Instant::now();
        self.signal(libc::SIGTERM);
        self.signal(libc::SIGCONT);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if asked.elapsed() > EXIT_BOUND {
                let _ = self.child.kill();
                let _ = self.child.wait();
                while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
                    self.log.push_str(&line);
                    self.log.push('\n');
                }
                panic!("agent did not exit within {EXIT_BOUND:?} of SIGTERM:\n{}", self.log);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = asked.elapsed();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        let _ = std::fs::remove_file(&self.config);
        let counters = self
            .log
            .lines()
            .find_map(|l| l.split_once("counters final ").map(|(_, json)| json.to_string()))
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_else(|| panic!("no final counters in the agent's log:\n{}", self.log));
        (status.success(), took, counters, std::mem::take(&mut self.log))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refuse(port: u16, n: usize) {
    for _ in 0..n {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} must refuse");
    }
}

/// Every loss counter of the final snapshot that a refused connect can end in.
fn losses(c: &Value) -> u64 {
    ["lost_events_total", "malformed_events_total", "correlation_drops_total", "not_judged_total", "sink_drops_total"]
        .iter()
        .map(|k| counter_at(c, &[k]))
        .sum()
}

fn events_to(text: &str, port: u16) -> u64 {
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .filter(|e| e["facts"]["dst_port"] == port && e["type"] == "kernel.network.connection_refused")
        .count() as u64
}

/// The agent stopped (SIGSTOP) while a flood of refused connects overfills its network
/// ring, then SIGTERM: the ring is emptied at shutdown, and events written plus every loss
/// counter equal the connects refused, exactly.
#[test]
#[ignore = "needs root"]
fn a_ring_filled_while_the_agent_was_stopped_is_emptied_at_shutdown_and_fully_accounted_for() {
    kernel_test("shutdown_sigstop_flood");
    let _turn = ONE_AGENT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out_path = std::env::temp_dir().join(format!("tapio-i14l-flood-{}.jsonl", std::process::id()));
    let agent = Running::start("flood", Stdio::from(std::fs::File::create(&out_path).unwrap()));
    agent.signal(libc::SIGSTOP);
    let port = closed_port();
    const CONNECTS: usize = 30_000;
    refuse(port, CONNECTS);
    let (ok, took, counters, log) = agent.terminate();
    let text = std::fs::read_to_string(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    assert!(ok, "{log}");
    let written = events_to(&text, port);
    let lost = losses(&counters);
    eprintln!("sigstop flood: {CONNECTS} connects, {written} events written, {lost} counted losses, exit in {took:?}");
    // The ring holds thousands of records: the shutdown drain must take them all, so the
    // events exceed two bursts and the kernel counted the rest as reserve failures.
    let bursts = 2 * tapio_agent::drain::BURST as u64;
    assert!(written > bursts, "only {written} events: the ring was not emptied\n{log}");
    assert!(counter_at(&counters, &["kernel", "network.ringbuf_reserve_failed"]) > 0, "{counters}");
    assert_eq!(counter_at(&counters, &["sinks", "stdout", "written"]), counter_at(&counters, &["events_total"]));
    assert_eq!(written + lost, CONNECTS as u64, "events written + every loss counter == connects: {counters}");
}

/// A reader that closes stdout: every line fails (EPIPE, counted), the agent does not
/// crash, and it exits cleanly on SIGTERM.
#[test]
#[ignore = "needs root"]
fn stdout_closed_by_its_reader_counts_every_line_failed_and_exits_cleanly() {
    kernel_test("shutdown_stdout_closed");
    let _turn = ONE_AGENT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut agent = Running::start("closed", Stdio::piped());
    drop(agent.child.stdout.take());
    let port = closed_port();
    refuse(port, 50);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, _, counters, log) = agent.terminate();
    assert!(ok, "a closed stdout is not a crash:\n{log}");
    let events = counter_at(&counters, &["events_total"]);
    assert!(events >= 50, "{counters}");
    assert_eq!(counter_at(&counters, &["sinks", "stdout", "written"]), 0, "{counters}");
    assert_eq!(counter_at(&counters, &["sinks", "stdout", "failed"]), events, "{counters}");
    assert!(log.contains("sink stdout: write failed"), "{log}");
}

/// A stdout pipe nobody reads blocks the sink stage for good: SIGTERM still ends the agent
/// within the bound, and every record has one outcome: the lines found in the pipe are
/// exactly those counted written, and the rest are counted failed.
#[test]
#[ignore = "needs root"]
fn a_stdout_pipe_nobody_reads_still_exits_in_bounded_time_with_exact_accounting() {
    kernel_test("shutdown_stdout_blocked");
    let _turn = ONE_AGENT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut agent = Running::start("blocked", Stdio::piped());
    let mut pipe = agent.child.stdout.take().unwrap();
    let port = closed_port();
    // About 700 bytes per record: far more than a 64 KiB pipe holds.
    refuse(port, 2_000);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, took, counters, log) = agent.terminate();
    assert!(ok, "{log}");
    let mut text = String::new();
    pipe.read_to_string(&mut text).unwrap();
    let in_pipe = text.lines().count() as u64;
    assert!(text.is_empty() || text.ends_with('\n'), "a torn line in the pipe");
    let events = counter_at(&counters, &["events_total"]);
    let written = counter_at(&counters, &["sinks", "stdout", "written"]);
    let failed = counter_at(&counters, &["sinks", "stdout", "failed"]);
    eprintln!("blocked stdout: exit {took:?} after SIGTERM; {events} events, {written} in the pipe, {failed} failed");
    assert_eq!(in_pipe, written, "written means in the pipe: {counters}");
    assert_eq!(written + failed, events, "every record has one outcome: {counters}");
    assert!(failed > 0 && events >= 2_000, "{counters}");
    assert!(log.contains("could not be written to sink stdout in time"), "{log}");
    assert!(events_to(&text, port) <= written);
}
