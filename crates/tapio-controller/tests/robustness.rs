//! Slow and idle clients, graceful shutdown, sink back-pressure.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let t = TestServer::start_with("silent", |s| s.max_connections = 8).await; // header timeout: 1 s
    let c = t.client();
    // Several clients connect and send nothing, one sends half a request line.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(t.server.addr).await.unwrap());
    }
    let mut partial = TcpStream::connect(t.server.addr).await.unwrap();
    partial.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n").await.unwrap();

    // While they hang, every endpoint still answers promptly.
    let start = Instant::now();
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    assert_eq!(c.post_json("/v1/events", &batch("a1", 1, vec![event(1)])).await.status, 200);
    assert!(start.elapsed() < Duration::from_millis(900), "{:?}", start.elapsed());

    // The server closes them after the header read timeout (1 s), not never.
    for s in idle.iter_mut().chain(std::iter::once(&mut partial)) {
        let (took, _) =
            read_until_closed(s, Duration::from_secs(5)).await.expect("server must close a silent connection");
        assert!(took < Duration::from_secs(3), "{took:?}");
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
