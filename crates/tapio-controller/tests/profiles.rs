//! Evidence Profiles served by the controller: compiled at start, reloaded when the file
//! changes (new generation only when the compiled config changes), bad reloads refused and
//! counted once, per-agent "runs the target config" in /v1/status and /metrics; and, with
//! the real binary, a bad profile at start and the SIGHUP reload.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{heartbeat, hello, TestServer};
use serde_json::Value;
use tapio_controller::config_hash::config_hash;

const HEAD: &str = "apiVersion: tapio.dev/v1alpha1\nkind: EvidenceProfile\nmetadata:\n  name: test\n";

fn profile(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    // Write then rename, as editors and ConfigMap updates do, so a poll never sees half.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{HEAD}{body}")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

fn expected_hash(body: &str) -> String {
    let doc: tapio_profile::Document = serde_yaml_ng::from_str(&format!("{HEAD}{body}")).unwrap();
    config_hash(&tapio_profile::compile(&doc).unwrap())
}

async fn config(t: &TestServer) -> Value {
    let r = t.client().get("/v1/agents/config?agent_id=a&node_name=n").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

async fn metrics(t: &TestServer) -> String {
    String::from_utf8(t.client().get("/metrics").await.body).unwrap()
}

/// The generation a config response or status names.
fn generation(v: &Value) -> u32 {
    v.as_str().and_then(|g| g.parse().ok()).unwrap_or_else(|| panic!("generation is a base-10 u32 string: {v}"))
}

/// Generations come from the clock (unique across restarts): a fresh controller serves one
/// near now, not "1".
fn assert_fresh_generation(g: u32) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(u64::from(g).abs_diff(now) < 600, "generation {g} is not the serving time ({now})");
}

/// Waits for a generation after `previous` and returns the config served with it.
async fn wait_for_version_after(t: &TestServer, previous: u32) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = config(t).await;
        if generation(&v["version"]) > previous {
            return v;
        }
        assert!(Instant::now() < deadline, "no generation after {previous} served within 10 s: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_changes_become_generations_and_bad_ones_are_refused_and_counted() {
    let dir = common::temp_dir("profile-reload");
    let body1 = "base: production-default\noverrides:\n  container:\n    exit_ignore_codes: [3]\n";
    let path = profile(&dir, "p.yaml", body1);
    let loaded = tapio_controller::profile::load(&path).unwrap();
    let t = TestServer::start_with("profile-reload", |s| {
        s.config = loaded.config.clone();
        s.profile = Some(path.clone());
        s.profile_poll = Duration::from_millis(100);
    })
    .await;

    let v = config(&t).await;
    let g1 = generation(&v["version"]);
    assert_fresh_generation(g1);
    assert_eq!(v["config"]["container"]["exit_ignore_codes"], serde_json::json!([3]));
    assert_eq!(v["config_hash"], expected_hash(body1));
    // The watcher's first look finds the same config: no new generation.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(generation(&config(&t).await["version"]), g1);

    // An agent runs the first generation.
    let c = t.client();
    assert_eq!(c.post_json("/v1/agents/hello", &hello("a1")).await.status, 200);
    let mut hb = heartbeat("a1");
    hb["config_version"] = g1.to_string().into();
    hb["config_hash"] = v["config_hash"].clone();
    assert_eq!(c.post_json("/v1/agents/heartbeat", &hb).await.status, 200);
    let status = c.get("/v1/status").await.json();
    assert_eq!(status["agents"][0]["config_current"], true);
    let m = metrics(&t).await;
    assert!(m.contains("tapio_controller_agents_config{state=\"current\"} 1"), "{m}");
    assert!(
        m.contains(&format!("tapio_controller_config_generation {g1}\n")),
        "the first generation, before any reload: {m}"
    );

    // An effective change: a later generation, new hash; the agent is now behind.
    let body2 = "base: production-default\noverrides:\n  container:\n    exit_ignore_codes: [3, 42]\n";
    profile(&dir, "p.yaml", body2);
    let v2 = wait_for_version_after(&t, g1).await;
    let g2 = generation(&v2["version"]);
    assert_eq!(v2["config_hash"], expected_hash(body2));
    assert_eq!(v2["config"]["container"]["exit_ignore_codes"], serde_json::json!([3, 42]));
    let status = c.get("/v1/status").await.json();
    assert_eq!(generation(&status["config"]["version"]), g2);
    assert_eq!(status["agents"][0]["config_current"], false);
    let hb_resp = c.post_json("/v1/agents/heartbeat", &hb).await.json();
    assert_eq!(generation(&hb_resp["next_config_version"]), g2, "heartbeats announce the new generation");
    let m = metrics(&t).await;
    assert!(m.contains("tapio_controller_agents_config{state=\"outdated\"} 1"), "{m}");
    assert!(m.contains(&format!("tapio_controller_config_generation {g2}\n")), "{m}");
    // Counted just after the generation is published.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&t).await.contains("tapio_controller_profile_reloads_total{result=\"applied\"} 1") {
        assert!(Instant::now() < deadline, "the reload was not counted: {}", metrics(&t).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Same config, different text (a comment, reordered list): no new generation.
    profile(&dir, "p.yaml", &format!("# tuned for payments\n{}", body2.replace("[3, 42]", "[42, 3, 42]")));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&t).await.contains("tapio_controller_profile_reloads_total{result=\"unchanged\"} 2") {
        assert!(Instant::now() < deadline, "the reordered profile was not read: {}", metrics(&t).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(generation(&config(&t).await["version"]), g2);

    // A bad profile: refused, counted once however many polls see it, old config stays.
    profile(&dir, "p.yaml", "base: production-default\noverrides:\n  storage:\n    latency_critical_ms: 0\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&t).await.contains("tapio_controller_profile_reload_failures_total 1") {
        assert!(Instant::now() < deadline, "bad profile not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // several more polls
    assert!(metrics(&t).await.contains("tapio_controller_profile_reload_failures_total 1"));
    let still = config(&t).await;
    assert_eq!((generation(&still["version"]), still["config_hash"].clone()), (g2, v2["config_hash"].clone()));

    // Not YAML at all, then a vanished file: each refused and counted once more.
    // Written then renamed, as the helper does: a poll must not see the file half written.
    let tmp = dir.join(".p.yaml.tmp");
    std::fs::write(&tmp, "base: [unclosed\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&t).await.contains("tapio_controller_profile_reload_failures_total 2") {
        assert!(Instant::now() < deadline, "syntax error not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(&path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&t).await.contains("tapio_controller_profile_reload_failures_total 3") {
        assert!(Instant::now() < deadline, "missing file not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(generation(&config(&t).await["version"]), g2);

    // Fixed: the next generation.
    let body3 = "base: quiet\n";
    profile(&dir, "p.yaml", body3);
    let v3 = wait_for_version_after(&t, g2).await;
    assert_eq!(v3["config_hash"], expected_hash(body3));
    t.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_profiles_and_unknown_extensions() {
    let dir = common::temp_dir("profile-json");
    let json = dir.join("p.json");
    std::fs::write(
        &json,
        r#"{"apiVersion":"tapio.dev/v1alpha1","kind":"EvidenceProfile","metadata":{"name":"j"},"base":"sensitive"}"#,
    )
    .unwrap();
    let loaded = tapio_controller::profile::load(&json).unwrap();
    assert_eq!(loaded.config, tapio_profile::Builtin::Sensitive.config());
    let txt = dir.join("p.txt");
    std::fs::write(&txt, "x").unwrap();
    let err = tapio_controller::profile::load(&txt).unwrap_err().to_string();
    assert!(err.contains("unknown file type; name it .yaml, .yml or .json"), "{err}");
    let big = dir.join("big.yaml");
    std::fs::write(&big, vec![b'#'; (tapio_controller::profile::MAX_PROFILE_BYTES + 1) as usize]).unwrap();
    assert!(tapio_controller::profile::load(&big).unwrap_err().to_string().contains("larger than"));
    let syntax = dir.join("s.yaml");
    std::fs::write(&syntax, "apiVersion: [\n").unwrap();
    let err = tapio_controller::profile::load(&syntax).unwrap_err().to_string();
    assert!(err.contains("is not valid YAML") && err.contains("line"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the real binary ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn get_body(port: u16, path: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    Some(common::parse_response(&raw).body)
}

fn get_json(port: u16, path: &str) -> Option<Value> {
    serde_json::from_slice(&get_body(port, path)?).ok()
}

#[test]
fn the_binary_refuses_a_bad_profile_at_start_naming_the_field() {
    let dir = common::temp_dir("profile-bad-start");
    let path = profile(&dir, "p.yml", "base: quiet\noverrides:\n  network:\n    retransmit_cont: 3\n");
    let out = Command::new(env!("CARGO_BIN_EXE_tapio-controller"))
        .args(["--listen", "127.0.0.1:0", "--profile"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The log line quotes the field as written and suggests the known one.
    assert!(stderr.contains("overrides.network.retransmit_cont: unknown field (did you mean"), "{stderr}");
    assert!(stderr.contains("retransmit_count"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_reloads_the_profile_of_the_running_binary() {
    let dir = common::temp_dir("profile-sighup");
    let path = profile(&dir, "p.yaml", "base: production-default\n");
    let port = free_port();
    // Polling is slowed to an hour: only SIGHUP can make the change seen in time.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tapio-controller"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--profile-poll-secs", "3600", "--profile"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = |field: &str| get_json(port, "/v1/status").map(|v| v["config"][field].clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while status("version").is_none() {
        assert!(Instant::now() < deadline, "controller did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let first = status("version").map(|v| generation(&v)).unwrap_or(0);
    assert_fresh_generation(first);
    // The watcher's first look (at start) must be over before the file changes, or it
    // would see the change without a SIGHUP.
    let first_look = "tapio_controller_profile_reloads_total{result=\"unchanged\"} 1";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get_body(port, "/metrics").is_some_and(|m| String::from_utf8_lossy(&m).contains(first_look)) {
        assert!(Instant::now() < deadline, "the watcher's first look was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    profile(&dir, "p.yaml", "base: sensitive\n");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status("version").map(|v| generation(&v)), Some(first), "no reload without SIGHUP");
    // SAFETY: kill takes plain integers and touches no memory of ours (our own child).
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("version").map(|v| generation(&v)).unwrap_or(0) <= first {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status("config_hash"), Some(config_hash(&tapio_profile::Builtin::Sensitive.config()).into()));
    let reloaded = status("version").unwrap_or_default();
    // A bad profile on SIGHUP: counted, generation and hash stay.
    profile(&dir, "p.yaml", "base: loud\n");
    // SAFETY: kill takes plain integers and touches no memory of ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            String::from_utf8_lossy(&raw).into_owned()
        };
        if resp.contains("tapio_controller_profile_reload_failures_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "bad profile on SIGHUP not counted: {resp}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status("version"), Some(reloaded));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP must not stop the controller");
    // SAFETY: kill takes plain integers and touches no memory of ours (our own child).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
