//! The agent under test: the real release binary, started as a node would start it, with its
//! evidence (stdout) and its logs (stderr) collected as they come and echoed to the guest
//! console, so a failing run's console log shows what the agent said.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// TCG is slow and the agent parses the kernel's whole BTF at start: generous, but bounded.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Seen {
    events: Vec<Value>,
    /// stdout lines that are not JSON: garbage where only evidence belongs.
    garbage: Vec<String>,
    log: Vec<String>,
}

pub struct Agent {
    child: Child,
    seen: Arc<Mutex<Seen>>,
    readers: Vec<JoinHandle<()>>,
}

/// What precedes the agent's start-up status JSON in its log (`status {"node":…,
/// "observers":[{"name","state","reason","reason_kind","programs"}…],"sinks":[…]}`).
pub const STATUS: &str = "tapio_agent::runtime: status ";

/// What the agent left behind once stopped.
pub struct Stopped {
    pub exit: Option<ExitStatus>,
    pub log: Vec<String>,
    pub garbage: Vec<String>,
}

impl Agent {
    /// Starts `path` with extra environment `env` and waits for its start-up status JSON
    /// (logged with the `ready:` line).
    pub fn start(path: &Path, env: &[(&str, &str)]) -> Result<Agent, String> {
        let mut cmd = Command::new(path);
        cmd.args(["--node", "kmatrix-guest"]).env("TAPIO_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", path.display()))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let out = child.stdout.take().ok_or("agent stdout not piped")?;
        let err = child.stderr.take().ok_or("agent stderr not piped")?;
        let out_seen = Arc::clone(&seen);
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("evidence: {line}");
                let mut s = out_seen.lock().unwrap_or_else(|p| p.into_inner());
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => s.events.push(v),
                    _ => s.garbage.push(line),
                }
            }
        });
        let err_seen = Arc::clone(&seen);
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                println!("agent: {line}");
                err_seen.lock().unwrap_or_else(|p| p.into_inner()).log.push(line);
            }
        });
        let mut agent = Agent { child, seen, readers: vec![out_reader, err_reader] };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if agent.log().iter().any(|l| l.contains(STATUS)) {
                return Ok(agent);
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                let stopped = agent.finish(Some(status));
                return Err(format!("agent exited before ready ({status}): {}", tail(&stopped.log)));
            }
            if Instant::now() >= deadline {
                let stopped = agent.stop();
                return Err(format!("agent not ready within {READY_TIMEOUT:?}: {}", tail(&stopped.log)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).log.clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).events.clone()
    }

    /// Waits up to `timeout` for an event matching `pred`; true if one came.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.events().iter().any(&pred) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the agent process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, as a node's init would send; SIGKILL if it does not exit in time.
    pub fn stop(mut self) -> Stopped {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        self.finish(status)
    }

    fn finish(mut self, exit: Option<ExitStatus>) -> Stopped {
        // The pipes close with the process: the readers end on their own.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        Stopped { exit, log: seen.log, garbage: seen.garbage }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last few log lines, for a failure's detail.
pub fn tail(log: &[String]) -> String {
    let start = log.len().saturating_sub(3);
    log[start..].join(" | ")
}
