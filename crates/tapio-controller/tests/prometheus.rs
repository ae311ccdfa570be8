//! Prometheus: the alert rules in deploy/prometheus pass `promtool test rules`, and
//! Debian's real `prometheus`, started here on loopback, scrapes a controller fed with
//! known evidence and heartbeats; the counts are checked with PromQL over its HTTP API.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::servers::{free_port, http_get, wait_listening, which, Proc};
use common::{batch, hello, temp_dir, TestServer};
use serde_json::{json, Value};

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus")
}

#[test]
fn the_alert_rules_pass_promtool_check_and_unit_tests() {
    for args in [vec!["check", "rules", "tapio-alerts.yaml"], vec!["test", "rules", "tapio-alerts.test.yaml"]] {
        let out = Command::new(which("promtool")).args(&args).current_dir(rules_dir()).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The single value of an instant PromQL query, None while there is no result.
async fn query(prom: SocketAddr, promql: &str) -> Option<f64> {
    let (status, body) = http_get(prom, &format!("/api/v1/query?query={}", percent_encode(promql))).await?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// Waits until `promql` evaluates to `want`.
async fn expect(prom: SocketAddr, promql: &str, want: f64) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < end {
        last = query(prom, promql).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{promql} = {last:?}, expected {want}");
}

fn heartbeat(agent: &str, lost: u64, network: &str) -> Value {
    json!({
        "wire_version": "tapio-wire/v1", "agent_id": agent, "node_name": format!("node-{agent}"),
        "config_version": "0", "config_hash": "", "uptime_seconds": 3,
        "observers": {"network": network, "storage": "running"},
        "counters": {"events_total": 10, "malformed_events_total": 0, "lost_events_total": lost,
            "correlation_drops_total": 0, "sink_drops_total": 4, "controller_send_failures_total": 0}
    })
}

fn ev(event_type: &str, severity: &str, i: u64) -> Value {
    json!({"type": event_type, "observer": "network", "severity": severity,
           "timestamp_unix_nanos": 1_763_700_000_000_000_000u64 + i, "facts": {"pid": i}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_known_evidence_and_agent_health() {
    let t = TestServer::start("i12-prom").await;
    let c = t.client();
    for a in ["p1", "p2"] {
        assert_eq!(c.post_json("/v1/agents/hello", &hello(a)).await.status, 200);
    }
    assert_eq!(c.post_json("/v1/agents/heartbeat", &heartbeat("p1", 7, "failed")).await.status, 200);
    assert_eq!(c.post_json("/v1/agents/heartbeat", &heartbeat("p2", 0, "running")).await.status, 200);
    let refused = "kernel.network.connection_refused";
    let events = vec![
        ev(refused, "warning", 1),
        ev(refused, "warning", 2),
        ev(refused, "warning", 3),
        ev("kernel.container.oom_kill", "critical", 4),
        ev("kernel.container.oom_kill", "critical", 5),
        ev("kernel.made.up", "warning", 6),
        ev(refused, "loud", 7),
    ];
    assert_eq!(c.post_json("/v1/events", &batch("p1", 1, events)).await.status, 200);

    let dir = temp_dir("i12-prometheus");
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tapio-controller\n    static_configs:\n      - targets: ['{}']\n",
            rules_dir().join("tapio-alerts.yaml").display(),
            t.server.addr
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(which("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus starts (scripts/setup installs it)");
    let _prom_proc = Proc { child, name: "prometheus" };
    let prom = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(prom, Duration::from_secs(30));

    expect(prom, &format!("tapio_controller_evidence_total{{type=\"{refused}\",severity=\"warning\"}}"), 3.0).await;
    expect(prom, "tapio_controller_evidence_total{type=\"kernel.container.oom_kill\",severity=\"critical\"}", 2.0)
        .await;
    // Unknown types and severities do not create series of their own.
    expect(prom, "tapio_controller_evidence_total{type=\"other\",severity=\"warning\"}", 1.0).await;
    expect(prom, &format!("tapio_controller_evidence_total{{type=\"{refused}\",severity=\"other\"}}"), 1.0).await;
    expect(prom, "sum(tapio_controller_evidence_total)", 7.0).await;
    expect(prom, "tapio_controller_events_accepted_total", 7.0).await;
    expect(prom, "tapio_controller_sink_records_written_total{sink=\"file\"}", 7.0).await;
    // Per-agent health.
    expect(prom, "tapio_controller_agent_losses_total{agent_id=\"p1\",kind=\"lost_events\"}", 7.0).await;
    expect(prom, "sum(tapio_controller_agent_losses_total{kind=\"sink_drops\"})", 8.0).await;
    expect(prom, "count(tapio_controller_agent_heartbeat_age_seconds < 60)", 2.0).await;
    expect(prom, "tapio_controller_agent_observers{agent_id=\"p1\",observer=\"network\",status=\"failed\"}", 1.0).await;
    expect(prom, "count(tapio_controller_agent_observers{status=\"running\"})", 3.0).await;
    // The alert rules loaded and evaluate without errors.
    let (_, rules) = http_get(prom, "/api/v1/rules").await.unwrap();
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"][0]["rules"].as_array().unwrap().iter().collect();
    assert_eq!(loaded.len(), 8, "{rules}");
    for r in loaded {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // The failed observer is pending (its `for` is 5 min) once a rule evaluation saw it.
    expect(prom, "count(ALERTS{alertname=\"TapioObserverFailed\",alertstate=\"pending\",agent_id=\"p1\"})", 1.0).await;
    drop(_prom_proc);
    t.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
