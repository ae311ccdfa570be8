//! Every error code of the spec's table (and the extensions) from a real server, always
//! as the error envelope.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_wrong_version_missing_and_blank_fields() {
    let t = TestServer::start("bad-input").await;
    let c = t.client();
    for path in ["/v1/agents/hello", "/v1/agents/heartbeat", "/v1/events"] {
        for body in [&b"{"[..], b"", b"not json", b"[1,2]", b"null", b"{\"wire_version\":\"tapio-wire/v1\",}"] {
            let r = c.post_bytes(path, body).await;
            assert_eq!(r.status, 400, "{path} {body:?}");
            assert_eq!(r.error_code(), "MALFORMED_JSON", "{path} {body:?}");
        }
        let v2 = json!({"wire_version": "tapio-wire/v2", "whatever": 1});
        let r = c.post_json(path, &v2).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "UNSUPPORTED_VERSION"), "{path}");
        let r = c.post_json(path, &json!({"agent_id": "a"})).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "MISSING_FIELD"), "{path}");
    }

    // A right-shaped body with the wrong version.
    let mut h = hello("a1");
    h["wire_version"] = json!("tapio-wire/v0");
    let r = c.post_json("/v1/agents/hello", &h).await;
    assert_eq!(r.error_code(), "UNSUPPORTED_VERSION");

    // Each required hello string, absent and blank.
    for field in ["agent_id", "node_name", "tapio_version", "kernel_release", "arch"] {
        let mut absent = hello("a1");
        absent.as_object_mut().unwrap().remove(field);
        let r = c.post_json("/v1/agents/hello", &absent).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "MISSING_FIELD"), "{field}");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains(field));
        let mut blank = hello("a1");
        blank[field] = json!("  ");
        let r = c.post_json("/v1/agents/hello", &blank).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "MISSING_FIELD"), "{field}");
    }
    // Wrong type for a field: the body is not the JSON the operation expects.
    let mut h = hello("a1");
    h["capabilities"] = json!("not-a-list");
    assert_eq!(c.post_json("/v1/agents/hello", &h).await.error_code(), "MALFORMED_JSON");

    // Heartbeat: blank agent id, missing counters, empty observers.
    let mut hb = heartbeat("a1");
    hb["agent_id"] = json!("");
    assert_eq!(c.post_json("/v1/agents/heartbeat", &hb).await.error_code(), "MISSING_FIELD");
    let mut hb = heartbeat("a1");
    hb.as_object_mut().unwrap().remove("counters");
    assert_eq!(c.post_json("/v1/agents/heartbeat", &hb).await.error_code(), "MISSING_FIELD");
    let mut hb = heartbeat("a1");
    hb["observers"] = json!({});
    assert_eq!(c.post_json("/v1/agents/heartbeat", &hb).await.error_code(), "INVALID_FIELD");

    // Nothing above registered anything or reached the sink.
    let s = c.get("/v1/status").await.json();
    assert_eq!(s["agents"], json!([]));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batches() {
    let t = TestServer::start_with("bad-batch", |s| s.max_batch_events = 3).await;
    let c = t.client();
    let cases = [
        (batch("a1", 1, vec![]), "INVALID_FIELD"),
        (batch("a1", 1, (0..4).map(event).collect()), "INVALID_FIELD"),
        (
            batch(
                "a1",
                1,
                vec![{
                    let mut e = event(1);
                    e["type"] = json!("network.connection_refused");
                    e
                }],
            ),
            "INVALID_FIELD",
        ),
        (
            batch(
                "a1",
                1,
                vec![{
                    let mut e = event(1);
                    e["type"] = json!("");
                    e
                }],
            ),
            "MISSING_FIELD",
        ),
        (
            batch(
                "a1",
                1,
                vec![{
                    let mut e = event(1);
                    e.as_object_mut().unwrap().remove("facts");
                    e
                }],
            ),
            "MISSING_FIELD",
        ),
        (batch("", 1, vec![event(1)]), "MISSING_FIELD"),
    ];
    for (body, code) in cases {
        let r = c.post_json("/v1/events", &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.error_code(), code, "{body}");
    }
    // Exactly max events is fine.
    let r = c.post_json("/v1/events", &batch("a1", 1, (0..3).map(event).collect())).await;
    assert_eq!(r.status, 200);
    let s = c.get("/v1/status").await.json();
    assert_eq!(s["totals"]["batches_rejected_total"], 6);
    // Events are counted for batches that parsed; the one missing `facts` did not parse,
    // so its event cannot be counted.
    assert_eq!(s["totals"]["rejected_events_total"], 4 + 1 + 1 + 1);
    assert_eq!(t.sink_lines(3).await.len(), 3, "only the accepted batch reached the sink");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_keys_are_422_at_any_depth() {
    let t = TestServer::start("reasoning").await;
    let c = t.client();
    let facts_cases = [
        json!({"reasoning": "x"}),
        json!({"Root_Cause": "x"}),
        json!({"nested": {"deeper": {"CAUSAL-CHAIN": []}}}),
        json!({"list": [1, {"ok": 1}, [{"Suggested_Fix": "restart"}]]}),
        json!({"a": [[[{"possible-causes": ["disk"]}]]]}),
        json!({"REMEDIATION": null}),
        json!({"x": {"recommendation": 1}}),
        json!({"explanation": {}}),
    ];
    for facts in facts_cases {
        let mut e = event(1);
        e["facts"] = facts.clone();
        let r = c.post_json("/v1/events", &batch("a1", 1, vec![event(0), e])).await;
        assert_eq!(r.status, 422, "{facts}");
        assert_eq!(r.error_code(), "REASONING_FIELD", "{facts}");
    }
    // Reasoning words as values are not reasoning fields.
    let mut e = event(1);
    e["facts"] = json!({"comm": "reasoning", "args": ["root_cause"]});
    assert_eq!(c.post_json("/v1/events", &batch("a1", 1, vec![e])).await.status, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_nesting_is_refused_and_the_server_survives() {
    let t = TestServer::start("nesting").await;
    let c = t.client();
    let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let body = format!(
        r#"{{"wire_version":"tapio-wire/v1","agent_id":"a","node_name":"n","sequence":1,
        "sent_at_unix_nanos":1,"events":[{{"type":"kernel.x.y","observer":"x",
        "severity":"info","timestamp_unix_nanos":1,"facts":{{"a":{deep}}}}}]}}"#
    );
    let r = c.post_bytes("/v1/events", body.as_bytes()).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "MALFORMED_JSON"));
    assert_eq!(c.get("/healthz").await.status, 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_before_parsing() {
    let t = TestServer::start("too-large").await; // default limit: 256 KiB
    let c = t.client();
    let limit = 256 * 1024;

    // Declared length over the limit (the body is not valid JSON either: it is never read).
    let big = vec![b'x'; limit + 1];
    let r = c.post_bytes("/v1/events", &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "PAYLOAD_TOO_LARGE");
    assert_eq!(r.header("connection"), Some("close"));

    // Chunked, no Content-Length, over the limit.
    let mut req = b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    let chunk = vec![b' '; 32 * 1024];
    for _ in 0..((limit / chunk.len()) + 2) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(&chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw_exchange(t.server.addr, req).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "PAYLOAD_TOO_LARGE");

    // Chunked and under the limit is read and parsed normally.
    let body = batch("a1", 1, vec![event(1)]).to_string();
    let mut req =
        b"POST /v1/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for part in body.as_bytes().chunks(50) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw_exchange(t.server.addr, req).await;
    assert_eq!(r.status, 200, "{r:?}");

    // A valid JSON body just over the limit is still 413, on every body-carrying route.
    let mut padded = hello("a1");
    padded["pad"] = json!("p".repeat(limit));
    for path in ["/v1/agents/hello", "/v1/agents/heartbeat", "/v1/events"] {
        let r = c.post_json(path, &padded).await;
        assert_eq!((r.status, r.error_code().as_str()), (413, "PAYLOAD_TOO_LARGE"), "{path}");
    }
    assert_eq!(metric(&c, "tapio_controller_errors_total{code=\"PAYLOAD_TOO_LARGE\"}").await, Some(5.0));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods() {
    let t = TestServer::start("routes").await;
    let c = t.client();
    for path in ["/", "/v1", "/v1/agents", "/v1/agents/unknown", "/v2/events", "/v1/events/", "/metricsx"] {
        let r = c.get(path).await;
        assert_eq!((r.status, r.error_code().as_str()), (404, "UNKNOWN_ENDPOINT"), "{path}");
    }
    let r = c.post_json("/v1/nope", &json!({})).await;
    assert_eq!(r.error_code(), "UNKNOWN_ENDPOINT");

    for (method, path, allow) in [
        ("GET", "/v1/events", "POST"),
        ("PUT", "/v1/agents/hello", "POST"),
        ("GET", "/v1/agents/heartbeat", "POST"),
        ("POST", "/v1/agents/config", "GET"),
        ("DELETE", "/v1/status", "GET"),
        ("POST", "/metrics", "GET"),
        ("POST", "/healthz", "GET"),
    ] {
        let r = c.send(method, path, &[], Some(b"{}")).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.error_code(), "METHOD_NOT_ALLOWED", "{method} {path}");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_bound_is_429() {
    let t = TestServer::start_with("too-many", |s| s.max_agents = 2).await;
    let c = t.client();
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a2")).await.status, 200);
    let r = c.post_json("/v1/agents/hello", &hello("a3")).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "TOO_MANY_AGENTS"));
    // Known agents can still say hello again, and a3's batches are still accepted.
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    assert_eq!(c.post_json("/v1/events", &batch("a3", 1, vec![event(1)])).await.status, 200);
    assert_eq!(metric(&c, "tapio_controller_hellos_total{result=\"too_many_agents\"}").await, Some(1.0));
    t.stop().await;
}

/// A shared token rotated under a running controller (a Secret updated in place): the new
/// one is in force within a poll, the old one stays valid while agents catch up, and a file
/// emptied by mistake keeps the token in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_picked_up_while_the_old_token_stays_valid_a_while() {
    let dir = temp_dir("token-rotate");
    let path = dir.join("token");
    std::fs::write(&path, "first-token\n").unwrap();
    let file = path.clone();
    let t = TestServer::start_with("token-rotate", move |s| {
        s.auth_token = Some(tapio_controller::auth::BearerToken::new("first-token".into()));
        s.auth_token_file = Some(file);
        s.profile_poll = std::time::Duration::from_millis(50);
    })
    .await;
    let first = t.client().with_header("Authorization", "Bearer first-token");
    let second = t.client().with_header("Authorization", "Bearer second-token");
    assert_eq!(first.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    assert_eq!(second.post_json("/v1/agents/hello", &hello("a1")).await.status, 401);

    std::fs::write(&path, "second-token\n").unwrap();
    let started = std::time::Instant::now();
    while second.post_json("/v1/agents/hello", &hello("a1")).await.status != 200 {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the new token was never picked up");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(first.post_json("/v1/agents/hello", &hello("a1")).await.status, 200, "the old one, for its grace");

    // An empty file is no token: the one in force stays (several polls later).
    std::fs::write(&path, "\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(second.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    t.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_auth_guards_agent_routes_only() {
    let t = TestServer::start_with("auth", |s| {
        s.auth_token = Some(tapio_controller::auth::BearerToken::new("s3cret-token".into()));
    })
    .await;
    let anon = t.client();
    let wrong = t.client().with_header("Authorization", "Bearer s3cret-tokem");
    let basic = t.client().with_header("Authorization", "Basic czNjcmV0LXRva2Vu");
    let good = t.client().with_header("Authorization", "Bearer s3cret-token");

    let cfg = "/v1/agents/config?agent_id=a1&node_name=n1";
    for c in [&anon, &wrong, &basic] {
        for r in [
            c.post_json("/v1/agents/hello", &hello("a1")).await,
            c.post_json("/v1/agents/heartbeat", &heartbeat("a1")).await,
            c.post_json("/v1/events", &batch("a1", 1, vec![event(1)])).await,
            c.get(cfg).await,
        ] {
            assert_eq!(r.status, 401);
            assert_eq!(r.error_code(), "UNAUTHENTICATED");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
            let text = String::from_utf8_lossy(&r.body).into_owned();
            assert!(!text.contains("s3cret"), "the token is never echoed");
        }
    }
    assert_eq!(good.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    assert_eq!(good.get(cfg).await.status, 200);
    assert_eq!(good.post_json("/v1/events", &batch("a1", 1, vec![event(1)])).await.status, 200);
    // Unauthenticated requests changed nothing.
    let s = anon.get("/v1/status").await;
    assert_eq!(s.status, 200, "status, health and metrics are not agent routes");
    assert_eq!(s.json()["totals"]["accepted_events_total"], 1);
    assert_eq!(anon.get("/healthz").await.status, 200);
    assert_eq!(anon.get("/metrics").await.status, 200);
    assert_eq!(anon.get("/v1/unknown").await.error_code(), "UNKNOWN_ENDPOINT");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gives_a_bare_500_envelope() {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tapio_controller::api;
    use tapio_controller::metrics::Metrics;
    use tapio_controller::state::AppState;
    use tower::ServiceExt;

    // The production layer stack around a route that fails on purpose: INTERNAL_ERROR is
    // only reachable through a bug, so no production route can produce it on demand.
    let metrics = Arc::new(Metrics::new());
    let settings = tapio_controller::Settings {
        sinks: vec![tapio_controller::SinkTarget::Discard],
        ..tapio_controller::Settings::default()
    };
    let opts =
        tapio_controller::sink::SinkOptions { queue_bytes: 1024, ack_timeout: std::time::Duration::from_secs(1) };
    let (sinks, writer) = tapio_controller::sink::start(&settings.sinks, &opts, &metrics).await.unwrap();
    let state = Arc::new(AppState::new(&settings, Arc::clone(&metrics), sinks));
    async fn boom() -> &'static str {
        panic!("secret internal detail at /work/src/x.rs:1")
    }
    let app = api::layered(api::routes(Arc::clone(&state)).route("/boom", get(boom)), Arc::clone(&state));
    let resp = app.clone().oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> =
        resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    let r = Resp { status, headers, body };
    assert_eq!(r.status, 500);
    assert_eq!(r.error_code(), "INTERNAL_ERROR");
    assert!(!String::from_utf8_lossy(&r.body).contains("secret"));
    assert_eq!(
        metrics.errors.get_or_create(&tapio_controller::metrics::CodeLabels { code: "INTERNAL_ERROR".into() }).get(),
        1
    );
    // The stack still serves normal requests afterwards.
    let ok = app.oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    writer.close(std::time::Duration::from_secs(5)).await;
}

/// Every code the controller can send that wire-v1's table lacks is documented in this
/// crate's README as an extension, with its status and what a client should do. The match
/// is exhaustive, so a new code does not compile until it is placed on one side.
#[test]
fn every_code_beyond_the_spec_table_is_documented_with_its_status() {
    use tapio_wire::ErrorCode;
    fn in_spec_table(code: &ErrorCode) -> bool {
        match code {
            ErrorCode::MissingField
            | ErrorCode::UnsupportedVersion
            | ErrorCode::InvalidField
            | ErrorCode::MalformedJson
            | ErrorCode::Unauthenticated
            | ErrorCode::UnknownEndpoint
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PayloadTooLarge
            | ErrorCode::ReasoningField
            | ErrorCode::TooManyAgents
            | ErrorCode::InternalError => true,
            ErrorCode::Forbidden
            | ErrorCode::RequestTimeout
            | ErrorCode::NotReady
            | ErrorCode::MalformedRequest
            | ErrorCode::UriTooLong
            | ErrorCode::HeadersTooLarge
            | ErrorCode::Other(_) => false,
        }
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let known = [
        "MISSING_FIELD",
        "UNSUPPORTED_VERSION",
        "INVALID_FIELD",
        "MALFORMED_JSON",
        "UNAUTHENTICATED",
        "FORBIDDEN",
        "UNKNOWN_ENDPOINT",
        "METHOD_NOT_ALLOWED",
        "REQUEST_TIMEOUT",
        "PAYLOAD_TOO_LARGE",
        "REASONING_FIELD",
        "TOO_MANY_AGENTS",
        "INTERNAL_ERROR",
        "NOT_READY",
        "MALFORMED_REQUEST",
        "URI_TOO_LONG",
        "HEADERS_TOO_LARGE",
    ];
    let mut extensions = 0;
    for name in known {
        let code = ErrorCode::from(name);
        assert!(!matches!(code, ErrorCode::Other(_)), "{name} is a known code");
        if in_spec_table(&code) {
            continue;
        }
        extensions += 1;
        let row = format!("| {} | `{name}` | ", code.http_status());
        let line = readme.lines().find(|l| l.starts_with(&row)).unwrap_or_else(|| panic!("no README row `{row}`"));
        assert_eq!(line.matches(" | ").count(), 3, "status, code, when, what a client should do: {line}");
    }
    assert_eq!(extensions, 6);
}
