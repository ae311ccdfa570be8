//! The OTLP logs sink against a scripted receiver on loopback. What the controller sent is
//! decoded by an independent decoder, the reference types of the PyPI package
//! `opentelemetry-proto` (installed by scripts/setup), and every field is checked; retries
//! on 429/503 honour `Retry-After`, are bounded, and are counted. The sink is durable: a
//! 200 to the agent comes only after the collector's 2xx, a collector that does not take
//! the records gets the batch refused (and the replica not ready until it is back), and
//! `--otlp-best-effort` brings back acknowledging before the export.

mod common;

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::ingest::{id_batch, try_post};
use common::servers::{controller, free_port, http_get, scrape};
use common::{temp_dir, TestServer};
use prost::Message;
use serde_json::{json, Value};
use tapio_controller::metrics::{Metrics, SinkLabels, SinkReasonLabels};
use tapio_controller::settings::OtlpConfig;
use tapio_controller::sink::otlp_proto::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tapio_controller::sink::{self, Refusal, SinkOptions};
use tapio_controller::SinkTarget;

/// One request the receiver got.
#[derive(Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Vec<u8>,
}

struct Receiver {
    /// Answers to give, in order; `otherwise` once empty.
    script: Mutex<VecDeque<(u16, Option<&'static str>)>>,
    /// The status once the script is done (200 unless a test sets it), with `Retry-After: 0`
    /// when it is not a 2xx.
    otherwise: AtomicU16,
    /// Records a 2xx reports rejected in a partial success (0: a plain 2xx).
    partial_rejected: AtomicI64,
    /// A partial success is sent gzip'd (`Content-Encoding: gzip`).
    gzip_answers: AtomicBool,
    /// Bytes of filler making up the body of every answer that has no partial success.
    filler_bytes: AtomicUsize,
    /// While set, an export is recorded, then its answer waits for a permit of `gate`.
    hold: AtomicBool,
    gate: tokio::sync::Semaphore,
    /// Exports with records, as received.
    got: Mutex<Vec<Received>>,
    /// Exports without records (the sink's readiness probe): answered `otherwise`, never
    /// held, not recorded in `got`.
    probes: AtomicUsize,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    if log_records(&body).is_empty() {
        r.probes.fetch_add(1, Ordering::SeqCst);
        return answer(&r, r.otherwise.load(Ordering::SeqCst), Some("0"), 0);
    }
    r.got.lock().unwrap().push(Received { at: Instant::now(), headers, body: body.to_vec() });
    if r.hold.load(Ordering::SeqCst) {
        r.gate.acquire().await.unwrap().forget();
    }
    let otherwise = r.otherwise.load(Ordering::SeqCst);
    let (status, retry_after) = r.script.lock().unwrap().pop_front().unwrap_or((otherwise, Some("0")));
    answer(&r, status, retry_after, r.partial_rejected.load(Ordering::SeqCst))
}

fn answer(r: &Receiver, status: u16, retry_after: Option<&'static str>, partial_rejected: i64) -> Response {
    let code = StatusCode::from_u16(status).unwrap();
    let mut resp = if (200..300).contains(&status) && partial_rejected > 0 {
        let partial = ExportLogsPartialSuccess {
            rejected_log_records: partial_rejected,
            error_message: "dropped by a filter".into(),
        };
        let body = ExportLogsServiceResponse { partial_success: Some(partial) }.encode_to_vec();
        if r.gzip_answers.load(Ordering::SeqCst) {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut gz, &body).unwrap();
            let headers = [("content-type", "application/x-protobuf"), ("content-encoding", "gzip")];
            (code, headers, gz.finish().unwrap()).into_response()
        } else {
            (code, [("content-type", "application/x-protobuf")], body).into_response()
        }
    } else {
        let filler = vec![b'x'; r.filler_bytes.load(Ordering::SeqCst)];
        (code, [("content-type", "application/x-protobuf")], filler).into_response()
    };
    if let (Some(ra), false) = (retry_after, (200..300).contains(&status)) {
        resp.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    resp
}

/// The LogRecords of a gzip'd export request, decoded with the controller's own types
/// (the field-by-field check uses the reference decoder).
fn log_records(gz: &[u8]) -> Vec<tapio_controller::sink::otlp_proto::LogRecord> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).expect("a gzip body");
    let req = ExportLogsServiceRequest::decode(&raw[..]).expect("an ExportLogsServiceRequest");
    req.resource_logs.into_iter().flat_map(|r| r.scope_logs).flat_map(|s| s.log_records).collect()
}

async fn start_receiver(script: Vec<(u16, Option<&'static str>)>) -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver {
        script: Mutex::new(script.into()),
        otherwise: AtomicU16::new(200),
        partial_rejected: AtomicI64::new(0),
        gzip_answers: AtomicBool::new(false),
        filler_bytes: AtomicUsize::new(0),
        hold: AtomicBool::new(false),
        gate: tokio::sync::Semaphore::new(0),
        got: Mutex::new(Vec::new()),
        probes: AtomicUsize::new(0),
    });
    let app = axum::Router::new().route("/v1/logs", axum::routing::post(receive)).with_state(Arc::clone(&r));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1/logs"), r)
}

fn otlp(endpoint: &str, max_retries: u32) -> OtlpConfig {
    OtlpConfig {
        endpoint: endpoint.into(),
        max_batch_records: 2048,
        max_retries,
        max_retry_delay: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        best_effort: false,
    }
}

fn otlp_best_effort(endpoint: &str, max_retries: u32) -> OtlpConfig {
    OtlpConfig { best_effort: true, ..otlp(endpoint, max_retries) }
}

/// An endpoint where nothing listens (connections are refused).
fn dead_endpoint() -> String {
    format!("http://127.0.0.1:{}/v1/logs", free_port())
}

/// Waits for `cond`, failing after 20 s (a backstop: the conditions come true in well
/// under a second when the code is right).
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn dropped(m: &Metrics, reason: &'static str) -> u64 {
    m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "otlp", reason }).get()
}

fn written(m: &Metrics) -> u64 {
    m.sink_written.get_or_create(&SinkLabels { sink: "otlp" }).get()
}

/// A test server whose only sink is OTLP to `cfg`.
async fn otlp_only_server(
    tag: &str,
    cfg: OtlpConfig,
    tweak: impl FnOnce(&mut tapio_controller::Settings),
) -> TestServer {
    TestServer::start_with(tag, |s| {
        s.sinks = vec![SinkTarget::Otlp(cfg)];
        tweak(s);
    })
    .await
}

/// `/v1/status`'s entry for the otlp sink.
async fn otlp_status(addr: SocketAddr) -> Value {
    let (_, body) = http_get(addr, "/v1/status").await.unwrap();
    let status: Value = serde_json::from_str(&body).unwrap();
    status["sinks"].as_array().unwrap().iter().find(|s| s["name"] == "otlp").cloned().expect("an otlp sink")
}

/// Decodes a gzip'd ExportLogsServiceRequest with the reference Python types, as JSON
/// (proto field names; 64-bit integers as strings, enums by name, as protobuf's JSON does).
fn decode_with_reference_types(gz: &[u8]) -> Value {
    let dir = temp_dir("i12-otlp-decode");
    let file = dir.join("body.pb.gz");
    std::fs::write(&file, gz).unwrap();
    let script = "import sys, gzip, json\n\
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2\n\
from google.protobuf.json_format import MessageToDict\n\
req = logs_service_pb2.ExportLogsServiceRequest()\n\
req.ParseFromString(gzip.decompress(open(sys.argv[1], 'rb').read()))\n\
print(json.dumps(MessageToDict(req, preserving_proto_field_name=True)))\n";
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&file).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "reference decoder failed (run scripts/setup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn attrs(record: &Value) -> serde_json::Map<String, Value> {
    record["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv["key"].as_str().unwrap().to_string(), kv["value"].clone()))
        .collect()
}

async fn wait_written(m: &Metrics, sink: &'static str, n: u64) {
    let end = Instant::now() + Duration::from_secs(20);
    while m.sink_written.get_or_create(&SinkLabels { sink }).get() < n {
        assert!(Instant::now() < end, "{sink} did not write {n} records");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_posted_to_the_controller_reaches_the_collector_field_by_field() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    // Two sinks at once: the durable file, then OTLP.
    let t = TestServer::start_with("i12-otlp-e2e", |s| s.sinks.push(SinkTarget::Otlp(otlp(&endpoint, 3)))).await;
    let full = json!({
        "id": "01JOTLP0000000000000000001", "type": "kernel.network.connection_refused", "observer": "network",
        "severity": "warning", "outcome": "failure",
        "error": {"code": "ECONNREFUSED", "message": "TCP connect to 10.0.0.9:5432 was refused"},
        "timestamp_unix_nanos": 1_763_700_000_123_456_789u64, "node": "node-7", "config_generation": 3,
        "workload": {"cgroup_id": 2675, "cgroup_path": "/kubepods/p1/c1", "container_id": "c1", "pod_uid": "p1"},
        "facts": {"pid": 4242, "tid": 4243, "comm": "psql", "family": "ipv4", "src_addr": "10.0.0.2", "src_port": 40000,
                  "dst_addr": "10.0.0.9", "dst_port": 5432, "errno": 111, "soft_error": false, "ratio": 1.5}
    });
    let bare = json!({"type": "kernel.node.memory_pressure", "observer": "node", "severity": "novel",
                      "timestamp_unix_nanos": 5u64, "facts": {}});
    let body = json!({"wire_version": "tapio-wire/v1", "agent_id": "a1", "node_name": "node-batch",
                      "sequence": 1, "sent_at_unix_nanos": 1u64, "events": [full, bare]});
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert_eq!(try_post(t.server.addr, body.to_string().as_bytes()).await, Some(200));
    wait_written(&t.server.state.metrics, "otlp", 2).await;
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "one export request");
    let h = &got[0].headers;
    assert_eq!(h["content-type"], "application/x-protobuf");
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["user-agent"], concat!("tapio-controller/", env!("CARGO_PKG_VERSION")), "OTLP/HTTP asks for one");
    let req = decode_with_reference_types(&got[0].body);

    let rls = req["resource_logs"].as_array().unwrap();
    assert_eq!(rls.len(), 2, "one ResourceLogs per node: {req}");
    let by_host = |host: &str| {
        rls.iter()
            .find(|rl| attrs(&rl["resource"]).get("host.name") == Some(&json!({"string_value": host})))
            .unwrap_or_else(|| panic!("no resource for {host}: {req}"))
            .clone()
    };
    let rl = by_host("node-7");
    let resource = attrs(&rl["resource"]);
    assert_eq!(resource.len(), 2, "{resource:?}");
    assert_eq!(resource["service.name"], json!({"string_value": "tapio"}));
    let scope = &rl["scope_logs"][0];
    assert_eq!(scope["scope"]["name"], "tapio-controller");
    assert_eq!(scope["scope"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(scope["schema_url"], "https://opentelemetry.io/schemas/1.26.0");
    let recs = scope["log_records"].as_array().unwrap();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["event_name"], "kernel.network.connection_refused");
    assert_eq!(r["time_unix_nano"], "1763700000123456789");
    let observed: u64 = r["observed_time_unix_nano"].as_str().unwrap().parse().unwrap();
    assert!(observed >= before, "observed time is the export's");
    assert_eq!(r["severity_number"], "SEVERITY_NUMBER_WARN");
    assert_eq!(r["severity_text"], "warning");
    assert_eq!(r["body"], json!({"string_value": "TCP connect to 10.0.0.9:5432 was refused"}));
    let a = attrs(r);
    let s = |v: &str| json!({"string_value": v});
    let i = |v: i64| json!({"int_value": v.to_string()});
    let expected = [
        ("log.record.uid", s("01JOTLP0000000000000000001")),
        ("tapio.observer", s("network")),
        ("tapio.outcome", s("failure")),
        ("error.type", s("ECONNREFUSED")),
        ("tapio.config_generation", i(3)),
        ("tapio.node", s("node-7")),
        ("container.id", s("c1")),
        ("k8s.pod.uid", s("p1")),
        ("tapio.workload.cgroup_id", i(2675)),
        ("tapio.workload.cgroup_path", s("/kubepods/p1/c1")),
        ("process.pid", i(4242)),
        ("thread.id", i(4243)),
        ("thread.name", s("psql")),
        ("network.type", s("ipv4")),
        ("network.local.address", s("10.0.0.2")),
        ("network.local.port", i(40000)),
        ("network.peer.address", s("10.0.0.9")),
        ("network.peer.port", i(5432)),
        ("tapio.fact.errno", i(111)),
        ("tapio.fact.soft_error", json!({"bool_value": false})),
        ("tapio.fact.ratio", json!({"double_value": 1.5})),
    ];
    for (k, v) in &expected {
        assert_eq!(a.get(*k), Some(v), "attribute {k} in {a:?}");
    }
    assert_eq!(a.len(), expected.len(), "no attribute beyond the expected ones: {a:?}");

    // A record with no error, no id and an unknown severity: no body, UNSPECIFIED, its
    // node filled from the batch.
    let rl = by_host("node-batch");
    let r = &rl["scope_logs"][0]["log_records"][0];
    assert_eq!(r["event_name"], "kernel.node.memory_pressure");
    assert_eq!(r["time_unix_nano"], "5");
    assert!(r.get("body").is_none(), "{r}");
    assert!(r.get("severity_number").is_none(), "UNSPECIFIED is the default (absent in JSON): {r}");
    assert_eq!(r["severity_text"], "novel");
    assert_eq!(attrs(r).get("log.record.uid"), None);
    assert_eq!(scrape(t.server.addr, "tapio_controller_sink_records_written_total{sink=\"file\"}").await, Some(2.0));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_attributes_of_an_enriched_record_are_exported_verbatim() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 0))], &opts, &m).await.unwrap();
    let k8s = json!({"k8s.namespace.name": "shop", "k8s.pod.name": "web-1", "k8s.pod.uid": "uid-1",
                     "k8s.container.name": "app", "k8s.node.name": "n1", "k8s.deployment.name": "web"});
    // As the controller stores it: the workload's pod UID, and the same UID among the names.
    let record = json!({"id": "01K", "type": "kernel.container.oom_kill", "observer": "container",
                        "severity": "critical", "timestamp_unix_nanos": 9u64, "node": "n1", "k8s": k8s,
                        "workload": {"cgroup_id": 7, "pod_uid": "uid-1", "container_id": "c7"},
                        "facts": {"pid": 1, "exit_code": 137}});
    sinks.deliver(format!("{record}\n").into_bytes(), 1).await.unwrap();
    wait_written(&m, "otlp", 1).await;
    writers.close(Duration::from_secs(5)).await;
    let req = decode_with_reference_types(&receiver.got.lock().unwrap()[0].body);
    let r = &req["resource_logs"][0]["scope_logs"][0]["log_records"][0];
    assert_eq!(r["severity_number"], "SEVERITY_NUMBER_FATAL");
    let a = attrs(r);
    for (k, v) in k8s.as_object().unwrap() {
        assert_eq!(a.get(k), Some(&json!({"string_value": v})), "{k}");
    }
    assert_eq!(a.get("process.exit.code"), Some(&json!({"int_value": "137"})));
    let keys: Vec<&str> = r["attributes"].as_array().unwrap().iter().map(|kv| kv["key"].as_str().unwrap()).collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "OTLP attribute keys are unique: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_honour_retry_after_are_bounded_and_counted() {
    // 429 with Retry-After: 1, then 503 (no header: the 1 s backoff), then accepted.
    let (endpoint, receiver) = start_receiver(vec![(429, Some("1")), (503, None)]).await;
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 3))], &opts, &m).await.unwrap();
    let line = |id: &str| {
        format!(
            "{}\n",
            json!({"id": id, "type": "kernel.x.y", "observer": "x", "severity": "info", "timestamp_unix_nanos": 1u64, "node": "n", "facts": {}})
        )
    };
    sinks.deliver(format!("{}{}", line("a"), line("b")).into_bytes(), 2).await.unwrap();
    wait_written(&m, "otlp", 2).await;
    {
        let got = receiver.got.lock().unwrap();
        assert_eq!(got.len(), 3, "two refusals, then accepted");
        assert!(got.iter().all(|g| g.body == got[0].body), "the same request is retried");
        // Lower bounds only: waiting at least the advised time cannot flake on a slow machine.
        assert!(got[1].at - got[0].at >= Duration::from_millis(950), "Retry-After: 1 is honoured");
        assert!(got[2].at - got[1].at >= Duration::from_millis(950), "backoff after a 503");
    }
    assert_eq!(m.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).get(), 2);

    // A collector that keeps answering 503: two retries, then the records are dropped and
    // counted, and the batch refused (the agent keeps it).
    receiver.script.lock().unwrap().extend([(503, Some("0")), (503, Some("0")), (503, Some("0")), (503, Some("0"))]);
    drop((sinks, writers));
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 2))], &opts, &m).await.unwrap();
    let before = receiver.got.lock().unwrap().len();
    let refused = sinks.deliver(line("c").into_bytes(), 1).await;
    assert_eq!(refused, Err(Refusal { sink: "otlp", reason: "write_failed" }));
    assert_eq!(dropped(&m, "retries_exhausted"), 1, "counted before the refusal");
    assert_eq!(receiver.got.lock().unwrap().len() - before, 3, "one try and two retries, no more");
    assert_eq!(m.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).get(), 4);
    // A collector that refuses outright (400) is not retried; the batch is refused too.
    receiver.script.lock().unwrap().clear();
    receiver.script.lock().unwrap().push_back((400, None));
    let before = receiver.got.lock().unwrap().len();
    let refused = sinks.deliver(line("d").into_bytes(), 1).await;
    assert_eq!(refused, Err(Refusal { sink: "otlp", reason: "write_failed" }));
    assert_eq!(dropped(&m, "rejected"), 1);
    assert_eq!(receiver.got.lock().unwrap().len() - before, 1);
    assert_eq!(written(&m), 2, "only the first batch was taken");
    writers.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_stalls_neither_ingest_nor_the_file_sink() {
    // A collector that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/logs", silent.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    // Best effort (`--otlp-best-effort`): durable, the stuck collector would refuse every batch.
    let t = TestServer::start_with("i12-otlp-slow", |s| {
        s.sink_queue_bytes = 16 * 1024;
        s.sinks.push(SinkTarget::Otlp(otlp_best_effort(&endpoint, 100)));
    })
    .await;
    let started = Instant::now();
    for seq in 1..=30 {
        let (body, _) = common::ingest::id_batch("slow", seq, &format!("slow-{seq}"), 40);
        assert_eq!(try_post(t.server.addr, &body).await, Some(200), "ingest goes on");
    }
    let elapsed = started.elapsed();
    let addr = t.server.addr;
    assert_eq!(scrape(addr, "tapio_controller_sink_records_written_total{sink=\"file\"}").await, Some(1200.0));
    let dropped =
        scrape(addr, "tapio_controller_sink_records_dropped_total{sink=\"otlp\",reason=\"queue_full\"}").await;
    assert!(dropped.is_some_and(|d| d > 0.0), "the stuck sink's overflow is dropped and counted: {dropped:?}");
    assert_eq!(scrape(addr, "tapio_controller_sink_records_written_total{sink=\"otlp\"}").await, Some(0.0));
    // Best effort: readiness does not depend on the collector.
    assert_eq!(common::servers::http_get(addr, "/readyz").await.unwrap().0, 200);
    eprintln!("30 batches through a file sink beside a stuck OTLP collector in {elapsed:?}");
    let metrics = std::sync::Arc::clone(&t.server.state.metrics);
    t.stop().await;
    hold.abort();
    // What the stuck sink still held at shutdown is counted too.
    let queue_full = metrics.sink_dropped.get_or_create(&SinkReasonLabels { sink: "otlp", reason: "queue_full" }).get();
    let shutdown = metrics.sink_dropped.get_or_create(&SinkReasonLabels { sink: "otlp", reason: "shutdown" }).get();
    assert_eq!(queue_full + shutdown, 1200, "every record the otlp sink did not export is counted");
}

/// The status and error code of a POST /v1/events.
async fn post_events(t: &TestServer, body: &[u8]) -> (u16, Option<String>) {
    let resp = t.client().post_bytes("/v1/events", body).await;
    let code = (resp.status != 200).then(|| resp.error_code());
    (resp.status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_refuses_every_export_gets_the_batch_refused_until_it_is_back() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    receiver.otherwise.store(503, Ordering::SeqCst);
    let t = otlp_only_server("i12-otlp-refusing", otlp(&endpoint, 2), |_| {}).await;
    let (addr, m) = (t.server.addr, Arc::clone(&t.server.state.metrics));
    let (body, _) = id_batch("down", 1, "down", 5);
    assert_eq!(post_events(&t, &body).await, (503, Some("NOT_READY".into())), "refused: the agent keeps the batch");
    assert_eq!(receiver.got.lock().unwrap().len(), 3, "one try and two retries");
    assert_eq!(written(&m), 0, "nothing is counted written");
    assert_eq!(dropped(&m, "retries_exhausted"), 5);
    assert_eq!(scrape(addr, "tapio_controller_events_accepted_total").await, Some(0.0));
    let refused = "tapio_controller_sink_batches_refused_total{sink=\"otlp\",reason=\"write_failed\"}";
    assert_eq!(scrape(addr, refused).await, Some(1.0));
    // Durable: readiness follows the collector, and /v1/status says so.
    let (status, why) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("otlp") && why.contains("503"), "{why}");
    let s = otlp_status(addr).await;
    assert_eq!((&s["durable"], &s["ready"]), (&json!(true), &json!(false)), "{s}");

    // The collector is back: the sink's probe (no batch needed) makes the replica ready,
    // and the batch the agent resends is acknowledged once the collector holds it.
    receiver.otherwise.store(200, Ordering::SeqCst);
    let end = Instant::now() + Duration::from_secs(20);
    while http_get(addr, "/readyz").await.unwrap().0 != 200 {
        assert!(Instant::now() < end, "readiness did not return once the collector took exports");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.probes.load(Ordering::SeqCst) > 0, "found out by probing");
    assert_eq!(receiver.got.lock().unwrap().len(), 3, "probes carry no records");
    assert_eq!(post_events(&t, &body).await, (200, None));
    assert_eq!(written(&m), 5);
    assert_eq!(otlp_status(addr).await["ready"], json!(true));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_200_comes_only_after_the_collector_holds_the_records() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    receiver.hold.store(true, Ordering::SeqCst);
    // Long timeouts: only the collector's answer may end the request here.
    let t = otlp_only_server("i12-otlp-held", otlp(&endpoint, 0), |s| {
        s.sink_ack_timeout = Duration::from_secs(60);
        s.request_timeout = Duration::from_secs(60);
    })
    .await;
    let m = Arc::clone(&t.server.state.metrics);
    let (body, ids) = id_batch("held", 1, "held", 7);
    let addr = t.server.addr;
    let post = tokio::spawn(async move { try_post(addr, &body).await });
    wait_for("the export reaches the collector", || !receiver.got.lock().unwrap().is_empty()).await;
    // The collector has the records and has not answered: the agent has no answer either.
    let held = log_records(&receiver.got.lock().unwrap()[0].body);
    let uids: Vec<String> = held
        .iter()
        .map(|r| {
            let uid = r.attributes.iter().find(|a| a.key == "log.record.uid").unwrap();
            match uid.value.as_ref().unwrap().value.as_ref().unwrap() {
                tapio_controller::sink::otlp_proto::any_value::Value::StringValue(s) => s.clone(),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(uids, ids, "the held export carries the batch");
    assert!(!post.is_finished(), "no answer to the agent while the collector holds its answer");
    assert_eq!(m.batches_accepted.get(), 0, "not acknowledged while the collector holds its answer");
    assert_eq!(written(&m), 0);
    receiver.gate.add_permits(1);
    assert_eq!(post.await.unwrap(), Some(200), "acknowledged once the collector answered 2xx");
    assert_eq!(written(&m), 7);
    assert_eq!(m.batches_accepted.get(), 1);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_success_acknowledges_and_counts_what_the_collector_rejected() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    receiver.partial_rejected.store(2, Ordering::SeqCst);
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 3))], &opts, &m).await.unwrap();
    let (body, _) = id_batch("partial", 1, "partial", 5);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let lines: String = v["events"].as_array().unwrap().iter().map(|e| format!("{e}\n")).collect();
    // The collector will never take the two it rejected: a retry cannot help, so the batch
    // is acknowledged and those two are counted.
    assert_eq!(sinks.deliver(lines.into_bytes(), 5).await, Ok(()));
    assert_eq!((written(&m), dropped(&m, "rejected")), (3, 2));
    assert_eq!(receiver.got.lock().unwrap().len(), 1, "not retried");
    assert_eq!(m.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).get(), 0);
    writers.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_no_request_waits_for_stops_retrying() {
    // Nothing listens: every attempt fails at once, and up to 100 retries are allowed.
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(1) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&dead_endpoint(), 100))], &opts, &m).await.unwrap();
    let (body, _) = id_batch("gone", 1, "gone", 4);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let lines: String = v["events"].as_array().unwrap().iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(sinks.deliver(lines.into_bytes(), 4).await, Err(Refusal { sink: "otlp", reason: "ack_timeout" }));
    // The request has gone: the export stops at its next retry, its records counted as
    // refused (the agent resends them), not as retries exhausted.
    wait_for("the export is given up", || dropped(&m, "refused") == 4).await;
    assert_eq!(dropped(&m, "retries_exhausted"), 0);
    let retries = m.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).get();
    assert!(retries <= 2, "stopped long before its 100 retries: {retries}");
    assert_eq!(m.sink_queue_bytes.get_or_create(&SinkLabels { sink: "otlp" }).get(), 0, "its bytes left the queue");
    assert!(sinks.not_ready().is_some_and(|why| why.contains("otlp")), "the collector is still unreachable");
    writers.close(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_otlp_best_effort_a_down_collector_is_acknowledged_and_the_loss_counted() {
    // The real binary and flags: a collector that is not listening.
    let dir = temp_dir("i12-otlp-best-effort");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let endpoint = dead_endpoint();
    let args: Vec<String> =
        ["--sink", "otlp", "--otlp-endpoint", &endpoint, "--otlp-max-retries", "0", "--otlp-best-effort"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let _controller = controller(&dir, "controller.log", addr, &args);
    let (body, _) = id_batch("be", 1, "be", 6);
    assert_eq!(try_post(addr, &body).await, Some(200), "acknowledged before the export, as before");
    let lost = "tapio_controller_sink_records_dropped_total{sink=\"otlp\",reason=\"retries_exhausted\"}";
    let end = Instant::now() + Duration::from_secs(20);
    while scrape(addr, lost).await != Some(6.0) {
        assert!(Instant::now() < end, "the failed export was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(scrape(addr, "tapio_controller_sink_records_written_total{sink=\"otlp\"}").await, Some(0.0));
    assert_eq!(scrape(addr, "tapio_controller_events_accepted_total").await, Some(6.0));
    assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 200, "best effort: readiness ignores the collector");
    let s = otlp_status(addr).await;
    assert_eq!((&s["durable"], &s["ready"]), (&json!(false), &json!(false)), "{s}");
    drop(_controller);
    let _ = std::fs::remove_dir_all(dir);
}

/// A static pod's record: the node knows it by the UID its cgroups carry, the controller
/// names it with its mirror pod, whose UID is the one the API server and other telemetry
/// know. `k8s.pod.uid` is the mirror's, and the node's UID is kept beside it. (Before, the
/// node's UID took `k8s.pod.uid` and the mirror's was dropped without a trace.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_pods_record_carries_its_mirrors_uid_and_keeps_the_nodes() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 0))], &opts, &m).await.unwrap();
    let record = |id: &str, node_uid: &str| {
        json!({"id": id, "type": "kernel.container.abnormal_exit", "observer": "container", "severity": "error",
               "timestamp_unix_nanos": 9u64, "node": "n1",
               "k8s": {"k8s.namespace.name": "kube-system", "k8s.pod.name": "etcd-n1", "k8s.pod.uid": "mirror-uid"},
               "workload": {"pod_uid": node_uid, "container_id": "c1"}, "facts": {"pid": 1}})
    };
    let lines = format!("{}\n{}\n", record("static", "static-uid"), record("same", "mirror-uid"));
    sinks.deliver(lines.into_bytes(), 2).await.unwrap();
    wait_written(&m, "otlp", 2).await;
    writers.close(Duration::from_secs(5)).await;
    let req = decode_with_reference_types(&receiver.got.lock().unwrap()[0].body);
    let recs = req["resource_logs"][0]["scope_logs"][0]["log_records"].as_array().unwrap().clone();
    let by_uid = |uid: &str| {
        let r = recs.iter().find(|r| attrs(r)["log.record.uid"] == json!({"string_value": uid})).unwrap();
        (attrs(r), r.get("dropped_attributes_count").cloned())
    };
    let (a, dropped) = by_uid("static");
    assert_eq!(a["k8s.pod.uid"], json!({"string_value": "mirror-uid"}), "{a:?}");
    assert_eq!(a["tapio.workload.pod_uid"], json!({"string_value": "static-uid"}), "{a:?}");
    assert_eq!(dropped, None, "nothing dropped");
    // An ordinary pod's two UIDs are one: said once.
    let (a, _) = by_uid("same");
    assert_eq!(a["k8s.pod.uid"], json!({"string_value": "mirror-uid"}));
    assert!(!a.contains_key("tapio.workload.pod_uid"), "{a:?}");
}

/// Every kind of JSON value a record's facts may hold reaches the collector as itself:
/// nested maps and arrays, integers of both signs and above i64::MAX (exact, as text),
/// floats, booleans, empty and non-ASCII strings; a null inside an array keeps its place
/// as an empty value (before, it was left out and the elements after it moved up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_fact_value_reaches_the_collector_as_itself() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 0))], &opts, &m).await.unwrap();
    let record = json!({"id": "01V", "type": "kernel.x.y", "observer": "x", "severity": "info",
                        "timestamp_unix_nanos": u64::MAX, "node": "Köln-節点",
                        "facts": {"list": [1, null, 3], "nested": {"a": -5, "b": [true, ""], "gone": null},
                                  "big": u64::MAX, "min": i64::MIN, "f": 0.25, "empty": "", "utf8": "köln ☃ \u{1F600}",
                                  "absent": null}});
    sinks.deliver(format!("{record}\n").into_bytes(), 1).await.unwrap();
    wait_written(&m, "otlp", 1).await;
    writers.close(Duration::from_secs(5)).await;
    let req = decode_with_reference_types(&receiver.got.lock().unwrap()[0].body);
    let rl = &req["resource_logs"][0];
    assert_eq!(attrs(&rl["resource"])["host.name"], json!({"string_value": "Köln-節点"}));
    let r = &rl["scope_logs"][0]["log_records"][0];
    assert_eq!(r["time_unix_nano"], u64::MAX.to_string(), "fixed64 holds every u64");
    let a = attrs(r);
    let int = |v: i64| json!({"int_value": v.to_string()});
    assert_eq!(a["tapio.fact.list"], json!({"array_value": {"values": [int(1), {}, int(3)]}}));
    assert_eq!(
        a["tapio.fact.nested"],
        json!({"kvlist_value": {"values": [
            {"key": "a", "value": int(-5)},
            {"key": "b", "value": {"array_value": {"values": [{"bool_value": true}, {"string_value": ""}]}}}
        ]}})
    );
    assert_eq!(a["tapio.fact.big"], json!({"string_value": u64::MAX.to_string()}));
    assert_eq!(a["tapio.fact.min"], int(i64::MIN));
    assert_eq!(a["tapio.fact.f"], json!({"double_value": 0.25}));
    assert_eq!(a["tapio.fact.empty"], json!({"string_value": ""}));
    assert_eq!(a["tapio.fact.utf8"], json!({"string_value": "köln ☃ \u{1F600}"}));
    assert!(!a.contains_key("tapio.fact.absent"), "a null attribute is left out, as absent says the same");
}

/// The status is the collector's answer: a 2xx whose body is over the 64 KiB the sink
/// reads has still taken the records (before, the unread body made it a failed export,
/// retried: the collector got the records twice), and a 503's `Retry-After` is honoured
/// whatever its body (before, the same error replaced it with the 1 s backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_decides_whatever_the_size_of_the_body_after_it() {
    let (endpoint, receiver) = start_receiver(vec![(503, Some("2"))]).await;
    receiver.filler_bytes.store(100 * 1024, Ordering::SeqCst);
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(10) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 3))], &opts, &m).await.unwrap();
    let (body, _) = id_batch("big-answer", 1, "big-answer", 3);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let lines: String = v["events"].as_array().unwrap().iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(sinks.deliver(lines.into_bytes(), 3).await, Ok(()));
    {
        let got = receiver.got.lock().unwrap();
        assert_eq!(got.len(), 2, "a 503, then a 200 taken at its word");
        assert!(got[1].at - got[0].at >= Duration::from_millis(1900), "Retry-After: 2 is honoured");
    }
    assert_eq!(m.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).get(), 1);
    assert_eq!((written(&m), dropped(&m, "rejected")), (3, 0));
    writers.close(Duration::from_secs(5)).await;
}

/// A partial success sent gzip'd is read like a plain one: its rejected records are
/// counted lost, not written (before, the compressed body did not decode and every record
/// was counted written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzipped_partial_success_counts_what_the_collector_rejected() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    receiver.partial_rejected.store(2, Ordering::SeqCst);
    receiver.gzip_answers.store(true, Ordering::SeqCst);
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 3))], &opts, &m).await.unwrap();
    let (body, _) = id_batch("gz-partial", 1, "gz-partial", 5);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let lines: String = v["events"].as_array().unwrap().iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(sinks.deliver(lines.into_bytes(), 5).await, Ok(()));
    assert_eq!((written(&m), dropped(&m, "rejected")), (3, 2));
    assert_eq!(receiver.got.lock().unwrap().len(), 1, "not retried");
    writers.close(Duration::from_secs(5)).await;
}

/// A sink that does not finish within the shutdown bound is stopped, not left running:
/// what it held is counted once, as `shutdown`, and no export of it goes on afterwards.
/// (Before, its task went on in the background: it kept connecting to the collector and
/// would count the same records again as written or `retries_exhausted`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_stopped_at_shutdown_exports_nothing_afterwards_and_counts_its_records_once() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/v1/logs", silent.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&connections);
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let cfg = OtlpConfig {
        timeout: Duration::from_millis(300),
        max_retry_delay: Duration::from_millis(100),
        ..otlp_best_effort(&endpoint, 1000)
    };
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(5) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(cfg)], &opts, &m).await.unwrap();
    let (body, _) = id_batch("stuck", 1, "stuck", 4);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let lines: String = v["events"].as_array().unwrap().iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(sinks.deliver(lines.into_bytes(), 4).await, Ok(()), "best effort");
    wait_for("the export reaches the collector", || connections.load(Ordering::SeqCst) > 0).await;
    writers.close(Duration::from_millis(500)).await;
    assert_eq!(dropped(&m, "shutdown"), 4);
    let (after_close, retries) =
        (connections.load(Ordering::SeqCst), m.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).get());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(connections.load(Ordering::SeqCst), after_close, "no export after the sink was stopped");
    assert_eq!(m.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).get(), retries);
    for reason in ["retries_exhausted", "rejected", "refused", "unhandled"] {
        assert_eq!(dropped(&m, reason), 0, "{reason}: counted once, as shutdown");
    }
    assert_eq!(written(&m), 0);
    hold.abort();
}

/// A burst queued behind a slow collector goes out in requests of at most about 4 MiB of
/// records each, not as one request holding the whole burst (which a collector's body
/// limit, 20 MiB by default, would refuse together with every batch in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_queued_behind_a_slow_collector_goes_out_in_bounded_requests() {
    let (endpoint, receiver) = start_receiver(vec![]).await;
    receiver.hold.store(true, Ordering::SeqCst);
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 64 << 20, ack_timeout: Duration::from_secs(30) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp_best_effort(&endpoint, 0))], &opts, &m).await.unwrap();
    let line = |id: String, blob: usize| {
        let record = json!({"id": id, "type": "kernel.x.y", "observer": "x", "severity": "info",
                            "timestamp_unix_nanos": 1u64, "node": "n", "facts": {"blob": "b".repeat(blob)}});
        format!("{record}\n")
    };
    // Four exports the collector holds, so that what follows queues up behind them.
    for i in 0..4 {
        sinks.deliver(line(format!("small-{i}"), 10).into_bytes(), 1).await.unwrap();
        wait_for("an export held", || receiver.got.lock().unwrap().len() == i + 1).await;
    }
    for b in 0..4 {
        let batch: String = (0..2).map(|i| line(format!("big-{b}-{i}"), 1 << 20)).collect();
        sinks.deliver(batch.into_bytes(), 2).await.unwrap();
    }
    receiver.hold.store(false, Ordering::SeqCst);
    receiver.gate.add_permits(64);
    wait_written(&m, "otlp", 12).await;
    writers.close(Duration::from_secs(5)).await;
    let got = receiver.got.lock().unwrap().clone();
    let sizes: Vec<usize> = got
        .iter()
        .map(|g| {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(&g.body[..]).read_to_end(&mut raw).unwrap();
            raw.len()
        })
        .collect();
    assert!(sizes.iter().all(|s| *s < 4_500_000), "every export request bounded: {sizes:?}");
    assert_eq!(got.iter().map(|g| log_records(&g.body).len()).sum::<usize>(), 12, "every record exported once");
}

/// A `Retry-After` longer than `--otlp-max-retry-delay-secs` is waited for only that long:
/// a collector asking for an hour does not hold the export (and its batch) for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_the_cap_waits_only_the_cap() {
    let (endpoint, receiver) = start_receiver(vec![(429, Some("3600"))]).await;
    let m = Metrics::new();
    let opts = SinkOptions { queue_bytes: 1 << 20, ack_timeout: Duration::from_secs(30) };
    let cfg = OtlpConfig { max_retry_delay: Duration::from_secs(1), ..otlp(&endpoint, 3) };
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(cfg)], &opts, &m).await.unwrap();
    let (body, _) = id_batch("capped", 1, "capped", 2);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let lines: String = v["events"].as_array().unwrap().iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(sinks.deliver(lines.into_bytes(), 2).await, Ok(()));
    let got = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_millis(950) && waited < Duration::from_secs(15), "waited {waited:?}");
    writers.close(Duration::from_secs(5)).await;
}
