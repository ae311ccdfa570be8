//! The real tapio-controller binary on loopback, for the agent's controller-mode tests, and
//! the small HTTP/1.1 GET the tests read it with (the agent's own client is what is under
//! test, so the tests do not use it).

use super::agent;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A sibling binary of the agent (`tapio-controller`, `tapio`): `cargo test --workspace`
/// builds them all.
pub fn sibling(name: &str) -> PathBuf {
    let bin = Path::new(agent::BIN).with_file_name(name);
    assert!(bin.exists(), "{} missing: run `cargo build --workspace` (scripts/test does)", bin.display());
    bin
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Polls `f` until it holds; fails the test naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET `path` from 127.0.0.1:`port`: the status code and the (de-chunked) body, or None if
/// the exchange failed.
pub fn get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw[split + 4..].to_vec();
    // The controller answers small bodies with Content-Length; larger ones may be chunked.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Some((code, body))
}

/// The body of a 200 answer to GET `path`, as text; None for any other answer.
pub fn get_ok_text(port: u16, path: &str) -> Option<String> {
    match get(port, path)? {
        (200, body) => String::from_utf8(body).ok(),
        _ => None,
    }
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).ok()?;
        if size == 0 {
            break;
        }
        out.extend_from_slice(b.get(eol + 2..eol + 2 + size)?);
        b = b.get(eol + 2 + size + 2..)?;
    }
    Some(out)
}

/// A tapio-controller on 127.0.0.1, its file sink and log in a test directory; killed on
/// drop.
pub struct Controller {
    child: Child,
    pub port: u16,
    pub sink: PathBuf,
    log: PathBuf,
}

impl Controller {
    /// Starts a controller on `port` with a file sink in `dir` and `extra` arguments, and
    /// waits until it answers.
    pub fn start(dir: &Path, port: u16, extra: &[&str]) -> Controller {
        let sink = dir.join("controller-sink.jsonl");
        let log = dir.join(format!("controller-{port}.log"));
        let child = Command::new(sibling("tapio-controller"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--sink", "file", "--sink-path"])
            .arg(&sink)
            .args(["--send-interval-ms", "200"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("controller log file")))
            .spawn()
            .expect("spawn tapio-controller");
        let c = Controller { child, port, sink, log };
        wait_until("the controller to answer", Duration::from_secs(20), || {
            get(port, "/healthz").map(|(s, _)| s) == Some(200)
        });
        c
    }

    /// GET /v1/status; it must answer 200 with JSON.
    pub fn status(&self) -> Value {
        let (code, body) = get(self.port, "/v1/status").expect("status");
        assert_eq!(code, 200);
        serde_json::from_slice(&body).expect("status JSON")
    }

    /// The controller's view of agent `agent_id`, if it knows it.
    pub fn agent_status(&self, agent_id: &str) -> Option<Value> {
        self.status()["agents"].as_array()?.iter().find(|a| a["agent_id"] == agent_id).cloned()
    }

    /// The (version, hash) of the config it serves.
    pub fn target(&self) -> (String, String) {
        let s = self.status();
        (
            s["config"]["version"].as_str().expect("config.version").to_string(),
            s["config"]["config_hash"].as_str().expect("config.config_hash").to_string(),
        )
    }

    /// Every record in its sink file.
    pub fn sink_events(&self) -> Vec<Value> {
        read_sink(&self.sink)
    }

    pub fn metrics(&self) -> String {
        get_ok_text(self.port, "/metrics").unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, and waits for the exit (what it acknowledged is then in its sink).
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of a controller's JSONL sink file (none if it does not exist yet).
pub fn read_sink(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("sink line is JSON"))
        .collect()
}

/// The agent's config for controller mode against 127.0.0.1:`port` (fast heartbeats and
/// polls, short timeouts), its state file in `dir`, then `extra`.
pub fn agent_config(port: u16, agent_id: &str, dir: &Path, extra: &str) -> String {
    format!(
        "[sinks]\nstdout = true\n[controller]\nurl = \"http://127.0.0.1:{port}\"\nagent_id = \"{agent_id}\"\n\
         state_file = \"{}\"\nheartbeat_interval_secs = 1\nconfig_poll_interval_secs = 1\nconnect_timeout_ms = 500\n\
         io_timeout_ms = 2000\nmax_backoff_ms = 1000\n{extra}",
        dir.join("agent-state.json").display()
    )
}
