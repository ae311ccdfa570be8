//! Slow, idle and flooding clients, oversized heads and heartbeats, graceful shutdown,
//! sink back-pressure.
//!
//! Floods here are small (a few hundred connections against a bound of 32) so the suite
//! stays fast; `tapio-loadgen --mode flood` runs the issue's full-size floods.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection from the loopback address `127.0.0.<last>`: floods come from their own
/// peer address, as hostile hosts would, while probes and agents use 127.0.0.1.
async fn connect_from(last: u8, to: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))?;
    socket.connect(to).await
}

/// Opens `n` connections from `127.0.0.<last>`, each sending `first` and then nothing.
async fn flood(last: u8, to: std::net::SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // The server may close an evicted one before or while it writes: that is fine.
        if let Ok(mut s) = connect_from(last, to).await {
            let _ = s.write_all(first).await;
            out.push(s);
        }
    }
    out
}

/// The request must be answered well before the floods' 30 s header timeout would free
/// a slot (before the fix, a probe waited for exactly that).
const ANSWERED_WITHIN: Duration = Duration::from_secs(10);

/// Reads until EOF or error; returns how long that took and what was read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let done = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    done.ok().map(|()| (start.elapsed(), out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_and_others_are_served_meanwhile() {
    // A header timeout long enough that the requests below are served while the silent
    // connections still hang, however slowly a loaded machine serves them.
    const HEADER_TIMEOUT: Duration = Duration::from_secs(4);
    let t = TestServer::start_with("silent", |s| {
        s.max_connections = 8;
        s.header_read_timeout = HEADER_TIMEOUT;
    })
    .await;
    let c = t.client();
    // Several clients connect and send nothing, one sends half a request line.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(t.server.addr).await.unwrap());
    }
    let mut partial = TcpStream::connect(t.server.addr).await.unwrap();
    partial.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n").await.unwrap();

    // While they hang, every endpoint still answers.
    let start = Instant::now();
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    assert_eq!(c.post_json("/v1/events", &batch("a1", 1, vec![event(1)])).await.status, 200);
    // They still hang: the requests did not wait for them to be closed.
    for s in idle.iter().chain(std::iter::once(&partial)) {
        let read = s.try_read(&mut [0u8; 16]);
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a silent connection closed before the requests were served ({:?} after them): {read:?}",
            start.elapsed()
        );
    }

    // The server closes them after the header read timeout, not never.
    for s in idle.iter_mut().chain(std::iter::once(&mut partial)) {
        let (took, _) = read_until_closed(s, HEADER_TIMEOUT + Duration::from_secs(6))
            .await
            .expect("server must close a silent connection");
        assert!(took < HEADER_TIMEOUT + Duration::from_secs(3), "{took:?}");
    }
    assert_eq!(c.get("/healthz").await.status, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_times_out_with_408_envelope() {
    let t = TestServer::start("trickle").await; // request timeout: 2 s
    let c = t.client();
    let mut s = TcpStream::connect(t.server.addr).await.unwrap();
    s.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"wire",
    )
    .await
    .unwrap();
    // Other requests are unaffected while the body trickles.
    assert_eq!(c.get("/v1/status").await.status, 200);
    let (took, bytes) =
        read_until_closed(&mut s, Duration::from_secs(10)).await.expect("server must give up on a trickled body");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let r = parse_response(&bytes);
    assert_eq!(r.status, 408);
    assert_eq!(r.error_code(), "REQUEST_TIMEOUT");
    let s = c.get("/v1/status").await.json();
    assert_eq!(s["totals"]["batches_rejected_total"], 0, "a timeout is not a verdict on a batch");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_then_idles_out() {
    let t = TestServer::start("keepalive").await;
    let mut s = TcpStream::connect(t.server.addr).await.unwrap();
    for _ in 0..3 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    }
    let (took, _) =
        read_until_closed(&mut s, Duration::from_secs(5)).await.expect("idle keep-alive connections are closed");
    assert!(took < Duration::from_secs(3));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_sink() {
    let t = TestServer::start("shutdown").await;
    let c = t.client();
    for seq in 1..=20 {
        let events = (0..10).map(|i| event(seq * 10 + i)).collect();
        assert_eq!(c.post_json("/v1/events", &batch("a1", seq, events)).await.status, 200);
    }
    // Every batch is written: nothing waits for the sink, and its queue gauge comes back to 0.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&c, "tapio_controller_sink_queue_bytes{sink=\"file\"}").await != Some(0.0) {
        assert!(Instant::now() < deadline, "the file sink's queue gauge stayed above 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = t.sink_path.clone();
    let dir = t.dir.clone();
    t.server.stop().await.unwrap();
    assert_eq!(read_lines(&path).len(), 200, "every accepted record is on disk after stop");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_durable_sink_queue_refuses_the_batch_for_a_retry() {
    // A queue budget smaller than one batch: the file sink cannot take it, so the batch
    // is refused (503, the agent keeps it and retries) instead of acknowledged and lost.
    let t = TestServer::start_with("sink-full", |s| s.sink_queue_bytes = 64).await;
    let c = t.client();
    let r = c.post_json("/v1/events", &batch("a1", 1, vec![event(1), event(2)])).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "NOT_READY");
    assert_eq!(
        metric(&c, "tapio_controller_sink_batches_refused_total{sink=\"file\",reason=\"queue_full\"}").await,
        Some(1.0)
    );
    assert_eq!(metric(&c, "tapio_controller_events_accepted_total").await, Some(0.0));
    assert_eq!(metric(&c, "tapio_controller_events_rejected_total").await, Some(2.0));
    assert!(read_lines(&t.sink_path).is_empty());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_file_rotates_and_keeps_a_bounded_number_of_files() {
    let t = TestServer::start_with("rotate", |s| {
        if let [tapio_controller::SinkTarget::File(f)] = &mut s.sinks[..] {
            f.max_bytes = 4096;
            f.keep_files = 2;
        }
    })
    .await;
    let c = t.client();
    for seq in 1..=20 {
        let events = (0..10).map(|i| event(seq * 10 + i)).collect();
        assert_eq!(c.post_json("/v1/events", &batch("a1", seq, events)).await.status, 200);
    }
    let path = t.sink_path.clone();
    let dir = t.dir.clone();
    t.server.stop().await.unwrap();
    let rotated = |n: u32| std::path::PathBuf::from(format!("{}.{n}", path.display()));
    assert!(rotated(1).exists() && rotated(2).exists());
    assert!(!rotated(3).exists(), "only keep_files rotated files are kept");
    for p in [path.clone(), rotated(1), rotated(2)] {
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 4096, "{} is {len} bytes", p.display());
        assert!(!read_lines(&p).is_empty(), "whole JSON lines in {}", p.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_idle_floods_beyond_the_bound_leave_health_and_agents_served() {
    let t = TestServer::start_with("flood-i13", |s| {
        s.max_connections = 32;
        s.max_connections_per_peer = 1_000;
        s.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let c = t.client();
    // Ten times the bound: half trickle an unfinished head, half say nothing.
    let slowloris = flood(2, t.server.addr, 160, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ").await;
    let idle = flood(3, t.server.addr, 160, b"").await;
    assert!(slowloris.len() + idle.len() >= 300, "the flood itself connected");
    for _ in 0..3 {
        let health = tokio::time::timeout(ANSWERED_WITHIN, c.get("/healthz")).await.expect("healthz answered");
        assert_eq!(health.status, 200);
        let hello = tokio::time::timeout(ANSWERED_WITHIN, c.post_json("/v1/agents/hello", &hello("a1")))
            .await
            .expect("hello answered");
        assert_eq!(hello.status, 200);
    }
    let shed = metric(&c, "tapio_controller_connections_shed_total{reason=\"evicted\"}").await;
    assert!(shed.is_some_and(|n| n >= 280.0), "waiting connections made room: {shed:?}");
    let open = metric(&c, "tapio_controller_connections_open").await;
    assert!(open.is_some_and(|n| n <= 32.0), "the bound holds: {open:?}");
    drop((slowloris, idle));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_from_one_peer_take_at_most_its_share() {
    let t = TestServer::start_with("slowbody-i13", |s| {
        s.max_connections = 32;
        s.max_connections_per_peer = 8;
        s.request_timeout = Duration::from_secs(30);
    })
    .await;
    let c = t.client();
    // Complete heads with a body that never comes: busy requests, which are never cut.
    let head =
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
    let mut bodies = flood(2, t.server.addr, 40, head).await;
    for _ in 0..3 {
        let health = tokio::time::timeout(ANSWERED_WITHIN, c.get("/healthz")).await.expect("healthz answered");
        assert_eq!(health.status, 200);
        let r = tokio::time::timeout(ANSWERED_WITHIN, c.post_json("/v1/events", &batch("a1", 1, vec![event(1)])))
            .await
            .expect("events answered");
        assert_eq!(r.status, 200);
    }
    // The peer's connections beyond its 8 were closed at once.
    let mut closed = 0;
    for s in &mut bodies {
        if read_until_closed(s, Duration::from_millis(200)).await.is_some() {
            closed += 1;
        }
    }
    assert_eq!(closed, 32, "40 sent, 8 held");
    // Refused at once, or (if the flood took longer than the slow-body grace) an older
    // slow body of the same peer cut in its place: 32 in all, nothing of anyone else.
    let refused = metric(&c, "tapio_controller_connections_shed_total{reason=\"peer_limit\"}").await;
    let evicted = metric(&c, "tapio_controller_connections_shed_total{reason=\"evicted\"}").await;
    assert_eq!(refused.unwrap_or(0.0) + evicted.unwrap_or(0.0), 32.0, "{refused:?} {evicted:?}");
    drop(bodies);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_from_many_peers_beyond_the_bound_are_cut_for_new_clients() {
    let t = TestServer::start_with("slowbodies-i13", |s| {
        s.max_connections = 32;
        s.max_connections_per_peer = 1_000;
        s.request_timeout = Duration::from_secs(30);
    })
    .await;
    let c = t.client();
    let head =
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";
    // Every slot holds a body that is still arriving; more wait in the backlog.
    let bodies = flood(2, t.server.addr, 64, head).await;
    // Past the slow-body grace (1 s), a new client's connection cuts the slowest body.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for _ in 0..3 {
        let health = tokio::time::timeout(ANSWERED_WITHIN, c.get("/healthz")).await.expect("healthz answered");
        assert_eq!(health.status, 200);
        let r = tokio::time::timeout(ANSWERED_WITHIN, c.post_json("/v1/events", &batch("a1", 1, vec![event(1)])))
            .await
            .expect("events answered");
        assert_eq!(r.status, 200);
    }
    let s = c.get("/v1/status").await.json();
    assert_eq!(s["totals"]["batches_rejected_total"], 0, "a cut body is no verdict on a batch");
    drop(bodies);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_bound_or_not_http_is_refused_with_the_envelope() {
    let t = TestServer::start("bighead-i13").await; // 16 KiB heads
    let c = t.client();
    let fits = c.send("GET", "/healthz", &[("X-Pad", &"p".repeat(12 * 1024))], None).await;
    assert_eq!(fits.status, 200);
    let big = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "p".repeat(20 * 1024));
    // hyper refuses both before any handler sees them; they still get the v1 envelope.
    for (request, status, code) in [
        (big.into_bytes(), "431", "HEADERS_TOO_LARGE"),
        (b"\x16\x03\x01\x02\x00 a TLS hello\r\n\r\n".to_vec(), "400", "MALFORMED_REQUEST"),
    ] {
        let mut s = TcpStream::connect(t.server.addr).await.unwrap();
        let _ = s.write_all(&request).await;
        let (_, bytes) = read_until_closed(&mut s, Duration::from_secs(5)).await.expect("closed after the answer");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let envelope: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(envelope["error"]["code"], code, "{text}");
    }
    let metrics = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    for code in ["HEADERS_TOO_LARGE", "MALFORMED_REQUEST"] {
        assert!(metrics.contains(&format!("tapio_controller_errors_total{{code=\"{code}\"}} 1")), "{metrics}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fat_heartbeat_is_refused_and_nothing_of_it_is_stored() {
    let t = TestServer::start("fatbeat-i13").await;
    let c = t.client();
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    let mut fat = heartbeat("a1");
    fat["observers"] = (0..2_000).map(|i| (format!("observer-{i}"), serde_json::json!("running"))).collect();
    let r = c.post_json("/v1/agents/heartbeat", &fat).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "INVALID_FIELD"));
    let mut fat = heartbeat("a1");
    fat["degraded_reasons"] = serde_json::json!(["r".repeat(200_000)]);
    let r = c.post_json("/v1/agents/heartbeat", &fat).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "INVALID_FIELD"));
    let a = agent_status(&c, "a1").await.unwrap();
    assert_eq!(a["last_heartbeat_age_seconds"], serde_json::Value::Null, "no refused heartbeat was stored");
    assert_eq!(c.post_json("/v1/agents/heartbeat", &heartbeat("a1")).await.status, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pages_in_id_order_filters_by_state_and_summarises_the_fleet() {
    let t = TestServer::start("status-pages-i13").await;
    let c = t.client();
    for i in 0..25 {
        assert_eq!(c.post_json("/v1/agents/hello", &hello(&format!("agent-{i:02}"))).await.status, 200);
    }
    for i in 0..4 {
        let mut hb = heartbeat(&format!("agent-{i:02}"));
        if i < 2 {
            hb["observers"]["storage"] = serde_json::json!("failed");
        }
        assert_eq!(c.post_json("/v1/agents/heartbeat", &hb).await.status, 200);
    }
    for i in 0..3 {
        assert_eq!(c.post_json("/v1/events", &batch(&format!("batch-only-{i}"), 1, vec![event(1)])).await.status, 200);
    }

    let mut seen = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let r = c.get(&format!("/v1/status?limit=10&after={after}")).await;
        assert_eq!(r.status, 200);
        let body = r.json();
        assert!(body["agents"].as_array().unwrap().len() <= 10);
        seen.extend(body["agents"].as_array().unwrap().iter().map(|a| a["agent_id"].as_str().unwrap().to_string()));
        pages += 1;
        let summary = &body["summary"];
        assert_eq!(
            (summary["agents_total"].as_u64(), summary["registered"].as_u64(), summary["unregistered"].as_u64()),
            (Some(28), Some(25), Some(3))
        );
        assert_eq!((summary["unreported"].as_u64(), summary["degraded"].as_u64()), (Some(21), Some(2)));
        match body["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), &seen), (28, &sorted), "every agent once, in id order");

    let ids = |body: serde_json::Value| -> Vec<String> {
        body["agents"].as_array().unwrap().iter().map(|a| a["agent_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(
        ids(c.get("/v1/status?state=unregistered").await.json()),
        ["batch-only-0", "batch-only-1", "batch-only-2"]
    );
    assert_eq!(ids(c.get("/v1/status?state=degraded").await.json()), ["agent-00", "agent-01"]);
    let summary_only = c.get("/v1/status?limit=0").await.json();
    assert!(summary_only["agents"].as_array().unwrap().is_empty());
    assert_eq!(summary_only["summary"]["agents_total"], 28);
    // A plain v1 query (no parameters) gets every agent.
    assert_eq!(ids(c.get("/v1/status").await.json()).len(), 28);

    for bad in ["limit=5001", "limit=abc", "state=sleepy", "limit=1&limit=2"] {
        let r = c.get(&format!("/v1/status?{bad}")).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "INVALID_FIELD"), "{bad}");
    }
    t.stop().await;
}

/// wire-v1's `agents` is the whole list, with no paging: a plain v1 client (no `limit`)
/// gets every agent, registered or known from batches only (it used to get the first
/// 1,000 and a `next_after` it does not know). A `limit` still pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_limit_lists_every_agent() {
    let t = TestServer::start_with("status-whole", |s| s.max_agents = 1_500).await;
    let registry = &t.server.state.registry;
    let now = std::time::Instant::now();
    for i in 0..1_200 {
        let req: tapio_wire::HelloRequest = serde_json::from_value(hello(&format!("agent-{i:04}"))).unwrap();
        registry.hello(&req, now, 1).unwrap();
    }
    for i in 0..30 {
        registry.batch(&format!("batch-only-{i:02}"), "n", 1, now);
    }
    let c = t.client();
    let all = c.get("/v1/status").await.json();
    assert_eq!(all["agents"].as_array().unwrap().len(), 1_230);
    assert!(all.get("next_after").is_none(), "nothing more to fetch");
    let registered = c.get("/v1/status?state=registered").await.json();
    assert_eq!(registered["agents"].as_array().unwrap().len(), 1_200);

    let page = c.get("/v1/status?limit=1000").await.json();
    assert_eq!(page["agents"].as_array().unwrap().len(), 1_000);
    assert_eq!(page["next_after"], "agent-0999");
    let rest = c.get("/v1/status?limit=1000&after=agent-0999").await.json();
    assert_eq!(rest["agents"].as_array().unwrap().len(), 230);
    assert!(rest.get("next_after").is_none());
    t.stop().await;
}
