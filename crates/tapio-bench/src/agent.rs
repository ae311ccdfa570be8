//! Running the real release agent under measurement: start it with a file sink, wait for
//! its "ready:" line, stop it with SIGTERM, and collect its final loss counters and its
//! total CPU time (from wait4's rusage, which covers every thread).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the agent may take to attach everything.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to drain, flush and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Log lines kept for error messages.
const KEPT_LINES: usize = 50;

/// The pid of the agent under measurement (0 when none), for the interrupt handler.
static RUNNING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_interrupt(signal: libc::c_int) {
    let pid = RUNNING.load(Ordering::SeqCst);
    // SAFETY: kill and _exit are async-signal-safe. A paused agent is resumed first so that
    // it can act on SIGTERM (detach its programs and exit) instead of staying stopped.
    unsafe {
        if pid > 0 {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGTERM);
        }
        libc::_exit(128 + signal);
    }
}

/// On SIGINT/SIGTERM, stops the agent under measurement before this process exits.
pub fn stop_agent_on_interrupt() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only calls async-signal-safe functions.
        unsafe { libc::signal(signal, on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

#[derive(Default)]
struct LogState {
    ready: Option<String>,
    final_counters: Option<String>,
    last_lines: Vec<String>,
    /// The drain's scheduling changes (real-time, demoted, promoted), the first
    /// [`KEPT_SCHEDULING_LINES`] of them.
    scheduling_lines: Vec<String>,
    /// The lines before "ready:" (what each observer found and attached), the first
    /// [`KEPT_STARTUP_LINES`] of them.
    startup_lines: Vec<String>,
    closed: bool,
}

const KEPT_SCHEDULING_LINES: usize = 20;
const KEPT_STARTUP_LINES: usize = 500;
/// The agent's log lines about its drain's scheduling carry this module path.
pub const DRAIN_PRIORITY_LOG: &str = "tapio_pipeline::drain_priority: ";

/// A running agent; killed (SIGKILL) if dropped without [`Agent::stop`].
pub struct Agent {
    pid: i32,
    reaped: bool,
    log: Arc<(Mutex<LogState>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The "ready:" line (which observers attached).
    pub ready_line: String,
}

/// What the agent left behind when it stopped.
pub struct Stopped {
    /// utime + stime of all threads over the whole life of the process, in ns.
    pub cpu_ns: u64,
    /// The `counters final` JSON, if the agent logged it.
    pub counters: Option<Value>,
    pub exit: String,
    /// What the agent logged about its drain's scheduling (the agent's `drain_priority`).
    pub scheduling_lines: Vec<String>,
}

/// Writes the agent's config with the stdout sink only (node name "tapio-bench").
pub fn write_stdout_config(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("agent.toml");
    std::fs::write(&path, "node_name = \"tapio-bench\"\n\n[sinks]\nstdout = true\n")
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Writes the agent's config: file sink only, and no rotation within a run (the largest
/// `max_bytes` the agent accepts), so every line can be counted afterwards.
pub fn write_config(dir: &Path, evidence: &Path) -> Result<PathBuf, String> {
    write_config_named(dir, evidence, "agent.toml", "")
}

/// Like [`write_config`], to `dir/file_name`, with `sections` (whole TOML sections) after it.
pub fn write_config_named(dir: &Path, evidence: &Path, file_name: &str, sections: &str) -> Result<PathBuf, String> {
    let path = dir.join(file_name);
    let quoted = toml_string(&evidence.to_string_lossy());
    let text = format!(
        "node_name = \"tapio-bench\"\n\n[sinks]\nstdout = false\n\n[sinks.file]\npath = {quoted}\nmax_bytes = {}\nkeep_files = 1\n{sections}",
        1u64 << 40
    );
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Agent {
    /// Starts `binary --config <config>` and waits until it logs "ready:".
    pub fn start(binary: &Path, config: &Path) -> Result<Agent, String> {
        Self::start_with_stdout(binary, config, Stdio::null()).map(|(agent, _)| agent)
    }

    /// Like [`Agent::start`], with the agent's stdout connected as given; returns the pipe's
    /// read end when `stdout` is [`Stdio::piped`].
    pub fn start_with_stdout(
        binary: &Path,
        config: &Path,
        stdout: Stdio,
    ) -> Result<(Agent, Option<std::process::ChildStdout>), String> {
        if !binary.exists() {
            return Err(format!("{} does not exist (run scripts/bench, which builds it)", binary.display()));
        }
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .env("TAPIO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let pid = child.id() as i32;
        let stderr = child.stderr.take().expect("stderr is piped");
        let evidence_out = child.stdout.take();
        // The process is reaped with wait4 (for its rusage); the Child handle is not needed.
        drop(child);

        let log = Arc::new((Mutex::new(LogState::default()), Condvar::new()));
        let shared = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            // Ends at EOF, i.e. when the agent exits.
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (state, cv) = &*shared;
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                if s.ready.is_none() && line.contains("ready:") {
                    s.ready = Some(line.clone());
                }
                if s.ready.is_none() && s.startup_lines.len() < KEPT_STARTUP_LINES {
                    s.startup_lines.push(line.clone());
                }
                if let Some(at) = line.find("counters final ") {
                    s.final_counters = Some(line[at + "counters final ".len()..].to_string());
                }
                if line.contains(DRAIN_PRIORITY_LOG) && s.scheduling_lines.len() < KEPT_SCHEDULING_LINES {
                    s.scheduling_lines.push(line.clone());
                }
                if s.last_lines.len() == KEPT_LINES {
                    s.last_lines.remove(0);
                }
                s.last_lines.push(line);
                cv.notify_all();
            }
            let (state, cv) = &*shared;
            state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            cv.notify_all();
        });

        RUNNING.store(pid, Ordering::SeqCst);
        let mut agent = Agent { pid, reaped: false, log, reader: Some(reader), ready_line: String::new() };
        let deadline = Instant::now() + READY_TIMEOUT;
        let (state, cv) = &*agent.log;
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        while s.ready.is_none() && !s.closed && Instant::now() < deadline {
            s = cv.wait_timeout(s, Duration::from_millis(200)).unwrap_or_else(|p| p.into_inner()).0;
        }
        match s.ready.clone() {
            Some(line) => {
                drop(s);
                agent.ready_line = line;
                Ok((agent, evidence_out))
            }
            None => {
                let why = if s.closed { "exited before it was ready" } else { "was not ready in time" };
                let tail = s.last_lines.join("\n  ");
                drop(s);
                Err(format!("tapio-agent {why}; its last log lines:\n  {tail}"))
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Stops the agent (SIGSTOP) until the returned guard is dropped (SIGCONT): its drain
    /// thread then consumes nothing, so the kernel sends it no ring-buffer wake-ups.
    pub fn pause(&self) -> Paused {
        // SAFETY: signalling our own unreaped child.
        unsafe { libc::kill(self.pid, libc::SIGSTOP) };
        Paused(self.pid)
    }

    /// The first line the agent logged before "ready:" that contains `needle` (an
    /// observer's start-up report, e.g. what it found to watch).
    pub fn startup_line(&self, needle: &str) -> Option<String> {
        let s = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
        s.startup_lines.iter().find(|l| l.contains(needle)).cloned()
    }

    /// Whether start-up attached every program of every observer.
    pub fn fully_attached(&self) -> bool {
        !self.ready_line.contains("degraded") && !self.ready_line.contains("failed")
    }

    /// Sends SIGTERM and waits for the agent to flush and exit.
    pub fn stop(mut self) -> Result<Stopped, String> {
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let (status, usage) = loop {
            let mut status = 0;
            // SAFETY: zeroed rusage is a valid out-parameter.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waiting for our own child with valid out-pointers.
            let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if rc == self.pid {
                self.reaped = true;
                RUNNING.store(0, Ordering::SeqCst);
                break (status, usage);
            }
            if rc < 0 {
                return Err(format!("waiting for the agent: {}", std::io::Error::last_os_error()));
            }
            if Instant::now() >= deadline {
                return Err(format!("the agent did not exit within {STOP_TIMEOUT:?} of SIGTERM"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let tv_ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
        let cpu_ns = tv_ns(usage.ru_utime) + tv_ns(usage.ru_stime);
        let exit = if libc::WIFEXITED(status) {
            format!("exit {}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("status {status}")
        };
        let s = self.log.0.lock().unwrap_or_else(|p| p.into_inner());
        let counters = s.final_counters.as_deref().and_then(|j| serde_json::from_str(j).ok());
        Ok(Stopped { cpu_ns, counters, exit, scheduling_lines: s.scheduling_lines.clone() })
    }
}

/// Resumes a paused agent when dropped.
pub struct Paused(i32);

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own unreaped child; reaped right after so no zombie is left.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
            RUNNING.store(0, Ordering::SeqCst);
        }
    }
}

/// A counter from the final counters JSON (0 when absent).
pub fn counter(counters: &Value, name: &str) -> u64 {
    counters.get(name).and_then(Value::as_u64).unwrap_or(0)
}

/// A private scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Result<Self, String> {
        Self::under(&std::env::temp_dir(), label)
    }

    /// The same, under `base` (for files that must be on a given filesystem).
    pub fn under(base: &Path, label: &str) -> Result<Self, String> {
        let dir = base.join(format!("tapio-bench-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_for_the_agent() {
        let dir = Scratch::new("config-test").unwrap();
        let path = write_config(&dir.0, &dir.0.join("ev \"q\".jsonl")).unwrap();
        let config = tapio_agent::config::AgentConfig::from_file(&path).unwrap();
        assert!(!config.sinks.stdout);
        let file = config.sinks.file.unwrap();
        assert!(file.path.ends_with("ev \"q\".jsonl"));
        assert_eq!(file.max_bytes, 1 << 40);
    }
}
