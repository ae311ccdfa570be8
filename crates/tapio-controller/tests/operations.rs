//! Conformance of the five v1 operations against a real server on loopback.

mod common;

use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use tapio_wire::CompiledConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_is_accepted_with_batching_parameters() {
    let t = TestServer::start_with("hello", |s| {
        s.send_interval_ms = 1234;
        s.max_batch_events = 77;
    })
    .await;
    let c = t.client();
    // Unknown request fields are ignored.
    let mut h = hello("a1");
    h["field_from_the_future"] = json!({"x": [1]});
    let r = c.post_json("/v1/agents/hello", &h).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["wire_version"], "tapio-wire/v1");
    assert_eq!(v["accepted"], true);
    assert_eq!(v["controller_id"], "test-controller");
    assert_eq!(v["config_version"], served_generation(&c).await);
    assert_eq!(v["send_interval_ms"], 1234);
    assert_eq!(v["max_batch_events"], 77);

    let a = agent_status(&c, "a1").await.expect("listed");
    assert_eq!(a["registered"], true);
    assert_eq!(a["tapio_version"], "0.1.0");
    assert_eq!(a["node_name"], "node-a1");
    assert!(a["registered_at_unix"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(a["last_heartbeat_age_seconds"], json!(null));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_has_hash_etag_and_304() {
    let t = TestServer::start("config").await;
    let c = t.client();
    let r = c.get("/v1/agents/config?agent_id=a1&node_name=n1").await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["wire_version"], "tapio-wire/v1");
    assert_eq!(v["version"], served_generation(&c).await);
    assert_eq!(v["batching"]["max_batch_events"], 256);
    assert_eq!(v["batching"]["send_interval_ms"], 5000);

    // The hash is sha256 of the canonical bytes of the served config, computed here
    // independently of the controller's own code path.
    let served: CompiledConfig = serde_json::from_value(v["config"].clone()).unwrap();
    assert_eq!(served, CompiledConfig::default());
    let digest = Sha256::digest(tapio_wire::canonical::value_to_canonical_vec(&v["config"]));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let hash = v["config_hash"].as_str().unwrap();
    assert_eq!(hash, format!("sha256:{hex}"));
    let etag = format!("\"{hash}\"");
    assert_eq!(r.header("etag"), Some(etag.as_str()));

    // Matching If-None-Match: 304, no body, ETag repeated.
    let r304 = c.send("GET", "/v1/agents/config?agent_id=a1&node_name=n1", &[("If-None-Match", &etag)], None).await;
    assert_eq!(r304.status, 304);
    assert!(r304.body.is_empty());
    assert_eq!(r304.header("etag"), Some(etag.as_str()));

    // A stale tag gets the full config.
    let stale = c
        .send("GET", "/v1/agents/config?agent_id=a1&node_name=n1", &[("If-None-Match", "\"sha256:0000\"")], None)
        .await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.json()["config_hash"], hash);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_is_served_and_fixture_hash_matches() {
    // The checked-in fixture's config is `{}`, i.e. all defaults; its hash must be what
    // this controller computes for the defaults.
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tapio-wire/fixtures/config_response.min.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let default_hash = tapio_controller::config_hash::config_hash(&CompiledConfig::default());
    assert_eq!(fixture["config_hash"], default_hash);

    let mut custom = CompiledConfig::default();
    custom.container.exit_ignore_signals = vec![15];
    let t = TestServer::start_with("config-file", |s| s.config = custom.clone()).await;
    let v = t.client().get("/v1/agents/config?agent_id=a&node_name=n").await.json();
    assert_eq!(v["config"]["container"]["exit_ignore_signals"], json!([15]));
    assert_ne!(v["config_hash"], default_hash);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_query_parameters_are_required_and_percent_decoded() {
    let t = TestServer::start("config-query").await;
    let c = t.client();
    for q in [
        "",
        "?agent_id=a1",
        "?node_name=n1",
        "?agent_id=&node_name=n1",
        // %20 decodes to a blank value.
        "?agent_id=a1&node_name=%20",
        "?agent_id=%20%09&node_name=n1",
    ] {
        let r = c.get(&format!("/v1/agents/config{q}")).await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.error_code(), "MISSING_FIELD", "{q}");
    }
    // Encoded but non-blank values are fine.
    let r = c.get("/v1/agents/config?agent_id=a%2F1%20x&node_name=node%2Da").await;
    assert_eq!(r.status, 200);
    // Percent-decoding only (wire-v1): a `+` is a plus sign, not a space (form decoding
    // made `+` a blank id, and `a+b` the agent `a b`; see `api::agents` tests).
    assert_eq!(c.get("/v1/agents/config?agent_id=+&node_name=+").await.status, 200);
    // A malformed escape, or a parameter given twice, is a clear 400.
    for q in ["?agent_id=a%2&node_name=n1", "?agent_id=%ff&node_name=n1", "?agent_id=a&agent_id=b&node_name=n1"] {
        let r = c.get(&format!("/v1/agents/config{q}")).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "INVALID_FIELD"), "{q}");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_from_unknown_agent_is_not_accepted_then_known_after_hello() {
    let t = TestServer::start("heartbeat").await;
    let c = t.client();
    let r = c.post_json("/v1/agents/heartbeat", &heartbeat("a1")).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["accepted"], false);
    assert_eq!(v["wire_version"], "tapio-wire/v1");
    let served = served_generation(&c).await;
    assert_eq!(v["next_config_version"], served);
    assert!(agent_status(&c, "a1").await.is_none(), "a heartbeat alone registers nothing");

    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    let mut hb = heartbeat("a1");
    hb["observers"]["dns"] = json!("hibernating"); // unknown status: accepted, kept
    hb["degraded_reasons"] = json!(["unconfigured", "brand-new-reason"]);
    hb["config_version"] = served.clone();
    hb["config_hash"] = json!("sha256:abc");
    let r = c.post_json("/v1/agents/heartbeat", &hb).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["accepted"], true);

    let a = agent_status(&c, "a1").await.unwrap();
    assert_eq!(a["reported_config_version"], served);
    assert_eq!(a["reported_config_hash"], "sha256:abc");
    assert_eq!(a["observers"]["dns"], "hibernating");
    assert_eq!(a["observers"]["network"], "running");
    assert_eq!(a["reported_counters"]["controller_send_failures_total"], 2);
    assert_eq!(a["degraded_reasons"][1], "brand-new-reason");
    let age = a["last_heartbeat_age_seconds"].as_u64().expect("an age in seconds");
    assert!(age <= 2, "the heartbeat was just made (whole seconds, on a loaded machine): {age}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_from_unknown_agent_is_accepted_and_listed_unregistered() {
    let t = TestServer::start("unknown-batch").await;
    let c = t.client();
    let r = c.post_json("/v1/events", &batch("ghost", 1, vec![event(1), event(2)])).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"], 0);
    assert_eq!(v["next_config_version"], served_generation(&c).await);
    assert_eq!(v["wire_version"], "tapio-wire/v1");

    let a = agent_status(&c, "ghost").await.expect("listed");
    assert_eq!(a["registered"], false);
    assert_eq!(a["tapio_version"], "");
    assert_eq!(a["sequence"]["last_seen"], 1);
    let s = c.get("/v1/status").await.json();
    assert_eq!(s["totals"]["accepted_events_total"], 2);
    assert_eq!(s["totals"]["batches_accepted_total"], 1);

    // It is still unknown for heartbeats until it says hello.
    let hb = c.post_json("/v1/agents/heartbeat", &heartbeat("ghost")).await;
    assert_eq!(hb.json()["accepted"], false);
    c.post_json("/v1/agents/hello", &hello("ghost")).await;
    assert_eq!(agent_status(&c, "ghost").await.unwrap()["registered"], true);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_bound_counts_untracked_batches() {
    let t = TestServer::start_with("untracked", |s| s.max_unregistered_agents = 1).await;
    let c = t.client();
    assert_eq!(c.post_json("/v1/events", &batch("u1", 1, vec![event(1)])).await.status, 200);
    let r = c.post_json("/v1/events", &batch("u2", 1, vec![event(2)])).await;
    assert_eq!(r.status, 200, "evidence is accepted even when the agent cannot be tracked");
    assert_eq!(r.json()["accepted"], 1);
    assert!(agent_status(&c, "u2").await.is_none());
    let s = c.get("/v1/status").await.json();
    assert_eq!(s["totals"]["untracked_batches_total"], 1);
    assert_eq!(s["totals"]["accepted_events_total"], 2);
    assert_eq!(metric(&c, "tapio_controller_untracked_batches_total").await, Some(1.0));
    assert_eq!(t.sink_lines(2).await.len(), 2);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_gaps_and_regressions_are_counted_and_rejections_do_not_advance() {
    let t = TestServer::start("sequence").await;
    let c = t.client();
    c.post_json("/v1/agents/hello", &hello("a1")).await;
    for seq in [1, 2, 4, 4, 3] {
        let r = c.post_json("/v1/events", &batch("a1", seq, vec![event(seq)])).await;
        assert_eq!(r.status, 200);
    }
    let a = agent_status(&c, "a1").await.unwrap();
    assert_eq!(a["sequence"]["gaps_total"], 1, "{a}");
    assert_eq!(a["sequence"]["regressions_total"], 2, "{a}");
    assert_eq!(a["sequence"]["last_seen"], 3);

    // A rejected batch (reasoning) with a far-ahead sequence does not move last_seen...
    let mut bad = event(9);
    bad["facts"]["root_cause"] = json!("x");
    let r = c.post_json("/v1/events", &batch("a1", 100, vec![bad])).await;
    assert_eq!(r.status, 422);
    // ...so the next in-order batch is neither a gap nor a regression.
    let r = c.post_json("/v1/events", &batch("a1", 4, vec![event(4)])).await;
    assert_eq!(r.status, 200);
    let a = agent_status(&c, "a1").await.unwrap();
    assert_eq!(a["sequence"]["last_seen"], 4);
    assert_eq!(a["sequence"]["gaps_total"], 1);
    assert_eq!(a["sequence"]["regressions_total"], 2);

    assert_eq!(metric(&c, "tapio_controller_sequence_gaps_total").await, Some(1.0));
    assert_eq!(metric(&c, "tapio_controller_sequence_regressions_total").await, Some(2.0));
    let s = c.get("/v1/status").await.json();
    assert_eq!(s["totals"]["batches_rejected_total"], 1);
    assert_eq!(s["totals"]["rejected_events_total"], 1);
    assert_eq!(s["totals"]["batches_accepted_total"], 6);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_receives_events_in_record_shape() {
    let t = TestServer::start("sink").await;
    let c = t.client();
    let mut full = event(1);
    let extensions = json!({
        "id": "01JDX3Q6ZQ8W4V0K9T2M5N7P1R", "outcome": "failure",
        "error": {"code": "ECONNREFUSED", "message": "connection refused"},
        "config_generation": 1, "node": "node-from-agent",
        "timestamp": "2025-11-21T04:40:00.000000001Z",
        "workload": {"cgroup_id": 42, "cgroup_path": "/kubepods/x", "container_id": "c1", "pod_uid": "p1"}
    });
    for (k, v) in extensions.as_object().unwrap() {
        full[k] = v.clone();
    }
    let mut novel = event(2);
    novel["severity"] = json!("catastrophic");
    let r = c.post_json("/v1/events", &batch("a1", 1, vec![full.clone(), novel, event(3)])).await;
    assert_eq!(r.status, 200);

    let lines = t.sink_lines(3).await;
    assert_eq!(lines.len(), 3);
    // Every field the agent sent is carried unchanged.
    for (k, v) in full.as_object().unwrap() {
        assert_eq!(&lines[0][k], v, "field {k}");
    }
    // Absent node and timestamp are filled from the batch and the nanosecond clock.
    assert_eq!(lines[1]["severity"], "catastrophic");
    assert_eq!(lines[1]["node"], "node-a1");
    assert_eq!(lines[1]["timestamp"], "2025-11-21T04:40:00.000000002Z");
    assert_eq!(lines[2]["type"], "kernel.network.connection_refused");
    assert_eq!(lines[2]["facts"]["pid"], 103);
    // No extension key appears that nobody sent.
    assert!(lines[2].get("workload").is_none() && lines[2].get("id").is_none());
    assert_eq!(metric(&c, "tapio_controller_sink_records_written_total{sink=\"file\"}").await, Some(3.0));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_enum_values_are_accepted_everywhere() {
    let t = TestServer::start("enums").await;
    let c = t.client();
    let mut e = event(1);
    e["severity"] = json!("sev-from-the-future");
    e["outcome"] = json!("outcome-from-the-future");
    let r = c.post_json("/v1/events", &batch("a1", 1, vec![e])).await;
    assert_eq!(r.status, 200, "{r:?}");
    c.post_json("/v1/agents/hello", &hello("a1")).await;
    let mut hb = heartbeat("a1");
    hb["observers"] = json!({"x": "state-from-the-future"});
    hb["degraded_reasons"] = json!(["reason-from-the-future"]);
    let r = c.post_json("/v1/agents/heartbeat", &hb).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["accepted"], true);
    let lines = t.sink_lines(1).await;
    assert_eq!(lines[0]["outcome"], "outcome-from-the-future");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let t = TestServer::start("ops").await;
    let c = t.client();
    assert_eq!(c.get("/healthz").await.status, 200);
    assert_eq!(c.get("/readyz").await.status, 200);
    c.post_json("/v1/agents/hello", &hello("a1")).await;
    c.post_json("/v1/events", &batch("a1", 1, vec![event(1), event(2)])).await;
    c.post_bytes("/v1/events", b"{").await;
    c.get("/nope").await;

    let m = c.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().contains("openmetrics-text"));
    let expect = [
        ("tapio_controller_events_accepted_total", 2.0),
        ("tapio_controller_events_rejected_total", 0.0),
        ("tapio_controller_batches_accepted_total", 1.0),
        ("tapio_controller_batches_rejected_total", 1.0),
        ("tapio_controller_errors_total{code=\"MALFORMED_JSON\"}", 1.0),
        ("tapio_controller_errors_total{code=\"UNKNOWN_ENDPOINT\"}", 1.0),
        ("tapio_controller_requests_total{operation=\"events\",status=\"200\"}", 1.0),
        ("tapio_controller_requests_total{operation=\"hello\",status=\"200\"}", 1.0),
        ("tapio_controller_hellos_total{result=\"accepted\"}", 1.0),
        ("tapio_controller_agents{state=\"registered\"}", 1.0),
        ("tapio_controller_agents{state=\"unregistered\"}", 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(metric(&c, series).await, Some(value), "{series}");
    }
    t.stop().await;
}

/// Per-agent series come from registered agents only: batches with invented agent ids and
/// no hello (no token needed without auth) used to add an `agent_losses` series per kind
/// each (five then), so 20,000 of them made about 100,000 series. They are still counted in
/// `agents` and listed in `/v1/status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_agents_have_per_agent_series() {
    let t = TestServer::start("agent-series").await;
    let c = t.client();
    assert_eq!(c.post_json("/v1/agents/hello", &hello("real")).await.status, 200);
    assert_eq!(c.post_json("/v1/agents/heartbeat", &heartbeat("real")).await.status, 200);
    for i in 0..50 {
        let id = format!("random-{i:08x}");
        assert_eq!(c.post_json("/v1/events", &batch(&id, 1, vec![event(i)])).await.status, 200);
    }
    let text = String::from_utf8(c.get("/metrics").await.body).unwrap();
    let per_agent: Vec<&str> = text.lines().filter(|l| l.contains("agent_id=")).collect();
    assert!(per_agent.iter().all(|l| l.contains("agent_id=\"real\"")), "{per_agent:#?}");
    for series in [
        "tapio_controller_agent_losses_total{agent_id=\"real\",node=\"node-real\",kind=\"lost_events\"}",
        "tapio_controller_agent_observers{agent_id=\"real\",node=\"node-real\",observer=\"network\",status=\"running\"}",
    ] {
        assert!(text.lines().any(|l| l.starts_with(series)), "{series} missing:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("tapio_controller_agent_heartbeat_age_seconds{agent_id=\"real\"")));
    assert_eq!(per_agent.len(), 8, "age, six losses, one observer: {per_agent:#?}");
    assert_eq!(metric(&c, "tapio_controller_agents{state=\"unregistered\"}").await, Some(50.0));
    // A batch-only agent that says hello gets its series.
    assert_eq!(c.post_json("/v1/agents/hello", &hello("random-00000000")).await.status, 200);
    assert!(metric(
        &c,
        "tapio_controller_agent_heartbeat_age_seconds{agent_id=\"random-00000000\",node=\"node-random-00000000\"}"
    )
    .await
    .is_some());
    t.stop().await;
}

/// The generation the controller serves (from /v1/status): a base-10 u32 from the clock at
/// which its config was first served, so a restarted controller never serves an old number.
async fn served_generation(c: &Client) -> serde_json::Value {
    let s = c.get("/v1/status").await;
    assert_eq!(s.status, 200);
    let version = s.json()["config"]["version"].clone();
    let g: u64 = version.as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("generation {version}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(g.abs_diff(now) < 600, "generation {g} is not the serving time ({now})");
    version
}

/// The catalog's `tapio_correlation_drops_total{observer,reason}`: each agent's drops by
/// reason from its heartbeat, on /metrics (outside the controller's own prefix) and in
/// /v1/status; a reason not shaped `observer.reason`, or too many, is refused whole.
#[tokio::test]
async fn correlation_drops_reach_the_metrics_by_observer_and_reason() {
    let t = TestServer::start("drop-reasons").await;
    let c = t.client();
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    let mut hb = heartbeat("a1");
    hb["counters"]["correlation_drops_total"] = json!(5);
    hb["counters"]["not_judged_total"] = json!(4);
    hb["correlation_drops"] = json!({"storage.ambiguous_inflight_io": 3, "dns.query_expired": 2});
    assert_eq!(c.post_json("/v1/agents/heartbeat", &hb).await.status, 200);
    for (series, value) in [
        ("tapio_correlation_drops_total{agent_id=\"a1\",node=\"node-a1\",observer=\"storage\",reason=\"ambiguous_inflight_io\"}", 3.0),
        ("tapio_correlation_drops_total{agent_id=\"a1\",node=\"node-a1\",observer=\"dns\",reason=\"query_expired\"}", 2.0),
        ("tapio_controller_agent_losses_total{agent_id=\"a1\",node=\"node-a1\",kind=\"correlation_drops\"}", 5.0),
        ("tapio_controller_agent_losses_total{agent_id=\"a1\",node=\"node-a1\",kind=\"not_judged\"}", 4.0),
    ] {
        assert_eq!(metric(&c, series).await, Some(value), "{series}");
    }
    let status = c.get("/v1/status").await.json();
    assert_eq!(status["agents"][0]["reported_correlation_drops"]["storage.ambiguous_inflight_io"], 3);

    for (drops, field_hint) in [
        (json!({"storage": 1}), "observer.reason"),
        (json!({"Storage.x": 1}), "observer.reason"),
        (json!({"storage.a\"b": 1}), "observer.reason"),
        (json!({format!("storage.{}", "x".repeat(49)): 1}), "observer.reason"),
        (json!((0..33).map(|i| (format!("storage.r{i}"), json!(1))).collect::<serde_json::Map<_, _>>()), "at most 32"),
    ] {
        let mut bad = heartbeat("a1");
        bad["correlation_drops"] = drops;
        let resp = c.post_json("/v1/agents/heartbeat", &bad).await;
        assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(&resp.body));
        let body = resp.json();
        assert_eq!(body["error"]["code"], "INVALID_FIELD");
        assert!(body["error"]["message"].as_str().unwrap().contains(field_hint), "{body}");
    }
    // The refused heartbeats replaced nothing.
    assert_eq!(
        metric(
            &c,
            "tapio_correlation_drops_total{agent_id=\"a1\",node=\"node-a1\",observer=\"dns\",reason=\"query_expired\"}"
        )
        .await,
        Some(2.0)
    );
    t.stop().await;
}
