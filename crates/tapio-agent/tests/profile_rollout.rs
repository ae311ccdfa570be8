//! Evidence Profiles end to end on the real kernel: the real tapio-controller serving a
//! profile file, a real agent in controller mode, and the `tapio` CLI. A profile change
//! reaches the agent within two config polls, the kernel then judges with it (an ignored
//! exit code stops producing abnormal_exit, a lower retransmit threshold starts producing
//! retransmit_spike), and each event carries the generation that judged it. SIGHUP reloads;
//! a bad profile is refused and the agent keeps the hash it applied.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::netns::NetnsPair;
use support::{kernel_test, Agent, Finished};

/// A sibling binary of the agent (`cargo test --workspace` builds them all).
fn sibling(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_tapio-agent")).with_file_name(name);
    assert!(bin.exists(), "{} missing: run `cargo build --workspace` (scripts/test does)", bin.display());
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // The controller answers small bodies with Content-Length; larger ones may be chunked.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(after.get(..n)?);
            rest = after.get(n + 2..)?;
        }
        return Some(out);
    }
    Some(body.to_string())
}

struct Controller {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Controller {
    fn start(dir: &Path, profile: &Path, poll_secs: u32) -> Controller {
        let port = free_port();
        let log = dir.join("controller.log");
        let child = Command::new(sibling("tapio-controller"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--sink", "file", "--sink-path"])
            .arg(dir.join("sink.jsonl"))
            .args(["--send-interval-ms", "200", "--profile-poll-secs", &poll_secs.to_string(), "--profile"])
            .arg(profile)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("spawn tapio-controller");
        let c = Controller { child, port, log };
        wait_until("the controller", Duration::from_secs(20), || c.status().is_some());
        c
    }

    fn status(&self) -> Option<Value> {
        serde_json::from_str(&http_get(self.port, "/v1/status")?).ok()
    }

    fn target(&self) -> (String, String) {
        let s = self.status().expect("status");
        (s["config"]["version"].as_str().unwrap().to_string(), s["config"]["config_hash"].as_str().unwrap().to_string())
    }

    fn agent(&self, id: &str) -> Option<Value> {
        self.status()?["agents"].as_array()?.iter().find(|a| a["agent_id"] == id).cloned()
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics").unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tapio-profile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces the profile the way an editor or a ConfigMap update does (write, then rename).
fn write_profile(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("apiVersion: tapio.dev/v1alpha1\nkind: EvidenceProfile\nmetadata:\n  name: rollout\n{body}"),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What `tapio profile compile` says the file's hash is.
fn cli_hash(profile: &Path) -> String {
    let out = Command::new(sibling("tapio")).args(["profile", "compile", "--json"]).arg(profile).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["config_hash"].as_str().unwrap().to_string()
}

fn agent_config(port: u16, id: &str, dir: &Path) -> String {
    format!(
        "[sinks]\nstdout = true\n[controller]\nurl = \"http://127.0.0.1:{port}\"\nagent_id = \"{id}\"\n\
         state_file = \"{}\"\nheartbeat_interval_secs = 1\nconfig_poll_interval_secs = 1\nconnect_timeout_ms = 500\n\
         io_timeout_ms = 2000\nmax_backoff_ms = 1000\n",
        dir.join("agent-state.json").display()
    )
}

/// Runs `sh -c 'exit CODE'` and returns its pid.
fn exit_with(code: i32) -> u32 {
    let mut child = Command::new("sh").args(["-c", &format!("exit {code}")]).spawn().unwrap();
    let pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(code));
    pid
}

fn exits_of(run: &Finished, pid: u32) -> Vec<&Value> {
    run.of_type("kernel.container.abnormal_exit").filter(|e| e["facts"]["pid"] == pid).collect()
}

fn tcp_retrans_segs(ns: &str) -> u64 {
    let snmp = support::run(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().expect("Tcp header"), tcp.next().expect("Tcp values"));
    let idx = names.split_whitespace().position(|n| n == "RetransSegs").expect("RetransSegs");
    values.split_whitespace().nth(idx).and_then(|v| v.parse().ok()).expect("RetransSegs value")
}

/// Three seconds of bulk data from a to b through a 20 % receive-side drop; returns the
/// sender's retransmitted segments.
fn lossy_transfer(pair: &NetnsPair, port: u16) -> u64 {
    let bind: SocketAddr = format!("{}:{port}", pair.b_addr).parse().unwrap();
    let listener = pair.spawn_in(&pair.b.clone(), move || TcpListener::bind(bind).expect("bind in b")).join().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let before = tcp_retrans_segs(&pair.a);
    pair.spawn_in(&pair.a.clone(), move || {
        let mut c = TcpStream::connect(bind).expect("connect");
        let chunk = vec![0x5au8; 16 * 1024];
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            c.write_all(&chunk).expect("write");
        }
    })
    .join()
    .expect("client");
    server.join().expect("server");
    tcp_retrans_segs(&pair.a) - before
}

#[test]
#[ignore = "needs root"]
fn a_profile_change_reaches_the_kernel_within_two_polls() {
    if !kernel_test("profile_rollout") {
        return;
    }
    let dir = temp_dir("rollout");
    let profile = dir.join("profile.yaml");
    // Generation 1: retransmits never make a spike (the highest count allowed in 1 s).
    write_profile(
        &profile,
        "base: production-default\noverrides:\n  network:\n    retransmit_count: 100000\n    retransmit_window_ms: 1000\n",
    );
    let controller = Controller::start(&dir, &profile, 1);
    let (v1, h1) = controller.target();
    let g1: u32 = v1.parse().expect("generation is a base-10 u32");
    assert_eq!(cli_hash(&profile), h1, "the CLI and the controller hash the same profile alike");

    let mut agent = Agent::start(&agent_config(controller.port, "agent-rollout", &dir));
    wait_until("the agent to apply generation 1", Duration::from_secs(15), || {
        controller.agent("agent-rollout").is_some_and(|a| a["reported_config_hash"] == h1.as_str())
    });
    assert_eq!(controller.agent("agent-rollout").unwrap()["config_current"], true);

    let pair = NetnsPair::new("pr", 31);
    pair.nft_input(&pair.b, &format!("ip saddr {} tcp dport 7031 numgen random mod 100 < 20 drop", pair.a_addr));
    let exit42_before = exit_with(42);
    let retrans_before = lossy_transfer(&pair, 7031);

    // Generation 2: exit code 42 ignored, 5 retransmits in 1 s are a spike.
    write_profile(
        &profile,
        "base: production-default\noverrides:\n  container:\n    exit_ignore_codes: [42]\n  network:\n    \
         retransmit_count: 5\n    retransmit_window_ms: 1000\n",
    );
    wait_until("the controller to serve generation 2", Duration::from_secs(5), || controller.target().0 != v1);
    let served = Instant::now();
    let (v2, h2) = controller.target();
    let g2: u32 = v2.parse().expect("generation is a base-10 u32");
    assert!(g2 > g1, "generations rise: {g1} then {g2}");
    assert_ne!(h1, h2);
    assert_eq!(cli_hash(&profile), h2);
    // Two config polls (1 s each), plus the request itself and the log line's way here.
    agent.wait_for_log(&format!("applied controller config {g2} ({h2})"), Duration::from_millis(2_500));
    let applied_after = served.elapsed();
    wait_until("a heartbeat with the new hash", Duration::from_secs(3), || {
        controller.agent("agent-rollout").is_some_and(|a| a["reported_config_hash"] == h2.as_str())
    });
    assert!(controller.metrics().contains("tapio_controller_agents_config{state=\"current\"} 1"));

    let exit42_after = exit_with(42);
    let exit43_after = exit_with(43);
    let retrans_after = lossy_transfer(&pair, 7031);
    let run = agent.stop();
    eprintln!("generation 2 applied {applied_after:?} after the controller served it");

    // Before: 42 is evidence, judged by generation 1.
    let before = exits_of(&run, exit42_before);
    assert_eq!(before.len(), 1, "{before:#?}");
    assert_eq!(before[0]["facts"]["exit_code"], 42);
    assert_eq!(before[0]["config_generation"], g1);
    // After: 42 is ignored in the kernel, 43 still evidence, judged by generation 2.
    assert!(exits_of(&run, exit42_after).is_empty(), "exit 42 must be ignored under generation 2");
    let after = exits_of(&run, exit43_after);
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(after[0]["config_generation"], g2);
    // Retransmits: none judged a spike under generation 1 (though there were plenty), some
    // under generation 2.
    assert!(retrans_before >= 20 && retrans_after >= 20, "too few retransmits: {retrans_before}, {retrans_after}");
    let spikes: Vec<&Value> =
        run.of_type("kernel.network.retransmit_spike").filter(|e| e["facts"]["dst_port"] == 7031).collect();
    assert!(spikes.iter().all(|e| e["config_generation"] == g2), "a spike judged by generation 1: {spikes:#?}");
    assert!(!spikes.is_empty(), "{retrans_after} retransmits under generation 2 but no spike");
    for e in &spikes {
        assert!(e["facts"]["retransmits_in_window"].as_u64().unwrap() >= 5);
        assert_eq!(e["facts"]["window_ms"], 1000);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root"]
fn sighup_reloads_and_a_bad_profile_keeps_the_applied_hash() {
    if !kernel_test("profile_sighup") {
        return;
    }
    let dir = temp_dir("sighup");
    let profile = dir.join("profile.yml");
    write_profile(&profile, "base: production-default\n");
    // Polling slowed to an hour: only SIGHUP makes a change seen.
    let controller = Controller::start(&dir, &profile, 3_600);
    let (v1, h1) = controller.target();
    let g1: u32 = v1.parse().expect("generation is a base-10 u32");
    let mut agent = Agent::start(&agent_config(controller.port, "agent-sighup", &dir));
    wait_until("the agent to apply generation 1", Duration::from_secs(15), || {
        controller.agent("agent-sighup").is_some_and(|a| a["reported_config_hash"] == h1.as_str())
    });

    // A bad profile: refused and counted; the controller and the agent keep generation 1.
    write_profile(&profile, "base: production-default\noverrides:\n  storage:\n    latency_critical_ms: 0\n");
    controller.signal(libc::SIGHUP);
    wait_until("the refusal to be counted", Duration::from_secs(5), || {
        controller.metrics().contains("tapio_controller_profile_reload_failures_total 1")
    });
    assert!(
        controller.log().contains("overrides.storage.latency_critical_ms: 0 is out of range"),
        "{}",
        controller.log()
    );
    std::thread::sleep(Duration::from_millis(2_500)); // two agent polls and heartbeats
    assert_eq!(controller.target(), (v1.clone(), h1.clone()));
    let a = controller.agent("agent-sighup").unwrap();
    assert_eq!(
        (a["reported_config_version"].as_str(), a["reported_config_hash"].as_str()),
        (Some(v1.as_str()), Some(h1.as_str()))
    );
    let exit42_kept = exit_with(42);

    // A good one on SIGHUP: generation 2 reaches the kernel.
    write_profile(&profile, "base: production-default\noverrides:\n  container:\n    exit_ignore_codes: [42]\n");
    controller.signal(libc::SIGHUP);
    wait_until("generation 2", Duration::from_secs(5), || controller.target().0 != v1);
    let (v2, h2) = controller.target();
    assert!(v2.parse::<u32>().expect("generation is a base-10 u32") > g1, "generations rise: {v1} then {v2}");
    assert_eq!(cli_hash(&profile), h2);
    agent.wait_for_log(&format!("applied controller config {v2} ({h2})"), Duration::from_millis(2_500));
    let exit42_ignored = exit_with(42);
    let run = agent.stop();
    assert!(!run.stderr.contains("refused"), "the agent never saw the bad profile: {}", run.stderr);
    let kept = exits_of(&run, exit42_kept);
    assert_eq!(kept.len(), 1, "under the kept generation 1, exit 42 is evidence: {kept:#?}");
    assert_eq!(kept[0]["config_generation"], g1);
    assert!(exits_of(&run, exit42_ignored).is_empty());
    assert_eq!(run.counter(&["config_rejected_total"]), 0);
    controller.signal(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);
}
