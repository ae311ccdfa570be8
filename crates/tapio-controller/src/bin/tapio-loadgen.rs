//! tapio-loadgen: drives a tapio-controller on loopback and prints a small table.
//!
//! Two throughput modes (both by default):
//! * `throughput`: N keep-alive connections, each an agent sending 256-event batches
//!   back to back; reports accepted events/s and request latency percentiles.
//! * `agents`: 10,000 simulated agents say hello, then heartbeat every 10 s (spread
//!   evenly) over a small connection pool; reports heartbeat latency and the
//!   controller's CPU and RSS from `/proc/<pid>/stat` and `/proc/<pid>/status`.
//!
//! Hostile modes (each on its own; see README.md, "Floods it survives"):
//! * `flood`: slowloris, idle, slow-body and unfinished-header connection floods from
//!   their own loopback addresses while a prober times `/healthz` and an agent's hello
//!   every 500 ms; reports probe latency, failures and the controller's RSS during and
//!   after each flood.
//! * `fat-heartbeats`: agents send heartbeats near the body limit; reports how many are
//!   refused and what the controller's RSS and `/v1/status` cost afterwards.
//!
//! By default it starts the `tapio-controller` binary next to its own executable (build
//! both with `cargo build --release -p tapio-controller`) with records going to
//! /dev/null; `--addr` and `--pid` target a controller that is already running.
//! Load generator and controller share the machine's cores: read the figures as a
//! floor, not a capacity.

use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Throughput,
    Agents,
    All,
    Flood,
    FatHeartbeats,
}

/// Connection floods of `--mode flood`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Flood {
    /// Request heads trickled one header line at a time, never finished.
    Slowloris,
    /// Connect and send nothing.
    Idle,
    /// A complete head, then the body one byte a second.
    SlowBody,
    /// 380 KiB of unfinished head each (the memory flood).
    Headers,
    /// Each of the above in turn.
    All,
}

/// Load generator for tapio-controller.
#[derive(Debug, Parser)]
struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// Controller binary to start (default: `tapio-controller` next to this binary).
    #[arg(long)]
    controller_bin: Option<PathBuf>,
    /// Use a running controller at this address instead of starting one.
    #[arg(long, requires = "pid")]
    addr: Option<SocketAddr>,
    /// Pid of the running controller (for CPU and RSS).
    #[arg(long)]
    pid: Option<u32>,
    /// Throughput: concurrent connections (one agent each).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Throughput: events per batch.
    #[arg(long, default_value_t = 256)]
    batch_events: usize,
    /// Throughput: seconds to run.
    #[arg(long, default_value_t = 10)]
    throughput_secs: u64,
    /// Agents: simulated agents.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Agents: heartbeat interval per agent.
    #[arg(long, default_value_t = 10)]
    heartbeat_interval_secs: u64,
    /// Agents: seconds of heartbeating to measure.
    #[arg(long, default_value_t = 30)]
    agents_secs: u64,
    /// Agents: connections the simulated agents share.
    #[arg(long, default_value_t = 32)]
    agent_connections: usize,
    /// `--max-connections` of the started controller (default: 1024 for the hostile
    /// modes, as in issue 13; 4096 otherwise).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Flood: which flood.
    #[arg(long, value_enum, default_value_t = Flood::All)]
    flood: Flood,
    /// Flood: hostile connections kept open at once.
    #[arg(long, default_value_t = 1_500)]
    flood_connections: usize,
    /// Flood: distinct source addresses (127.0.2.x) the flood comes from; 1 shows the
    /// per-peer bound, many the total bound.
    #[arg(long, default_value_t = 1)]
    flood_peers: u8,
    /// Flood: seconds each flood lasts.
    #[arg(long, default_value_t = 15)]
    flood_secs: u64,
    /// Fat heartbeats: agents sending them.
    #[arg(long, default_value_t = 200)]
    fat_agents: usize,
    /// Extra flag for the started controller, repeatable (`--controller-arg=--sink
    /// --controller-arg=file`); the default sink is stdout (to /dev/null).
    #[arg(long = "controller-arg", allow_hyphen_values = true)]
    controller_args: Vec<String>,
    /// Start a null OTLP collector on loopback (answers 200 to every export) and add
    /// `--sink otlp --otlp-endpoint <it>` to the started controller.
    #[arg(long)]
    otlp_null_collector: bool,
}

fn main() -> Res<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

struct Target {
    addr: SocketAddr,
    pid: u32,
    child: Option<Child>,
}

async fn run(args: Args) -> Res<()> {
    let mut extra = args.controller_args.clone();
    let collector = if args.otlp_null_collector {
        let (endpoint, exports) = null_collector().await?;
        extra.extend(["--sink".into(), "otlp".into(), "--otlp-endpoint".into(), endpoint]);
        Some(exports)
    } else {
        None
    };
    let mut target = match (args.addr, args.pid) {
        (Some(addr), Some(pid)) => Target { addr, pid, child: None },
        _ => start_controller(&args, &extra)?,
    };
    wait_healthy(target.addr).await?;
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let outcome = async {
        if matches!(args.mode, Mode::Throughput | Mode::All) {
            throughput(&args, &target, &mut rows).await?;
        }
        if matches!(args.mode, Mode::Agents | Mode::All) {
            agents(&args, &target, &mut rows).await?;
        }
        if args.mode == Mode::Flood {
            hostile::floods(&args, &target, &mut rows).await?;
        }
        if args.mode == Mode::FatHeartbeats {
            hostile::fat_heartbeats(&args, &target, &mut rows).await?;
        }
        Res::Ok(())
    }
    .await;
    if let Some(child) = target.child.as_mut() {
        stop_controller(child);
    }
    outcome?;
    if let Some(exports) = collector {
        let (n, bytes) = (exports.0.load(Ordering::Relaxed), exports.1.load(Ordering::Relaxed));
        rows.push(("otlp".into(), "exports received (gzip bytes)".into(), format!("{n} ({} KiB)", bytes / 1024)));
    }
    print_table(target.pid, &rows);
    Ok(())
}

/// Export requests and body bytes the null collector received.
type Exports = Arc<(AtomicU64, AtomicU64)>;

/// An OTLP/HTTP receiver on loopback that answers 200 to everything and counts.
async fn null_collector() -> Res<(String, Exports)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}/v1/logs", listener.local_addr()?);
    let exports: Exports = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let counted = Arc::clone(&exports);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let counted = Arc::clone(&counted);
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                    counted.0.fetch_add(1, Ordering::Relaxed);
                    counted.1.fetch_add(body as u64, Ordering::Relaxed);
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok((endpoint, exports))
}

fn start_controller(args: &Args, extra: &[String]) -> Res<Target> {
    let bin = match &args.controller_bin {
        Some(b) => b.clone(),
        None => {
            std::env::current_exe()?.parent().ok_or("no parent dir of the loadgen binary")?.join("tapio-controller")
        }
    };
    let hostile = matches!(args.mode, Mode::Flood | Mode::FatHeartbeats);
    let max_connections = args.max_connections.unwrap_or(if hostile { 1_024 } else { 4_096 });
    // Reserve a free port, then hand it to the controller.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(&bin)
        .args([
            "--listen",
            &addr.to_string(),
            "--max-agents",
            &(args.agents + args.connections + 16).to_string(),
            "--max-batch-events",
            &args.batch_events.to_string(),
            "--max-connections",
            &max_connections.to_string(),
            "--log-level",
            "warn",
        ])
        .args(extra)
        .stdout(Stdio::null()) // the stdout sink still serializes every record
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    Ok(Target { addr, pid: child.id(), child: Some(child) })
}

fn stop_controller(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SIGTERM for a graceful stop; this is the child we started.
        // SAFETY: kill takes plain integers and touches no memory of ours.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let _ = child.wait();
}

async fn wait_healthy(addr: SocketAddr) -> Res<()> {
    for _ in 0..100 {
        if let Ok(mut conn) = Conn::open(addr).await {
            if let Ok((200, _)) = conn.request("GET", "/healthz", None).await {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("controller at {addr} did not become healthy").into())
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Res<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    async fn request(&mut self, method: &str, path: &str, body: Option<Bytes>) -> Res<(u16, Bytes)> {
        self.sender.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "loadgen")
            .header("content-type", "application/json")
            .body(Full::new(body.unwrap_or_default()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn hello_body(agent: &str) -> Bytes {
    Bytes::from(
        json!({"wire_version": "tapio-wire/v1", "agent_id": agent, "node_name": format!("node-{agent}"),
               "tapio_version": "loadgen", "kernel_release": "6.8.0", "arch": "x86_64"})
        .to_string(),
    )
}

/// A batch body split around its sequence number, so each request only concatenates.
struct BatchTemplate {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl BatchTemplate {
    fn new(agent: &str, events: usize) -> Self {
        let events: Vec<Value> = (0..events)
            .map(|i| {
                json!({"type": "kernel.network.retransmit_spike", "observer": "network",
                       "severity": "warning", "timestamp_unix_nanos": 1_763_700_000_000_000_000u64 + i as u64,
                       "workload": {"cgroup_id": 1234, "pod_uid": "6f1c1b2e-8a53-4c3b-9f0e-2b1d2c3e4f50"},
                       "facts": {"pid": 4242, "comm": "java", "src_addr": "10.0.0.5", "src_port": 40512,
                                 "dst_addr": "10.0.0.9", "dst_port": 8080, "retransmits_in_window": 9,
                                 "window_ms": 1000, "retransmits_total": 120, "srtt_us": 5300, "cwnd": 10}})
            })
            .collect();
        let body = json!({"wire_version": "tapio-wire/v1", "agent_id": agent,
                          "node_name": format!("node-{agent}"), "sequence": 918_273_645u64,
                          "sent_at_unix_nanos": 1_763_700_001_000_000_000u64, "events": events})
        .to_string();
        let at = body.find("918273645").unwrap_or(0);
        Self { head: body.as_bytes()[..at].to_vec(), tail: body.as_bytes()[at + "918273645".len()..].to_vec() }
    }

    fn render(&self, seq: u64) -> Bytes {
        let mut v = Vec::with_capacity(self.head.len() + self.tail.len() + 20);
        v.extend_from_slice(&self.head);
        v.extend_from_slice(seq.to_string().as_bytes());
        v.extend_from_slice(&self.tail);
        Bytes::from(v)
    }
}

async fn throughput(args: &Args, target: &Target, rows: &mut Vec<(String, String, String)>) -> Res<()> {
    let accepted = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.throughput_secs);
    let cpu_before = ProcSample::read(target.pid)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut body_bytes = 0;
    for c in 0..args.connections {
        let agent = format!("loadgen-tp-{c}");
        let template = BatchTemplate::new(&agent, args.batch_events);
        body_bytes = template.render(1).len();
        let addr = target.addr;
        let accepted = Arc::clone(&accepted);
        let failures = Arc::clone(&failures);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut conn = Conn::open(addr).await?;
            conn.request("POST", "/v1/agents/hello", Some(hello_body(&agent))).await?;
            let mut seq = 1;
            while Instant::now() < deadline {
                let body = template.render(seq);
                let t0 = Instant::now();
                let (status, resp) = conn.request("POST", "/v1/events", Some(body)).await?;
                lat.push(t0.elapsed());
                if status == 200 {
                    let v: Value = serde_json::from_slice(&resp)?;
                    accepted.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
            }
            Res::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = started.elapsed();
    let cpu_after = ProcSample::read(target.pid)?;
    let events = accepted.load(Ordering::Relaxed);
    let p = percentiles(&mut lat);
    let add = |rows: &mut Vec<_>, k: &str, v: String| rows.push(("throughput".to_string(), k.to_string(), v));
    add(rows, "connections (agents)", args.connections.to_string());
    add(rows, "batch", format!("{} events, {} KiB body", args.batch_events, body_bytes / 1024));
    add(rows, "batches sent", format!("{} in {:.1} s", lat.len(), elapsed.as_secs_f64()));
    add(rows, "non-200 responses", failures.load(Ordering::Relaxed).to_string());
    add(rows, "events accepted/s", format!("{:.0}", events as f64 / elapsed.as_secs_f64()));
    add(rows, "request latency p50/p99/max", p);
    add(rows, "controller CPU", cpu_after.cpu_since(&cpu_before));
    add(rows, "controller RSS (peak)", cpu_after.rss());
    let text = metrics_text(target.addr).await?;
    add(
        rows,
        "sink records written/dropped",
        format!(
            "{} / {}",
            series_sum(&text, "tapio_controller_sink_records_written_total{"),
            series_sum(&text, "tapio_controller_sink_records_dropped_total{")
        ),
    );
    Ok(())
}

async fn metrics_text(addr: SocketAddr) -> Res<String> {
    let mut conn = Conn::open(addr).await?;
    let (_, body) = conn.request("GET", "/metrics", None).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The sum of every series whose name and labels start with `prefix` (all sinks).
fn series_sum(text: &str, prefix: &str) -> String {
    let sum: f64 = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum();
    format!("{:.0}", sum + 0.0) // an empty f64 sum is -0.0
}

async fn agents(args: &Args, target: &Target, rows: &mut Vec<(String, String, String)>) -> Res<()> {
    let n = args.agents;
    let pool = args.agent_connections.max(1);
    // Register every agent first.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..pool {
        let addr = target.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut ok = 0u64;
            for a in (w..n).step_by(pool) {
                let (status, _) =
                    conn.request("POST", "/v1/agents/hello", Some(hello_body(&format!("sim-{a}")))).await?;
                ok += u64::from(status == 200);
            }
            Res::Ok(ok)
        }));
    }
    let mut registered = 0;
    for t in tasks {
        registered += t.await??;
    }
    let hello_secs = t0.elapsed().as_secs_f64();

    // Heartbeats: each agent once per interval, phases spread evenly over the interval.
    let interval = Duration::from_secs(args.heartbeat_interval_secs.max(1));
    let duration = Duration::from_secs(args.agents_secs.max(1));
    let before = ProcSample::read(target.pid)?;
    let started = Instant::now();
    let accepted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..pool {
        let addr = target.addr;
        let accepted = Arc::clone(&accepted);
        let mine: Vec<usize> = (w..n).step_by(pool).collect();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            if mine.is_empty() {
                return Res::Ok(lat);
            }
            let mut conn = Conn::open(addr).await?;
            let period = interval / u32::try_from(mine.len()).unwrap_or(u32::MAX);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0usize;
            let mut uptime = 0u64;
            while started.elapsed() < duration {
                tick.tick().await;
                let a = mine[i % mine.len()];
                if i.is_multiple_of(mine.len()) {
                    uptime += interval.as_secs();
                }
                i += 1;
                let body = json!({"wire_version": "tapio-wire/v1", "agent_id": format!("sim-{a}"),
                    "node_name": format!("node-sim-{a}"), "config_version": "1",
                    "config_hash": "sha256:loadgen", "uptime_seconds": uptime,
                    "observers": {"network": "running", "container": "running", "storage": "running", "node": "degraded"},
                    "counters": {"events_total": i, "malformed_events_total": 0, "lost_events_total": 0,
                        "correlation_drops_total": 0, "sink_drops_total": 0, "controller_send_failures_total": 0},
                    "degraded_reasons": []});
                let t = Instant::now();
                let (status, resp) = conn
                    .request("POST", "/v1/agents/heartbeat", Some(Bytes::from(body.to_string())))
                    .await?;
                lat.push(t.elapsed());
                if status == 200 && serde_json::from_slice::<Value>(&resp)?["accepted"] == true {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
            Res::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = started.elapsed();
    let after = ProcSample::read(target.pid)?;

    // The status a plain client gets (the first page), the summary alone, and a walk of
    // every page as `tapio status` does it.
    let mut conn = Conn::open(target.addr).await?;
    let t = Instant::now();
    let (_, status_body) = conn.request("GET", "/v1/status", None).await?;
    let status_ms = t.elapsed().as_secs_f64() * 1000.0;
    let listed = serde_json::from_slice::<Value>(&status_body)?["agents"].as_array().map_or(0, Vec::len);
    let t = Instant::now();
    let (_, summary_body) = conn.request("GET", "/v1/status?limit=0", None).await?;
    let summary_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let (mut walked, mut pages, mut largest, mut cursor) = (0, 0, 0, String::new());
    loop {
        let path = format!("/v1/status?limit=5000&after={cursor}");
        let (_, page) = conn.request("GET", &path, None).await?;
        let v = serde_json::from_slice::<Value>(&page)?;
        walked += v["agents"].as_array().map_or(0, Vec::len);
        pages += 1;
        largest = largest.max(page.len());
        match v["next_after"].as_str() {
            // Loadgen agent ids need no percent-encoding.
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let walk_ms = t.elapsed().as_secs_f64() * 1000.0;

    let add = |rows: &mut Vec<_>, k: &str, v: String| rows.push(("agents".to_string(), k.to_string(), v));
    add(rows, "simulated agents", format!("{n} ({registered} registered in {hello_secs:.1} s)"));
    add(rows, "heartbeat interval", format!("{} s, {pool} connections", interval.as_secs()));
    add(
        rows,
        "heartbeats sent/accepted",
        format!(
            "{} / {} in {:.1} s ({:.0}/s)",
            lat.len(),
            accepted.load(Ordering::Relaxed),
            elapsed.as_secs_f64(),
            lat.len() as f64 / elapsed.as_secs_f64()
        ),
    );
    add(rows, "heartbeat latency p50/p99/max", percentiles(&mut lat));
    add(rows, "controller CPU", after.cpu_since(&before));
    add(rows, "controller RSS (peak)", after.rss());
    add(rows, "GET /v1/status", format!("{status_ms:.1} ms, {} KiB, {listed} agents", status_body.len() / 1024));
    add(rows, "GET /v1/status?limit=0", format!("{summary_ms:.1} ms, {} B (summary)", summary_body.len()));
    add(
        rows,
        "status walk, limit=5000",
        format!("{walk_ms:.1} ms, {pages} pages, {walked} agents, largest {} KiB", largest / 1024),
    );
    Ok(())
}

fn percentiles(lat: &mut [Duration]) -> String {
    if lat.is_empty() {
        return "n/a".into();
    }
    lat.sort_unstable();
    let at = |q: f64| {
        let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
        lat[i].as_secs_f64() * 1000.0
    };
    format!("{:.2} / {:.2} / {:.2} ms", at(0.5), at(0.99), at(1.0))
}

/// CPU time and memory of a process from /proc.
struct ProcSample {
    at: Instant,
    cpu_ticks: u64,
    rss_kib: u64,
    hwm_kib: u64,
}

impl ProcSample {
    fn read(pid: u32) -> Res<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the ")" that ends the command name; utime and stime are 14 and 15.
        let after = stat.rsplit_once(')').ok_or("bad /proc stat")?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11).ok_or("short stat")?.parse()?;
        let stime: u64 = fields.get(12).ok_or("short stat")?.parse()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self { at: Instant::now(), cpu_ticks: utime + stime, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") })
    }

    fn cpu_since(&self, before: &ProcSample) -> String {
        // SAFETY: sysconf takes a constant and touches no memory of ours.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu = (self.cpu_ticks.saturating_sub(before.cpu_ticks)) as f64 / hz;
        let wall = self.at.duration_since(before.at).as_secs_f64();
        format!("{:.1}% of one core ({cpu:.1} s in {wall:.1} s)", 100.0 * cpu / wall)
    }

    fn rss(&self) -> String {
        format!("{:.1} MiB ({:.1} MiB)", self.rss_kib as f64 / 1024.0, self.hwm_kib as f64 / 1024.0)
    }
}

fn print_table(pid: u32, rows: &[(String, String, String)]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("tapio-loadgen: controller pid {pid}, {cores} CPUs shared with the load generator");
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(4).max(4);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(6).max(6);
    println!("{:<w0$}  {:<w1$}  value", "mode", "metric");
    println!("{}  {}  {}", "-".repeat(w0), "-".repeat(w1), "-".repeat(40));
    for (m, k, v) in rows {
        println!("{m:<w0$}  {k:<w1$}  {v}");
    }
}

/// The hostile modes.
mod hostile {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    use super::{hello_body, percentiles, Args, Conn, Flood, ProcSample, Res, Target};

    type Rows = Vec<(String, String, String)>;

    /// A probe that got no answer within this long counts as failed.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

    async fn connect_from(src: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
        socket.connect(to).await
    }

    /// One hostile connection slot: connects, plays `flood`, reconnects whenever the
    /// server closes it, until `stop`.
    async fn attacker(flood: Flood, src: Ipv4Addr, to: SocketAddr, stop: Arc<AtomicBool>, closed: Arc<AtomicU64>) {
        let pad = "a".repeat(1024);
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut s) = connect_from(src, to).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let first: Vec<u8> = match flood {
                Flood::Idle | Flood::All => Vec::new(),
                Flood::Slowloris => b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec(),
                Flood::SlowBody => b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Content-Length: 100000\r\n\r\n{"
                    .to_vec(),
                Flood::Headers => {
                    let mut h = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
                    while h.len() < 380 * 1024 {
                        h.extend_from_slice(format!("X-Pad-{}: {pad}\r\n", h.len()).as_bytes());
                    }
                    h
                }
            };
            let mut alive = s.write_all(&first).await.is_ok();
            let mut buf = [0u8; 512];
            while alive && !stop.load(Ordering::Relaxed) {
                let trickle: &[u8] = match flood {
                    Flood::Slowloris => b"X-a: b\r\n",
                    Flood::SlowBody => b" ",
                    _ => b"",
                };
                tokio::select! {
                    r = s.read(&mut buf) => alive = matches!(r, Ok(n) if n > 0),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if !trickle.is_empty() {
                            alive = s.write_all(trickle).await.is_ok();
                        }
                    }
                }
            }
            if !stop.load(Ordering::Relaxed) {
                closed.fetch_add(1, Ordering::Relaxed);
                // A closed slot comes back, but not in a tight loop on a shared machine.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Times a fresh-connection `/healthz` and an agent's hello every 500 ms until `stop`.
    async fn prober(to: SocketAddr, stop: Arc<AtomicBool>) -> (Vec<Duration>, Vec<Duration>, u64) {
        let (mut health, mut hello, mut failed) = (Vec::new(), Vec::new(), 0);
        while !stop.load(Ordering::Relaxed) {
            for (path, body, lat) in
                [("/healthz", None, &mut health), ("/v1/agents/hello", Some(hello_body("probe-agent")), &mut hello)]
            {
                let t = Instant::now();
                let once = async {
                    let mut conn = Conn::open(to).await?;
                    conn.request(if body.is_some() { "POST" } else { "GET" }, path, body).await
                };
                match tokio::time::timeout(PROBE_TIMEOUT, once).await {
                    Ok(Ok((200, _))) => lat.push(t.elapsed()),
                    _ => failed += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (health, hello, failed)
    }

    fn mib(kib: u64) -> String {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    }

    pub async fn floods(args: &Args, target: &Target, rows: &mut Rows) -> Res<()> {
        let kinds = match args.flood {
            Flood::All => vec![Flood::Slowloris, Flood::Idle, Flood::SlowBody, Flood::Headers],
            one => vec![one],
        };
        for kind in kinds {
            let base = ProcSample::read(target.pid)?;
            let stop = Arc::new(AtomicBool::new(false));
            let closed = Arc::new(AtomicU64::new(0));
            let mut attackers = Vec::new();
            for i in 0..args.flood_connections {
                let peer = 1 + (i % usize::from(args.flood_peers.max(1))) as u8;
                let src = Ipv4Addr::new(127, 0, 2, peer);
                attackers.push(tokio::spawn(attacker(kind, src, target.addr, Arc::clone(&stop), Arc::clone(&closed))));
            }
            // Let the flood build up before probing.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let probe_stop = Arc::new(AtomicBool::new(false));
            let probe = tokio::spawn(prober(target.addr, Arc::clone(&probe_stop)));
            let mut peak_rss = 0;
            let until = Instant::now() + Duration::from_secs(args.flood_secs);
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(250)).await;
                peak_rss = peak_rss.max(ProcSample::read(target.pid)?.rss_kib);
            }
            probe_stop.store(true, Ordering::Relaxed);
            let (mut health, mut hello, failed) = probe.await?;
            stop.store(true, Ordering::Relaxed);
            for a in attackers {
                a.abort();
            }
            // The controller returns memory within one 5 s trim period of the flood's end.
            tokio::time::sleep(Duration::from_secs(7)).await;
            let after = ProcSample::read(target.pid)?;
            let name = format!("flood {kind:?}").to_lowercase();
            let add = |rows: &mut Rows, k: &str, v: String| rows.push((name.clone(), k.to_string(), v));
            add(
                rows,
                "hostile connections",
                format!(
                    "{} from {} address(es) for {} s; server closed {} of them",
                    args.flood_connections,
                    args.flood_peers.max(1),
                    args.flood_secs,
                    closed.load(Ordering::Relaxed)
                ),
            );
            add(rows, "/healthz p50/p99/max", percentiles(&mut health));
            add(rows, "hello p50/p99/max", percentiles(&mut hello));
            add(rows, "probes failed (>15 s or error)", failed.to_string());
            add(
                rows,
                "controller RSS before/peak/7 s after",
                format!("{} / {} / {}", mib(base.rss_kib), mib(peak_rss), mib(after.rss_kib)),
            );
        }
        Ok(())
    }

    /// A heartbeat of about `bytes`: many observers with long names.
    fn fat_heartbeat(agent: &str, bytes: usize) -> bytes::Bytes {
        let mut observers = serde_json::Map::new();
        let mut size = 0;
        let mut i = 0;
        while size < bytes {
            let name = format!("observer-{i:05}-{}", "n".repeat(100));
            size += name.len() + 14;
            observers.insert(name, serde_json::json!("running"));
            i += 1;
        }
        let hb = serde_json::json!({"wire_version": "tapio-wire/v1", "agent_id": agent, "node_name": "fat-node",
            "config_version": "1", "config_hash": "", "uptime_seconds": 1, "observers": observers,
            "counters": {"events_total": 0, "malformed_events_total": 0, "lost_events_total": 0,
                "correlation_drops_total": 0, "sink_drops_total": 0, "controller_send_failures_total": 0}});
        bytes::Bytes::from(hb.to_string())
    }

    pub async fn fat_heartbeats(args: &Args, target: &Target, rows: &mut Rows) -> Res<()> {
        let before = ProcSample::read(target.pid)?;
        let mut conn = Conn::open(target.addr).await?;
        let (mut refused, mut accepted, mut sent_bytes) = (0u64, 0u64, 0usize);
        for i in 0..args.fat_agents {
            let agent = format!("fat-agent-{i:05}");
            conn.request("POST", "/v1/agents/hello", Some(hello_body(&agent))).await?;
            // 250 KB: just under the default 256 KiB body limit.
            let body = fat_heartbeat(&agent, 250_000);
            sent_bytes = body.len();
            match conn.request("POST", "/v1/agents/heartbeat", Some(body)).await?.0 {
                200 => accepted += 1,
                _ => refused += 1,
            }
        }
        let t = Instant::now();
        let (_, status) = conn.request("GET", "/v1/status?limit=5000", None).await?;
        let status_ms = t.elapsed().as_secs_f64() * 1000.0;
        let after = ProcSample::read(target.pid)?;
        let add = |rows: &mut Rows, k: &str, v: String| rows.push(("fat heartbeats".into(), k.to_string(), v));
        add(rows, "agents x heartbeat size", format!("{} x {} KB", args.fat_agents, sent_bytes / 1000));
        add(rows, "accepted / refused", format!("{accepted} / {refused}"));
        let grown = after.rss_kib.saturating_sub(before.rss_kib);
        add(
            rows,
            "controller RSS before/after",
            format!(
                "{} / {} ({:.1} KiB per agent)",
                mib(before.rss_kib),
                mib(after.rss_kib),
                grown as f64 / args.fat_agents.max(1) as f64
            ),
        );
        add(rows, "GET /v1/status (all of them)", format!("{status_ms:.1} ms, {} KiB", status.len() / 1024));
        Ok(())
    }
}
