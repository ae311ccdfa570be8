//! The NATS JetStream sink against a real `nats-server -js` (Debian's package, started
//! here on a free loopback port): every record arrives once, on `<prefix>.<observer>.<type>`
//! with `Nats-Msg-Id` = its id; a batch sent twice is stored once; a server restarted
//! mid-stream loses nothing acknowledged; and two controller replicas sharing the stream
//! lose nothing when one is SIGKILLed during ingest.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::ingest::{check_all_kept, id_batch, try_post, Ingest};
use common::servers::{controller, free_port, http_get, nats_server, nats_server_with, scrape, Proc};
use common::temp_dir;
use serde_json::Value;
use tapio_controller::metrics::{Metrics, SinkLabels, SinkReasonLabels};
use tapio_controller::settings::{NatsConfig, Secret};
use tapio_controller::sink::{start, SinkOptions, DROPPED_REFUSED};
use tapio_controller::{RunningServer, Settings, SinkTarget};

const SUBJECT: &str = "tapio.evidence.network.kernel.network.connection_refused";

fn nats_config(port: u16, stream: &str) -> NatsConfig {
    NatsConfig {
        url: format!("nats://127.0.0.1:{port}"),
        subject_prefix: "tapio.evidence".into(),
        stream: Some(stream.into()),
        create_stream: true,
        stream_max_age: Duration::from_secs(3600),
        stream_max_bytes: 0,
        stream_replicas: 1,
        duplicate_window: Duration::from_secs(120),
        creds_file: None,
        token: None,
        user_password: None,
        tls_ca: None,
        tls_client: None,
        tls_required: false,
        max_in_flight: 1024,
        ack_timeout: Duration::from_secs(2),
    }
}

async fn start_controller(port: u16, stream: &str) -> RunningServer {
    start_controller_with(nats_config(port, stream)).await
}

async fn start_controller_with(config: NatsConfig) -> RunningServer {
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        sinks: vec![SinkTarget::Nats(Box::new(config))],
        sink_ack_timeout: Duration::from_secs(3),
        max_batch_events: 512,
        ..Settings::default()
    };
    RunningServer::start(settings).await.expect("controller starts with the nats sink")
}

/// One stored message.
struct Stored {
    subject: String,
    msg_id: Option<String>,
    id: String,
}

/// Every message of `stream`, read back by sequence with an independent client.
async fn read_stream(port: u16, stream: &str) -> Vec<Stored> {
    let client = async_nats::connect(format!("127.0.0.1:{port}")).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.unwrap();
    let info = s.info().await.unwrap();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    for seq in first..=last {
        let m = s.get_raw_message(seq).await.unwrap();
        let v: Value = serde_json::from_slice(&m.payload).expect("payload is the JSON record");
        out.push(Stored {
            subject: m.subject.to_string(),
            msg_id: m.headers.get("Nats-Msg-Id").map(|h| h.as_str().to_string()),
            id: v["id"].as_str().unwrap().to_string(),
        });
    }
    out
}

fn nats(dir: &Path, port: u16) -> Proc {
    nats_server(port, &dir.join("jetstream"), &dir.join("nats.log"))
}

/// A scratch directory named `tag`, a free port, and a NATS server with JetStream on it
/// (stopped when the returned process is dropped).
fn scratch_nats(tag: &str) -> (PathBuf, u16, Proc) {
    let dir = temp_dir(tag);
    let port = free_port();
    let server = nats(&dir, port);
    (dir, port, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_arrives_once_on_its_subject_and_a_resent_batch_is_dropped_by_the_server() {
    let (dir, port, _nats) = scratch_nats("i12-nats-once");
    let server = start_controller(port, "TAPIO_I12_ONCE").await;
    let mut acked = Vec::new();
    let mut first_body = None;
    for seq in 1..=10 {
        let (body, ids) = id_batch("n1", seq, &format!("once-{seq}"), 50);
        assert_eq!(try_post(server.addr, &body).await, Some(200));
        acked.extend(ids);
        first_body.get_or_insert(body);
    }
    // The same batch again (an agent retrying after a lost answer): acknowledged, not stored twice.
    assert_eq!(try_post(server.addr, first_body.as_ref().unwrap()).await, Some(200));
    assert_eq!(scrape(server.addr, "tapio_controller_sink_records_written_total{sink=\"nats\"}").await, Some(550.0));
    assert_eq!(http_get(server.addr, "/readyz").await.unwrap().0, 200);
    server.stop().await.unwrap();

    let stored = read_stream(port, "TAPIO_I12_ONCE").await;
    assert_eq!(stored.len(), 500, "each record once: the resent batch was dropped as duplicates");
    for m in &stored {
        assert_eq!(m.subject, SUBJECT);
        assert_eq!(m.msg_id.as_deref(), Some(m.id.as_str()), "Nats-Msg-Id is the evidence id");
    }
    let ids: Vec<String> = stored.into_iter().map(|m| m.id).collect();
    assert_eq!(check_all_kept(&acked, &ids), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// A batch bigger than `--nats-max-in-flight`, and more concurrent batches than the bound
/// admits, are all stored: a batch takes its chunk's permits in one call and frees them at
/// its PubAcks, so no batch sits on permits while waiting for more. (Taking one permit per
/// record and freeing them only after the whole batch had its permits hung the first batch
/// of 50 records under a bound of 8 for good, and every later one behind it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_the_in_flight_bound_and_more_than_it_admits_at_once_are_all_stored() {
    let (dir, port, _nats) = scratch_nats("i16-nats-bound");
    let mut config = nats_config(port, "TAPIO_I16_BOUND");
    config.max_in_flight = 8;
    let server = start_controller_with(config).await;
    let addr = server.addr;
    let mut acked = Vec::new();
    let mut posts = Vec::new();
    for agent in 1..=6 {
        let (body, ids) = id_batch(&format!("n{agent}"), 1, &format!("bound-{agent}"), 50);
        acked.extend(ids);
        posts.push(tokio::spawn(async move { try_post(addr, &body).await }));
    }
    for post in posts {
        assert_eq!(post.await.unwrap(), Some(200), "each batch acknowledged within the sink's ack timeout");
    }
    assert_eq!(scrape(server.addr, "tapio_controller_sink_records_written_total{sink=\"nats\"}").await, Some(300.0));
    server.stop().await.unwrap();
    let ids: Vec<String> = read_stream(port, "TAPIO_I16_BOUND").await.into_iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 300);
    assert_eq!(check_all_kept(&acked, &ids), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_refused_at_start_unless_creation_is_asked() {
    let (dir, port, _nats) = scratch_nats("i12-nats-nostream");
    let mut cfg = nats_config(port, "TAPIO_I12_ABSENT");
    cfg.create_stream = false;
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        sinks: vec![SinkTarget::Nats(Box::new(cfg))],
        ..Settings::default()
    };
    let err = RunningServer::start(settings).await.err().expect("start fails");
    assert!(err.to_string().contains("TAPIO_I12_ABSENT"), "{err}");
    // An unreachable server fails at start too, naming the URL.
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        sinks: vec![SinkTarget::Nats(Box::new(nats_config(free_port(), "X")))],
        ..Settings::default()
    };
    let err = RunningServer::start(settings).await.err().expect("start fails");
    assert!(err.to_string().contains("cannot connect to NATS"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_server_restart_mid_stream_loses_nothing_acknowledged() {
    let dir = temp_dir("i12-nats-restart");
    let port = free_port();
    let mut nats_proc = nats(&dir, port);
    let server = start_controller(port, "TAPIO_I12_RESTART").await;
    let ingest = Ingest::start(vec![server.addr], "restart", 4, 100);
    wait_for(|| ingest.acked_now() >= 2_000, Duration::from_secs(30)).await;
    nats_proc.kill();
    // While the server is away the sink cannot keep records: batches are refused, the
    // controller reports not ready.
    let mut saw_not_ready = false;
    let until = Instant::now() + Duration::from_secs(15);
    while !saw_not_ready && Instant::now() < until {
        saw_not_ready = http_get(server.addr, "/readyz").await.is_some_and(|(s, _)| s == 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_not_ready, "readiness fails while JetStream is unreachable");
    let during = ingest.acked_now();
    let _nats2 = nats(&dir, port);
    wait_for(|| ingest.acked_now() >= during + 2_000, Duration::from_secs(60)).await;
    let until = Instant::now() + Duration::from_secs(15);
    while http_get(server.addr, "/readyz").await.is_none_or(|(s, _)| s != 200) {
        assert!(Instant::now() < until, "readiness returns once JetStream is back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retries = ingest.retries.load(std::sync::atomic::Ordering::Relaxed);
    let acked = ingest.stop().await;
    server.stop().await.unwrap();
    let stored: Vec<String> = read_stream(port, "TAPIO_I12_RESTART").await.into_iter().map(|m| m.id).collect();
    let duplicates = check_all_kept(&acked, &stored);
    eprintln!(
        "nats restart: {} events acknowledged, all in the stream ({} stored, {duplicates} duplicates, {retries} batch retries)",
        acked.len(),
        stored.len()
    );
    assert_eq!(duplicates, 0, "the server drops re-published ids");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_stream_and_killing_one_during_ingest_loses_nothing() {
    let (dir, port, _nats) = scratch_nats("i12-replicas");
    let args: Vec<String> = [
        "--sink",
        "nats",
        "--nats-url",
        &format!("nats://127.0.0.1:{port}"),
        "--nats-stream",
        "TAPIO_I12_REPLICAS",
        "--nats-create-stream",
        "--max-batch-events",
        "512",
        "--sink-ack-timeout-secs",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let a = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let b = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut replica_a = controller(&dir, "a.log", a, &args);
    let mut replica_b = controller(&dir, "b.log", b, &args);
    // Half the agents start on each replica; an agent whose replica fails moves on to the
    // other with the same batch, as behind a Service.
    let ingest = Ingest::start(vec![a, b], "replicas", 8, 100);
    wait_for(|| ingest.acked_now() >= 4_000, Duration::from_secs(30)).await;
    replica_a.kill();
    let after_kill = ingest.acked_now();
    wait_for(|| ingest.acked_now() >= after_kill + 4_000, Duration::from_secs(60)).await;
    let acked = ingest.stop().await;
    assert!(replica_b.terminate(Duration::from_secs(20)));
    let stored: Vec<String> = read_stream(port, "TAPIO_I12_REPLICAS").await.into_iter().map(|m| m.id).collect();
    let duplicates = check_all_kept(&acked, &stored);
    eprintln!(
        "two replicas, one SIGKILLed: {} events acknowledged, all in the stream ({} stored, {duplicates} duplicates)",
        acked.len(),
        stored.len()
    );
    assert_eq!(duplicates, 0, "JetStream drops ids published through both replicas");
    let _ = std::fs::remove_dir_all(dir);
}

/// A batch whose request gave up while it waited for the publisher is not published when
/// the publisher gets to it (the agent resends it); one already published when its request
/// gave up stays, and its retry is dropped by `Nats-Msg-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_request_gave_up_before_it_was_published_is_not_published() {
    let (dir, port, nats_proc) = scratch_nats("nats-gone");
    let mut cfg = nats_config(port, "TAPIO_GONE");
    // One permit: a batch awaiting its PubAck holds back the next one.
    cfg.max_in_flight = 1;
    cfg.ack_timeout = Duration::from_secs(60);
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(1) };
    let (sinks, writers) = start(&[SinkTarget::Nats(Box::new(cfg))], &opts, &m).await.unwrap();
    let line = |id: &str| {
        format!("{{\"id\":\"{id}\",\"observer\":\"network\",\"type\":\"kernel.network.connection_refused\"}}\n")
            .into_bytes()
    };
    // The server stopped: the first batch goes out and waits for its PubAck, holding the
    // permit, so the second waits for the permit. Both requests give up.
    nats_proc.stop();
    let first = sinks.deliver(line("gone-1"), 1).await;
    let second = sinks.deliver(line("gone-2"), 1).await;
    nats_proc.resume();
    assert_eq!(first.map_err(|r| r.reason), Err("ack_timeout"));
    assert_eq!(second.map_err(|r| r.reason), Err("ack_timeout"));
    let written = || m.sink_written.get_or_create(&SinkLabels { sink: "nats" }).get();
    let refused = || m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "nats", reason: DROPPED_REFUSED }).get();
    wait_for(|| written() + refused() == 2, Duration::from_secs(30)).await;
    assert_eq!((written(), refused()), (1, 1), "the first batch was published, the second skipped");
    writers.close(Duration::from_secs(5)).await;
    let stored: Vec<String> = read_stream(port, "TAPIO_GONE").await.into_iter().map(|m| m.id).collect();
    assert_eq!(stored, ["gone-1"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// An event id with a line break: `/v1/events` refuses the batch (400 `INVALID_FIELD`, the
/// envelope, nothing published); and a record that reaches the sink with such an id anyway
/// is published without `Nats-Msg-Id` instead of panicking the client. Before, the panic
/// left the batch's bytes in the sink's queue budget for good (about 55 such batches
/// filled the default budget, and every later batch got 503 `queue_full`) and its records
/// counted nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_no_header_can_hold_is_refused_and_never_panics_the_publisher() {
    let (dir, port, _nats) = scratch_nats("nats-crlf-id");
    let server = start_controller(port, "TAPIO_CRLF").await;
    let (body, _) = id_batch("n1", 1, "crlf", 3);
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    v["events"][1]["id"] = Value::String("crlf-1\r\nNats-Expected-Stream: OTHER".into());
    let r = common::Client { addr: server.addr, headers: Vec::new() }.post_json("/v1/events", &v).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "INVALID_FIELD"));
    assert!(String::from_utf8_lossy(&r.body).contains("events[1].id"), "{:?}", String::from_utf8_lossy(&r.body));
    // Later batches are kept as usual.
    let (body, ids) = id_batch("n1", 2, "after", 3);
    assert_eq!(try_post(server.addr, &body).await, Some(200));
    assert_eq!(scrape(server.addr, "tapio_controller_events_rejected_total").await, Some(3.0));
    server.stop().await.unwrap();
    let stored: Vec<String> = read_stream(port, "TAPIO_CRLF").await.into_iter().map(|m| m.id).collect();
    assert_eq!(stored, ids);

    // Past validation, straight to the sink: kept, without the header, budget released.
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) =
        start(&[SinkTarget::Nats(Box::new(nats_config(port, "TAPIO_CRLF")))], &opts, &m).await.unwrap();
    let line = b"{\"id\":\"raw\\nid\",\"observer\":\"network\",\"type\":\"kernel.network.connection_refused\"}\n";
    for _ in 0..3 {
        assert_eq!(sinks.deliver(line.to_vec(), 1).await, Ok(()));
    }
    assert_eq!(m.sink_queue_bytes.get_or_create(&SinkLabels { sink: "nats" }).get(), 0);
    writers.close(Duration::from_secs(5)).await;
    let stored = read_stream(port, "TAPIO_CRLF").await;
    assert_eq!(stored.len(), 6, "three before, and the raw record each time (no id to drop it by)");
    assert!(stored[3..].iter().all(|m| m.id == "raw\nid" && m.msg_id.is_none()));
    let _ = std::fs::remove_dir_all(dir);
}

async fn wait_for(cond: impl Fn() -> bool, within: Duration) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < end, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_and_token_authentication_work_and_wrong_secrets_fail_at_start() {
    let dir = temp_dir("i12-nats-auth");
    let start = |cfg: NatsConfig| async move {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            sinks: vec![SinkTarget::Nats(Box::new(cfg))],
            ..Settings::default()
        };
        RunningServer::start(settings).await
    };
    // User and password.
    let port = free_port();
    let store = dir.join("js-user");
    let server =
        nats_server_with(port, &store, &dir.join("nats-user.log"), &["--user", "tapio", "--pass", "s3cret-pw"]);
    let mut cfg = nats_config(port, "TAPIO_I12_AUTH");
    cfg.user_password = Some(("tapio".into(), Secret("wrong".into())));
    let err = start(cfg.clone()).await.err().expect("a wrong password fails at start");
    assert!(!err.to_string().contains("wrong"), "no secret in the error: {err}");
    cfg.user_password = Some(("tapio".into(), Secret("s3cret-pw".into())));
    let c = start(cfg).await.expect("the right password connects");
    let (body, _) = id_batch("auth", 1, "auth-user", 5);
    assert_eq!(try_post(c.addr, &body).await, Some(200));
    c.stop().await.unwrap();
    drop(server);
    // Token.
    let port = free_port();
    let store = dir.join("js-token");
    let server = nats_server_with(port, &store, &dir.join("nats-token.log"), &["--auth", "t0ken-value"]);
    let mut cfg = nats_config(port, "TAPIO_I12_TOKEN");
    cfg.token = Some(Secret("not-it".into()));
    assert!(start(cfg.clone()).await.is_err(), "a wrong token fails at start");
    cfg.token = Some(Secret("t0ken-value".into()));
    let c = start(cfg).await.expect("the right token connects");
    let (body, _) = id_batch("auth", 1, "auth-token", 5);
    assert_eq!(try_post(c.addr, &body).await, Some(200));
    c.stop().await.unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec[..],
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=tapio-i12-test-ca"],
    ]
    .concat());
    run(&[&["req"][..], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_nats_verifies_the_server_with_the_given_ca() {
    let dir = temp_dir("i12-nats-tls");
    make_certs(&dir);
    let port = free_port();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let _nats = nats_server_with(
        port,
        &dir.join("js"),
        &dir.join("nats.log"),
        &["--tls", "--tlscert", cert.to_str().unwrap(), "--tlskey", key.to_str().unwrap()],
    );
    let start = |cfg: NatsConfig| async move {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            sinks: vec![SinkTarget::Nats(Box::new(cfg))],
            ..Settings::default()
        };
        RunningServer::start(settings).await
    };
    let mut cfg = nats_config(port, "TAPIO_I12_TLS");
    cfg.url = format!("tls://127.0.0.1:{port}");
    cfg.tls_required = true;
    // Without the CA the server's certificate is not trusted: refused at start.
    assert!(start(cfg.clone()).await.is_err(), "an unverified server is refused");
    cfg.tls_ca = Some(dir.join("ca.pem"));
    let c = start(cfg).await.expect("TLS with the CA connects");
    let (body, ids) = id_batch("tls", 1, "tls", 10);
    assert_eq!(try_post(c.addr, &body).await, Some(200));
    c.stop().await.unwrap();
    // Reading back needs TLS too: the test's own client trusts the same CA.
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(dir.join("ca.pem"))
        .require_tls(true)
        .connect(format!("tls://127.0.0.1:{port}"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let info = js.get_stream("TAPIO_I12_TLS").await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.state.messages, ids.len() as u64);
    let _ = std::fs::remove_dir_all(dir);
}

/// A type or observer long enough that `<prefix>.<observer>.<type>` would pass the NATS
/// server's control-line limit (4 KiB): the record is stored under a subject cut to a
/// bound, and the connection every other batch shares is not broken by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_too_long_for_a_subject_is_stored_under_a_bounded_subject_without_breaking_the_connection() {
    let (dir, port, _nats) = scratch_nats("nats-long-subject");
    let server = start_controller(port, "TAPIO_LONG").await;
    let (body, mut ids) = id_batch("n1", 1, "long", 2);
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    let long_type = format!("kernel.network.{}", "x".repeat(6000));
    v["events"][1]["type"] = Value::String(long_type.clone());
    v["events"][1]["observer"] = Value::String("o".repeat(3000));
    let r = common::Client { addr: server.addr, headers: Vec::new() }.post_json("/v1/events", &v).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (body, more) = id_batch("n1", 2, "after-long", 3);
    assert_eq!(try_post(server.addr, &body).await, Some(200));
    ids.extend(more);
    server.stop().await.unwrap();
    let stored = read_stream(port, "TAPIO_LONG").await;
    assert_eq!(stored.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
    let long = &stored[1];
    assert!(long.subject.len() <= 256, "a bounded subject: {} bytes", long.subject.len());
    assert!(long.subject.starts_with("tapio.evidence.ooo"), "{}", &long.subject[..40]);
    assert!(tapio_controller::settings::valid_subject(&long.subject));
    let _ = std::fs::remove_dir_all(dir);
}

/// A stream that refuses part of a batch (full, discarding new messages): the batch is
/// refused, the records the stream acknowledged are counted written and only the others
/// `publish_error` (before, every record of the batch was counted dropped, those the
/// stream holds included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_takes_part_of_a_batch_has_only_the_rest_counted_dropped() {
    let (dir, port, _nats) = scratch_nats("nats-partly-full");
    let client = async_nats::connect(format!("127.0.0.1:{port}")).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TAPIO_FULL".into(),
        subjects: vec!["tapio.evidence.>".into()],
        max_messages: 3,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = nats_config(port, "TAPIO_FULL");
    cfg.create_stream = false;
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(10) };
    let (sinks, writers) = start(&[SinkTarget::Nats(Box::new(cfg))], &opts, &m).await.unwrap();
    let lines: String = (0..5)
        .map(|i| {
            format!("{{\"id\":\"full-{i}\",\"observer\":\"network\",\"type\":\"kernel.network.connection_refused\"}}\n")
        })
        .collect();
    let refused = sinks.deliver(lines.into_bytes(), 5).await;
    assert_eq!(refused.map_err(|r| r.reason), Err("write_failed"), "not every record is held");
    let written = m.sink_written.get_or_create(&SinkLabels { sink: "nats" }).get();
    let failed = m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "nats", reason: "publish_error" }).get();
    assert_eq!((written, failed), (3, 2), "what the stream acknowledged is held, the rest lost");
    writers.close(Duration::from_secs(5)).await;
    let stored: Vec<String> = read_stream(port, "TAPIO_FULL").await.into_iter().map(|m| m.id).collect();
    assert_eq!(stored, ["full-0", "full-1", "full-2"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// A server that stops answering: a chunk's PubAcks are all given up within one ack
/// timeout of its sending, not one timeout after another (each PubAck's own timeout only
/// starts when it is awaited), so the chunk does not hold its permits for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pubacks_of_a_chunk_are_awaited_within_one_ack_timeout() {
    let (dir, port, nats_proc) = scratch_nats("nats-stopped-acks");
    let mut cfg = nats_config(port, "TAPIO_STOPPED");
    cfg.ack_timeout = Duration::from_millis(500);
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(30) };
    let (sinks, writers) = start(&[SinkTarget::Nats(Box::new(cfg))], &opts, &m).await.unwrap();
    let lines: String = (0..20)
        .map(|i| {
            format!(
                "{{\"id\":\"stopped-{i}\",\"observer\":\"network\",\"type\":\"kernel.network.connection_refused\"}}\n"
            )
        })
        .collect();
    nats_proc.stop();
    let started = Instant::now();
    let refused = sinks.deliver(lines.into_bytes(), 20).await;
    let took = started.elapsed();
    nats_proc.resume();
    assert_eq!(refused.map_err(|r| r.reason), Err("write_failed"));
    assert!(took < Duration::from_secs(5), "20 PubAcks given up in {took:?}, not 20 × 500 ms");
    let failed = m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "nats", reason: "publish_error" }).get();
    assert_eq!(failed, 20);
    writers.close(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A stream that disappears while the server stays connected: the batches are refused and
/// the replica stays not ready until the stream is back. (Before, readiness came back a
/// second after each refusal because the connection was up, although every publish still
/// failed, so a Service kept sending agents to a replica that could keep nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_stream_not_just_the_connection() {
    let (dir, port, _nats) = scratch_nats("nats-stream-gone");
    let server = start_controller(port, "TAPIO_GONE_STREAM").await;
    let client = async_nats::connect(format!("127.0.0.1:{port}")).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let config = js.get_stream("TAPIO_GONE_STREAM").await.unwrap().cached_info().config.clone();
    assert!(js.delete_stream("TAPIO_GONE_STREAM").await.unwrap().success);
    let (body, _) = id_batch("n1", 1, "no-stream", 3);
    assert_eq!(try_post(server.addr, &body).await, Some(503), "nothing can keep the batch");
    // Longer than the probe's period: readiness must not come back while the stream is gone.
    for _ in 0..5 {
        let (status, why) = http_get(server.addr, "/readyz").await.unwrap();
        assert_eq!(status, 503, "{why}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    js.create_stream(config).await.unwrap();
    wait_for_async(|| async { http_get(server.addr, "/readyz").await.is_some_and(|(s, _)| s == 200) }).await;
    assert_eq!(try_post(server.addr, &body).await, Some(200));
    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

async fn wait_for_async<F: std::future::Future<Output = bool>>(mut cond: impl FnMut() -> F) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < end, "condition not met within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
