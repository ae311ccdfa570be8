//! DNS evidence on the real kernel, with the DNS laboratory's real servers (BIND, Unbound)
//! and clients (dig, glibc through getent) in their own network namespaces
//! (`support::dns`): each scenario makes the DNS fact happen for real and checks the exact
//! events, their facts against what the client saw, and the absence of wrong ones.

use crate::support::dns::{self, DnsLab, Family, Query, Server};
use crate::support::netns::{tcp_retrans_segs, NetnsPair};
use crate::support::{kernel_test, Agent, Finished};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// Only the DNS observer: the others' evidence is not what these tests are about.
const ONLY_DNS: &str = "[sinks]\nstdout = true\n[network]\nenabled = false\n[container]\nenabled = false\n\
                        [storage]\nenabled = false\n[node]\nenabled = false\n[container_pressure]\nenabled = false\n";

fn started(config: &str) -> Agent {
    let mut agent = Agent::start(config);
    agent.wait_for_log("ready:", Duration::from_secs(60));
    agent
}

/// The DNS evidence of the lab's clients (the agent also sees the rest of the machine's).
fn dns_events<'a>(f: &'a Finished, lab: &DnsLab) -> Vec<&'a Value> {
    f.events
        .iter()
        .filter(|e| e["observer"] == "dns" && e["facts"]["client_addr"].as_str().is_some_and(|a| lab.holds(a)))
        .collect()
}

/// The DNS evidence of queries from `client_addr` (a test's own client namespace).
fn dns_events_from<'a>(f: &'a Finished, client_addr: &str) -> Vec<&'a Value> {
    f.events.iter().filter(|e| e["observer"] == "dns" && e["facts"]["client_addr"] == client_addr).collect()
}

/// A timeout short enough to wait for (and latency thresholds below it).
const SHORT_TIMEOUT: &str = "[dns]\ntimeout_ms = 1000\nlatency_warning_ms = 300\nlatency_critical_ms = 900\n";

/// Only the DNS observer, with [`SHORT_TIMEOUT`].
fn started_with_short_timeout() -> Agent {
    started(&format!("{ONLY_DNS}{SHORT_TIMEOUT}"))
}

/// Sleeps past [`SHORT_TIMEOUT`] and the sweep that judges it.
fn past_the_timeout_and_its_sweep() {
    std::thread::sleep(Duration::from_millis(1_500));
}

fn named<'a>(events: &[&'a Value], name: &str) -> Vec<&'a Value> {
    events.iter().copied().filter(|e| e["facts"]["query_name"] == name).collect()
}

/// The thread that sent the query: dig sends from its network thread.
fn dig_thread(comm: &Value) -> bool {
    comm.as_str().is_some_and(|c| c == "dig" || c.starts_with("isc-net-"))
}

#[test]
#[ignore = "needs root"]
fn servfail_refused_and_tcp_failures_name_the_querying_task_and_its_pod() {
    let _turn = kernel_test("dns_failures");
    let lab = DnsLab::start("i10f");
    let pod = lab.pod(false);
    let agent = started(ONLY_DNS);
    let in_pod = lab.query(&Query::new(dns::SERVFAIL).in_pod(&pod));
    let over_tcp = lab.query(&Query::new(dns::SERVFAIL).tcp());
    let refused = lab.query(&Query::new(dns::REFUSED));
    let answered = lab.query(&Query::new(dns::ANSWERED));
    assert_eq!(
        (in_pod.rcode(), over_tcp.rcode(), refused.rcode(), answered.rcode()),
        ("SERVFAIL", "SERVFAIL", "REFUSED", "NOERROR")
    );
    let finished = agent.stop();
    let events = dns_events(&finished, &lab);

    let servfails = named(&events, dns::SERVFAIL);
    assert_eq!(servfails.len(), 2, "one per query: {servfails:#?}");
    let e = servfails.iter().find(|e| e["facts"]["transport"] == "udp").expect("the UDP SERVFAIL");
    assert_eq!((e["type"].as_str(), e["error"]["code"].as_str()), (Some("kernel.dns.failure"), Some("SERVFAIL")));
    let f = &e["facts"];
    assert_eq!(f["pid"], in_pod.client_pid, "the querying task, not whoever ran the packet path: {e}");
    assert!(dig_thread(&f["comm"]), "{e}");
    assert_eq!(f["transaction_id"], in_pod.id.expect("answer id"));
    assert_eq!((f["family"].as_str(), f["server_port"].as_u64()), (Some("ipv4"), Some(53)));
    assert_eq!(f["server_addr"], lab.server_v4().to_string());
    assert_eq!(f["client_addr"], pod.addr(Family::V4).to_string(), "the pod's own address: {e}");
    assert_eq!((f["query_type_name"].as_str(), f["rcode"].as_u64()), (Some("A"), Some(2)));
    assert_eq!(e["workload"]["cgroup_path"], pod.cgroup_path(), "the pod's container: {e}");
    assert_eq!(e["workload"]["pod_uid"], pod.pod_uid());
    assert_eq!(e["workload"]["container_id"], pod.container_id());

    let e = servfails.iter().find(|e| e["facts"]["transport"] == "tcp").expect("the TCP SERVFAIL");
    assert_eq!(e["facts"]["pid"], over_tcp.client_pid);
    let r = named(&events, dns::REFUSED);
    assert_eq!(r.len(), 1, "{events:#?}");
    assert_eq!(
        (r[0]["error"]["code"].as_str(), &r[0]["facts"]["pid"]),
        (Some("REFUSED"), &Value::from(refused.client_pid))
    );
    assert!(named(&events, dns::ANSWERED).is_empty(), "an answered query is not evidence: {events:#?}");
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(finished.counter(&["kernel", "dns.unparsable_message"]), 0);
    assert_eq!(finished.counter(&["kernel", "dns.correlation_table_full"]), 0);
}

#[test]
#[ignore = "needs root"]
fn nxdomain_is_evidence_only_when_switched_on_and_a_search_list_ending_in_an_answer_is_silent() {
    let _turn = kernel_test("dns_nxdomain");
    let lab = DnsLab::start("i10n");
    for report in [false, true] {
        let agent = started(&format!("{ONLY_DNS}[dns]\nreport_nxdomain = {report}\n"));
        let nx = lab.query(&Query::new(dns::NXDOMAIN));
        assert_eq!(nx.rcode(), "NXDOMAIN");
        // ndots:5: the search list's misses (NXDOMAIN) come first, then the answer.
        let getent = lab.getent(dns::SERVICE_SHORT, false, None);
        assert_eq!(getent.exit_code, Some(0), "{}", getent.output);
        let finished = agent.stop();
        let events = dns_events(&finished, &lab);
        if !report {
            assert!(events.is_empty(), "NXDOMAIN is not evidence by default: {events:#?}");
            continue;
        }
        let e = named(&events, dns::NXDOMAIN);
        assert_eq!(e.len(), 1, "{events:#?}");
        assert_eq!(
            (e[0]["type"].as_str(), e[0]["error"]["code"].as_str()),
            (Some("kernel.dns.failure"), Some("NXDOMAIN"))
        );
        assert_eq!(e[0]["severity"], "warning");
        let misses = named(&events, &format!("{}.{}", dns::SERVICE_SHORT, dns::SEARCH[0]));
        assert!(!misses.is_empty(), "{events:#?}");
        assert!(
            misses.iter().all(|m| m["facts"]["pid"] == getent.pid && m["facts"]["comm"] == "getent"),
            "{misses:#?}"
        );
        let mut types: Vec<&str> = misses.iter().filter_map(|m| m["facts"]["query_type_name"].as_str()).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), misses.len(), "one event per query: {misses:#?}");
        assert!(named(&events, dns::SERVICE_FQDN).is_empty(), "the answer is not evidence: {events:#?}");
        assert_eq!(events.len(), 1 + misses.len(), "{events:#?}");
    }
}

#[test]
#[ignore = "needs root"]
fn a_black_holed_server_gives_one_timeout_per_unanswered_query_and_none_for_answered_ones() {
    let _turn = kernel_test("dns_black_hole");
    let lab = DnsLab::start("i10t");
    let agent = started_with_short_timeout();
    lab.blackhole(true);
    let mut unanswered = Vec::new();
    for i in 0..3 {
        let name = format!("q{i}.dnslab.test");
        let a = lab.query(&Query::new(&name).wait(Duration::from_secs(2)));
        assert!(a.rcode.is_none(), "{}", a.output);
        unanswered.push((name, a.client_pid));
    }
    assert_eq!(lab.blackholed_packets(Server::Main), 3, "one packet per unanswered query");
    lab.blackhole(false);
    let answered = lab.query(&Query::new(dns::ANSWERED));
    assert_eq!(answered.rcode(), "NOERROR");
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    let events = dns_events(&finished, &lab);
    for (name, pid) in &unanswered {
        let e = named(&events, name);
        assert_eq!(e.len(), 1, "exactly one timeout for {name}: {events:#?}");
        let (e, f) = (e[0], &e[0]["facts"]);
        assert_eq!((e["type"].as_str(), e["outcome"].as_str()), (Some("kernel.dns.timeout"), Some("timeout")));
        assert_eq!((f["pid"].as_u64(), f["transmissions"].as_u64()), (Some(u64::from(*pid)), Some(1)));
        assert!(f["rcode"].is_null() && f["latency_ns"].is_null(), "{e}");
        assert_eq!(f["threshold_ns"], 1_000_000_000u64);
        assert_eq!(f["server_addr"], lab.server_v4().to_string());
    }
    assert!(named(&events, dns::ANSWERED).is_empty(), "{events:#?}");
    assert_eq!(events.len(), 3, "{events:#?}");
}

/// Timeouts off, latency spikes on: a query the sweep ages out unanswered is no evidence,
/// but the latency spike its late answer could have been is counted as lost
/// (`dns.query_expired`), one per query, and an answered query is neither.
#[test]
#[ignore = "needs root"]
fn with_timeouts_off_an_aged_out_query_is_counted_not_silent() {
    let _turn = kernel_test("dns_timeouts_off");
    let lab = DnsLab::start("i16o");
    let agent = started(&format!("{ONLY_DNS}{SHORT_TIMEOUT}timeouts = false\n"));
    lab.blackhole(true);
    for i in 0..3 {
        let a = lab.query(&Query::new(&format!("off{i}.dnslab.test")).wait(Duration::from_secs(2)));
        assert!(a.rcode.is_none(), "{}", a.output);
    }
    assert_eq!(lab.blackholed_packets(Server::Main), 3, "one packet per unanswered query");
    lab.blackhole(false);
    assert_eq!(lab.query(&Query::new(dns::ANSWERED)).rcode(), "NOERROR");
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    let events = dns_events(&finished, &lab);
    assert!(events.is_empty(), "no timeout evidence with timeouts off: {events:#?}");
    assert_eq!(finished.counter(&["correlation_drops", "dns.query_expired"]), 3);
}

#[test]
#[ignore = "needs root"]
fn a_slow_answer_is_a_latency_spike_whose_latency_matches_what_the_client_measured() {
    let _turn = kernel_test("dns_slow_answer");
    let lab = DnsLab::start("i10s");
    lab.set_slow_delay(Duration::from_millis(700));
    let agent = started(&format!("{ONLY_DNS}[dns]\nlatency_warning_ms = 300\nlatency_critical_ms = 2000\n"));
    let a = lab.query(&Query::new(dns::ANSWERED).slow().wait(Duration::from_secs(4)));
    assert_eq!(a.rcode(), "NOERROR");
    let measured_ms = a.client_latency_ms.expect("dig's Query time");
    assert!(measured_ms >= 690, "{}", a.output);
    let finished = agent.stop();
    let events = dns_events(&finished, &lab);
    let e = named(&events, dns::ANSWERED);
    assert_eq!(e.len(), 1, "{events:#?}");
    let e = e[0];
    assert_eq!((e["type"].as_str(), e["severity"].as_str()), (Some("kernel.dns.latency_spike"), Some("warning")));
    assert_eq!(e["facts"]["pid"], a.client_pid);
    assert_eq!(e["facts"]["server_addr"], lab.server_addr(Server::Slow, Family::V4).to_string());
    let latency_ms = e["facts"]["latency_ns"].as_u64().expect("latency") as f64 / 1e6;
    // The relay held the answer 700 ms, and dig's clock (in ticks) ran around the kernel's:
    // bounds a loaded machine's scheduling of dig cannot move.
    let tick_ms = dns::DIG_CLOCK_TICK.as_secs_f64() * 1e3;
    assert!(
        latency_ms >= 700.0 - tick_ms && latency_ms <= measured_ms as f64 + tick_ms,
        "kernel {latency_ms:.1} ms vs the relay's 700 ms and dig's {measured_ms} ms"
    );
    assert_eq!(e["facts"]["threshold_ns"], 300_000_000u64);
}

/// A query to a Service address that NAT in the OUTPUT hook sends to its backend, as
/// kube-proxy does for the node's own processes and hostNetwork pods: the egress program
/// sees the query going to the backend, the ingress program sees the answer coming from the
/// Service address. The failure is judged, naming the address the client asked and that
/// answered, and an answered query is no timeout. (With the server in the table's key the
/// answers never matched: both queries became timeouts.)
#[test]
#[ignore = "needs root"]
fn queries_to_a_service_address_translated_to_its_backend_are_matched_with_their_answers() {
    let _turn = kernel_test("dns_service_nat");
    let lab = DnsLab::start("i16n");
    let service = std::net::Ipv4Addr::new(10, 96, 0, 10);
    lab.service_nat(service, Server::Main);
    let agent = started_with_short_timeout();
    let failed = lab.query(&Query::new(dns::SERVFAIL).via(service.into()));
    let answered = lab.query(&Query::new(dns::ANSWERED).via(service.into()));
    assert_eq!((failed.rcode(), answered.rcode()), ("SERVFAIL", "NOERROR"), "{}", failed.output);
    // An unmatched query would be judged a timeout by then.
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    let events = dns_events(&finished, &lab);
    let e = named(&events, dns::SERVFAIL);
    assert_eq!(e.len(), 1, "{events:#?}");
    assert_eq!((e[0]["type"].as_str(), e[0]["error"]["code"].as_str()), (Some("kernel.dns.failure"), Some("SERVFAIL")));
    let f = &e[0]["facts"];
    assert_eq!((f["server_addr"].as_str(), f["server_port"].as_u64()), (Some("10.96.0.10"), Some(53)), "{}", e[0]);
    assert_eq!(f["pid"], failed.client_pid);
    assert_eq!(f["transaction_id"], failed.id.expect("answer id"));
    assert!(named(&events, dns::ANSWERED).is_empty(), "an answered query is no timeout: {events:#?}");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(finished.counter(&["kernel", "dns.unmatched_answer"]), 0);
}

#[test]
#[ignore = "needs root"]
fn ipv6_queries_are_judged_like_ipv4() {
    let _turn = kernel_test("dns_ipv6");
    let lab = DnsLab::start("i10v");
    let agent = started(ONLY_DNS);
    let a = lab.query(&Query::new(dns::REFUSED).v6());
    assert_eq!(a.rcode(), "REFUSED");
    let finished = agent.stop();
    let events = dns_events(&finished, &lab);
    let e = named(&events, dns::REFUSED);
    assert_eq!(e.len(), 1, "{events:#?}");
    let f = &e[0]["facts"];
    assert_eq!((f["family"].as_str(), &f["server_addr"]), (Some("ipv6"), &Value::from(lab.server_v6().to_string())));
    assert_eq!(f["client_addr"], lab.client_addr(Family::V6).to_string());
    assert_eq!((f["pid"].as_u64(), e[0]["error"]["code"].as_str()), (Some(u64::from(a.client_pid)), Some("REFUSED")));
}

/// Reads one length-prefixed DNS message from a TCP stream.
fn read_tcp_message(conn: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).expect("a message's length");
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut message).expect("a message");
    message
}

/// `message` with its TCP length prefix.
fn framed(message: &[u8]) -> Vec<u8> {
    let len = u16::try_from(message.len()).expect("a short message");
    [&len.to_be_bytes()[..], message].concat()
}

/// An answer with no records and rcode `rcode` to `query` (its header and question echoed).
fn empty_answer(query: &[u8], rcode: u8) -> Vec<u8> {
    let mut answer = query.to_vec();
    answer[2] |= 0x80; // QR
    answer[3] = 0x80 | rcode; // RA
    answer
}

/// Pipelined queries on one TCP connection: the kernel reads up to four messages a
/// segment, both ways. Four queries written at once, as glibc writes its A and AAAA
/// queries, and a fifth in a segment of its own; the server answers all five in one write,
/// the second SERVFAIL. The second answer is judged from the middle of its segment; the
/// fifth is not read (a fifth message in one segment), and its query is not judged timed
/// out (it was answered): it is counted as `dns.tcp_answer_unread`. On a second
/// connection, two queries written at once, and only the first answered: a segment read
/// whole keeps no query from timing out, and the second times out.
#[test]
#[ignore = "needs root"]
fn pipelined_tcp_queries_are_read_from_shared_segments_and_an_unread_answer_is_counted_not_judged_timed_out() {
    let _turn = kernel_test("dns_tcp_pipelined");
    let pair = NetnsPair::new("i16dp", 32);
    let server: SocketAddr = format!("{}:53", pair.b_addr).parse().expect("server address");
    let listener = pair.listen_in_b(server);
    let agent = started_with_short_timeout();
    // (name, queries written together then one by one, answers sent in one write)
    let cases: [(&str, &[usize], usize); 2] = [("together", &[4, 1], 5), ("alone", &[2], 1)];
    let serving = std::thread::spawn(move || {
        for (_, writes, answered) in cases {
            let (mut conn, _) = listener.accept().expect("accept");
            let queries: Vec<Vec<u8>> = (0..writes.iter().sum()).map(|_| read_tcp_message(&mut conn)).collect();
            let rcode = |i: usize| if i == 1 { 2 } else { 0 };
            let reply: Vec<u8> =
                queries[..answered].iter().enumerate().flat_map(|(i, q)| framed(&empty_answer(q, rcode(i)))).collect();
            conn.write_all(&reply).expect("answer");
            // Open until the client is done.
            let _ = conn.read(&mut [0u8; 1]);
        }
    });
    let asking = pair.spawn_in(&pair.a, move || {
        let mut answers = Vec::new();
        for (case, writes, answered) in cases {
            let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
            conn.set_nodelay(true).expect("nodelay");
            let mut n = 0u16;
            for &together in writes {
                let mut write = Vec::new();
                for _ in 0..together {
                    n += 1;
                    write.extend(framed(&dns::query_packet(0x1600 + n, &format!("pipe{n}-{case}.dnslab.test"), 1)));
                }
                conn.write_all(&write).expect("queries");
                // The next write goes in a segment of its own.
                std::thread::sleep(Duration::from_millis(100));
            }
            conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
            for _ in 0..answered {
                let a = read_tcp_message(&mut conn);
                answers.push((u16::from_be_bytes([a[0], a[1]]), a[3] & 0x0f));
            }
        }
        answers
    });
    let answers = asking.join().expect("the client");
    let sent = [(0x1601, 0), (0x1602, 2), (0x1603, 0), (0x1604, 0), (0x1605, 0), (0x1601, 0)];
    assert_eq!(answers, sent, "the client read every answer sent");
    serving.join().expect("the server");
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    let events = dns_events_from(&finished, &pair.a_addr);
    let failed = named(&events, "pipe2-together.dnslab.test");
    assert_eq!(failed.len(), 1, "the second answer in its segment is read: {events:#?}");
    assert_eq!(
        (failed[0]["type"].as_str(), failed[0]["error"]["code"].as_str()),
        (Some("kernel.dns.failure"), Some("SERVFAIL"))
    );
    let timed_out = named(&events, "pipe2-alone.dnslab.test");
    assert_eq!(timed_out.len(), 1, "the unanswered pipelined query times out: {events:#?}");
    assert_eq!(
        (timed_out[0]["type"].as_str(), timed_out[0]["facts"]["transport"].as_str()),
        (Some("kernel.dns.timeout"), Some("tcp"))
    );
    assert_eq!(events.len(), 2, "no other query is evidence: {events:#?}");
    assert_eq!(finished.counter(&["correlation_drops", "dns.tcp_answer_unread"]), 1);
}

/// A UDP error answer the kernel cannot read as a message (FORMERR without its question,
/// as a server sends for a query it could not parse): its query was answered, so it is no
/// timeout; it is counted (`dns.udp_answer_unparsable`, and the kernel's
/// `dns.unparsable_message`). A query the same server leaves unanswered, on another
/// socket, still times out.
#[test]
#[ignore = "needs root"]
fn a_udp_answer_without_its_question_is_counted_not_judged_timed_out() {
    let _turn = kernel_test("dns_udp_unparsable");
    let pair = NetnsPair::new("i16du", 41);
    let server: SocketAddr = format!("{}:53", pair.b_addr).parse().expect("server address");
    let socket = pair.spawn_in(&pair.b, move || UdpSocket::bind(server).expect("bind in b")).join().expect("bind");
    let agent = started_with_short_timeout();
    let serving = std::thread::spawn(move || {
        socket.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
        let mut buf = [0u8; 512];
        let (_, client) = socket.recv_from(&mut buf).expect("the first query");
        // Its header only: QR, RA, FORMERR, no question.
        let mut header = buf[..12].to_vec();
        header[2] |= 0x80;
        header[3] = 0x80 | 1;
        header[4..].fill(0);
        socket.send_to(&header, client).expect("answer");
        socket.recv_from(&mut buf).expect("the second query");
    });
    let asking = pair.spawn_in(&pair.a, move || {
        let answered = UdpSocket::bind("0.0.0.0:0").expect("bind");
        answered.connect(server).expect("connect");
        answered.send(&dns::query_packet(0x1701, "formerr.dnslab.test", 1)).expect("query");
        answered.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        let mut buf = [0u8; 512];
        let n = answered.recv(&mut buf).expect("the FORMERR answer");
        let unanswered = UdpSocket::bind("0.0.0.0:0").expect("bind");
        unanswered.connect(server).expect("connect");
        unanswered.send(&dns::query_packet(0x1702, "silent.dnslab.test", 1)).expect("query");
        (n, buf[3] & 0x0f)
    });
    assert_eq!(asking.join().expect("the client"), (12, 1), "the client got the header-only FORMERR");
    serving.join().expect("the server");
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    let events = dns_events_from(&finished, &pair.a_addr);
    assert!(named(&events, "formerr.dnslab.test").is_empty(), "an answered query is no timeout: {events:#?}");
    let silent = named(&events, "silent.dnslab.test");
    assert_eq!(silent.len(), 1, "{events:#?}");
    assert_eq!(silent[0]["type"], "kernel.dns.timeout");
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(finished.counter(&["correlation_drops", "dns.udp_answer_unparsable"]), 1);
    assert!(finished.counter(&["kernel", "dns.unparsable_message"]) >= 1);
}

/// A Service whose target port is not 53, asked by a process in whose own namespace NAT
/// rewrites the query (a host-network process and kube-proxy in iptables mode): the query
/// leaves for the other port and is not read, so it is missing, not wrong. Its SERVFAIL is
/// no evidence, nor is it a timeout; the answer, from port 53 again once the NAT is undone,
/// is counted as unmatched.
#[test]
#[ignore = "needs root"]
fn a_query_nat_sends_to_another_port_is_not_read_and_never_a_timeout() {
    let _turn = kernel_test("dns_service_port_nat");
    let pair = NetnsPair::new("i16dn", 33);
    let backend: SocketAddr = format!("{}:5353", pair.b_addr).parse().expect("backend address");
    let service: SocketAddr = "10.96.0.10:53".parse().expect("service address");
    // The Service address is routed (routing comes before the NAT) as a node routes it.
    crate::support::run(&["ip", "-n", &pair.a, "route", "add", "default", "via", &pair.b_addr]);
    pair.nft(
        &pair.a,
        &format!(
            "table ip tapio_test_service {{\n chain output {{\n  type nat hook output priority -100;\n  \
             ip daddr {} udp dport 53 dnat to {backend}\n }}\n}}\n",
            service.ip()
        ),
    );
    let server = pair
        .spawn_in(&pair.b, move || std::net::UdpSocket::bind(backend).expect("bind the backend"))
        .join()
        .expect("bind thread");
    let agent = started_with_short_timeout();
    let serving = std::thread::spawn(move || {
        let mut query = [0u8; 512];
        server.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        let (n, from) = server.recv_from(&mut query).expect("the query reaches the backend");
        server.send_to(&empty_answer(&query[..n], 2), from).expect("answer");
    });
    let rcode = pair
        .spawn_in(&pair.a, move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            socket.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
            socket.send_to(&dns::query_packet(0x1653, "ported.dnslab.test", 1), service).expect("query");
            let mut answer = [0u8; 512];
            let (_, from) = socket.recv_from(&mut answer).expect("the answer");
            assert_eq!(from, service, "the answer comes from the address asked");
            answer[3] & 0x0f
        })
        .join()
        .expect("the client");
    assert_eq!(rcode, 2, "SERVFAIL reached the client");
    serving.join().expect("the backend");
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    let events = dns_events_from(&finished, &pair.a_addr);
    assert!(events.is_empty(), "neither a failure nor a timeout: {events:#?}");
    assert!(finished.counter(&["kernel", "dns.unmatched_answer"]) >= 1, "the answer was seen, unmatched");
}

/// A TCP answer longer than its first segment: judged from that segment (its header and
/// question), and the rest of it, in a segment of its own, is neither an unparsable message
/// nor an unread answer.
#[test]
#[ignore = "needs root"]
fn a_tcp_answer_split_over_segments_is_judged_once_and_its_rest_is_no_loss() {
    let _turn = kernel_test("dns_tcp_split");
    let pair = NetnsPair::new("i16dl", 34);
    let server: SocketAddr = format!("{}:53", pair.b_addr).parse().expect("server address");
    let listener = pair.listen_in_b(server);
    let agent = started_with_short_timeout();
    let serving = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_nodelay(true).expect("nodelay");
        let mut answer = empty_answer(&read_tcp_message(&mut conn), 2);
        // Bytes past the question, as records would be: 600 in all.
        answer.resize(600, 0);
        let framed = framed(&answer);
        conn.write_all(&framed[..302]).expect("the first segment");
        std::thread::sleep(Duration::from_millis(100));
        conn.write_all(&framed[302..]).expect("the rest");
        let _ = conn.read(&mut [0u8; 1]);
    });
    let answer = pair
        .spawn_in(&pair.a, move || {
            let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
            conn.write_all(&framed(&dns::query_packet(0x1660, "long.dnslab.test", 1))).expect("query");
            read_tcp_message(&mut conn)
        })
        .join()
        .expect("the client");
    assert_eq!((answer.len(), answer[3] & 0x0f), (600, 2), "the client read the whole SERVFAIL");
    serving.join().expect("the server");
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    let events = dns_events_from(&finished, &pair.a_addr);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["error"]["code"].as_str()),
        (Some("kernel.dns.failure"), Some("SERVFAIL"))
    );
    assert_eq!(finished.counter(&["kernel", "dns.unparsable_message"]), 0, "the rest of an answer is no message");
    // Nor an unread answer (`dns.tcp_answer_unread`, listed once counted): nothing was lost.
    assert_eq!(finished.counter(&["correlation_drops_total"]), 0);
}

/// A server that stops answering mid-connection (its pod deleted, its node gone): the
/// kernel retransmits the query's segment for as long as the socket lives, which is not the
/// application asking again. One query, sent once: one timeout, judged from the write, and
/// no new query (nor another timeout) for the retransmissions after it was judged.
#[test]
#[ignore = "needs root"]
fn a_query_whose_tcp_segment_the_kernel_retransmits_is_one_query_and_one_timeout() {
    let _turn = kernel_test("dns_tcp_retransmitted");
    let pair = NetnsPair::new("i16dr", 37);
    let server: SocketAddr = format!("{}:53", pair.b_addr).parse().expect("server address");
    let listener = pair.listen_in_b(server);
    let agent = started_with_short_timeout();
    let serving = std::thread::spawn(move || listener.accept().expect("accept").0);
    let mut conn = pair
        .spawn_in(&pair.a, move || TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect"))
        .join()
        .expect("the client");
    let accepted = serving.join().expect("the server");
    // From now on nothing reaches the server: the query's segment is never acknowledged.
    pair.nft_input(&pair.b, "tcp dport 53 drop");
    let retransmitted_before = tcp_retrans_segs(&pair.a);
    conn.write_all(&framed(&dns::query_packet(0x1670, "retx.dnslab.test", 1))).expect("query");
    // Retransmissions about 0.2, 0.6, 1.4 and 3 s after the write; the first timeout is
    // judged 1 s after it (the last two come after that).
    std::thread::sleep(Duration::from_millis(4_500));
    let retransmitted = tcp_retrans_segs(&pair.a) - retransmitted_before;
    assert!(retransmitted >= 4, "the kernel retransmitted the query {retransmitted} times: the test tests nothing");
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    drop((conn, accepted));
    let events = dns_events_from(&finished, &pair.a_addr);
    assert_eq!(events.len(), 1, "one query, one timeout: {events:#?}");
    let f = &events[0]["facts"];
    assert_eq!(
        (events[0]["type"].as_str(), f["query_name"].as_str(), f["transport"].as_str(), f["transmissions"].as_u64()),
        (Some("kernel.dns.timeout"), Some("retx.dnslab.test"), Some("tcp"), Some(1))
    );
    assert!(finished.counter(&["kernel", "dns.retransmissions"]) >= 4, "{}", finished.counters);
}

/// A query that a segment boundary splits: the next segment begins inside it. Read from
/// that segment's first byte, the query's rest would be taken for a length and a message,
/// and a query's own bytes (here an EDNS option's) can read as another query: a phantom
/// nobody answers, judged `timeout`. The segment is read from the next message's start:
/// the query after the split one is answered SERVFAIL, and that one failure, judged from
/// the second segment, shows the segment was read (an observer that read no TCP segment at
/// all would pass every other check here).
#[test]
#[ignore = "needs root"]
fn a_segment_that_begins_inside_a_query_is_read_from_the_next_message_not_its_first_byte() {
    let _turn = kernel_test("dns_tcp_resume");
    let pair = NetnsPair::new("i16dq", 39);
    let server: SocketAddr = format!("{}:53", pair.b_addr).parse().expect("server address");
    let listener = pair.listen_in_b(server);
    let agent = started_with_short_timeout();
    let serving = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let queries = [read_tcp_message(&mut conn), read_tcp_message(&mut conn)];
        // The first NOERROR, the second (after.dnslab.test) SERVFAIL.
        let reply: Vec<u8> =
            queries.iter().zip([0, 2]).flat_map(|(q, rcode)| framed(&empty_answer(q, rcode))).collect();
        conn.write_all(&reply).expect("answers");
        let _ = conn.read(&mut [0u8; 1]);
    });
    // The first query carries, as an EDNS option's data at its end, the bytes of another
    // query framed for TCP; the first write ends just before them.
    let phantom = framed(&dns::query_packet(0x1234, "phantom.dnslab.test", 1));
    let mut first = dns::query_packet(0x1690, "split.dnslab.test", 1);
    first[10..12].copy_from_slice(&1u16.to_be_bytes()); // one additional record: the OPT
    let option_len = u16::try_from(phantom.len()).expect("short");
    first.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0]); // root, OPT, 4096, ttl 0
    first.extend_from_slice(&(option_len + 4).to_be_bytes());
    first.extend_from_slice(&65001u16.to_be_bytes()); // a local option code
    first.extend_from_slice(&option_len.to_be_bytes());
    let split = 2 + first.len();
    first.extend_from_slice(&phantom);
    let stream = [framed(&first), framed(&dns::query_packet(0x1691, "after.dnslab.test", 1))].concat();
    let answers = pair
        .spawn_in(&pair.a, move || {
            let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
            conn.set_nodelay(true).expect("nodelay");
            conn.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
            conn.write_all(&stream[..split]).expect("the first part");
            // The rest goes in a segment of its own, beginning inside the first query.
            std::thread::sleep(Duration::from_millis(100));
            conn.write_all(&stream[split..]).expect("the rest");
            [read_tcp_message(&mut conn), read_tcp_message(&mut conn)]
                .map(|a| (u16::from_be_bytes([a[0], a[1]]), a[3] & 0x0f))
        })
        .join()
        .expect("the client");
    assert_eq!(answers, [(0x1690, 0), (0x1691, 2)], "both queries answered, the second SERVFAIL");
    serving.join().expect("the server");
    past_the_timeout_and_its_sweep();
    let finished = agent.stop();
    assert!(finished.exit_ok, "agent exit: {}", finished.stderr);
    let events = dns_events_from(&finished, &pair.a_addr);
    // The one failure: the second segment's query, read from its own start. No phantom
    // (nor any timeout): no other query was asked.
    assert_eq!(events.len(), 1, "one SERVFAIL, no other evidence: {events:#?}");
    let f = &events[0]["facts"];
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["error"]["code"].as_str()),
        (Some("kernel.dns.failure"), Some("SERVFAIL")),
        "{events:#?}"
    );
    assert_eq!(
        (f["query_name"].as_str(), f["transport"].as_str(), f["rcode"].as_u64()),
        (Some("after.dnslab.test"), Some("tcp"), Some(2)),
        "{f}"
    );
    assert_eq!(finished.counter(&["kernel", "dns.unparsable_message"]), 0);
    assert_eq!(finished.counter(&["kernel", "dns.tcp_query_unread"]), 0);
    assert_eq!(finished.counter(&["kernel", "dns.unmatched_answer"]), 0, "both answers matched their queries");
}
