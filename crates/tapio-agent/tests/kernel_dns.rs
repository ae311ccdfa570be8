//! DNS evidence on the real kernel, with real servers (dnsmasq, unbound) and real clients
//! (dig, glibc through getent) in network namespaces: the server namespace answers NOERROR,
//! NXDOMAIN, REFUSED (dnsmasq), SERVFAIL (unbound forwarding to an upstream it may not
//! use: a loopback address, which unbound refuses to query by default), slowly
//! (a small responder that waits before answering) or not at all (nftables drops); the
//! client runs in the other namespace, so every query crosses namespaces.

#[path = "support/block.rs"]
mod block;
mod support;

use serde_json::Value;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::netns::NetnsPair;
use support::{kernel_test, run, Agent, Finished};

/// Only the DNS observer: the others' evidence is not what these tests are about.
const ONLY_DNS: &str = "[sinks]\nstdout = true\n[network]\nenabled = false\n[container]\nenabled = false\n\
                        [storage]\nenabled = false\n[node]\nenabled = false\n";

/// Every name these tests ask for ends in this (not `.test`: unbound answers that one itself).
const DOMAIN: &str = "i10dns.lab";

/// The laboratory: servers in namespace `a`, clients in namespace `b` (10.99.<subnet>.0/24,
/// fd99:10:<subnet>::/64). Addresses in `a`: .1 dnsmasq, .3 unbound, .4 black-holed,
/// .5 the slow responder.
struct Lab {
    net: NetnsPair,
    subnet: u8,
    servers: Vec<Child>,
    slow_stop: Arc<AtomicBool>,
    slow: Option<std::thread::JoinHandle<()>>,
    unbound_conf: std::path::PathBuf,
}

/// How long the slow responder holds each answer.
const SLOW_MS: u64 = 700;

impl Lab {
    fn new(tag: &str, subnet: u8) -> Lab {
        let net = NetnsPair::new(tag, subnet);
        for host in [3, 4, 5] {
            run(&["ip", "-n", &net.a, "addr", "add", &format!("10.99.{subnet}.{host}/24"), "dev", &net.a_dev]);
        }
        run(&["ip", "-n", &net.a, "addr", "add", &format!("fd99:10:{subnet}::1/64"), "dev", &net.a_dev, "nodad"]);
        run(&["ip", "-n", &net.b, "addr", "add", &format!("fd99:10:{subnet}::2/64"), "dev", &net.b_dev, "nodad"]);
        // The black hole: the server namespace drops every DNS packet to .4.
        net.nft_input(&net.a, &format!("ip daddr 10.99.{subnet}.4 meta l4proto {{ udp, tcp }} th dport 53 drop"));
        let mut servers = Vec::new();
        servers.push(
            Command::new("ip")
                .args(["netns", "exec", &net.a, "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
                .args(["--bind-interfaces", "--pid-file=", "--user=root"])
                .arg(format!("--listen-address=10.99.{subnet}.1,fd99:10:{subnet}::1"))
                .arg(format!("--local=/{DOMAIN}/"))
                .arg(format!("--address=/ok.{DOMAIN}/10.1.2.3"))
                .arg(format!("--address=/host.b.{DOMAIN}/10.1.2.4"))
                .arg(format!("--address=/host.b.{DOMAIN}/fd99::4"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq (scripts/setup installs it)"),
        );
        let unbound_conf =
            std::env::temp_dir().join(format!("tapio-i10dns-unbound-{}-{subnet}.conf", std::process::id()));
        std::fs::write(
            &unbound_conf,
            format!(
                "server:\n  interface: 10.99.{subnet}.3\n  port: 53\n  do-daemonize: no\n  use-syslog: no\n  \
                 logfile: \"\"\n  chroot: \"\"\n  username: \"\"\n  pidfile: \"\"\n  directory: \"/tmp\"\n  \
                 access-control: 0.0.0.0/0 allow\n  do-ip6: no\n  module-config: \"iterator\"\n\
                 forward-zone:\n  name: \"fail.{DOMAIN}.\"\n  forward-addr: 127.0.0.1@5399\n"
            ),
        )
        .expect("write unbound config");
        servers.push(
            Command::new("ip")
                .args(["netns", "exec", &net.a, "unbound", "-d", "-c"])
                .arg(&unbound_conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn unbound (scripts/setup installs it)"),
        );
        let slow_stop = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&slow_stop);
        let addr = format!("10.99.{subnet}.5:53");
        let slow = net.spawn_in(&net.a, move || slow_responder(&addr, &stop));
        let lab = Lab { net, subnet, servers, slow_stop, slow: Some(slow), unbound_conf };
        lab.wait_until_answering();
        lab
    }

    fn addr(&self, host: u8) -> String {
        format!("10.99.{}.{host}", self.subnet)
    }

    /// Servers take a moment to bind: ask until each answers (before any agent runs).
    fn wait_until_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for (server, name) in [(self.addr(1), format!("ok.{DOMAIN}")), (self.addr(3), format!("ready.fail.{DOMAIN}"))] {
            loop {
                let out = self.dig(&[&format!("@{server}"), &name, "+tries=1", "+timeout=1"]).0;
                if out.contains("status:") {
                    break;
                }
                assert!(Instant::now() < deadline, "DNS server {server} never answered:\n{out}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Runs dig in the client namespace; returns its output and its pid.
    fn dig(&self, args: &[&str]) -> (String, u32) {
        self.client("dig", args)
    }

    /// Runs `program` in the client namespace (`ip netns exec`, so with the namespace's own
    /// resolv.conf); returns its output and its pid (`ip netns exec` execs it in place).
    fn client(&self, program: &str, args: &[&str]) -> (String, u32) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.b, program])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let pid = child.id();
        let out = child.wait_with_output().expect("client output");
        (String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr), pid)
    }

    /// Runs dig in the client namespace inside `cgroup`, which it joins before it runs (a
    /// containerized client); returns its output and its pid.
    fn dig_in(&self, cgroup: &block::Cgroup, args: &[&str]) -> (String, u32) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let procs =
            std::fs::OpenOptions::new().write(true).open(cgroup.path.join("cgroup.procs")).expect("cgroup.procs");
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.net
            .spawn_in(&self.net.b, move || {
                let fd = procs.as_raw_fd();
                let mut cmd = Command::new("dig");
                cmd.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
                // SAFETY: only write(2) between fork and exec; "0" moves the writer itself.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
                let child = cmd.spawn().expect("spawn dig");
                let pid = child.id();
                let out = child.wait_with_output().expect("dig output");
                (String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr), pid)
            })
            .join()
            .expect("client thread")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        self.slow_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.slow.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.unbound_conf);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.net.b));
    }
}

/// Answers every query NOERROR (no records) after SLOW_MS: a slow server, measurably.
fn slow_responder(addr: &str, stop: &AtomicBool) {
    let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        if n < 12 {
            continue;
        }
        std::thread::sleep(Duration::from_millis(SLOW_MS));
        let mut answer = buf[..n].to_vec();
        answer[2] |= 0x80; // QR: an answer
        answer[3] = 0x80; // RA, rcode NOERROR
        answer[6..12].fill(0); // no answer, authority or additional records
                               // Keep only header and question (drop any EDNS record the query carried).
        let _ = socket.send_to(&answer, from);
    }
}

fn dns_events(f: &Finished) -> Vec<&Value> {
    f.events
        .iter()
        .filter(|e| {
            e["observer"] == "dns"
                && e["facts"]["query_name"].as_str().is_some_and(|n| n.ends_with(DOMAIN) || n == "refused.example")
        })
        .collect()
}

fn named<'a>(events: &[&'a Value], name: &str) -> Vec<&'a Value> {
    events.iter().copied().filter(|e| e["facts"]["query_name"] == name).collect()
}

/// The one event about `name`; fails listing them all otherwise.
fn the_one<'a>(events: &[&'a Value], name: &str) -> &'a Value {
    let found = named(events, name);
    assert_eq!(found.len(), 1, "expected exactly one event about {name}, got {found:#?}\nall: {events:#?}");
    found[0]
}

fn started(config: &str) -> Agent {
    let mut agent = Agent::start(config);
    agent.wait_for_log("ready:", Duration::from_secs(60));
    agent
}

#[test]
#[ignore = "needs root"]
fn servfail_refused_and_tcp_failures_name_the_querying_task_and_its_workload() {
    if !kernel_test("servfail_refused_and_tcp_failures") {
        return;
    }
    let lab = Lab::new("dnf", 61);
    let cgroup = block::Cgroup::new("memory", &format!("tapio-i10dns-client-{}", std::process::id()));
    let agent = started(ONLY_DNS);
    let servfail = format!("x.fail.{DOMAIN}");
    let servfail_tcp = format!("y.fail.{DOMAIN}");
    let unbound = format!("@{}", lab.addr(3));
    let (out, servfail_pid) = lab.dig_in(&cgroup, &[&unbound, &servfail, "+tries=1", "+timeout=3"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    let (out, tcp_pid) = lab.dig(&[&unbound, &servfail_tcp, "+tcp", "+tries=1", "+timeout=3"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    let (out, refused_pid) = lab.dig(&[&format!("@{}", lab.addr(1)), "refused.example", "+tries=1", "+timeout=3"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    let (out, _) = lab.dig(&[&format!("@{}", lab.addr(1)), &format!("ok.{DOMAIN}"), "+tries=1", "+timeout=3"]);
    assert!(out.contains("status: NOERROR"), "{out}");
    let finished = agent.stop();
    let events = dns_events(&finished);

    let e = the_one(&events, &servfail);
    assert_eq!((e["type"].as_str(), e["error"]["code"].as_str()), (Some("kernel.dns.failure"), Some("SERVFAIL")));
    let f = &e["facts"];
    assert_eq!(f["pid"], servfail_pid, "the querying task, not whoever ran the packet path: {e}");
    // The name of the thread that sent the query: dig sends from its network thread.
    let comm = f["comm"].as_str().unwrap_or_default();
    assert!(comm == "dig" || comm.starts_with("isc-net-"), "{e}");
    assert_eq!((f["transport"].as_str(), f["family"].as_str()), (Some("udp"), Some("ipv4")));
    assert_eq!((f["server_addr"].as_str(), f["server_port"].as_u64()), (Some(lab.addr(3).as_str()), Some(53)));
    assert_eq!(f["client_addr"], lab.net.b_addr);
    assert!(f["client_port"].as_u64().is_some_and(|p| p > 0 && p != 53), "{e}");
    assert_eq!((f["query_type_name"].as_str(), f["rcode"].as_u64()), (Some("A"), Some(2)));
    assert!(f["latency_ns"].as_u64().is_some_and(|ns| ns > 0 && ns < 3_000_000_000), "{e}");
    let cgroup_name = cgroup.path.file_name().and_then(|n| n.to_str()).expect("cgroup name");
    assert_eq!(e["workload"]["cgroup_path"], format!("/{cgroup_name}"), "the client's own cgroup: {e}");

    let e = the_one(&events, &servfail_tcp);
    assert_eq!((e["error"]["code"].as_str(), e["facts"]["transport"].as_str()), (Some("SERVFAIL"), Some("tcp")));
    assert_eq!(e["facts"]["pid"], tcp_pid);
    let e = the_one(&events, "refused.example");
    assert_eq!(
        (e["error"]["code"].as_str(), e["facts"]["pid"].as_u64()),
        (Some("REFUSED"), Some(u64::from(refused_pid)))
    );
    assert!(named(&events, &format!("ok.{DOMAIN}")).is_empty(), "an answered query is not evidence: {events:#?}");
    assert_eq!(finished.counter(&["kernel", "dns.unparsable_message"]), 0);
    assert_eq!(finished.counter(&["kernel", "dns.correlation_table_full"]), 0);
}

#[test]
#[ignore = "needs root"]
fn nxdomain_is_evidence_only_when_switched_on_and_a_search_list_ending_in_an_answer_is_silent() {
    if !kernel_test("nxdomain_switch_and_search_list") {
        return;
    }
    let lab = Lab::new("dnx", 62);
    // A Kubernetes-shaped resolver: ndots:5 tries the search list first.
    let etc = format!("/etc/netns/{}", lab.net.b);
    std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/<ns>");
    std::fs::write(
        format!("{etc}/resolv.conf"),
        format!("nameserver {}\nsearch a.{DOMAIN} b.{DOMAIN}\noptions ndots:5 attempts:1 timeout:2\n", lab.addr(1)),
    )
    .expect("write resolv.conf");
    let nx = format!("x.nx.{DOMAIN}");
    let dnsmasq = format!("@{}", lab.addr(1));
    for report in [false, true] {
        let agent = started(&format!("{ONLY_DNS}[dns]\nreport_nxdomain = {report}\n"));
        let (out, _) = lab.dig(&[&dnsmasq, &nx, "+tries=1", "+timeout=3"]);
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        let (out, getent_pid) = lab.client("getent", &["hosts", "host"]);
        assert!(out.contains(&format!("host.b.{DOMAIN}")), "the search list ends in an answer: {out}");
        let finished = agent.stop();
        let events = dns_events(&finished);
        if !report {
            assert!(events.is_empty(), "NXDOMAIN is not evidence by default: {events:#?}");
            continue;
        }
        let e = the_one(&events, &nx);
        assert_eq!((e["type"].as_str(), e["error"]["code"].as_str()), (Some("kernel.dns.failure"), Some("NXDOMAIN")));
        assert_eq!(e["severity"], "warning");
        // The expansion's misses: host.a.<domain>, once per type glibc asked (A and AAAA),
        // by getent; the answered host.b.<domain> is not evidence.
        let misses = named(&events, &format!("host.a.{DOMAIN}"));
        let mut types: Vec<&str> = misses.iter().filter_map(|e| e["facts"]["query_type_name"].as_str()).collect();
        types.sort_unstable();
        types.dedup();
        assert!(!types.is_empty() && types.len() == misses.len(), "one event per query: {misses:#?}");
        assert!(
            misses.iter().all(|e| e["facts"]["pid"] == getent_pid && e["facts"]["comm"] == "getent"),
            "{misses:#?}"
        );
        assert!(named(&events, &format!("host.b.{DOMAIN}")).is_empty(), "{events:#?}");
        assert_eq!(events.len(), 1 + misses.len(), "{events:#?}");
    }
}

#[test]
#[ignore = "needs root"]
fn a_black_holed_server_gives_one_timeout_per_unanswered_query_and_none_for_answered_ones() {
    if !kernel_test("black_holed_server") {
        return;
    }
    let lab = Lab::new("dnt", 63);
    let agent =
        started(&format!("{ONLY_DNS}[dns]\ntimeout_ms = 1000\nlatency_warning_ms = 300\nlatency_critical_ms = 900\n"));
    let hole = format!("@{}", lab.addr(4));
    let dnsmasq = format!("@{}", lab.addr(1));
    let mut pids = Vec::new();
    for i in 0..3 {
        let (out, pid) = lab.dig(&[&hole, &format!("q{i}.{DOMAIN}"), "+tries=1", "+timeout=2"]);
        assert!(out.contains("timed out"), "{out}");
        pids.push(pid);
        let (out, _) = lab.dig(&[&dnsmasq, &format!("ok.{DOMAIN}"), "+tries=1", "+timeout=2"]);
        assert!(out.contains("status: NOERROR"), "{out}");
    }
    // Past the timeout and its sweep.
    std::thread::sleep(Duration::from_millis(1_500));
    let finished = agent.stop();
    let events = dns_events(&finished);
    for (i, pid) in pids.iter().enumerate() {
        let e = the_one(&events, &format!("q{i}.{DOMAIN}"));
        assert_eq!((e["type"].as_str(), e["outcome"].as_str()), (Some("kernel.dns.timeout"), Some("timeout")));
        let f = &e["facts"];
        assert_eq!((f["pid"].as_u64(), f["transmissions"].as_u64()), (Some(u64::from(*pid)), Some(1)));
        assert!(f["rcode"].is_null() && f["latency_ns"].is_null(), "{e}");
        assert_eq!(f["threshold_ns"], 1_000_000_000u64);
        assert_eq!(f["server_addr"], lab.addr(4));
    }
    assert!(named(&events, &format!("ok.{DOMAIN}")).is_empty(), "{events:#?}");
    assert_eq!(events.len(), 3, "{events:#?}");
}

#[test]
#[ignore = "needs root"]
fn a_slow_answer_is_a_latency_spike_whose_latency_matches_what_the_client_measured() {
    if !kernel_test("slow_answer") {
        return;
    }
    let lab = Lab::new("dns", 64);
    let agent = started(&format!("{ONLY_DNS}[dns]\nlatency_warning_ms = 300\nlatency_critical_ms = 2000\n"));
    let name = format!("slow.{DOMAIN}");
    let (out, pid) = lab.dig(&[&format!("@{}", lab.addr(5)), &name, "+tries=1", "+timeout=4", "+noedns"]);
    let measured_ms: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix(";; Query time: ").and_then(|r| r.strip_suffix(" msec")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Query time in dig's output:\n{out}"));
    assert!(measured_ms >= SLOW_MS, "{out}");
    let finished = agent.stop();
    let events = dns_events(&finished);
    let e = the_one(&events, &name);
    assert_eq!((e["type"].as_str(), e["severity"].as_str()), (Some("kernel.dns.latency_spike"), Some("warning")));
    assert_eq!(e["facts"]["pid"], pid);
    let latency_ms = e["facts"]["latency_ns"].as_u64().expect("latency") as f64 / 1e6;
    let diff = (latency_ms - measured_ms as f64).abs();
    assert!(diff <= measured_ms as f64 * 0.10, "kernel {latency_ms:.1} ms vs dig {measured_ms} ms");
    assert_eq!(e["facts"]["threshold_ns"], 300_000_000u64);
}

#[test]
#[ignore = "needs root"]
fn ipv6_queries_are_judged_like_ipv4() {
    if !kernel_test("ipv6_queries") {
        return;
    }
    let lab = Lab::new("dn6", 65);
    let agent = started(ONLY_DNS);
    let server = format!("fd99:10:{}::1", lab.subnet);
    let (out, pid) = lab.dig(&[&format!("@{server}"), "refused.example", "+tries=1", "+timeout=3"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    let finished = agent.stop();
    let events = dns_events(&finished);
    let e = the_one(&events, "refused.example");
    let f = &e["facts"];
    assert_eq!((f["family"].as_str(), f["server_addr"].as_str()), (Some("ipv6"), Some(server.as_str())));
    assert_eq!(f["client_addr"], format!("fd99:10:{}::2", lab.subnet));
    assert_eq!((f["pid"].as_u64(), e["error"]["code"].as_str()), (Some(u64::from(pid)), Some("REFUSED")));
}
