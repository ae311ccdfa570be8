//! Shutdown under pressure, against the real kernel: a ring buffer filled while the agent
//! was stopped is emptied at SIGTERM; stdout closed by its reader, or a pipe nobody reads,
//! ends in an exit within the documented bound with every record accounted for; so does a
//! pipe nobody reads that holds the log too.
//!
//! Only the network observer's connect failures are on in these tests, so every kernel loss
//! counted is a loss of the refused connects the test makes (or of another process's
//! refused connect at the same moment: on a busy shared machine that can add to the losses;
//! CI runs alone).

use crate::support::agent::{Launch, Stdout, NETWORK_ONLY};
use crate::support::{closed_port, counter_at, kernel_test, refuse, tmp, Agent};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The agent's documented shutdown bound (README "Start-up, status and shutdown") plus
/// slack for a loaded 2-core machine.
const EXIT_BOUND: Duration = Duration::from_secs(20);

/// Starts an agent with [`NETWORK_ONLY`] and `stdout`.
fn start(stdout: Stdio) -> Agent {
    Launch::with_config(NETWORK_ONLY).stdout(Stdout::To(stdout)).start()
}

/// [`NETWORK_ONLY`] with the file sink at `path`, and stdout on or off.
fn with_file_sink(path: &std::path::Path, stdout: bool) -> String {
    format!("{NETWORK_ONLY}[sinks]\nstdout = {stdout}\n[sinks.file]\npath = \"{}\"\n", path.display())
}

/// SIGTERM (and SIGCONT, for a stopped agent); waits for the exit within [`EXIT_BOUND`]
/// and returns (exit success, time to exit, final counters, log).
fn terminate(agent: Agent) -> (bool, Duration, Value, String) {
    let (run, took) = agent.exit_on(libc::SIGTERM, EXIT_BOUND);
    (run.exit_ok, took, run.counters, run.stderr)
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
    let _turn = kernel_test("shutdown_sigstop_flood");
    let out_path = tmp::path("flood.jsonl");
    // The file sink, written in the sink stage: what is counted here is the drain's and the
    // queue's doing, not how soon a writer thread is scheduled.
    let agent = Launch::with_config(&with_file_sink(&out_path, false)).stdout(Stdout::To(Stdio::null())).start();
    agent.signal(libc::SIGSTOP);
    let port = closed_port();
    const CONNECTS: usize = 30_000;
    refuse(port, CONNECTS);
    let (ok, took, counters, log) = terminate(agent);
    let text = std::fs::read_to_string(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    assert!(ok, "{log}");
    let written = events_to(&text, port);
    let lost = losses(&counters);
    eprintln!("sigstop flood: {CONNECTS} connects, {written} events written, {lost} counted losses, exit in {took:?}");
    // The connecting CPU's ring holds well over a thousand records: the shutdown drain must
    // take them all, so the events exceed one burst and the kernel counted the rest as
    // reserve failures.
    let burst = tapio_agent::drain::BURST as u64;
    assert!(written > burst, "only {written} events: the ring was not emptied\n{log}");
    assert!(counter_at(&counters, &["kernel", "network.ringbuf_reserve_failed"]) > 0, "{counters}");
    assert_eq!(counter_at(&counters, &["sinks", "file", "written"]), counter_at(&counters, &["events_total"]));
    assert_eq!(written + lost, CONNECTS as u64, "events written + every loss counter == connects: {counters}");
}

/// A reader that closes stdout: every line fails (EPIPE, counted), the agent does not
/// crash, and it exits cleanly on SIGTERM.
#[test]
#[ignore = "needs root"]
fn stdout_closed_by_its_reader_counts_every_line_failed_and_exits_cleanly() {
    let _turn = kernel_test("shutdown_stdout_closed");
    let mut agent = start(Stdio::piped());
    drop(agent.take_stdout());
    let port = closed_port();
    refuse(port, 50);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, _, counters, log) = terminate(agent);
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
    let _turn = kernel_test("shutdown_stdout_blocked");
    let mut agent = start(Stdio::piped());
    let mut pipe = agent.take_stdout();
    let port = closed_port();
    // About 700 bytes per record: far more than a 64 KiB pipe holds.
    refuse(port, 2_000);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, took, counters, log) = terminate(agent);
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

/// A stdout pipe nobody reads beside a file sink: the stdout writer blocks, but the file
/// gets every record (the sink stage only hands stdout's lines to its own writer thread;
/// it waits for backlog room once, while the writer might still move, then drops what the
/// full backlog cannot take, counted). Every record still has one
/// outcome per sink, and the agent exits within the bound.
#[test]
#[ignore = "needs root"]
fn a_stdout_pipe_nobody_reads_does_not_stop_the_file_sink() {
    let _turn = kernel_test("shutdown_stdout_blocked_file_goes_on");
    let file = tmp::path("beside-blocked-stdout.jsonl");
    let mut agent = Launch::with_config(&with_file_sink(&file, true)).stdout(Stdout::To(Stdio::piped())).start();
    let pipe = agent.take_stdout();
    let port = closed_port();
    // About 700 bytes per record: 3,000 are 2 MB, over the 64 KiB pipe and the 128 KiB backlog.
    refuse(port, 3_000);
    std::thread::sleep(Duration::from_millis(1_000));
    let (ok, took, counters, log) = terminate(agent);
    drop(pipe);
    let text = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(ok, "{log}");
    let events = counter_at(&counters, &["events_total"]);
    let in_file = events_to(&text, port);
    let stdout_failed = counter_at(&counters, &["sinks", "stdout", "failed"]);
    eprintln!("blocked stdout beside a file: exit {took:?}; {events} events, {in_file} in the file, {stdout_failed} failed on stdout");
    assert!(in_file >= 3_000, "every refused connect in the file: {in_file}\n{counters}");
    assert_eq!(counter_at(&counters, &["sinks", "file", "written"]), events, "{counters}");
    assert_eq!(counter_at(&counters, &["sinks", "file", "failed"]), 0, "{counters}");
    assert_eq!(
        counter_at(&counters, &["queue_overflow_total"]),
        0,
        "the queue absorbed the stage's one wait: {counters}"
    );
    assert!(stdout_failed > 0, "{counters}");
    assert_eq!(counter_at(&counters, &["sinks", "stdout", "written"]) + stdout_failed, events, "{counters}");
    assert!(log.contains("lines dropped (counted failed)"), "{log}");
}

/// Stdout and stderr in one pipe nobody reads (`tapio-agent 2>&1 | a-reader-that-stalled`):
/// the evidence fills the pipe, then the log (the stdout sink's warning) finds it full too.
/// No thread waits for the log (it is queued, and dropped and counted when the queue is
/// full), so SIGTERM still ends the agent cleanly within the bound; the pipe holds only
/// whole lines, of evidence or of the log.
#[test]
#[ignore = "needs root"]
fn a_pipe_nobody_reads_for_stdout_and_stderr_still_exits_cleanly_in_bounded_time() {
    let _turn = kernel_test("shutdown_output_blocked");
    let mut agent = Launch::with_config(NETWORK_ONLY).stdout(Stdout::WithStderr).spawn();
    // Read the log up to `ready:`, then read no more.
    let (tx, rx) = mpsc::channel();
    let mut output = BufReader::new(agent.take_output());
    std::thread::spawn(move || {
        let mut log = String::new();
        while output.read_line(&mut log).map(|n| n > 0).unwrap_or(false) {
            if log.lines().last().is_some_and(|l| l.contains("ready:")) {
                break;
            }
        }
        let _ = tx.send((output, log));
    });
    let (mut output, mut text) = rx.recv_timeout(Duration::from_secs(30)).expect("the agent got ready");
    assert!(text.contains("ready:"), "the agent exited before it was ready:\n{text}");
    let port = closed_port();
    // About 700 bytes per record: far more than a 64 KiB pipe holds.
    refuse(port, 2_000);
    // The stdout writer has moved nothing for 1 s: the sink stage logs so, into the full pipe.
    std::thread::sleep(Duration::from_millis(2_000));
    let asked = Instant::now();
    agent.signal(libc::SIGTERM);
    let exited = agent.wait_exit(EXIT_BOUND);
    let took = asked.elapsed();
    output.read_to_string(&mut text).unwrap();
    eprintln!("stdout and stderr blocked: exit {took:?} after SIGTERM; {} lines in the pipe", text.lines().count());
    assert!(exited.status.success(), "{:?}", exited.status);
    assert!(text.ends_with('\n'), "a torn line in the pipe");
    let (evidence, log): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.starts_with('{'));
    let log_levels = [" INFO ", " WARN ", " ERROR ", " DEBUG "];
    assert!(log.iter().all(|l| log_levels.iter().any(|level| l.contains(level))), "not a whole log line:\n{text}");
    assert!(events_to(&(evidence.join("\n") + "\n"), port) > 0, "the evidence reached the pipe before it filled");
}
