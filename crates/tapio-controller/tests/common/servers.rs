//! Real processes for the sink tests: the controller binary (so it can be SIGKILLed) and
//! Debian's `nats-server` and `prometheus`, each on a free loopback port, with their
//! files in the test's temp dir. Every process is killed when its guard drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, SIGKILLed and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit (true) within `within`.
    pub fn terminate(&mut self, within: Duration) -> bool {
        // SAFETY: kill takes plain integers and touches no memory of ours.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP, and wait until every thread has stopped: the signal only asks, and a
    /// thread running on another CPU goes on until it next enters the kernel, long enough
    /// on a loaded machine to answer a request sent right after `kill` returned.
    pub fn stop(&self) {
        // SAFETY: kill takes plain integers and touches no memory of ours.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, libc::SIGSTOP) }, 0);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let stopped = std::fs::read_dir(&tasks).unwrap().flatten().all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the command's closing parenthesis.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('T' | 't')))
            });
            if stopped {
                return;
            }
            assert!(Instant::now() < end, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGCONT.
    pub fn resume(&self) {
        // SAFETY: kill takes plain integers and touches no memory of ours.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, libc::SIGCONT) }, 0);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_listening(addr: SocketAddr, within: Duration) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {addr} after {within:?}");
}

/// Starts the controller binary with `args` on `addr`, stderr to `dir/<log>`, and waits
/// until it accepts connections.
pub fn controller(dir: &Path, log: &str, addr: SocketAddr, args: &[String]) -> Proc {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(log)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tapio-controller"))
        .arg("--listen")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("controller starts");
    let p = Proc { child, name: "tapio-controller" };
    wait_listening(addr, Duration::from_secs(30));
    p
}

/// Starts `nats-server` with JetStream on `port`, storing in `store`.
pub fn nats_server(port: u16, store: &Path, log: &Path) -> Proc {
    nats_server_with(port, store, log, &[])
}

/// As [`nats_server`], with extra flags (`--user`, `--auth`, …).
pub fn nats_server_with(port: u16, store: &Path, log: &Path, extra: &[&str]) -> Proc {
    let bin = which("nats-server");
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("nats-server starts (scripts/setup installs it)");
    let p = Proc { child, name: "nats-server" };
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(20));
    p
}

/// The path of a tool `scripts/setup` installs; a missing one fails the test loudly.
pub fn which(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed: run scripts/setup");
}

/// GET `path` on `addr`: status and body, None when unreachable.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let resp = super::parse_response(&buf);
        Some((resp.status, String::from_utf8_lossy(&resp.body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.ok().flatten()
}

/// The value of one series (exact name and labels) in a controller's /metrics.
pub async fn scrape(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
