//! Test harness: a controller on 127.0.0.1:0 with a file sink in a fresh temp dir, and a
//! raw HTTP/1.1 client over TCP (so tests control framing, timing and bad input exactly).

#![allow(dead_code)] // each test binary uses a different subset

pub mod ingest;
pub mod servers;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tapio_controller::settings::{FileSinkConfig, FsyncPolicy};
use tapio_controller::{RunningServer, Settings, SinkTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A unique empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("tapio-controller-test-{tag}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Settings for tests: loopback, ephemeral port, file sink, short timeouts.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        sinks: vec![SinkTarget::File(FileSinkConfig {
            path: dir.join("events.jsonl"),
            max_bytes: 64 * 1024 * 1024,
            keep_files: 2,
            fsync: FsyncPolicy::Always,
        })],
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(2),
        controller_id: Some("test-controller".into()),
        ..Settings::default()
    }
}

/// A running test server and its sink file.
pub struct TestServer {
    pub server: RunningServer,
    pub sink_path: PathBuf,
    pub dir: PathBuf,
}

impl TestServer {
    pub async fn start(tag: &str) -> Self {
        Self::start_with(tag, |_| {}).await
    }

    pub async fn start_with(tag: &str, tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = temp_dir(tag);
        let mut settings = test_settings(&dir);
        tweak(&mut settings);
        let sink_path = dir.join("events.jsonl");
        let server = RunningServer::start(settings).await.expect("server starts");
        Self { server, sink_path, dir }
    }

    pub fn client(&self) -> Client {
        Client { addr: self.server.addr, headers: Vec::new() }
    }

    pub async fn stop(self) {
        self.server.stop().await.expect("clean shutdown");
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Sink lines, waiting until at least `n` are there (the writer flushes when idle).
    pub async fn sink_lines(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let lines = read_lines(&self.sink_path);
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        read_lines(&self.sink_path)
    }
}

pub fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every sink line is JSON"))
        .collect()
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("status {} body is not JSON ({e}): {:?}", self.status, String::from_utf8_lossy(&self.body))
        })
    }

    /// Asserts the error envelope shape and returns the code.
    pub fn error_code(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let v = self.json();
        let obj = v.as_object().expect("envelope is an object");
        assert_eq!(obj.len(), 1, "envelope has only `error`: {v}");
        let err = v["error"].as_object().expect("error is an object");
        assert_eq!(err.len(), 2, "error has code and message only: {v}");
        let message = err["message"].as_str().expect("message is a string");
        assert!(!message.is_empty());
        for leak in ["/work", "src/", "panicked", "backtrace", ".rs:"] {
            assert!(!message.contains(leak), "message leaks internals: {message}");
        }
        let code = err["code"].as_str().expect("code is a string").to_string();
        assert!(code.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{code}");
        code
    }
}

/// Raw HTTP/1.1 client: one request per connection (`Connection: close`).
#[derive(Clone)]
pub struct Client {
    pub addr: std::net::SocketAddr,
    pub headers: Vec<(String, String)>,
}

impl Client {
    pub fn with_header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.post_bytes(path, body.to_string().as_bytes()).await
    }

    pub async fn post_bytes(&self, path: &str, body: &[u8]) -> Resp {
        self.send("POST", path, &[("Content-Type", "application/json")], Some(body)).await
    }

    /// Sends a request with a Content-Length body (if any).
    pub async fn send(&self, method: &str, path: &str, extra: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        raw_exchange(self.addr, bytes).await
    }
}

/// Writes `request` while reading the response concurrently (as real clients do, so a
/// server that answers before reading the whole body is observed correctly), then
/// parses the response. Write errors after an early answer are expected and ignored.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: Vec<u8>) -> Resp {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr // keep the write half open until the response is read
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "response not complete within 20 s");
    drop(writer);
    parse_response(&buf)
}

/// Parses a complete response with the workspace's HTTP/1.1 reader (the one the agent and
/// the CLI use), so these tests read the controller as its real clients do.
pub fn parse_response(buf: &[u8]) -> Resp {
    let r = tapio_util::http::read_response(std::io::Cursor::new(buf), usize::MAX)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(buf)));
    Resp { status: r.status, headers: r.headers, body: r.body }
}

// ---- message builders ----

pub fn hello(agent_id: &str) -> Value {
    serde_json::json!({
        "wire_version": "tapio-wire/v1", "agent_id": agent_id, "node_name": format!("node-{agent_id}"),
        "tapio_version": "0.1.0", "kernel_release": "6.8.0", "arch": "x86_64",
        "capabilities": ["ringbuf"]
    })
}

pub fn heartbeat(agent_id: &str) -> Value {
    serde_json::json!({
        "wire_version": "tapio-wire/v1", "agent_id": agent_id, "node_name": format!("node-{agent_id}"),
        "config_version": "0", "config_hash": "", "uptime_seconds": 3,
        "observers": {"network": "running"},
        "counters": {"events_total": 7, "malformed_events_total": 0, "lost_events_total": 1,
            "correlation_drops_total": 0, "sink_drops_total": 0,
            "controller_send_failures_total": 2}
    })
}

pub fn event(i: u64) -> Value {
    serde_json::json!({
        "type": "kernel.network.connection_refused", "observer": "network", "severity": "error",
        "timestamp_unix_nanos": 1_763_700_000_000_000_000u64 + i,
        "facts": {"pid": 100 + i, "comm": "curl", "dst_port": 8080}
    })
}

pub fn batch(agent_id: &str, seq: u64, events: Vec<Value>) -> Value {
    serde_json::json!({
        "wire_version": "tapio-wire/v1", "agent_id": agent_id, "node_name": format!("node-{agent_id}"),
        "sequence": seq, "sent_at_unix_nanos": 1_763_700_001_000_000_000u64, "events": events
    })
}

/// The status entry of one agent.
pub async fn agent_status(c: &Client, agent_id: &str) -> Option<Value> {
    let s = c.get("/v1/status").await;
    assert_eq!(s.status, 200);
    s.json()["agents"].as_array().unwrap().iter().find(|a| a["agent_id"] == agent_id).cloned()
}

/// The value of a metric line (exact name with labels) in /metrics.
pub async fn metric(c: &Client, series: &str) -> Option<f64> {
    let m = c.get("/metrics").await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}
