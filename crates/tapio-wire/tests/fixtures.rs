//! Round-trips every checked-in fixture: parse → serialize → parse must be equal, unknown
//! fields must be ignored and unknown enum values kept.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tapio_wire::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Parses a fixture, re-serializes it, parses again and checks both parses are equal.
fn round_trip<T>(name: &str) -> T
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let bytes = fixture(name);
    let first: T = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = serde_json::to_vec(&first).unwrap();
    let second: T = serde_json::from_slice(&again).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(first, second, "{name} changed across a round trip");
    first
}

/// The JSON a plain v1 fixture re-serializes to is exactly the fixture: no extension key
/// appears that the sender did not send.
fn assert_same_json<T: Serialize>(name: &str, parsed: &T) {
    let original: Value = serde_json::from_slice(&fixture(name)).unwrap();
    assert_eq!(serde_json::to_value(parsed).unwrap(), original, "{name}");
}

fn keys_of(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn hello_request_fixtures() {
    let min: HelloRequest = round_trip("hello_request.min.json");
    assert!(min.capabilities.is_empty() && min.object_sizes.is_empty() && min.map_counts.is_empty());
    let full: HelloRequest = round_trip("hello_request.full.json");
    assert_eq!(full.capabilities.len(), 3);
    assert_eq!(full.object_sizes["network.bpf.o"], 41872);
    // The unknown field is ignored, not carried.
    let v = serde_json::to_value(&full).unwrap();
    assert!(!keys_of(&v).contains(&"field_from_a_newer_agent".to_string()));
}

#[test]
fn hello_response_fixture() {
    let r: HelloResponse = round_trip("hello_response.json");
    assert!(r.accepted);
    assert_same_json("hello_response.json", &r);
}

#[test]
fn config_response_fixtures() {
    let min: ConfigResponse = round_trip("config_response.min.json");
    assert_eq!(min.config, CompiledConfig::default());
    let full: ConfigResponse = round_trip("config_response.full.json");
    assert_eq!(full.config.container.exit_ignore_signals, vec![13, 15]);
    assert!(!full.config.storage.enabled);
    assert_eq!(full.batching.max_batch_events, 512);
    // Extension fields are read when sent and defaulted when not.
    assert_eq!(full.config.network.rtt_min_increase_us, 2500);
    assert!(!full.config.network.resets && full.config.network.connect_failures);
    assert!(!full.config.container.oom_kills && full.config.container.abnormal_exits);
}

#[test]
fn heartbeat_request_fixtures() {
    let min: HeartbeatRequest = round_trip("heartbeat_request.min.json");
    assert_eq!(min.config_hash, "");
    assert!(min.degraded_reasons.is_empty());
    let full: HeartbeatRequest = round_trip("heartbeat_request.full.json");
    assert_eq!(full.observers["network"], ObserverStatus::Running);
    assert_eq!(full.observers["container"], ObserverStatus::Disabled);
    assert_eq!(full.observers["storage"], ObserverStatus::Degraded);
    assert_eq!(full.observers["node"], ObserverStatus::Failed);
    assert_eq!(full.observers["dns"], ObserverStatus::Other("hibernating".into()));
    assert_eq!(
        full.degraded_reasons,
        vec![DegradedReason::Unconfigured, DegradedReason::Other("pmu_unavailable".into())]
    );
    assert_eq!(full.counters.controller_send_failures_total, 5);
    // Unknown values serialize back verbatim.
    let v = serde_json::to_value(&full).unwrap();
    assert_eq!(v["observers"]["dns"], "hibernating");
    assert_eq!(v["degraded_reasons"][1], "pmu_unavailable");
}

#[test]
fn heartbeat_response_fixture() {
    let r: HeartbeatResponse = round_trip("heartbeat_response.json");
    assert_same_json("heartbeat_response.json", &r);
}

#[test]
fn events_request_fixtures() {
    let min: EventBatch = round_trip("events_request.min.json");
    assert_eq!(min.events[0].severity, Severity::Error);
    assert!(min.events[0].id.is_none() && min.events[0].workload.is_none());
    // A plain v1 batch re-serializes with no extension keys.
    assert_same_json("events_request.min.json", &min);

    let full: EventBatch = round_trip("events_request.full.json");
    let oom = &full.events[0];
    assert_eq!(oom.id.as_deref(), Some("01JDX3Q6ZQ8W4V0K9T2M5N7P1R"));
    assert_eq!(oom.outcome, Some(Outcome::Failure));
    assert_eq!(oom.error.as_ref().unwrap().code, "OOM_KILLED");
    assert_eq!(oom.config_generation, Some(1));
    assert_eq!(oom.node.as_deref(), Some("node-a"));
    assert_eq!(oom.timestamp.as_deref(), Some("2025-11-21T04:40:00.000000002Z"));
    assert_eq!(oom.workload.as_ref().unwrap().cgroup_id, Some(9876));
    let spike = &full.events[1];
    assert_eq!(spike.severity, Severity::Other("page-the-world".into()));
    assert_eq!(spike.outcome, Some(Outcome::Other("stalled".into())));
    assert_eq!(spike.workload, Some(Workload { cgroup_id: Some(12), ..Workload::default() }));
}

#[test]
fn events_response_fixture() {
    let r: EventsResponse = round_trip("events_response.json");
    assert_eq!((r.accepted, r.rejected), (2, 0));
    assert_same_json("events_response.json", &r);
}

#[test]
fn status_response_fixtures() {
    let min: StatusResponse = round_trip("status_response.min.json");
    assert_eq!(min.agents[0].last_heartbeat_age_seconds, None);
    assert_eq!(min.agents[0].sequence.last_seen, None);
    // Nulls stay explicit nulls and no extension key is added.
    assert_same_json("status_response.min.json", &min);

    let full: StatusResponse = round_trip("status_response.full.json");
    assert_eq!(full.totals.untracked_batches_total, Some(4));
    let a = &full.agents[0];
    assert_eq!(a.observers["dns"], ObserverStatus::Other("warming-up".into()));
    assert_eq!(a.registered, Some(true));
    assert_eq!(a.config_current, Some(false));
    assert_eq!(full.agents[1].config_current, None);
    assert_eq!(a.sequence.last_seen, Some(7));
    assert_eq!(full.agents[1].registered, Some(false));
}

#[test]
fn error_envelope_fixtures() {
    let e: ErrorEnvelope = round_trip("error_envelope.json");
    assert_eq!(e.error.code, ErrorCode::ReasoningField);
    assert_same_json("error_envelope.json", &e);
    let u: ErrorEnvelope = round_trip("error_envelope.unknown_code.json");
    assert_eq!(u.error.code, ErrorCode::Other("SOME_FUTURE_CODE".into()));
    assert_eq!(serde_json::to_value(&u).unwrap()["error"]["code"], "SOME_FUTURE_CODE");
}

#[test]
fn every_fixture_is_covered() {
    // A new fixture must get a round-trip test: this list is the set tested above.
    let tested = [
        "config_response.full.json",
        "config_response.min.json",
        "error_envelope.json",
        "error_envelope.unknown_code.json",
        "events_request.full.json",
        "events_request.min.json",
        "events_response.json",
        "heartbeat_request.full.json",
        "heartbeat_request.min.json",
        "heartbeat_response.json",
        "hello_request.full.json",
        "hello_request.min.json",
        "hello_response.json",
        "status_response.full.json",
        "status_response.min.json",
    ];
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut found: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    found.sort();
    assert_eq!(found, tested);
}

#[test]
fn error_codes_round_trip_with_statuses() {
    let table = [
        ("MISSING_FIELD", 400),
        ("UNSUPPORTED_VERSION", 400),
        ("INVALID_FIELD", 400),
        ("MALFORMED_JSON", 400),
        ("UNAUTHENTICATED", 401),
        ("UNKNOWN_ENDPOINT", 404),
        ("METHOD_NOT_ALLOWED", 405),
        ("PAYLOAD_TOO_LARGE", 413),
        ("REASONING_FIELD", 422),
        ("TOO_MANY_AGENTS", 429),
        ("INTERNAL_ERROR", 500),
        // Extensions.
        ("REQUEST_TIMEOUT", 408),
        ("NOT_READY", 503),
        ("MALFORMED_REQUEST", 400),
        ("URI_TOO_LONG", 414),
        ("HEADERS_TOO_LARGE", 431),
    ];
    for (text, status) in table {
        let code = ErrorCode::from(text);
        assert!(!matches!(code, ErrorCode::Other(_)), "{text} not known");
        assert_eq!(code.as_str(), text);
        assert_eq!(code.http_status(), status, "{text}");
    }
}
