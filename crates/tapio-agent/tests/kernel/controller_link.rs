//! The agent's controller mode against the real tapio-controller binary on loopback:
//! registration, config with ETag, heartbeats carrying real counters, kernel evidence
//! arriving in the controller's sink, restarts, outages, blackholes and bad tokens.

use crate::support::agent::{final_counters, ready_line, Launch, Stdout, NETWORK_ONLY};
use crate::support::controller::{agent_config, free_port, read_sink, wait_until, Controller};
use crate::support::netns::NetnsPair;
use crate::support::tmp::Dir;
use crate::support::{closed_port, kernel_test, refuse, Agent};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn refused_to(events: &[Value], port: u16) -> usize {
    events.iter().filter(|e| e["type"] == "kernel.network.connection_refused" && e["facts"]["dst_port"] == port).count()
}

#[test]
#[ignore = "needs root"]
fn registers_applies_config_heartbeats_counters_and_delivers_kernel_evidence() {
    let _turn = kernel_test("controller_link_basic");
    let scratch = Dir::scratch("link-basic");
    let dir = scratch.path();
    let port = free_port();
    let controller = Controller::start(dir, port, &[]);
    let agent = Agent::start(&agent_config(port, "agent-basic", dir, ""));
    wait_until("registration and applied config", Duration::from_secs(15), || {
        controller
            .agent_status("agent-basic")
            .is_some_and(|a| a["reported_config_version"] != "0" && a["reported_config_version"] != Value::Null)
    });
    let target = closed_port();
    refuse(target, 3);
    wait_until("evidence in the controller sink", Duration::from_secs(15), || {
        refused_to(&controller.sink_events(), target) == 3
    });
    // Heartbeats (every second) carry the real counters: wait for one sent after the facts.
    wait_until("a heartbeat reporting the events", Duration::from_secs(10), || {
        controller
            .agent_status("agent-basic")
            .and_then(|a| a["reported_counters"]["events_total"].as_u64())
            .is_some_and(|n| n >= 3)
    });
    let status = controller.agent_status("agent-basic").expect("agent in status");
    let hash = controller.status()["config"]["config_hash"].clone();
    assert_eq!(status["reported_config_hash"], hash, "the agent heartbeats the hash it applied");
    assert_eq!(status["observers"]["network"], "running");
    assert_eq!(status["sequence"]["gaps_total"], 0);
    let run = agent.stop();
    assert!(run.exit_ok);
    // The same three facts, locally and at the controller, with the same ids.
    let local: Vec<&Value> = run.to_port(target);
    assert_eq!(local.len(), 3);
    let remote = controller.sink_events();
    for e in local {
        assert!(remote.iter().any(|r| r["id"] == e["id"] && r["type"] == e["type"]), "{e} missing at the controller");
    }
    // After the first fetch the agent revalidates with If-None-Match and gets 304s (polls
    // every second): the config was applied once, and every later poll was answered 304.
    assert_eq!(run.counter(&["config_rejected_total"]), 0);
    assert!(run.counter(&["config_unchanged_total"]) >= 1, "no 304 answer: {}", run.counters);
    assert_eq!(run.stderr.matches("applied controller config").count(), 1, "{}", run.stderr);
    let saved: Value = serde_json::from_slice(&std::fs::read(dir.join("agent-state.json")).unwrap()).unwrap();
    assert_eq!(saved["config_hash"], hash, "the applied config is persisted");
    controller.stop();
}

#[test]
#[ignore = "needs root"]
fn a_restarted_controller_sees_the_agent_again_within_a_heartbeat_and_loses_nothing_accepted() {
    let _turn = kernel_test("controller_link_restart");
    let scratch = Dir::scratch("link-restart");
    let dir = scratch.path();
    let port = free_port();
    let controller = Controller::start(dir, port, &[]);
    let agent = Agent::start(&agent_config(port, "agent-restart", dir, ""));
    wait_until("registration", Duration::from_secs(15), || controller.agent_status("agent-restart").is_some());
    let target = closed_port();
    refuse(target, 2);
    wait_until("first evidence", Duration::from_secs(15), || refused_to(&controller.sink_events(), target) == 2);
    controller.stop();
    refuse(target, 2); // while it is down: kept in the outbox
    let restarted = Controller::start(dir, port, &[]);
    let back = Instant::now();
    wait_until("re-registration", Duration::from_secs(10), || {
        restarted.agent_status("agent-restart").is_some_and(|a| a["registered_at_unix"] != Value::Null)
    });
    // About a second (the heartbeat interval, then hello at once); the rest spares a
    // loaded machine's two debug processes.
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "re-registered after {:?} (heartbeat interval 1 s)",
        back.elapsed()
    );
    wait_until("evidence sent during the outage", Duration::from_secs(15), || {
        refused_to(&restarted.sink_events(), target) == 4
    });
    let run = agent.stop();
    assert_eq!(run.to_port(target).len(), 4);
    assert_eq!(run.counter(&["sinks", "controller", "failed"]), 0, "nothing dropped: {}", run.counters);
    restarted.stop();
}

#[test]
#[ignore = "needs root"]
fn with_the_controller_down_the_agent_keeps_observing_bounds_its_queue_and_recovers() {
    let _turn = kernel_test("controller_link_outage");
    let scratch = Dir::scratch("link-outage");
    let dir = scratch.path();
    let port = free_port(); // nothing listens yet
                            // Network only: evidence of other processes on a busy machine (exits, block I/O) would
                            // otherwise keep the 5-line outbox full and crowd out the record sent after recovery.
    let extra = format!("queue_capacity = 5\n{NETWORK_ONLY}");
    let agent = Agent::start(&agent_config(port, "agent-outage", dir, &extra));
    let target = closed_port();
    refuse(target, 8);
    std::thread::sleep(Duration::from_secs(30));
    let controller = Controller::start(dir, port, &[]);
    wait_until("recovery", Duration::from_secs(30), || controller.agent_status("agent-outage").is_some());
    // On a busy machine other evidence can fill the 5-line outbox at any moment, so a fact
    // after recovery is made once a second until one gets through.
    let after = closed_port();
    let mut last_try = Instant::now() - Duration::from_secs(1);
    wait_until("evidence after recovery", Duration::from_secs(30), || {
        if last_try.elapsed() >= Duration::from_secs(1) {
            refuse(after, 1);
            last_try = Instant::now();
        }
        refused_to(&controller.sink_events(), after) >= 1
    });
    let run = agent.stop();
    // Observation never stopped: all 8 facts in the local sink.
    assert_eq!(run.to_port(target).len(), 8);
    // Stopped first, so that everything it acknowledged is in its sink file.
    let sink_path = controller.sink.clone();
    controller.stop();
    let remote: Vec<Value> = read_sink(&sink_path);
    let delivered = refused_to(&remote, target) as u64;
    let dropped = run.counter(&["sinks", "controller", "failed"]);
    // Every record the agent wrote locally has exactly one controller outcome: it is in the
    // controller's sink, or counted as dropped (other evidence on the machine included, so
    // this holds exactly however busy the machine is).
    let at_controller = |e: &Value| remote.iter().any(|r| r["id"] == e["id"]);
    let not_delivered = run.events.iter().filter(|e| !at_controller(e)).count() as u64;
    assert_eq!(dropped, not_delivered, "dropped == local records the controller never got: {}", run.counters);
    assert_eq!(run.counter(&["controller_events_sent_total"]), run.events.len() as u64 - not_delivered);
    assert!(8 - delivered >= 3, "a 5-line outbox must drop at least 3 of 8: {}", run.counters);
    assert!(run.counter(&["controller_send_failures_total"]) > 0);
}

#[test]
#[ignore = "needs root"]
fn a_blackholed_controller_fails_within_the_connect_timeout_and_observation_goes_on() {
    let _turn = kernel_test("controller_link_blackhole");
    // 10.99.21.2 answers nothing: b drops every packet to the controller port.
    let pair = NetnsPair::new("bh", 21);
    pair.nft_input(&pair.b, "tcp dport 7470 drop");
    let config = format!(
        "[sinks]\nstdout = true\n[controller]\nurl = \"http://{}:7470\"\nconnect_timeout_ms = 500\nmax_backoff_ms = 1000\n",
        pair.b_addr
    );
    // The agent runs inside namespace a, where the blackhole is reachable.
    let mut agent = Launch::with_config(&config)
        .wrapped_in(&["ip", "netns", "exec", &pair.a])
        .stdout(Stdout::To(Stdio::null()))
        .spawn();
    agent.wait_ready(Duration::from_secs(30));
    // The first hello times out after 500 ms; the deadline only spares a loaded machine.
    agent.wait_for_log("controller hello failed", Duration::from_secs(10));
    agent.signal(libc::SIGTERM);
    let log = agent.wait_exit(Duration::from_secs(60)).stderr;
    let ready = log.lines().position(|l| Some(l) == ready_line(&log)).expect("agent became ready");
    let first_failure = log
        .lines()
        .skip(ready)
        .find(|l| l.contains("controller hello failed"))
        .unwrap_or_else(|| panic!("no counted failure after the ready line:\n{log}"));
    assert!(first_failure.contains("timed out") || first_failure.contains("Connection timed out"), "{first_failure}");
    let counters = final_counters(&log).expect("final counters");
    assert!(counters["controller_send_failures_total"].as_u64().unwrap() >= 1);
}

#[test]
#[ignore = "needs root"]
fn a_wrong_token_is_refused_counted_and_never_logged() {
    let _turn = kernel_test("controller_link_auth");
    let scratch = Dir::scratch("link-auth");
    let dir = scratch.path();
    std::fs::write(dir.join("controller.token"), "right-token-0123456789\n").unwrap();
    std::fs::write(dir.join("agent.token"), "wrong-token-9876543210\n").unwrap();
    let port = free_port();
    let token_arg = dir.join("controller.token");
    let controller = Controller::start(dir, port, &["--auth-token-file", token_arg.to_str().unwrap()]);
    let extra = format!("token_file = \"{}\"\n", dir.join("agent.token").display());
    let agent = Agent::start(&agent_config(port, "agent-auth", dir, &extra));
    std::thread::sleep(Duration::from_secs(3));
    let run = agent.stop();
    assert!(run.counter(&["controller_send_failures_total"]) > 0);
    assert!(run.stderr.contains("HTTP 401 UNAUTHENTICATED"), "{}", run.stderr);
    assert!(controller.agent_status("agent-auth").is_none(), "an unauthenticated agent must not register");
    for (who, log) in [("agent", run.stderr.as_str()), ("controller", controller.log().as_str())] {
        for secret in ["right-token-0123456789", "wrong-token-9876543210"] {
            assert!(!log.contains(secret), "{who} log contains a token");
        }
    }
    controller.stop();
}

/// A "controller" that accepts, reads the request, then trickles a never-ending header one
/// byte every 200 ms: every read gets data well within the io timeout.
fn trickling_controller() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let done = std::sync::Arc::clone(&stop);
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                for b in b"HTTP/1.1 200 OK\r\nX-Trickle: ".iter().chain(std::iter::repeat(&b'a')) {
                    if done.load(Ordering::Relaxed) || conn.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    (port, stop)
}

/// A controller that trickles its response headers cannot stall the link: each request
/// ends at its deadline and is counted as a failure, SIGTERM ends the agent within the
/// documented bound, and every record has one controller outcome (sent or failed).
#[test]
#[ignore = "needs root"]
fn a_controller_trickling_its_headers_is_cut_off_counted_and_shutdown_stays_bounded() {
    let _turn = kernel_test("controller_link_trickle");
    let (port, stop) = trickling_controller();
    let scratch = Dir::scratch("link-trickle");
    let dir = scratch.path();
    let agent =
        Agent::start(&agent_config(port, "agent-trickle", dir, &format!("request_timeout_ms = 1000\n{NETWORK_ONLY}")));
    let target = closed_port();
    refuse(target, 5);
    std::thread::sleep(Duration::from_secs(4));
    let (run, took) = agent.stop_within(Duration::from_secs(20));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(run.exit_ok, "{}", run.stderr);
    assert!(run.stderr.contains("request deadline passed"), "{}", run.stderr);
    // One request per second at most (hello, with backoff): a few failures, all counted.
    assert!(run.counter(&["controller_send_failures_total"]) >= 2, "{}", run.counters);
    let events = run.counter(&["events_total"]);
    assert_eq!(run.to_port(target).len(), 5, "the local sink got everything");
    assert_eq!(
        run.counter(&["controller_events_sent_total"]) + run.counter(&["sinks", "controller", "failed"]),
        events,
        "every record has one controller outcome: {}",
        run.counters
    );
    eprintln!("trickling controller: exit {took:?} after SIGTERM; {}", run.counters);
}
