//! The OTLP logs sink against a scripted receiver on loopback. What the controller sent is
//! decoded by an independent decoder, the reference types of the PyPI package
//! `opentelemetry-proto` (installed by scripts/setup), and every field is checked; retries
//! on 429/503 honour `Retry-After`, are bounded, and are counted.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::ingest::try_post;
use common::servers::scrape;
use common::{temp_dir, TestServer};
use serde_json::{json, Value};
use tapio_controller::metrics::{Metrics, SinkLabels, SinkReasonLabels};
use tapio_controller::settings::OtlpConfig;
use tapio_controller::sink::{self, SinkOptions};
use tapio_controller::SinkTarget;

/// One request the receiver got.
#[derive(Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Default)]
struct Receiver {
    /// Answers to give, in order; 200 once empty.
    script: Mutex<VecDeque<(u16, Option<&'static str>)>>,
    got: Mutex<Vec<Received>>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    r.got.lock().unwrap().push(Received { at: Instant::now(), headers, body: body.to_vec() });
    let (status, retry_after) = r.script.lock().unwrap().pop_front().unwrap_or((200, None));
    let mut resp = (StatusCode::from_u16(status).unwrap(), "").into_response();
    if let Some(ra) = retry_after {
        resp.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    resp
}

async fn start_receiver(script: Vec<(u16, Option<&'static str>)>) -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver { script: Mutex::new(script.into()), got: Mutex::new(Vec::new()) });
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
    }
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
        "facts": {"pid": 4242, "comm": "psql", "family": "ipv4", "src_addr": "10.0.0.2", "src_port": 40000,
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
        ("process.executable.name", s("psql")),
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

    // A collector that keeps answering 503: two retries, then the records are dropped and counted.
    receiver.script.lock().unwrap().extend([(503, Some("0")), (503, Some("0")), (503, Some("0")), (503, Some("0"))]);
    drop((sinks, writers));
    let (sinks, writers) = sink::start(&[SinkTarget::Otlp(otlp(&endpoint, 2))], &opts, &m).await.unwrap();
    let before = receiver.got.lock().unwrap().len();
    sinks.deliver(line("c").into_bytes(), 1).await.unwrap();
    let dropped =
        || m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "otlp", reason: "retries_exhausted" }).get();
    let end = Instant::now() + Duration::from_secs(20);
    while dropped() < 1 {
        assert!(Instant::now() < end, "the export was not given up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.got.lock().unwrap().len() - before, 3, "one try and two retries, no more");
    assert_eq!(m.sink_retries.get_or_create(&SinkLabels { sink: "otlp" }).get(), 4);
    // A collector that refuses outright (400) is not retried.
    receiver.script.lock().unwrap().clear();
    receiver.script.lock().unwrap().push_back((400, None));
    let before = receiver.got.lock().unwrap().len();
    sinks.deliver(line("d").into_bytes(), 1).await.unwrap();
    let rejected = || m.sink_dropped.get_or_create(&SinkReasonLabels { sink: "otlp", reason: "rejected" }).get();
    let end = Instant::now() + Duration::from_secs(20);
    while rejected() < 1 {
        assert!(Instant::now() < end, "the refusal was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.got.lock().unwrap().len() - before, 1);
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
    let t = TestServer::start_with("i12-otlp-slow", |s| {
        s.sink_queue_bytes = 16 * 1024;
        s.sinks.push(SinkTarget::Otlp(otlp(&endpoint, 100)));
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
