//! Evidence Profiles end to end on the real kernel: the real tapio-controller serving a
//! profile file, a real agent in controller mode, and the `tapio` CLI. A profile change
//! reaches the agent within two config polls, the kernel then judges with it (an ignored
//! exit code stops producing abnormal_exit, a lower retransmit threshold starts producing
//! retransmit_spike), and each event carries the generation that judged it. SIGHUP reloads;
//! a bad profile is refused and the agent keeps the hash it applied.

use crate::support::controller::{agent_config, free_port, sibling, wait_until, Controller};
use crate::support::netns::{tcp_retrans_segs, NetnsPair};
use crate::support::tmp::Dir;
use crate::support::{kernel_test, Agent, Finished};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn profile_arg(profile: &Path) -> &str {
    profile.to_str().expect("a UTF-8 profile path")
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

/// Three seconds of bulk data from a to b through a 20 % receive-side drop; returns the
/// sender's retransmitted segments.
fn lossy_transfer(pair: &NetnsPair, port: u16) -> u64 {
    let bind: SocketAddr = format!("{}:{port}", pair.b_addr).parse().unwrap();
    let listener = pair.listen_in_b(bind);
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
    let _turn = kernel_test("profile_rollout");
    let scratch = Dir::scratch("profile-rollout");
    let dir = scratch.path();
    let profile = dir.join("profile.yaml");
    // Generation 1: retransmits never make a spike (the highest count allowed in 1 s).
    write_profile(
        &profile,
        "base: production-default\noverrides:\n  network:\n    retransmit_count: 100000\n    retransmit_window_ms: 1000\n",
    );
    let controller =
        Controller::start(dir, free_port(), &["--profile-poll-secs", "1", "--profile", profile_arg(&profile)]);
    let (v1, h1) = controller.target();
    let g1: u32 = v1.parse().expect("generation is a base-10 u32");
    assert_eq!(cli_hash(&profile), h1, "the CLI and the controller hash the same profile alike");

    let mut agent = Agent::start(&agent_config(controller.port, "agent-rollout", dir, ""));
    wait_until("the agent to apply generation 1", Duration::from_secs(15), || {
        controller.agent_status("agent-rollout").is_some_and(|a| a["reported_config_hash"] == h1.as_str())
    });
    assert_eq!(controller.agent_status("agent-rollout").unwrap()["config_current"], true);

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
    // Two config polls (1 s each), plus the request itself and the log line's way here (on
    // a loaded machine, up to 2 s of it).
    agent.wait_for_log(&format!("applied controller config {g2} ({h2})"), Duration::from_secs(4));
    let applied_after = served.elapsed();
    wait_until("a heartbeat with the new hash", Duration::from_secs(5), || {
        controller.agent_status("agent-rollout").is_some_and(|a| a["reported_config_hash"] == h2.as_str())
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
}

#[test]
#[ignore = "needs root"]
fn sighup_reloads_and_a_bad_profile_keeps_the_applied_hash() {
    let _turn = kernel_test("profile_sighup");
    let scratch = Dir::scratch("profile-sighup");
    let dir = scratch.path();
    let profile = dir.join("profile.yml");
    write_profile(&profile, "base: production-default\n");
    // Polling slowed to an hour: only SIGHUP makes a change seen.
    let controller =
        Controller::start(dir, free_port(), &["--profile-poll-secs", "3600", "--profile", profile_arg(&profile)]);
    let (v1, h1) = controller.target();
    let g1: u32 = v1.parse().expect("generation is a base-10 u32");
    let mut agent = Agent::start(&agent_config(controller.port, "agent-sighup", dir, ""));
    wait_until("the agent to apply generation 1", Duration::from_secs(15), || {
        controller.agent_status("agent-sighup").is_some_and(|a| a["reported_config_hash"] == h1.as_str())
    });

    // A bad profile: refused and counted; the controller and the agent keep generation 1.
    write_profile(&profile, "base: production-default\noverrides:\n  storage:\n    latency_critical_ms: 0\n");
    controller.signal(libc::SIGHUP);
    wait_until("the refusal to be counted", Duration::from_secs(5), || {
        controller.metrics().contains("tapio_controller_profile_reload_failures_total 1")
    });
    // The reason is logged before the refusal is counted.
    assert!(
        controller.log().contains("overrides.storage.latency_critical_ms: 0 is out of range"),
        "{}",
        controller.log()
    );
    std::thread::sleep(Duration::from_millis(2_500)); // two agent polls and heartbeats
    assert_eq!(controller.target(), (v1.clone(), h1.clone()));
    let a = controller.agent_status("agent-sighup").unwrap();
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
    agent.wait_for_log(&format!("applied controller config {v2} ({h2})"), Duration::from_secs(4));
    let exit42_ignored = exit_with(42);
    let run = agent.stop();
    assert!(!run.stderr.contains("refused"), "the agent never saw the bad profile: {}", run.stderr);
    let kept = exits_of(&run, exit42_kept);
    assert_eq!(kept.len(), 1, "under the kept generation 1, exit 42 is evidence: {kept:#?}");
    assert_eq!(kept[0]["config_generation"], g1);
    assert!(exits_of(&run, exit42_ignored).is_empty());
    assert_eq!(run.counter(&["config_rejected_total"]), 0);
    controller.signal(libc::SIGTERM);
}
