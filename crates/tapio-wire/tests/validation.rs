//! Each v1 validation rule, and the error code it maps to.

use serde_json::{json, Value};
use tapio_wire::validate::*;
use tapio_wire::*;

fn hello() -> Value {
    json!({
        "wire_version": "tapio-wire/v1", "agent_id": "a1", "node_name": "n1",
        "tapio_version": "0.1.0", "kernel_release": "6.8.0", "arch": "x86_64"
    })
}

fn heartbeat() -> Value {
    json!({
        "wire_version": "tapio-wire/v1", "agent_id": "a1", "node_name": "n1",
        "config_version": "0", "uptime_seconds": 5, "observers": {"network": "running"},
        "counters": {"events_total": 0, "malformed_events_total": 0, "lost_events_total": 0,
            "correlation_drops_total": 0, "sink_drops_total": 0,
            "controller_send_failures_total": 0}
    })
}

fn event(facts: Value) -> Value {
    json!({"type": "kernel.network.connection_refused", "observer": "network",
           "severity": "error", "timestamp_unix_nanos": 1, "facts": facts})
}

fn batch(events: Vec<Value>) -> Value {
    json!({"wire_version": "tapio-wire/v1", "agent_id": "a1", "node_name": "n1",
           "sequence": 1, "sent_at_unix_nanos": 2, "events": events})
}

fn hello_result(v: &Value) -> Result<(), WireError> {
    let req: HelloRequest = parse_body(v.to_string().as_bytes())?;
    validate_hello(&req)
}

fn heartbeat_result(v: &Value) -> Result<(), WireError> {
    let req: HeartbeatRequest = parse_body(v.to_string().as_bytes())?;
    validate_heartbeat(&req)
}

fn batch_result(v: &Value, max: usize) -> Result<(), WireError> {
    let req: EventBatch = parse_body(v.to_string().as_bytes())?;
    validate_batch(&req, max)
}

fn code(r: Result<(), WireError>) -> ErrorCode {
    r.expect_err("expected a rule violation").code()
}

#[test]
fn valid_messages_pass() {
    hello_result(&hello()).unwrap();
    heartbeat_result(&heartbeat()).unwrap();
    batch_result(&batch(vec![event(json!({"pid": 1}))]), 256).unwrap();
}

#[test]
fn hello_required_strings_absent_or_blank() {
    for field in ["agent_id", "node_name", "tapio_version", "kernel_release", "arch"] {
        let mut absent = hello();
        absent.as_object_mut().unwrap().remove(field);
        let err = hello_result(&absent).unwrap_err();
        assert_eq!(err, WireError::MissingField(field.into()));
        assert_eq!(err.http_status(), 400);

        for blank in ["", "   ", "\t"] {
            let mut b = hello();
            b[field] = json!(blank);
            assert_eq!(hello_result(&b).unwrap_err(), WireError::MissingField(field.into()));
        }
    }
}

#[test]
fn overlong_identity_is_invalid() {
    let mut v = hello();
    v["agent_id"] = json!("x".repeat(MAX_IDENTITY_LEN + 1));
    assert_eq!(code(hello_result(&v)), ErrorCode::InvalidField);
    v["agent_id"] = json!("x".repeat(MAX_IDENTITY_LEN));
    hello_result(&v).unwrap();
}

#[test]
fn wire_version_rules() {
    for (value, expected) in [
        (json!("tapio-wire/v2"), ErrorCode::UnsupportedVersion),
        (json!("TAPIO-WIRE/V1"), ErrorCode::UnsupportedVersion),
        (json!("tapio-wire/v1 "), ErrorCode::UnsupportedVersion),
        (json!(1), ErrorCode::UnsupportedVersion),
        (json!(""), ErrorCode::MissingField),
        (json!(null), ErrorCode::MissingField),
    ] {
        for mut msg in [hello(), heartbeat(), batch(vec![event(json!({}))])] {
            msg["wire_version"] = value.clone();
            let got = match msg.get("events") {
                Some(_) => code(batch_result(&msg, 10)),
                None if msg.get("uptime_seconds").is_some() => code(heartbeat_result(&msg)),
                None => code(hello_result(&msg)),
            };
            assert_eq!(got, expected, "wire_version {value}");
        }
    }
    let mut absent = hello();
    absent.as_object_mut().unwrap().remove("wire_version");
    assert_eq!(hello_result(&absent).unwrap_err(), WireError::MissingField("wire_version".into()));
}

#[test]
fn foreign_version_wins_over_a_different_shape() {
    // A v2 body with another shape says "unsupported version", not "missing agent_id".
    let v2 = json!({"wire_version": "tapio-wire/v2", "agent": {"id": "a1"}});
    assert_eq!(code(hello_result(&v2)), ErrorCode::UnsupportedVersion);
}

#[test]
fn malformed_json_variants() {
    for body in ["", "{", "not json", "[]", "null", "{\"wire_version\":\"tapio-wire/v1\",}"] {
        let err = parse_body::<HelloRequest>(body.as_bytes()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::MalformedJson, "{body:?}");
    }
    // The fields in order, as an array: a struct serde would fill, not a body of the spec's.
    let fields = json!(["tapio-wire/v1", "a1", "n1", "0.1.0", "6.8.0", "x86_64"]).to_string();
    assert_eq!(parse_body::<HelloRequest>(fields.as_bytes()).unwrap_err().code(), ErrorCode::MalformedJson);
    // Valid JSON, right version, wrong type for a field.
    let mut v = hello();
    v["agent_id"] = json!(42);
    assert_eq!(code(hello_result(&v)), ErrorCode::MalformedJson);
    let mut v = heartbeat();
    v["uptime_seconds"] = json!(-1);
    assert_eq!(code(heartbeat_result(&v)), ErrorCode::MalformedJson);
    let e = event(json!("facts must be an object"));
    assert_eq!(code(batch_result(&batch(vec![e]), 10)), ErrorCode::MalformedJson);
}

#[test]
fn heartbeat_rules() {
    let mut v = heartbeat();
    v["observers"] = json!({});
    assert_eq!(code(heartbeat_result(&v)), ErrorCode::InvalidField);
    let mut v = heartbeat();
    v["config_version"] = json!(" ");
    assert_eq!(heartbeat_result(&v).unwrap_err(), WireError::MissingField("config_version".into()));
    let mut v = heartbeat();
    v.as_object_mut().unwrap().remove("counters");
    assert_eq!(heartbeat_result(&v).unwrap_err(), WireError::MissingField("counters".into()));
    let mut v = heartbeat();
    v["counters"].as_object_mut().unwrap().remove("sink_drops_total");
    assert_eq!(heartbeat_result(&v).unwrap_err(), WireError::MissingField("sink_drops_total".into()));
    // Unknown observer status and degraded reason are accepted.
    let mut v = heartbeat();
    v["observers"]["dns"] = json!("brand-new-state");
    v["degraded_reasons"] = json!(["brand-new-reason"]);
    heartbeat_result(&v).unwrap();
}

#[test]
fn heartbeat_fields_are_bounded_in_count_and_length() {
    // At each bound: accepted.
    let mut v = heartbeat();
    v["observers"] = (0..MAX_OBSERVERS).map(|i| (format!("{i:0>64}"), json!("x".repeat(64)))).collect();
    v["degraded_reasons"] = json!(vec!["r".repeat(MAX_DEGRADED_REASON_LEN); MAX_DEGRADED_REASONS]);
    v["config_hash"] = json!("h".repeat(MAX_CONFIG_HASH_LEN));
    heartbeat_result(&v).unwrap();
    // One past any bound: INVALID_FIELD naming the field.
    type Grow = Box<dyn Fn(&mut Value)>;
    let past: [(&str, Grow); 6] = [
        ("observers", Box::new(|v| v["observers"][format!("{:0>64}", "extra")] = json!("running"))),
        ("observers", Box::new(|v| v["observers"]["x".repeat(65)] = json!("running"))),
        ("observers.0000", Box::new(|v| v["observers"][format!("{:0>64}", 0)] = json!("s".repeat(65)))),
        ("config_hash", Box::new(|v| v["config_hash"] = json!("h".repeat(MAX_CONFIG_HASH_LEN + 1)))),
        ("degraded_reasons", Box::new(|v| v["degraded_reasons"].as_array_mut().unwrap().push(json!("r")))),
        ("degraded_reasons[3]", Box::new(|v| v["degraded_reasons"][3] = json!("r".repeat(129)))),
    ];
    for (field, grow) in past {
        let mut fat = v.clone();
        grow(&mut fat);
        match heartbeat_result(&fat).unwrap_err() {
            WireError::InvalidField { field: f, .. } => assert!(f.starts_with(field), "{f} vs {field}"),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn correlation_drop_reasons_are_bounded_label_safe_names() {
    let with = |drops: Value| {
        let mut hb = heartbeat();
        hb["correlation_drops"] = drops;
        heartbeat_result(&hb)
    };
    with(json!({"storage.ambiguous_inflight_io": 3, "dns.query_expired": 1})).unwrap();
    assert_eq!(correlation_drop_key("storage.ambiguous_inflight_io"), Some(("storage", "ambiguous_inflight_io")));
    // Absent (an older agent) is fine, and an empty map is not sent.
    heartbeat_result(&heartbeat()).unwrap();
    let req: HeartbeatRequest = parse_body(heartbeat().to_string().as_bytes()).unwrap();
    assert!(serde_json::to_value(&req).unwrap().get("correlation_drops").is_none());
    let longest = "x".repeat(MAX_CORRELATION_DROP_NAME_LEN);
    with(json!({ format!("{longest}.{longest}"): 1 })).unwrap();
    for key in ["storage", ".x", "storage.", "Storage.x", "storage.x y", "storage.a.b", "dns.\"", "n.\u{e9}"] {
        assert_eq!(code(with(json!({ key: 1 }))), ErrorCode::InvalidField, "{key:?}");
    }
    assert_eq!(code(with(json!({ format!("s.{longest}x"): 1 }))), ErrorCode::InvalidField);
    let full: serde_json::Map<String, Value> =
        (0..MAX_CORRELATION_DROP_REASONS).map(|i| (format!("storage.r{i}"), json!(1))).collect();
    with(Value::Object(full.clone())).unwrap();
    let mut over = full;
    over.insert("storage.one_more".into(), json!(1));
    assert_eq!(code(with(Value::Object(over))), ErrorCode::InvalidField);
}

#[test]
fn batch_size_bounds() {
    assert_eq!(code(batch_result(&batch(vec![]), 10)), ErrorCode::InvalidField);
    let three = batch(vec![event(json!({})), event(json!({})), event(json!({}))]);
    batch_result(&three, 3).unwrap();
    let err = batch_result(&three, 2).unwrap_err();
    assert!(matches!(&err, WireError::InvalidField { field, .. } if field == "events"));
}

#[test]
fn event_type_rules() {
    for (ty, expected) in [
        ("network.connection_refused", Some(ErrorCode::InvalidField)),
        ("Kernel.network.x", Some(ErrorCode::InvalidField)),
        ("kernel.", Some(ErrorCode::InvalidField)),
        ("kernelnetwork", Some(ErrorCode::InvalidField)),
        ("", Some(ErrorCode::MissingField)),
        ("  ", Some(ErrorCode::MissingField)),
        ("kernel.future.thing", None),
    ] {
        let mut e = event(json!({}));
        e["type"] = json!(ty);
        let r = batch_result(&batch(vec![event(json!({})), e]), 10);
        match expected {
            Some(c) => {
                let err = r.unwrap_err();
                assert_eq!(err.code(), c, "type {ty:?}");
                assert!(err.to_string().contains("events[1].type"), "{err}");
            }
            None => r.unwrap(),
        }
    }
    let mut e = event(json!({}));
    e.as_object_mut().unwrap().remove("type");
    assert_eq!(batch_result(&batch(vec![e]), 10).unwrap_err(), WireError::MissingField("type".into()));
    let mut e = event(json!({}));
    e["observer"] = json!("");
    assert_eq!(code(batch_result(&batch(vec![e]), 10)), ErrorCode::MissingField);
}

/// An event id becomes a NATS header and an OTLP attribute: a line break in one panicked
/// the NATS client (and stopped the sink's worker for that batch). Ids are bounded,
/// visible ASCII; a ULID, a UUID, or no id at all pass.
#[test]
fn event_ids_are_bounded_visible_ascii() {
    let max = "x".repeat(MAX_EVENT_ID_LEN);
    let over = "x".repeat(MAX_EVENT_ID_LEN + 1);
    for (id, ok) in [
        ("01ARZ3NDEKTSV4RRFFQ69G5FAV", true),
        ("5b2a3c1e-8d4f-4a6b-9c0d-1e2f3a4b5c6d", true),
        (max.as_str(), true),
        ("a\nb", false),
        ("a\r\nNats-Expected-Stream: X", false),
        ("a b", false),
        ("tab\there", false),
        ("nul\u{0}", false),
        ("del\u{7f}", false),
        ("ülid", false),
        ("", false),
        (over.as_str(), false),
    ] {
        let mut e = event(json!({}));
        e["id"] = json!(id);
        let r = batch_result(&batch(vec![event(json!({})), e]), 10);
        if ok {
            r.unwrap_or_else(|e| panic!("id {id:?}: {e}"));
        } else {
            let err = r.expect_err(id);
            assert_eq!(err.code(), ErrorCode::InvalidField, "id {id:?}");
            assert!(matches!(&err, WireError::InvalidField { field, .. } if field == "events[1].id"), "{err}");
            assert!(!err.to_string().contains('\n'), "the message is one line: {err}");
        }
    }
    // No id: fine (the id is an extension).
    batch_result(&batch(vec![event(json!({}))]), 10).unwrap();
}

#[test]
fn unknown_severity_and_outcome_are_accepted() {
    let mut e = event(json!({}));
    e["severity"] = json!("apocalyptic");
    e["outcome"] = json!("sideways");
    e["brand_new_field"] = json!({"x": 1});
    let b: EventBatch = parse_body(batch(vec![e]).to_string().as_bytes()).unwrap();
    validate_batch(&b, 10).unwrap();
    assert_eq!(b.events[0].severity, Severity::Other("apocalyptic".into()));
}

#[test]
fn reasoning_in_facts_is_422() {
    let b = batch(vec![event(json!({"pid": 1})), event(json!({"Root-Cause": "disk"}))]);
    let err = batch_result(&b, 10).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ReasoningField);
    assert_eq!(err.http_status(), 422);
    assert!(matches!(&err, WireError::ReasoningField { event: 1, key, .. } if key == "Root-Cause"));
    let env = err.to_envelope();
    assert_eq!(env.error.code, ErrorCode::ReasoningField);
}

#[test]
fn config_query_rules() {
    use tapio_wire::config::ConfigQuery;
    let ok = ConfigQuery { agent_id: Some("a1".into()), node_name: Some("n1".into()) };
    assert_eq!(validate_config_query(&ok).unwrap(), ("a1", "n1"));
    let missing = ConfigQuery { agent_id: None, node_name: Some("n1".into()) };
    assert_eq!(validate_config_query(&missing).unwrap_err(), WireError::MissingField("agent_id".into()));
    let blank = ConfigQuery { agent_id: Some("a1".into()), node_name: Some(" ".into()) };
    assert_eq!(validate_config_query(&blank).unwrap_err(), WireError::MissingField("node_name".into()));
}

#[test]
fn long_client_text_is_clipped_in_messages() {
    let mut v = hello();
    v["wire_version"] = json!("v".repeat(10_000));
    let err = hello_result(&v).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    assert!(err.to_string().len() < 300, "{}", err.to_string().len());
}
