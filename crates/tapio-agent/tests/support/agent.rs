//! The real agent binary under test: started with a TOML config (optionally inside a wrapper
//! such as `ip netns exec` or `setpriv`), its stderr log and stdout evidence read on their
//! own threads, stopped by a signal within a bound, and its final counters parsed.
//!
//! Everything the tests read from the agent's output goes through this module: the
//! start-up status (`startup_status` and its JSON; `ready_line`, `observer_line` for the
//! prose lines people read), the final counters (`final_counters`),
//! the periodic counters lines (`PERIODIC_COUNTERS`, `periodic_counters`) and the evidence
//! lines on stdout. A
//! change of the agent's output format is one change here.

use super::{assert_turn, counter_at, tmp};
use serde_json::Value;
use std::io::{BufRead, BufReader, PipeReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The agent binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_tapio-agent");

/// How long an agent may take from its start to `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A config section for connect failures only: other processes on a shared machine
/// (resets, RTT samples, exits, block I/O) then cannot crowd a scenario's records out.
pub const NETWORK_ONLY: &str = "[network]\nresets = false\nretransmit_spikes = false\nrtt_degradation = false\n\
                                [container]\nenabled = false\n[storage]\nenabled = false\n[node]\nenabled = false\n[dns]\nenabled = false\n[container_pressure]\nenabled = false\n";

/// What a periodic (not final) counters line starts with in the agent's log.
pub const PERIODIC_COUNTERS: &str = "INFO tapio_agent::runtime: counters {";

/// The counters snapshot of one log line, if it is a periodic counters line.
pub fn periodic_counters(line: &str) -> Option<Value> {
    let (_, rest) = line.split_once(PERIODIC_COUNTERS)?;
    serde_json::from_str(&format!("{{{rest}")).ok()
}

/// What precedes the agent's start-up status JSON in its log.
pub const STATUS: &str = "tapio_agent::runtime: status ";

/// The start-up status the agent logged as JSON (`status {...}`: node, each observer's
/// state, reason, reason_kind and programs, the sinks); panics when there is none.
pub fn startup_status(log: &str) -> Value {
    log.lines()
        .find_map(|l| l.split_once(STATUS).map(|(_, json)| json.to_string()))
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_else(|| panic!("no start-up status JSON in the agent's log:\n{log}"))
}

/// The state (`running`, `degraded`, …) of `observer` in a start-up status.
pub fn observer_state<'a>(status: &'a Value, observer: &str) -> &'a str {
    observer_status(status, observer)["state"].as_str().unwrap_or_else(|| panic!("no state of {observer}: {status}"))
}

/// The entry of `observer` in a start-up status.
pub fn observer_status<'a>(status: &'a Value, observer: &str) -> &'a Value {
    status["observers"]
        .as_array()
        .and_then(|all| all.iter().find(|o| o["name"] == observer))
        .unwrap_or_else(|| panic!("no observer {observer} in the start-up status: {status}"))
}

/// The start-up status line (`ready: network=running …`) in an agent's log, if it came.
pub fn ready_line(log: &str) -> Option<&str> {
    log.lines().find(|l| l.contains("ready:"))
}

/// The first line of an agent's log that reports `status` for `observer`
/// (`observer <name>: <status>…`); an empty `status` finds the first line of any status.
pub fn observer_line<'a>(log: &'a str, observer: &str, status: &str) -> Option<&'a str> {
    let needle = match status {
        "" => format!("observer {observer}:"),
        _ => format!("observer {observer}: {status}"),
    };
    log.lines().find(|l| l.contains(&needle))
}

/// The `counters final {…}` snapshot an agent logs at exit, parsed.
pub fn final_counters(log: &str) -> Option<Value> {
    log.lines()
        .find_map(|l| l.split_once("counters final ").map(|(_, json)| json.to_string()))
        .and_then(|json| serde_json::from_str(&json).ok())
}

/// Where the agent's stdout (its evidence lines, with `[sinks] stdout = true`) goes.
pub enum Stdout {
    /// Read and parsed here: every line must be JSON; `Finished::events` holds them.
    Events,
    /// Handed to the agent as is (a file, `Stdio::null()`, or `Stdio::piped()` that the
    /// test takes with [`Agent::take_stdout`]).
    To(Stdio),
    /// Stdout and stderr both into one pipe (`2>&1 |`), which the test takes with
    /// [`Agent::take_output`]; nothing reads the log here, so the agent must be spawned
    /// ([`Launch::spawn`]), not started, and stopped with [`Agent::wait_exit`].
    WithStderr,
}

/// How to start an agent; [`Agent::start`] is the common case.
pub struct Launch {
    config: Option<String>,
    wrapper: Vec<String>,
    stdout: Stdout,
}

impl Launch {
    /// An agent run with `config` (TOML) as its config file.
    pub fn with_config(config: &str) -> Launch {
        Launch { config: Some(config.to_string()), wrapper: Vec::new(), stdout: Stdout::Events }
    }

    /// An agent run with no config file at all (its defaults).
    pub fn without_config() -> Launch {
        Launch { config: None, wrapper: Vec::new(), stdout: Stdout::Events }
    }

    /// Runs the agent as the last arguments of `wrapper` (`ip netns exec NS`, `setpriv …`).
    pub fn wrapped_in(mut self, wrapper: &[&str]) -> Launch {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn stdout(mut self, stdout: Stdout) -> Launch {
        self.stdout = stdout;
        self
    }

    /// Starts the agent and waits until it says it is ready.
    pub fn start(self) -> Agent {
        let mut agent = self.spawn();
        agent.wait_ready(READY_TIMEOUT);
        agent
    }

    /// Starts the agent without waiting for anything.
    pub fn spawn(self) -> Agent {
        assert_turn("starting the agent");
        static LAUNCHES: AtomicU32 = AtomicU32::new(0);
        let config_path = self.config.as_ref().map(|text| {
            let path = tmp::path(&format!("agent-{}.toml", LAUNCHES.fetch_add(1, Ordering::Relaxed)));
            std::fs::write(&path, text).expect("write test config");
            path
        });
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(BIN);
                cmd
            }
            None => Command::new(BIN),
        };
        if let Some(path) = &config_path {
            cmd.arg("--config").arg(path);
        }
        let capture = matches!(self.stdout, Stdout::Events);
        let (stdout, stderr, output) = match self.stdout {
            Stdout::Events => (Stdio::piped(), Stdio::piped(), None),
            Stdout::To(stdio) => (stdio, Stdio::piped(), None),
            Stdout::WithStderr => {
                let (read, write) = std::io::pipe().expect("a pipe for the agent's output");
                (Stdio::from(write.try_clone().expect("a second pipe end")), Stdio::from(write), Some(read))
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        // The agent's ends of its pipes are open in the agent only: a read sees its exit.
        drop(cmd);
        let events = capture.then(|| {
            let out = child.stdout.take().expect("agent stdout");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut events = Vec::new();
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    match serde_json::from_str(&line) {
                        Ok(v) => events.push(v),
                        Err(e) => panic!("agent wrote a line that is not JSON ({e}): {line}"),
                    }
                }
                let _ = tx.send(events);
            });
            rx
        });
        let (err_tx, err_rx) = mpsc::channel();
        // With stderr in the shared pipe, the log here stays empty (its sender is dropped).
        let err = child.stderr.take();
        std::thread::spawn(move || {
            let Some(err) = err else { return };
            let mut reader = BufReader::new(err);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if err_tx.send(std::mem::take(&mut line)).is_err() {
                    break;
                }
            }
        });
        Agent { child, config_path, events, stderr: err_rx, log: String::new(), output }
    }
}

/// A running agent; killed on drop if the test ends (or fails) before stopping it.
pub struct Agent {
    child: Child,
    config_path: Option<PathBuf>,
    events: Option<mpsc::Receiver<Vec<Value>>>,
    stderr: mpsc::Receiver<String>,
    /// Its stderr so far.
    log: String,
    /// Its stdout and stderr in one pipe, with [`Stdout::WithStderr`].
    output: Option<PipeReader>,
}

/// Everything an agent wrote, once it exited.
pub struct Finished {
    pub events: Vec<Value>,
    /// The start-up status JSON.
    pub status: Value,
    pub stderr: String,
    /// The `counters final` snapshot the agent logs at exit.
    pub counters: Value,
    pub exit_ok: bool,
}

/// An agent that exited, whatever it logged.
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Agent {
    /// Starts the agent with `config` (TOML) and waits until it says it is ready.
    pub fn start(config: &str) -> Agent {
        Launch::with_config(config).start()
    }

    /// Waits until the agent says it is ready.
    pub fn wait_ready(&mut self, timeout: Duration) {
        self.wait_for("the ready line", timeout, |log| ready_line(log).is_some());
    }

    /// Waits until the agent logs a line containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        self.wait_for(&format!("{needle:?}"), timeout, |log| log.contains(needle));
    }

    /// Waits until `done(log so far)`; kills the agent and fails the test if it does not
    /// happen within `timeout` (or the agent closes its stderr first).
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.log) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.log.push_str(&line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("agent did not log {what} in {timeout:?}; stderr so far:\n{}", self.log);
                }
            }
        }
    }

    /// Waits until the agent is ready (true) or has closed its stderr, i.e. exited (false);
    /// fails the test if neither happens within `timeout`.
    pub fn wait_ready_or_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while ready_line(&self.log).is_none() {
            match self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.log.push_str(&line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("agent neither ready nor exited in {timeout:?}:\n{}", self.log);
                }
            }
        }
        true
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The agent's stdout pipe, for an agent launched with `Stdout::To(Stdio::piped())`.
    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("the agent's stdout is a pipe the test has not taken yet")
    }

    /// The one pipe of the agent's stdout and stderr, for an agent launched with
    /// [`Stdout::WithStderr`].
    pub fn take_output(&mut self) -> PipeReader {
        self.output.take().expect("the agent's output is a pipe the test has not taken yet")
    }

    /// Sends SIGTERM and collects everything the agent wrote.
    pub fn stop(self) -> Finished {
        self.stop_within(Duration::from_secs(60)).0
    }

    /// Sends SIGTERM, waits at most `bound` for the exit (else kills the agent and fails),
    /// and collects everything the agent wrote, with the time it took to exit.
    pub fn stop_within(self, bound: Duration) -> (Finished, Duration) {
        // Give the drain a moment to take records that are still in flight in the kernel.
        std::thread::sleep(Duration::from_millis(500));
        self.exit_on(libc::SIGTERM, bound)
    }

    /// Sends `sig` at once (then SIGCONT, so that an agent the test stopped acts on it),
    /// waits at most `bound` for the exit (else kills the agent and fails), and collects
    /// everything the agent wrote, with the time from the signal to the exit. The agent
    /// must have logged its final counters.
    pub fn exit_on(mut self, sig: i32, bound: Duration) -> (Finished, Duration) {
        let asked = Instant::now();
        self.signal(sig);
        self.signal(libc::SIGCONT);
        let status = self.wait_exit_within(bound);
        let took = asked.elapsed();
        let events = match self.events.take() {
            Some(rx) => rx.recv_timeout(Duration::from_secs(30)).expect("agent stdout"),
            None => Vec::new(),
        };
        self.drain_stderr();
        let counters =
            final_counters(&self.log).unwrap_or_else(|| panic!("no final counters in agent stderr:\n{}", self.log));
        (
            Finished {
                events,
                status: startup_status(&self.log),
                stderr: std::mem::take(&mut self.log),
                counters,
                exit_ok: status.success(),
            },
            took,
        )
    }

    /// Waits at most `bound` for the agent to exit by itself (else kills it and fails), and
    /// returns its status and log; nothing is required of what it logged.
    pub fn wait_exit(mut self, bound: Duration) -> Exited {
        let status = self.wait_exit_within(bound);
        self.drain_stderr();
        Exited { status, stderr: std::mem::take(&mut self.log) }
    }

    fn wait_exit_within(&mut self, bound: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for agent") {
                return status;
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                let _ = self.child.wait();
                while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
                    self.log.push_str(&line);
                }
                panic!("agent did not exit within {bound:?}; stderr:\n{}", self.log);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads the rest of the agent's stderr (it has exited).
    fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.log.push_str(&line);
        }
    }
}

impl Drop for Agent {
    /// A test that fails before stopping its agent must not leave it running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(path) = &self.config_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Finished {
    pub fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["type"] == kind)
    }

    /// Events whose facts match `dst_port` (network evidence of one scenario).
    pub fn to_port(&self, port: u16) -> Vec<&Value> {
        self.events.iter().filter(|e| e["facts"]["dst_port"] == port).collect()
    }

    /// The final counter at `path`. A missing or non-numeric counter fails the test: a
    /// renamed counter must not pass as `== 0`.
    pub fn counter(&self, path: &[&str]) -> u64 {
        counter_at(&self.counters, path)
    }
}
