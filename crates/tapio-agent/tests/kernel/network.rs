//! Network evidence on the real kernel: each scenario makes the fact happen for real and
//! checks the exact events, their key facts, and the absence of wrong ones.

use crate::support::agent::observer_state;
use crate::support::netns::{ns_counter, tcp_retrans_segs, NetnsPair};
use crate::support::{self, closed_port, gettid, kernel_test, our_pid, Agent};
use aya::util::KernelVersion;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const BASE: &str = "[sinks]\nstdout = true\n";

/// Sets SO_LINGER 0 so that dropping `s` aborts the connection (RST, ESTABLISHED → CLOSE).
fn linger_zero(s: &TcpStream) {
    set_socket_option(s, libc::SO_LINGER, libc::linger { l_onoff: 1, l_linger: 0 }, "SO_LINGER");
}

/// Sets a SOL_SOCKET option of `s` to `value`, failing the test if the kernel refuses it.
fn set_socket_option<T>(s: &TcpStream, name: libc::c_int, value: T, what: &str) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with the option's own value and size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&value as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
}

/// The running agent's network maps, read and written with bpftool: what the kernel side
/// remembers is a kernel fact the tests check directly.
struct NetworkMaps {
    ids: Vec<(String, u64)>,
}

impl NetworkMaps {
    /// The maps of the network object loaded by the agent with process id `agent_pid`.
    fn of_agent(agent_pid: u32) -> NetworkMaps {
        let mut ids: Vec<(String, u64)> = Vec::new();
        for prog in ["tapio_inet_sock_set_state", "tapio_tcp_receive_reset", "tapio_tcp_probe"] {
            let progs: Value = serde_json::from_str(&support::run(&["bpftool", "-j", "prog", "show", "name", prog]))
                .expect("bpftool prog json");
            let progs = match progs {
                Value::Array(list) => list,
                one => vec![one],
            };
            // bpftool here cannot name a program's process; kernel tests run one agent at a
            // time (support::Agent and the kernel-test lock), so the newest is the agent's.
            let ours = progs
                .iter()
                .max_by_key(|p| p["id"].as_u64())
                .unwrap_or_else(|| panic!("no {prog} program loaded (agent pid {agent_pid})"));
            for id in ours["map_ids"].as_array().expect("map_ids") {
                let id = id.as_u64().expect("map id");
                if ids.iter().any(|(_, known)| *known == id) {
                    continue;
                }
                let show: Value =
                    serde_json::from_str(&support::run(&["bpftool", "-j", "map", "show", "id", &id.to_string()]))
                        .expect("bpftool map json");
                ids.push((show["name"].as_str().expect("map name").to_string(), id));
            }
        }
        NetworkMaps { ids }
    }

    fn id(&self, name: &str) -> String {
        let id = self.ids.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no map {name}: {:?}", self.ids));
        id.1.to_string()
    }

    /// Every entry of map `name`, as bpftool dumps it (raw bytes and, with BTF, `formatted`).
    fn dump(&self, name: &str) -> Vec<Value> {
        let out = support::run(&["bpftool", "-j", "map", "dump", "id", &self.id(name)]);
        serde_json::from_str::<Vec<Value>>(&out).expect("bpftool dump json")
    }

    /// Formatted values of map `name` whose task was thread `tid` (connects and owners).
    fn entries_of_thread(&self, name: &str, tid: u64) -> Vec<Value> {
        self.dump(name)
            .into_iter()
            .map(|e| e["formatted"]["value"].clone())
            .filter(|v| v["tid"] == tid || v["task"]["tid"] == tid)
            .collect()
    }

    /// Whether the agent's network programs use map `name`.
    fn uses(&self, name: &str) -> bool {
        self.ids.iter().any(|(n, _)| n == name)
    }

    /// Connect starts in SYN_SENT, from whichever table this kernel's agent uses (only its
    /// programs' maps are known here): the `connects` hash, or the slots of `connect_slots`
    /// a socket owns (a freed slot keeps its last start, with owner 0).
    fn connect_starts(&self) -> Vec<Value> {
        if self.uses("connects") {
            return self.dump("connects").into_iter().map(|e| e["formatted"]["value"].clone()).collect();
        }
        self.dump("connect_slots")
            .into_iter()
            .map(|e| e["formatted"]["value"].clone())
            .filter(|v| v["owner"] != 0)
            .map(|v| v["start"].clone())
            .collect()
    }

    /// [`Self::connect_starts`] of thread `tid`.
    fn connect_starts_of_thread(&self, tid: u64) -> Vec<Value> {
        self.connect_starts().into_iter().filter(|v| v["task"]["tid"] == tid).collect()
    }

    /// Overwrites every slot of the config carrier with zeros, so that the kernel side cannot
    /// read a config (whatever the carrier's layout), and returns what was there.
    fn blank_config(&self) -> Vec<(Vec<String>, Vec<String>)> {
        let id = self.id("config");
        let saved: Vec<(Vec<String>, Vec<String>)> =
            self.dump("config").iter().map(|e| (hex_bytes(&e["key"]), hex_bytes(&e["value"]))).collect();
        assert!(!saved.is_empty(), "the config carrier has no slot");
        for (key, value) in &saved {
            let zeros = vec!["0".to_string(); value.len()];
            map_update(&id, key, &zeros);
        }
        saved
    }

    fn restore_config(&self, saved: &[(Vec<String>, Vec<String>)]) {
        let id = self.id("config");
        for (key, value) in saved {
            map_update(&id, key, value);
        }
    }
}

fn hex_bytes(v: &Value) -> Vec<String> {
    v.as_array().expect("byte array").iter().map(|b| b.as_str().expect("hex byte").to_string()).collect()
}

fn map_update(id: &str, key: &[String], value: &[String]) {
    let mut cmd = vec!["bpftool", "map", "update", "id", id, "key"];
    cmd.extend(key.iter().map(String::as_str));
    cmd.push("value");
    cmd.extend(value.iter().map(String::as_str));
    support::run(&cmd);
}

/// The CPUs this thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills the set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set), 0, "sched_getaffinity");
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

/// Moves the calling thread to `cpu` and returns the CPU it then runs on.
fn pin_to(cpu: usize) -> usize {
    // SAFETY: as above; sched_setaffinity only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0, "pin to CPU {cpu}");
        usize::try_from(libc::sched_getcpu()).expect("sched_getcpu")
    }
}

/// The network object writes to one ring per CPU: a refused connect made on each CPU in turn
/// is one event each, so every CPU's ring is created, in its slot and drained.
#[test]
#[ignore = "needs root"]
fn a_refused_connect_on_each_cpu_is_one_event_through_that_cpus_ring() {
    let _turn = kernel_test("per_cpu_rings");
    let agent = Agent::start(BASE);
    let cpus = allowed_cpus();
    assert!(!cpus.is_empty());
    let mut ports = Vec::new();
    for &cpu in &cpus {
        let port = closed_port();
        let ran_on = std::thread::spawn(move || {
            let ran_on = pin_to(cpu);
            let err = TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
            ran_on
        })
        .join()
        .expect("connecting thread");
        assert_eq!(ran_on, cpu, "the connecting thread runs on the CPU it was pinned to");
        ports.push((cpu, port));
    }
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    for (cpu, port) in ports {
        let events = run.to_port(port);
        assert_eq!(events.len(), 1, "one event for the connect made on CPU {cpu}: {events:#?}");
        assert_eq!(events[0]["type"], "kernel.network.connection_refused");
    }
}

#[test]
#[ignore = "needs root"]
fn refused_connects_give_exactly_one_refused_event_each_v4_and_v6() {
    let _turn = kernel_test("refused_connects");
    let agent = Agent::start(BASE);
    let port4 = closed_port();
    let port6 = {
        let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind v6");
        l.local_addr().expect("addr").port()
    };
    let err = TcpStream::connect(("127.0.0.1", port4)).expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let err = TcpStream::connect((Ipv6Addr::LOCALHOST, port6)).expect_err("nothing listens");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    let ephemeral_ports = local_port_range();

    for (port, family, dst) in [(port4, "ipv4", "127.0.0.1"), (port6, "ipv6", "::1")] {
        let events = run.to_port(port);
        assert_eq!(events.len(), 1, "exactly one event for port {port}: {events:#?}");
        let e = events[0];
        assert_eq!(e["type"], "kernel.network.connection_refused");
        assert_eq!(e["observer"], "network");
        assert_eq!(e["error"]["code"], "ECONNREFUSED");
        assert_eq!(e["facts"]["family"], family);
        assert_eq!(e["facts"]["dst_addr"], dst);
        assert_eq!(e["facts"]["src_addr"], dst, "loopback connects come from loopback");
        // The kernel releases an autobound port as the connect fails, before the last
        // state change is traced: the port its SYN carried must still be reported.
        let src_port = e["facts"]["src_port"].as_u64().expect("src_port");
        assert!(ephemeral_ports.contains(&src_port), "src_port {src_port} outside {ephemeral_ports:?}");
        assert_eq!(e["facts"]["pid"], our_pid(), "the connecting task, not the softirq context");
        assert_eq!(e["facts"]["errno"], 111);
        assert_eq!(e["config_generation"], 0);
        assert!(e["id"].as_str().is_some_and(|id| id.len() == 26));
        if family == "ipv4" {
            assert_shaped_as_the_readme_example(e, port);
        }
    }
}

/// The README's example record (its "Evidence" section) against a real refused connect to
/// 127.0.0.1:`port`: the same members at every level, each of the same JSON type (a real
/// workload may leave out what this node does not know: null), the same judgement, and the
/// same message.
fn assert_shaped_as_the_readme_example(real: &Value, port: u16) {
    fn same_shape(at: &str, real: &Value, example: &Value, may_be_null: bool) {
        match (real, example) {
            (Value::Object(r), Value::Object(x)) => {
                let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
                let (mut rk, mut xk) = (keys(r), keys(x));
                rk.sort();
                xk.sort();
                assert_eq!(rk, xk, "members of {at}: the agent's against the README's");
                for (k, v) in r {
                    same_shape(&format!("{at}.{k}"), v, &x[k], may_be_null || k == "workload");
                }
            }
            (Value::Null, _) if may_be_null => {}
            (r, x) => assert_eq!(
                std::mem::discriminant(r),
                std::mem::discriminant(x),
                "{at} is {r} in the agent's record, {x} in the README's"
            ),
        }
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README.md");
    let section = &readme[readme.find("\n## Evidence\n").expect("the README's Evidence section")..];
    let start = section.find("```json\n").expect("its example record") + "```json\n".len();
    let end = start + section[start..].find("```").expect("the example's end");
    let example: Value = serde_json::from_str(&section[start..end]).expect("the README's example is JSON");
    same_shape("record", real, &example, false);
    for key in ["type", "observer", "severity", "outcome"] {
        assert_eq!(real[key], example[key], "{key}");
    }
    assert_eq!(real["error"]["code"], example["error"]["code"]);
    let message = example["error"]["message"].as_str().expect("the example's message");
    assert_eq!(real["error"]["message"], message.replace("127.0.0.1:1 ", &format!("127.0.0.1:{port} ")));
}

#[test]
#[ignore = "needs root"]
fn an_application_that_cancels_its_connect_is_not_evidence() {
    let _turn = kernel_test("cancelled_connect");
    let pair = NetnsPair::new("cc", 11);
    // b silently drops SYNs: the connect would hang; the app gives up after 300 ms.
    pair.nft_input(&pair.b, "tcp dport 7001 drop");
    let agent = Agent::start(BASE);
    let dst: SocketAddr = format!("{}:7001", pair.b_addr).parse().unwrap();
    let h = pair.spawn_in(&pair.a.clone(), move || TcpStream::connect_timeout(&dst, Duration::from_millis(300)));
    let res = h.join().expect("connect thread");
    let err = res.expect_err("connect should have been given up");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "the app gave up, the kernel did not answer: {err}");
    // The positive control, in the same run and namespaces: a connect that b refuses (nothing
    // listens on 7011, which no rule drops) is evidence, so the silence for 7001 is the
    // observer judging, not an observer that saw nothing.
    let refused: SocketAddr = format!("{}:7011", pair.b_addr).parse().unwrap();
    let h = pair.spawn_in(&pair.a.clone(), move || TcpStream::connect_timeout(&refused, Duration::from_secs(5)));
    let err = h.join().expect("connect thread").expect_err("nothing listens on 7011");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    std::thread::sleep(Duration::from_millis(300));
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    assert_eq!(observer_state(&run.status, "network"), "running", "{}", run.status);
    assert_eq!(run.to_port(7001), Vec::<&Value>::new(), "a cancelled connect produced evidence");
    let control = run.to_port(7011);
    assert_eq!(control.len(), 1, "the refused connect is one event: {control:#?}");
    assert_eq!(
        (control[0]["type"].as_str(), control[0]["facts"]["dst_addr"].as_str()),
        (Some("kernel.network.connection_refused"), Some(pair.b_addr.as_str())),
        "{}",
        control[0]
    );
}

#[test]
#[ignore = "needs root"]
fn a_connect_whose_syns_are_dropped_times_out_once_and_is_not_a_retransmit_spike() {
    let _turn = kernel_test("connection_timeout");
    let pair = NetnsPair::new("to", 12);
    pair.nft_input(&pair.b, "tcp dport 7002 drop");
    // Two SYN retransmits against a spike threshold of two: were SYN retransmits counted as
    // a connection's retransmits, this connect would be a spike.
    pair.sysctl(&pair.a, "net.ipv4.tcp_syn_retries=2");
    let agent = Agent::start(&format!("{BASE}[network]\nretransmit_count = 2\nretransmit_window_ms = 60000\n"));
    let dst: SocketAddr = format!("{}:7002", pair.b_addr).parse().unwrap();
    let retrans_before = tcp_retrans_segs(&pair.a);
    let h = pair.spawn_in(&pair.a.clone(), move || TcpStream::connect(dst));
    let err = h.join().expect("connect thread").expect_err("SYNs are dropped");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    let syns_retransmitted = tcp_retrans_segs(&pair.a) - retrans_before;
    let run = agent.stop();
    let events = run.to_port(7002);
    assert_eq!(events.len(), 1, "one event for one failed connect: {events:#?}");
    let e = events[0];
    assert_eq!(e["type"], "kernel.network.connection_timeout");
    assert_eq!(e["outcome"], "timeout");
    assert!(syns_retransmitted >= 2, "at least the spike threshold: {syns_retransmitted}");
    assert_eq!(e["facts"]["syn_retries"], syns_retransmitted);
    // Other traffic on the machine may have spikes of its own; none is this connect's.
    let spikes: Vec<&Value> =
        run.of_type("kernel.network.retransmit_spike").filter(|e| e["facts"]["dst_addr"] == pair.b_addr).collect();
    assert_eq!(spikes, Vec::<&Value>::new(), "SYN retransmits are not a spike");
    assert_eq!(e["facts"]["errno"], 110);
    assert_eq!(e["facts"]["pid"], our_pid());
    assert_eq!(e["facts"]["src_addr"], pair.a_addr.as_str());
    let waited = e["facts"]["connect_duration_ns"].as_u64().expect("duration");
    assert!((2_500_000_000..10_000_000_000).contains(&waited), "seconds of SYN backoff, got {waited} ns");
}

#[test]
#[ignore = "needs root"]
fn an_icmp_unreachable_answer_is_unreachable_not_refused_or_timeout() {
    let _turn = kernel_test("connection_unreachable");
    let pair = NetnsPair::new("un", 13);
    pair.nft_input(&pair.b, "tcp dport 7003 reject with icmp type host-unreachable");
    let agent = Agent::start(BASE);
    let dst: SocketAddr = format!("{}:7003", pair.b_addr).parse().unwrap();
    // A blocking connect: with a non-blocking one, an ICMP error that arrives while the
    // connect still holds the socket lock is only a soft error, and reading SO_ERROR erases
    // it before close (a kernel blind spot the README documents).
    let h = pair.spawn_in(&pair.a.clone(), move || TcpStream::connect(dst));
    let err = h.join().expect("connect thread").expect_err("rejected");
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "{err}");
    let run = agent.stop();
    let events = run.to_port(7003);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "kernel.network.connection_unreachable");
    assert_eq!(events[0]["error"]["code"], "EHOSTUNREACH");
    assert_eq!(events[0]["facts"]["errno"], 113);
}

#[test]
#[ignore = "needs root"]
fn a_peer_reset_of_an_established_connection_is_one_reset_event() {
    let _turn = kernel_test("connection_reset");
    let agent = Agent::start(BASE);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read hello");
        // Linger 0: close() sends an RST instead of a FIN.
        linger_zero(&s);
        drop(s);
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let client_port = client.local_addr().expect("client address").port();
    client.write_all(b"hello").expect("write");
    server.join().expect("server");
    let mut buf = [0u8; 1];
    let err = client.read(&mut buf).expect_err("the peer reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let run = agent.stop();
    let events = run.to_port(port);
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = events[0];
    assert_eq!(e["type"], "kernel.network.connection_reset");
    assert_eq!(e["facts"]["tcp_state"], "ESTABLISHED");
    assert_eq!(e["facts"]["pid"], our_pid(), "owner recorded at connect time");
    assert_eq!(e["facts"]["bytes_acked"], 6, "SYN + 5 bytes acked");
    assert_eq!(e["facts"]["src_port"], client_port);
    assert_eq!(e["facts"]["src_addr"], "127.0.0.1");
}

/// This network namespace's ephemeral ports (`ip_local_port_range`).
fn local_port_range() -> std::ops::RangeInclusive<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("ip_local_port_range");
    let mut bounds = text.split_whitespace().map(|n| n.parse::<u64>().expect("a port number"));
    let low = bounds.next().expect("low bound");
    let high = bounds.next().expect("high bound");
    low..=high
}

#[test]
#[ignore = "needs root"]
fn lossy_bulk_transfer_gives_bounded_retransmit_spikes_per_window() {
    let _turn = kernel_test("retransmit_spike");
    let pair = NetnsPair::new("rt", 14);
    // Drop ~20 % of the data at the receiver's input: the sender must retransmit (a drop on
    // the sender's side would be a local drop, which TCP does not count as a retransmit).
    pair.nft_input(&pair.b, &format!("ip saddr {} tcp dport 7004 numgen random mod 100 < 20 drop", pair.a_addr));
    let agent = Agent::start(&format!("{BASE}[network]\nretransmit_count = 5\nretransmit_window_ms = 1000\n"));
    let bind: SocketAddr = format!("{}:7004", pair.b_addr).parse().unwrap();
    let listener = pair.listen_in_b(bind);
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
        sink.len()
    });
    let retrans_before = tcp_retrans_segs(&pair.a);
    let started = std::time::Instant::now();
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let mut c = TcpStream::connect(bind).expect("connect");
        let chunk = vec![0x5au8; 16 * 1024];
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            c.write_all(&chunk).expect("write");
        }
    });
    client.join().expect("client");
    let received = server.join().expect("server");
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let retransmitted = tcp_retrans_segs(&pair.a) - retrans_before;
    let run = agent.stop();
    assert!(received > 0);
    let spikes: Vec<&Value> =
        run.of_type("kernel.network.retransmit_spike").filter(|e| e["facts"]["dst_port"] == 7004).collect();
    assert!(!spikes.is_empty(), "{retransmitted} retransmits but no spike: {:#?}", run.to_port(7004));
    // One event per window at most: never more spikes than windows the transfer spanned.
    assert!(spikes.len() as u64 <= elapsed_ms / 1000 + 1, "{} spikes in {elapsed_ms} ms", spikes.len());
    for e in &spikes {
        let f = &e["facts"];
        // The window's count is the kernel's own (segments): never more than the socket's
        // total when it fired, nor than the namespace's RetransSegs.
        let in_window = f["retransmits_in_window"].as_u64().unwrap();
        assert!(in_window >= 5, "{f}");
        assert_eq!(f["window_ms"], 1000);
        assert!(in_window <= f["total_retransmits"].as_u64().unwrap(), "{f}");
        assert!(f["total_retransmits"].as_u64().unwrap() <= retransmitted);
        assert_eq!(f["pid"], our_pid());
        assert_eq!(e["outcome"], "degraded");
    }
    // The lossy connection is not misreported as failed connects or resets. (Its bulk
    // queueing may also raise the endpoint's srtt past its baseline: that is a real
    // rtt_degradation, not a misreport.)
    let to_port = run.to_port(7004);
    assert!(
        to_port
            .iter()
            .all(|e| e["type"] == "kernel.network.retransmit_spike" || e["type"] == "kernel.network.rtt_degradation"),
        "{to_port:#?}"
    );
}

#[test]
#[ignore = "needs root"]
fn queueing_delay_after_a_learned_baseline_is_one_rtt_degradation() {
    let _turn = kernel_test("rtt_degradation");
    let pair = NetnsPair::new("rtt", 15);
    let agent = Agent::start(&format!("{BASE}[network]\nrtt_min_samples = 50\nrtt_ratio_percent = 300\nrtt_ceiling_us = 0\nrtt_min_increase_us = 1000\n"));
    let bind: SocketAddr = format!("{}:7005", pair.b_addr).parse().unwrap();
    let listener = pair.listen_in_b(bind);
    // An echo server: every byte the client sends comes back.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let a_dev = pair.a_dev.clone();
    let a_ns = pair.a.clone();
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let mut c = TcpStream::connect(bind).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        let mut byte = [0u8; 1];
        // Learn the baseline: small ping-pongs on an idle veth (tens of microseconds).
        for _ in 0..300 {
            c.write_all(b"p").expect("ping");
            c.read_exact(&mut byte).expect("pong");
        }
        // Then throttle a's egress: the bulk data queues, and RTT grows by the queue delay.
        support::run(&[
            "ip", "netns", "exec", &a_ns, "tc", "qdisc", "add", "dev", &a_dev, "root", "tbf", "rate", "2mbit", "burst",
            "8kb", "latency", "400ms",
        ]);
        let chunk = vec![0u8; 32 * 1024];
        let mut reader = c.try_clone().expect("clone");
        let drain = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            while total < 8 * 32 * 1024 {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        });
        for _ in 0..8 {
            c.write_all(&chunk).expect("bulk");
        }
        drain.join().expect("drain");
    });
    client.join().expect("client");
    drop(pair);
    server.join().expect("server");
    let run = agent.stop();
    let degraded: Vec<&Value> =
        run.of_type("kernel.network.rtt_degradation").filter(|e| e["facts"]["dst_port"] == 7005).collect();
    assert_eq!(degraded.len(), 1, "one crossing, one event: {degraded:#?}");
    eprintln!("rtt_degradation: {}", degraded[0]["facts"]);
    let f = &degraded[0]["facts"];
    let (baseline, srtt) = (f["baseline_us"].as_u64().unwrap(), f["srtt_us"].as_u64().unwrap());
    assert!(baseline > 0 && baseline < 5_000, "baseline learned on an idle veth: {baseline} us");
    assert!(srtt * 100 > baseline * 300, "srtt {srtt} us must exceed 3x the baseline {baseline} us");
    assert!(f["baseline_samples"].as_u64().unwrap() >= 50);
    assert_eq!(f["dst_addr"], "10.99.15.2");
    assert_eq!(f["pid"], our_pid());
}

#[test]
#[ignore = "needs root"]
fn socket_bookkeeping_does_not_depend_on_a_readable_config() {
    let _turn = kernel_test("bookkeeping_without_config");
    let pair = NetnsPair::new("i14nbk", 16);
    // b drops SYNs to 7010: a connect there stays in SYN_SENT until the app gives up.
    pair.nft_input(&pair.b, "tcp dport 7010 drop");
    let agent = Agent::start(BASE);
    let maps = NetworkMaps::of_agent(agent.pid());
    let established: SocketAddr = format!("{}:7011", pair.b_addr).parse().unwrap();
    let listener = pair.listen_in_b(established);

    // An established connection, made while the config was readable: its owner is recorded.
    let (client, client_tid) = pair
        .spawn_in(&pair.a.clone(), move || (TcpStream::connect(established).expect("connect"), u64::from(gettid())))
        .join()
        .expect("connect thread");
    let (server, _) = listener.accept().expect("accept");
    assert_eq!(maps.entries_of_thread("owners", client_tid).len(), 1, "owner recorded at connect");

    // A connect that is in SYN_SENT while the config was readable: its start is recorded.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let dropped: SocketAddr = format!("{}:7010", pair.b_addr).parse().unwrap();
    let pending = pair.spawn_in(&pair.a.clone(), move || {
        tid_tx.send(u64::from(gettid())).expect("send tid");
        // Long enough for a few reads of the slot table (a dump of 16,384 slots and its
        // parsing take about a second in a test build, more on a loaded machine).
        TcpStream::connect_timeout(&dropped, Duration::from_secs(12))
    });
    let pending_tid = tid_rx.recv().expect("tid");
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut starts = maps.connect_starts_of_thread(pending_tid);
    while starts.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the connect start was never recorded");
        std::thread::sleep(Duration::from_millis(20));
        starts = maps.connect_starts_of_thread(pending_tid);
    }
    assert_eq!(starts.len(), 1, "one connect start recorded: {starts:?}");
    // In the table this kernel calls for: slots where BPF has compare-and-swap (5.12 on).
    let slots = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 12, 0));
    assert_eq!(maps.uses("connect_slots"), slots, "the slot table on a kernel with slots={slots}");
    assert_eq!(maps.uses("connects"), !slots, "the hash on a kernel with slots={slots}");

    // Now the config cannot be read; both sockets end meanwhile.
    let saved = maps.blank_config();
    assert!(!pending.is_finished(), "the connect ended before the config went: the test tests nothing");
    assert!(pending.join().expect("connect thread").is_err(), "the connect was given up");
    linger_zero(&client);
    drop(client);
    drop(server);
    // A connect refused while no config can be read: recorded, marked and forgotten all the
    // same (no evidence is judged without a config).
    let port = closed_port();
    let refused_tid = std::thread::spawn(move || {
        let err = TcpStream::connect(("127.0.0.1", port)).expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        u64::from(gettid())
    })
    .join()
    .expect("refused connect thread");
    std::thread::sleep(Duration::from_millis(200));
    let leaked_refused = maps.connect_starts_of_thread(refused_tid);
    let leaked_connects = maps.connect_starts_of_thread(pending_tid);
    let stale_owners = maps.entries_of_thread("owners", client_tid);
    maps.restore_config(&saved);
    let run = agent.stop();
    assert!(run.exit_ok, "agent exit: {}", run.stderr);
    assert_eq!(leaked_connects, Vec::<Value>::new(), "a connect's entry outlived its socket");
    assert_eq!(stale_owners, Vec::<Value>::new(), "a closed socket still has an owner");
    assert_eq!(leaked_refused, Vec::<Value>::new(), "a refused connect's entry outlived its socket");
    assert_eq!(run.to_port(port), Vec::<&Value>::new(), "judged without a config");
}

#[test]
#[ignore = "needs root"]
fn the_kernels_own_abort_on_data_is_not_a_peer_reset_but_the_rst_it_sends_is() {
    let _turn = kernel_test("abort_on_data");
    let pair = NetnsPair::new("i14nab", 17);
    let agent = Agent::start(BASE);
    let bind: SocketAddr = format!("{}:7012", pair.b_addr).parse().unwrap();
    let listener = pair.listen_in_b(bind);
    let (aborts_before, rsts_before) =
        (ns_counter(&pair.b, "/proc/net/netstat", "TcpExt", "TCPAbortOnData"), tcp_out_rsts(&pair.b));
    let (client_port_tx, client_port_rx) = std::sync::mpsc::channel();
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let mut c = TcpStream::connect(bind).expect("connect");
        client_port_tx.send(c.local_addr().expect("local addr").port()).expect("send port");
        // The server shuts down both directions: its FIN arrives, the client reads EOF.
        let mut buf = [0u8; 16];
        assert_eq!(c.read(&mut buf).expect("read EOF"), 0);
        // Data to a server that shut down reading: its kernel aborts and answers RST.
        c.write_all(b"late").expect("write");
        std::thread::sleep(Duration::from_millis(200));
        let err = c.write_all(b"again").expect_err("the server reset the connection");
        err.kind()
    });
    let (server, _) = listener.accept().expect("accept");
    server.shutdown(std::net::Shutdown::Both).expect("shutdown");
    let client_port = client_port_rx.recv().expect("client port");
    let kind = client.join().expect("client thread");
    assert!(
        matches!(kind, std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
        "client saw {kind:?}"
    );
    let aborts = ns_counter(&pair.b, "/proc/net/netstat", "TcpExt", "TCPAbortOnData") - aborts_before;
    let rsts = tcp_out_rsts(&pair.b) - rsts_before;
    drop(server);
    let run = agent.stop();
    assert_eq!((aborts, rsts), (1, 1), "the server's kernel aborted once and sent one RST");
    // The client's socket received that RST from the network: a peer reset, in CLOSE_WAIT.
    let to_server = run.to_port(7012);
    assert_eq!(to_server.len(), 1, "{to_server:#?}");
    assert_eq!(to_server[0]["type"], "kernel.network.connection_reset");
    assert_eq!(to_server[0]["facts"]["tcp_state"], "CLOSE_WAIT");
    assert_eq!(to_server[0]["facts"]["pid"], our_pid());
    // The server's socket reset itself: nobody reset it.
    assert_eq!(run.to_port(client_port), Vec::<&Value>::new(), "the server's own abort reported as a peer reset");
    assert_eq!(
        run.counters["correlation_drops"]["network.reset_after_local_shutdown"], 1,
        "the server's abort is counted by name: {}",
        run.counters
    );
}

#[test]
#[ignore = "needs root"]
fn a_clients_own_abort_on_data_is_not_a_peer_reset_but_the_server_sees_one() {
    let _turn = kernel_test("abort_on_data_client");
    let pair = NetnsPair::new("i14nac", 24);
    let agent = Agent::start(BASE);
    let bind: SocketAddr = format!("{}:7013", pair.b_addr).parse().unwrap();
    let listener = pair.listen_in_b(bind);
    let aborts_before = ns_counter(&pair.a, "/proc/net/netstat", "TcpExt", "TCPAbortOnData");
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let c = TcpStream::connect(bind).expect("connect");
        // The client shuts down both directions, then the server still sends data.
        c.shutdown(std::net::Shutdown::Both).expect("shutdown");
        (c.local_addr().expect("local addr").port(), c)
    });
    let (mut server, _) = listener.accept().expect("accept");
    let (client_port, client_socket) = client.join().expect("client thread");
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
    server.write_all(b"late").expect("write");
    std::thread::sleep(Duration::from_millis(200));
    let err = server.write_all(b"again").expect_err("the client's kernel reset the connection");
    assert!(matches!(err.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe), "{err}");
    let aborts = ns_counter(&pair.a, "/proc/net/netstat", "TcpExt", "TCPAbortOnData") - aborts_before;
    drop(client_socket);
    let run = agent.stop();
    assert_eq!(aborts, 1, "the client's kernel aborted once");
    // The server's socket received the RST from the network: a peer reset, in CLOSE_WAIT.
    let to_client = run.to_port(client_port);
    assert_eq!(to_client.len(), 1, "{to_client:#?}");
    assert_eq!(to_client[0]["type"], "kernel.network.connection_reset");
    assert_eq!(to_client[0]["facts"]["tcp_state"], "CLOSE_WAIT");
    // The client's socket reset itself.
    assert_eq!(run.to_port(7013), Vec::<&Value>::new(), "the client's own abort reported as a peer reset");
    assert_eq!(run.counters["correlation_drops"]["network.reset_after_local_shutdown"], 1, "{}", run.counters);
}

fn tcp_out_rsts(ns: &str) -> u64 {
    ns_counter(ns, "/proc/net/snmp", "Tcp", "OutRsts")
}

/// An echo server on `listener` for `connections` connections: every byte comes back.
fn echo_server(listener: TcpListener, connections: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut served = Vec::new();
        for _ in 0..connections {
            let Ok((mut s, _)) = listener.accept() else { break };
            served.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
        for h in served {
            let _ = h.join();
        }
    })
}

/// `rounds` one-byte request/response exchanges, with `think` between them.
fn ping_pong(c: &mut TcpStream, rounds: usize, think: Duration) {
    let mut byte = [0u8; 1];
    for _ in 0..rounds {
        c.write_all(b"p").expect("ping");
        c.read_exact(&mut byte).expect("pong");
        if !think.is_zero() {
            std::thread::sleep(think);
        }
    }
}

/// Sends `chunks` of 32 KiB on `c` while reading the echo back: a bulk transfer that fills
/// whatever queue shapes it.
fn bulk_echo(c: &mut TcpStream, chunks: usize) {
    let mut reader = c.try_clone().expect("clone");
    let total = chunks * 32 * 1024;
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < total {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    });
    let chunk = vec![0u8; 32 * 1024];
    for _ in 0..chunks {
        c.write_all(&chunk).expect("bulk");
    }
    drain.join().expect("drain");
}

fn listen_in(pair: &NetnsPair, port: u16) -> (SocketAddr, TcpListener) {
    let bind: SocketAddr = format!("{}:{port}", pair.b_addr).parse().unwrap();
    (bind, pair.listen_in_b(bind))
}

/// Throttles `ns`'s `dev` egress with a token bucket: bulk data queues, RTT grows by the
/// queueing delay (a real path delay; this kernel has no netem).
fn tbf(ns: &str, dev: &str) {
    support::run(&[
        "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "2mbit", "burst", "8kb",
        "latency", "400ms",
    ]);
}

/// RTT events about the scenario's namespaces (10.99.`subnet`.0/24): the agent also sees
/// whatever else runs on the machine.
fn rtt_events(run: &support::Finished, subnet: u8) -> Vec<&Value> {
    let prefix = format!("10.99.{subnet}.");
    run.of_type("kernel.network.rtt_degradation")
        .filter(|e| e["facts"]["dst_addr"].as_str().is_some_and(|a| a.starts_with(&prefix)))
        .collect()
}

/// The slow paths these tests make raise srtt by hundreds of milliseconds; the 10 ms floor
/// keeps a loaded machine's stall of an echo thread (srtt moves an eighth of the way to
/// each sample) from being a crossing of its own.
const RTT_CONFIG: &str =
    "[network]\nrtt_min_samples = 50\nrtt_ratio_percent = 300\nrtt_ceiling_us = 0\nrtt_min_increase_us = 10000\n";

#[test]
#[ignore = "needs root"]
fn a_slow_and_a_fast_connection_to_one_endpoint_are_one_crossing_not_a_storm() {
    let _turn = kernel_test("rtt_two_connections");
    let pair = NetnsPair::new("i14nhb", 18);
    // a's egress: HTB with a fast default class and a 1 mbit class; a socket picks the slow
    // class with SO_PRIORITY 1:20 (HTB classifies by priority, no filter module needed).
    let (a, dev) = (pair.a.clone(), pair.a_dev.clone());
    for cmd in [
        vec!["qdisc", "add", "dev", &dev, "root", "handle", "1:", "htb", "default", "10"],
        vec!["class", "add", "dev", &dev, "parent", "1:", "classid", "1:10", "htb", "rate", "1gbit"],
        vec!["class", "add", "dev", &dev, "parent", "1:", "classid", "1:20", "htb", "rate", "1mbit"],
    ] {
        let mut full = vec!["ip", "netns", "exec", &a, "tc"];
        full.extend(cmd);
        support::run(&full);
    }
    let agent = Agent::start(&format!("{BASE}{RTT_CONFIG}"));
    let (bind, listener) = listen_in(&pair, 7020);
    let server = echo_server(listener, 2);
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let mut fast = TcpStream::connect(bind).expect("connect fast");
        fast.set_nodelay(true).expect("nodelay");
        ping_pong(&mut fast, 300, Duration::ZERO);
        let mut slow = TcpStream::connect(bind).expect("connect slow");
        let class: libc::c_int = 0x10020;
        set_socket_option(&slow, libc::SO_PRIORITY, class, "SO_PRIORITY");
        let bulk = std::thread::spawn(move || bulk_echo(&mut slow, 12));
        // The fast connection keeps exchanging while the slow one is queued for seconds.
        let until = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < until {
            ping_pong(&mut fast, 20, Duration::from_millis(1));
        }
        bulk.join().expect("bulk");
    });
    client.join().expect("client");
    drop(pair);
    server.join().expect("server");
    let run = agent.stop();
    let events = rtt_events(&run, 18);
    assert_eq!(events.len(), 1, "one endpoint went slow once: {events:#?}");
    let f = &events[0]["facts"];
    assert_eq!((f["dst_addr"].as_str(), f["dst_port"].as_u64()), (Some("10.99.18.2"), Some(7020)));
    assert!(f["baseline_us"].as_u64().unwrap() < 5_000, "{f}");
}

#[test]
#[ignore = "needs root"]
fn delayed_acks_of_a_request_response_client_are_not_rtt_degradation_but_a_path_delay_is() {
    let _turn = kernel_test("rtt_delayed_ack");
    delayed_acks_are_not_judged_but_a_path_delay_is("i14nda", 19, 7021);
}

/// The same with the service listening inside the ephemeral range (gRPC's 50051 under the
/// default 32768–60999), where both of the server-side socket's ports look ephemeral: it
/// is still not judged, and the client side, which made its own connect, still is.
#[test]
#[ignore = "needs root"]
fn a_service_port_in_the_ephemeral_range_still_keeps_server_sockets_unjudged() {
    let _turn = kernel_test("rtt_delayed_ack_ephemeral_service");
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let bounds: Vec<u16> = range.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!((bounds[0]..=bounds[1]).contains(&50051), "50051 is not ephemeral here ({range}): the test tests nothing");
    delayed_acks_are_not_judged_but_a_path_delay_is("i16eph", 32, 50051);
}

/// The same with the client connecting from a port outside this node's ephemeral range, as
/// a client behind NAT or on another OS does (Windows and macOS take 49152–65535): neither
/// of the server-side socket's ports looks ephemeral, and it is still not judged.
#[test]
#[ignore = "needs root"]
fn a_client_port_outside_the_ephemeral_range_still_keeps_server_sockets_unjudged() {
    let _turn = kernel_test("rtt_delayed_ack_foreign_client_port");
    let range = local_port_range();
    let client_port: u16 = if *range.end() < 62_000 { 62_000 } else { 20_000 };
    assert!(!range.contains(&u64::from(client_port)) && !range.contains(&7027), "{range:?}: the test tests nothing");
    delayed_acks_are_not_judged_but_a_path_delay_is_from("i16fcp", 36, 7027, Some(client_port));
}

/// A client pausing between requests (its delayed ACKs raise the server socket's srtt),
/// then a real path delay: one rtt_degradation, the client's, and none for the server.
fn delayed_acks_are_not_judged_but_a_path_delay_is(tag: &str, subnet: u8, port: u16) {
    delayed_acks_are_not_judged_but_a_path_delay_is_from(tag, subnet, port, None);
}

/// A TCP connection to `remote` from `local_ip`:`local_port` (bound before the connect).
fn connect_from(local_ip: &str, local_port: u16, remote: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(remote) = remote else { panic!("an IPv4 test: {remote}") };
    let local: std::net::Ipv4Addr = local_ip.parse().expect("local address");
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, owned by the TcpStream made of it; bind and connect get
    // sockaddr_in values of their own size.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let from = sockaddr(local, local_port);
        let rc = libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind {local_ip}:{local_port}: {}", std::io::Error::last_os_error());
        let to = sockaddr(*remote.ip(), remote.port());
        let rc = libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "connect {remote}: {}", std::io::Error::last_os_error());
        stream
    }
}

/// As above, the client connecting from `client_port` if given (else an ephemeral port).
fn delayed_acks_are_not_judged_but_a_path_delay_is_from(tag: &str, subnet: u8, port: u16, client_port: Option<u16>) {
    let pair = NetnsPair::new(tag, subnet);
    let agent = Agent::start(&format!("{BASE}{RTT_CONFIG}"));
    let (bind, listener) = listen_in(&pair, port);
    let server = echo_server(listener, 1);
    let (a_ns, a_dev) = (pair.a.clone(), pair.a_dev.clone());
    let a_addr = pair.a_addr.clone();
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let mut c = match client_port {
            Some(p) => connect_from(&a_addr, p, bind),
            None => TcpStream::connect(bind).expect("connect"),
        };
        if let Some(p) = client_port {
            assert_eq!(c.local_addr().expect("local address").port(), p);
        }
        c.set_nodelay(true).expect("nodelay");
        ping_pong(&mut c, 300, Duration::ZERO);
        // A client that pauses between requests acknowledges each response late (its delayed
        // ACK timer, or the next request): the server's srtt grows by tens of milliseconds.
        ping_pong(&mut c, 25, Duration::from_millis(60));
        // Then a real path delay: a's egress throttled under bulk data.
        tbf(&a_ns, &a_dev);
        bulk_echo(&mut c, 8);
    });
    client.join().expect("client");
    drop(pair);
    server.join().expect("server");
    let run = agent.stop();
    let events = rtt_events(&run, subnet);
    let client_addr = format!("10.99.{subnet}.1");
    assert!(
        events.iter().all(|e| e["facts"]["dst_addr"] != client_addr.as_str()),
        "a server-side socket's delayed ACKs reported as RTT degradation: {events:#?}"
    );
    assert_eq!(events.len(), 1, "the path delay is one crossing: {events:#?}");
    let f = &events[0]["facts"];
    let server_addr = format!("10.99.{subnet}.2");
    assert_eq!((f["dst_addr"].as_str(), f["dst_port"].as_u64()), (Some(server_addr.as_str()), Some(u64::from(port))));
    assert!(f["srtt_us"].as_u64().unwrap() > f["baseline_us"].as_u64().unwrap() * 3, "{f}");
    assert_eq!(f["pid"], our_pid());
}

#[test]
#[ignore = "needs root"]
fn the_ceiling_alone_judges_once_per_degraded_period() {
    let _turn = kernel_test("rtt_ceiling");
    let pair = NetnsPair::new("i14nce", 20);
    // The ratio is out of reach: only the 20 ms ceiling can judge.
    let agent = Agent::start(&format!(
        "{BASE}[network]\nrtt_min_samples = 50\nrtt_ratio_percent = 100000\nrtt_ceiling_us = 20000\nrtt_min_increase_us = 1000000\n"
    ));
    let (bind, listener) = listen_in(&pair, 7022);
    let server = echo_server(listener, 1);
    let (a_ns, a_dev) = (pair.a.clone(), pair.a_dev.clone());
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let mut c = TcpStream::connect(bind).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        ping_pong(&mut c, 200, Duration::ZERO);
        tbf(&a_ns, &a_dev);
        // Two bursts 300 ms apart: the srtt falls between them but the path is still the
        // slow one; one degraded period.
        bulk_echo(&mut c, 6);
        std::thread::sleep(Duration::from_millis(300));
        ping_pong(&mut c, 20, Duration::ZERO);
        bulk_echo(&mut c, 6);
    });
    client.join().expect("client");
    drop(pair);
    server.join().expect("server");
    let run = agent.stop();
    let events = rtt_events(&run, 20);
    assert_eq!(events.len(), 1, "{events:#?}");
    let f = &events[0]["facts"];
    assert_eq!(f["dst_port"], 7022);
    assert!(f["srtt_us"].as_u64().unwrap() > 20_000, "over the ceiling: {f}");
    assert!(f["baseline_us"].as_u64().unwrap() < 5_000, "{f}");
}

#[test]
#[ignore = "needs root"]
fn an_srtt_hovering_at_the_threshold_is_one_crossing() {
    let _turn = kernel_test("rtt_hovering");
    const LEARN: usize = 200;
    const BLOCK: usize = 8;
    const CYCLES: usize = 10;
    let pair = NetnsPair::new("i14nhv", 23);
    // Only the 10 ms ceiling judges (the ratio is out of reach).
    let agent = Agent::start(&format!(
        "{BASE}[network]\nrtt_min_samples = 50\nrtt_ratio_percent = 100000\nrtt_ceiling_us = 10000\nrtt_min_increase_us = 1000000\n"
    ));
    let (bind, listener) = listen_in(&pair, 7026);
    // The server answers after a delay it chooses per request; the answer carries the ACK
    // (a delay under the 40 ms delayed-ACK timer), so each client RTT sample is that delay.
    // Blocks of 12 ms and 8 ms answers swing the client's srtt between about 10.6 and
    // 8.9 ms: across the ceiling every block, never near its re-arm level.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut byte = [0u8; 1];
        for i in 0..LEARN + 2 * BLOCK * CYCLES {
            s.read_exact(&mut byte).expect("request");
            if i >= LEARN {
                let slow = ((i - LEARN) / BLOCK).is_multiple_of(2);
                std::thread::sleep(Duration::from_millis(if slow { 12 } else { 8 }));
            }
            s.write_all(&byte).expect("answer");
        }
    });
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let mut c = TcpStream::connect(bind).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        ping_pong(&mut c, LEARN + 2 * BLOCK * CYCLES, Duration::ZERO);
    });
    client.join().expect("client");
    server.join().expect("server");
    drop(pair);
    let run = agent.stop();
    let events = rtt_events(&run, 23);
    assert_eq!(events.len(), 1, "one hovering srtt, one crossing: {events:#?}");
    let f = &events[0]["facts"];
    assert_eq!(f["dst_port"], 7026);
    assert!(f["srtt_us"].as_u64().unwrap() > 10_000, "{f}");
}

#[test]
#[ignore = "needs root"]
fn two_ports_of_one_server_are_two_baselines() {
    let _turn = kernel_test("rtt_endpoint_keys");
    let pair = NetnsPair::new("i14nek", 21);
    let agent = Agent::start(&format!("{BASE}{RTT_CONFIG}"));
    let maps = NetworkMaps::of_agent(agent.pid());
    let (bind_a, listener_a) = listen_in(&pair, 7023);
    let (bind_b, listener_b) = listen_in(&pair, 7024);
    let (server_a, server_b) = (echo_server(listener_a, 1), echo_server(listener_b, 1));
    let (a_ns, a_dev) = (pair.a.clone(), pair.a_dev.clone());
    let client = pair.spawn_in(&pair.a.clone(), move || {
        let mut one = TcpStream::connect(bind_a).expect("connect 7023");
        let mut two = TcpStream::connect(bind_b).expect("connect 7024");
        for c in [&mut one, &mut two] {
            c.set_nodelay(true).expect("nodelay");
            ping_pong(c, 200, Duration::ZERO);
        }
        (one, two, a_ns, a_dev)
    });
    let (one, mut two, a_ns, a_dev) = client.join().expect("client");
    let baselines: Vec<Value> = maps.dump("rtt_baselines").into_iter().map(|e| e["formatted"].clone()).collect();
    let ours: Vec<&Value> = baselines
        .iter()
        .filter(|e| e["key"]["addr"][0] == 10 && e["key"]["addr"][1] == 99 && e["key"]["addr"][2] == 21)
        .collect();
    let mut ports: Vec<u64> = ours.iter().map(|e| e["key"]["port"].as_u64().expect("port")).collect();
    ports.sort_unstable();
    // One baseline per service endpoint; the server's own sockets (towards the client's
    // ephemeral ports) are not judged and learn nothing.
    assert_eq!(ports, vec![7023, 7024], "{ours:#?}");
    assert!(ours.iter().all(|e| e["key"]["addr"][3] == 2), "{ours:#?}");
    assert!(ours.iter().all(|e| e["value"]["samples"].as_u64().unwrap() >= 50), "{ours:#?}");
    // Only the second endpoint gets slow: its event, judged on its own baseline.
    pair.spawn_in(&pair.a.clone(), move || {
        tbf(&a_ns, &a_dev);
        bulk_echo(&mut two, 8);
    })
    .join()
    .expect("bulk");
    drop(one);
    drop(pair);
    server_a.join().expect("server 7023");
    server_b.join().expect("server 7024");
    let run = agent.stop();
    let events = rtt_events(&run, 21);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["facts"]["dst_port"], 7024);
}

#[test]
#[ignore = "needs root"]
fn a_retransmit_spike_counts_what_the_kernel_counts() {
    let _turn = kernel_test("retransmit_spike_count");
    let pair = NetnsPair::new("i14nrc", 22);
    // Data segments (not the SYN) lost at the receiver; one window spans the whole transfer,
    // so the spike's count must be the socket's own retransmit count when it fired.
    pair.nft_input(
        &pair.b,
        &format!("ip saddr {} tcp dport 7025 tcp flags != syn numgen random mod 100 < 20 drop", pair.a_addr),
    );
    let agent = Agent::start(&format!("{BASE}[network]\nretransmit_count = 20\nretransmit_window_ms = 600000\n"));
    let (bind, listener) = listen_in(&pair, 7025);
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let retrans_before = tcp_retrans_segs(&pair.a);
    pair.spawn_in(&pair.a.clone(), move || {
        let mut c = TcpStream::connect(bind).expect("connect");
        let chunk = vec![0x5au8; 16 * 1024];
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            c.write_all(&chunk).expect("write");
        }
    })
    .join()
    .expect("client");
    server.join().expect("server");
    let retransmitted = tcp_retrans_segs(&pair.a) - retrans_before;
    let run = agent.stop();
    let spikes: Vec<&Value> =
        run.of_type("kernel.network.retransmit_spike").filter(|e| e["facts"]["dst_addr"] == "10.99.22.2").collect();
    assert!(retransmitted >= 20, "the loss must be enough for a spike: {retransmitted} retransmits");
    assert_eq!(spikes.len(), 1, "one window, one spike: {spikes:#?}");
    let f = &spikes[0]["facts"];
    assert_eq!(f["dst_port"], 7025);
    assert_eq!(
        f["retransmits_in_window"], f["total_retransmits"],
        "the spike's count against the kernel's own count of the socket's retransmits: {f}"
    );
    assert!(f["retransmits_in_window"].as_u64().unwrap() >= 20, "{f}");
}

#[test]
#[ignore = "needs root"]
fn a_flood_of_refused_connects_is_fully_accounted_for() {
    let _turn = kernel_test("refused_flood");
    const PER_THREAD: usize = 5000;
    const THREADS: usize = 4;
    // Only the network observer runs, so every loss counted below is a network loss.
    let agent = Agent::start(&format!(
        "{BASE}[container]\nenabled = false\n[storage]\nenabled = false\n[node]\nenabled = false\n[dns]\nenabled = false\n[container_pressure]\nenabled = false\n"
    ));
    let maps = NetworkMaps::of_agent(agent.pid());
    let port = closed_port();
    let started = std::time::Instant::now();
    let senders: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut refused = 0;
                for _ in 0..PER_THREAD {
                    if TcpStream::connect(("127.0.0.1", port)).is_err() {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let made: usize = senders.into_iter().map(|h| h.join().expect("sender")).sum();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(made, PER_THREAD * THREADS, "every connect must be refused");
    // Every start taken, whichever CPUs the four threads raced on, was given back.
    let left: Vec<Value> = maps.connect_starts().into_iter().filter(|v| v["task"]["pid"] == our_pid()).collect();
    let run = agent.stop();
    assert_eq!(left, Vec::<Value>::new(), "connect starts outlived their refused sockets");
    let observers = run.status["observers"].as_array().expect("observers in the start-up status");
    let running: Vec<&Value> = observers.iter().filter(|o| o["state"] == "running").map(|o| &o["name"]).collect();
    assert_eq!(running, ["network"], "only the network observer may run: {}", run.status);
    let kernel_counters = run.counters["kernel"].as_object().expect("kernel counters");
    assert!(
        !kernel_counters.is_empty() && kernel_counters.keys().all(|k| k.starts_with("network.")),
        "only the network observer may run: {kernel_counters:?}"
    );
    let received = run.to_port(port).len() as u64;
    assert!(run.to_port(port).iter().all(|e| e["type"] == "kernel.network.connection_refused"));
    // Each start was found again by its own socket: every event names this process.
    let unattributed = run.to_port(port).iter().filter(|e| e["facts"]["pid"] != our_pid()).count();
    assert_eq!(unattributed, 0, "refused connects without their connecting process");
    let losses = run.counter(&["lost_events_total"])
        + run.counter(&["malformed_events_total"])
        + run.counter(&["correlation_drops_total"])
        + run.counter(&["sink_drops_total"]);
    eprintln!("flood: {made} refused connects in {secs:.2} s, {received} events, {losses} counted losses");
    // The records lap each CPU's ring several times, so some cross its end: the reader must
    // hand every one over whole. A record it could not read would be counted, and must not be.
    assert_eq!(run.counter(&["malformed_events_total"]), 0, "records the agent could not read: {}", run.counters);
    assert!(received > 0);
    let made = made as u64;
    // Connects of other tests running at the same time can only add losses, never events
    // for this port: with no loss the count is exact, and no connect is ever unaccounted.
    assert!(received <= made, "{received} events for {made} connects");
    if losses == 0 {
        assert_eq!(received, made, "no loss counted, so every connect must be an event");
    } else {
        assert!(received + losses >= made, "{received} events + {losses} losses < {made} connects: unaccounted loss");
    }
}
