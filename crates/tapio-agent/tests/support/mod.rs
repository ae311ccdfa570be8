//! Shared harness of the real-kernel tests: runs the real agent binary, makes kernel facts
//! happen, and reads back the evidence and the final loss counters.
//!
//! Kernel tests need root. Each carries `#[ignore = "needs root"]`, so a plain `cargo test`
//! lists them as ignored (never "ok"); `scripts/test` runs them as root with
//! `--include-ignored`. Asked to run without root, they fail.

#![allow(dead_code)]

pub mod netns;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Checks that this kernel test can run: it needs root. A test that was asked to run
/// (`--include-ignored`) and cannot fails here, so a run without root never reports a
/// kernel fact as checked. Returns true so call sites read `if !kernel_test(..) { return }`.
pub fn kernel_test(name: &str) -> bool {
    // SAFETY: geteuid has no memory effects.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "{name}: needs root to load eBPF programs (euid {euid}); run the kernel tests as root");
    true
}

/// Every agent sees every kernel fact on the machine, so two agents running at once would
/// disturb each other's scenarios (a flood in one fills the other's ring buffer). Tests in
/// one binary run on several threads: this lock runs their agents one at a time.
static ONE_AGENT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Agent {
    _turn: std::sync::MutexGuard<'static, ()>,
    child: Child,
    config_path: PathBuf,
    stdout: mpsc::Receiver<Vec<Value>>,
    stderr: mpsc::Receiver<String>,
    stderr_so_far: String,
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

pub struct Finished {
    pub events: Vec<Value>,
    /// The start-up status JSON.
    pub status: Value,
    pub stderr: String,
    /// The `counters final` snapshot the agent logs at exit.
    pub counters: Value,
    pub exit_ok: bool,
}

impl Agent {
    /// Starts the agent with `config` (TOML) and waits until it says it is ready.
    pub fn start(config: &str) -> Agent {
        let turn = ONE_AGENT_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let config_path = std::env::temp_dir().join(format!(
            "tapio-test-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&config_path, config).expect("write test config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tapio-agent"))
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tapio-agent");
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (out_tx, out_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut events = Vec::new();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => events.push(v),
                    Err(e) => panic!("agent wrote a line that is not JSON ({e}): {line}"),
                }
            }
            let _ = out_tx.send(events);
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if err_tx.send(std::mem::take(&mut line)).is_err() {
                    break;
                }
            }
        });
        let mut agent =
            Agent { _turn: turn, child, config_path, stdout: out_rx, stderr: err_rx, stderr_so_far: String::new() };
        agent.wait_for_log(STATUS, Duration::from_secs(30));
        agent
    }

    /// Waits until the agent logs a line containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr_so_far.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.stderr_so_far.push_str(&line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("agent did not log {needle:?} in {timeout:?}; stderr so far:\n{}", self.stderr_so_far);
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and collects everything the agent wrote.
    pub fn stop(self) -> Finished {
        self.stop_within(Duration::from_secs(60)).0
    }

    /// Sends SIGTERM, waits at most `bound` for the exit (else kills the agent and fails),
    /// and collects everything the agent wrote, with the time it took to exit.
    pub fn stop_within(mut self, bound: Duration) -> (Finished, Duration) {
        // Give the drain a moment to take records that are still in flight in the kernel.
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let asked = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for agent") {
                break status;
            }
            if asked.elapsed() > bound {
                let _ = self.child.kill();
                let _ = self.child.wait();
                while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
                    self.stderr_so_far.push_str(&line);
                }
                panic!("agent did not exit within {bound:?} of SIGTERM; stderr:\n{}", self.stderr_so_far);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = asked.elapsed();
        let events = self.stdout.recv_timeout(Duration::from_secs(30)).expect("agent stdout");
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.stderr_so_far.push_str(&line);
        }
        let _ = std::fs::remove_file(&self.config_path);
        let counters = self
            .stderr_so_far
            .lines()
            .find_map(|l| l.split_once("counters final ").map(|(_, json)| json.to_string()))
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_else(|| panic!("no final counters in agent stderr:\n{}", self.stderr_so_far));
        (
            Finished {
                events,
                status: startup_status(&self.stderr_so_far),
                stderr: std::mem::take(&mut self.stderr_so_far),
                counters,
                exit_ok: status.success(),
            },
            took,
        )
    }
}

impl Drop for Agent {
    /// A test that fails before `stop()` must not leave its agent running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// The counter at `path` in a counters snapshot; panics, naming the path, when it is absent.
pub fn counter_at(counters: &Value, path: &[&str]) -> u64 {
    let mut v = counters;
    for key in path {
        v = v.get(*key).unwrap_or_else(|| panic!("no counter {path:?} in {counters}"));
    }
    v.as_u64().unwrap_or_else(|| panic!("counter {path:?} is not a number: {v}"))
}

/// Runs `cmd` and panics with its output if it fails.
pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port on 127.0.0.1 (and ::1) that nothing listens on: bound then released.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

/// Reads whatever is available from a non-blocking reader.
pub fn read_available(r: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(n) = r.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf
}
