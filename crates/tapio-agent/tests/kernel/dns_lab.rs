//! Self-test of the DNS laboratory (tests/support/dns.rs): every scenario produces, seen
//! from the client, exactly the DNS outcome it claims, and BIND's query log agrees on what
//! reached the server. The DNS observer's tests rely on these facts, so they are proven
//! here against the real servers and clients, without the agent.
//!
//! Run as root, one kernel test run at a time on the machine:
//! `flock /tmp/tapio-kernel-tests.lock cargo test -p tapio-agent --test kernel -- --include-ignored dns_lab::`

use crate::support::dns::{self, DnsLab, Family, Query, Server};
use crate::support::{kernel_test, run};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// The queries BIND logged for `name` (any type).
fn logged(lab: &DnsLab, name: &str) -> Vec<dns::ServerQuery> {
    lab.server_queries().into_iter().filter(|q| q.name == name).collect()
}

#[test]
#[ignore = "needs root"]
fn rcodes_noerror_nxdomain_refused_servfail_each_reach_the_server_once() {
    let _turn = kernel_test("dns_lab_rcodes");
    let lab = DnsLab::start("rcodes");
    for (name, qtype, rcode) in [
        (dns::ANSWERED, "A", "NOERROR"),
        (dns::ANSWERED, "AAAA", "NOERROR"),
        (dns::NXDOMAIN, "A", "NXDOMAIN"),
        (dns::REFUSED, "A", "REFUSED"),
        (dns::SERVFAIL, "A", "SERVFAIL"),
    ] {
        // A source port of our choosing: the server's log must name exactly this client.
        let before = lab.server_queries().len();
        let port = 20_000 + before as u16;
        let a = lab.query(&Query::new(name).qtype(qtype).source_port(port));
        assert_eq!(a.rcode(), rcode, "{name} {qtype}:\n{}", a.output);
        assert_eq!(a.exit_code, Some(0), "{}", a.output);
        assert!(a.id.is_some(), "an answer has a transaction id:\n{}", a.output);
        assert!(a.client_latency_ms.is_some(), "{}", a.output);
        assert!(a.client_pid > 0);
        assert_eq!(a.server, lab.server_socket(Server::Main, Family::V4));
        assert_eq!(a.client, std::net::SocketAddr::new(lab.client_addr(Family::V4), port));
        match (rcode, qtype) {
            ("NOERROR", "A") => assert_eq!(a.data("A"), [dns::ANSWERED_V4.to_string()], "{}", a.output),
            ("NOERROR", _) => assert_eq!(a.data("AAAA"), [dns::ANSWERED_V6.to_string()], "{}", a.output),
            _ => assert!(a.records.is_empty(), "an error answer carries no records:\n{}", a.output),
        }
        let seen = lab.server_queries()[before..].to_vec();
        assert_eq!(seen.len(), 1, "BIND got the query once: {seen:?}");
        assert_eq!(lab.server_view(&a).as_ref(), Some(&seen[0]));
        assert_eq!((seen[0].name.as_str(), seen[0].qtype.as_str()), (name, qtype));
        assert_eq!(seen[0].client, a.client, "from the client's address and port");
        assert_eq!(seen[0].server, lab.server_v4());
        assert!(!seen[0].tcp);
    }
}

#[test]
#[ignore = "needs root"]
fn blackholed_server_gets_the_query_packet_but_never_answers_until_released() {
    let _turn = kernel_test("dns_lab_blackhole");
    let lab = DnsLab::start("blackhole");
    let before = lab.server_queries().len();
    lab.blackhole(true);
    for q in [Query::new(dns::ANSWERED), Query::new(dns::ANSWERED).v6(), Query::new(dns::NXDOMAIN).tcp()] {
        let a = lab.query(&q.clone().wait(Duration::from_secs(1)));
        assert!(!a.answered(), "{q:?} was answered through the black hole:\n{}", a.output);
        assert!(a.client_latency_ms.is_none() && a.id.is_none());
        // dig's exit status 9: no reply from any server.
        assert_eq!(a.exit_code, Some(9), "{}", a.output);
        assert!(a.wall >= Duration::from_secs(1), "dig waited its second: {:?}", a.wall);
    }
    // The slow relay asks BIND too: black-holed behind it as well.
    let a = lab.query(&Query::new(dns::ANSWERED).slow().wait(Duration::from_secs(1)));
    assert!(!a.answered(), "{}", a.output);
    assert!(lab.server_view(&a).is_none());
    assert_eq!(lab.server_queries().len(), before, "nothing sent into the black hole reached BIND");
    lab.blackhole(false);
    let a = lab.query(&Query::new(dns::ANSWERED));
    assert_eq!(a.rcode(), "NOERROR", "released: {}", a.output);
    assert_eq!(lab.server_queries().len(), before + 1, "the answered query reached BIND");
}

#[test]
#[ignore = "needs root"]
fn slow_server_answers_no_sooner_than_its_delay_udp_tcp_v4_v6() {
    let _turn = kernel_test("dns_lab_slow");
    let lab = DnsLab::start("slow");
    let delay = Duration::from_millis(450);
    lab.set_slow_delay(delay);
    assert_eq!(lab.slow_delay(), delay);
    for q in [
        Query::new(dns::ANSWERED).slow(),
        Query::new(dns::ANSWERED).slow().v6(),
        Query::new(dns::ANSWERED).slow().tcp(),
        Query::new(dns::NXDOMAIN).slow().v6().tcp(),
    ] {
        let a = lab.query(&q);
        let want = if q.name == dns::NXDOMAIN { "NXDOMAIN" } else { "NOERROR" };
        assert_eq!(a.rcode(), want, "{q:?}: {}", a.output);
        let ms = a.client_latency_ms.expect("dig's query time");
        let floor = (delay - dns::DIG_CLOCK_TICK).as_millis() as u64;
        assert!(ms >= floor, "{q:?}: the client measured {ms} ms, the relay held {delay:?}");
        assert!(a.wall >= delay);
        assert_eq!(a.server, lab.server_socket(Server::Slow, q.family));
    }
    // Measured precisely on the client's own socket: never sooner than the delay.
    let x = lab.send_udp(
        &[dns::query_packet(4242, dns::ANSWERED, 1)],
        lab.server_socket(Server::Slow, Family::V4),
        Duration::from_secs(3),
        None,
    );
    assert_eq!(x.replies.len(), 1, "{x:?}");
    assert_eq!((x.replies[0].id, x.replies[0].rcode_name()), (4242, "NOERROR"));
    assert!(x.replies[0].latency >= delay, "{:?} < {delay:?}", x.replies[0].latency);
    // Changed at run time, the delay applies to the next query.
    let longer = Duration::from_millis(900);
    lab.set_slow_delay(longer);
    let a = lab.query(&Query::new(dns::ANSWERED).slow());
    assert!(
        a.client_latency_ms.expect("query time") >= (longer - dns::DIG_CLOCK_TICK).as_millis() as u64,
        "{}",
        a.output
    );
    assert!(a.wall >= longer);
    assert_eq!(lab.slow_relay_dropped(), 0);
}

#[test]
#[ignore = "needs root"]
fn ipv6_and_tcp_answer_with_the_transport_asked() {
    let _turn = kernel_test("dns_lab_v6_tcp");
    let lab = DnsLab::start("v6tcp");
    for (q, transport) in [
        (Query::new(dns::ANSWERED).qtype("AAAA").v6(), "(UDP)"),
        (Query::new(dns::ANSWERED).qtype("AAAA").v6().tcp(), "(TCP)"),
        (Query::new(dns::ANSWERED).tcp(), "(TCP)"),
        (Query::new(dns::REFUSED).v6().tcp(), "(TCP)"),
        (Query::new(dns::SERVFAIL).v6(), "(UDP)"),
        (Query::new(dns::NXDOMAIN).tcp().source_port(20_053), "(TCP)"),
    ] {
        let a = lab.query(&q);
        let want = match q.name.as_str() {
            dns::REFUSED => "REFUSED",
            dns::SERVFAIL => "SERVFAIL",
            dns::NXDOMAIN => "NXDOMAIN",
            _ => "NOERROR",
        };
        assert_eq!(a.rcode(), want, "{q:?}: {}", a.output);
        let server_line = a.output.lines().find(|l| l.starts_with(";; SERVER:")).unwrap_or("");
        assert!(server_line.contains(&a.server.ip().to_string()), "{}", a.output);
        assert!(server_line.ends_with(transport), "{q:?} went over {server_line}");
        assert_eq!(a.tcp, q.tcp);
    }
    let v6 = lab.server_queries().into_iter().filter(|q| q.server == lab.server_v6()).collect::<Vec<_>>();
    // Start-up probed v6 over UDP; then 2 UDP + 2 TCP above.
    assert_eq!(v6.iter().filter(|q| q.tcp).count(), 2, "{v6:?}");
    assert!(v6.iter().all(|q| q.client.ip() == lab.client_addr(Family::V6)), "{v6:?}");
    // A port the kernel chose, named by BIND's view of the query.
    let a = lab.query(&Query::new(dns::ANSWERED).qtype("AAAA").v6().tcp());
    let seen = lab.server_view(&a).expect("BIND logged the query");
    assert!(seen.tcp && seen.client.port() != 0 && seen.client.ip() == a.client.ip(), "{seen:?}");
    let tcp_from_port = logged(&lab, dns::NXDOMAIN);
    assert_eq!(tcp_from_port.len(), 1, "{tcp_from_port:?}");
    assert!(tcp_from_port[0].tcp);
    assert_eq!(tcp_from_port[0].client, std::net::SocketAddr::new(lab.client_addr(Family::V4), 20_053));
}

#[test]
#[ignore = "needs root"]
fn getent_walks_the_kubernetes_search_list_through_nxdomains_to_an_answer() {
    let _turn = kernel_test("dns_lab_getent");
    let lab = DnsLab::start("getent");
    let resolv = std::fs::read_to_string(Path::new("/etc/netns").join(lab.client_netns()).join("resolv.conf"))
        .expect("the client namespace's resolv.conf");
    assert!(resolv.contains("search a.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("ndots:5"), "{resolv}");
    // Seen from inside the namespace, /etc/resolv.conf is the lab's (ip netns exec binds it).
    let inside = lab.run_client(&["cat", "/etc/resolv.conf"], None);
    assert_eq!(inside.stdout, lab.resolv_conf());

    // An external name (fewer than five dots): every expansion is NXDOMAIN, then the name.
    let g = lab.getent(dns::ANSWERED, false, None);
    assert_eq!(g.exit_code, Some(0), "{}", g.output);
    assert!(g.addresses().contains(&IpAddr::V6(dns::ANSWERED_V6)), "{}", g.output);
    let asked: Vec<String> = lab.server_queries().into_iter().filter(|q| q.qtype == "AAAA").map(|q| q.name).collect();
    assert_eq!(asked, dns::search_expansions(dns::ANSWERED), "the resolver's path through the search list");
    for expansion in &dns::search_expansions(dns::ANSWERED)[..3] {
        let a = lab.query(&Query::new(expansion).qtype("AAAA"));
        assert_eq!(a.rcode(), "NXDOMAIN", "{expansion}: {}", a.output);
    }

    // A service name: the first expansion is NXDOMAIN, the second answers (A and AAAA).
    let before = lab.server_queries().len();
    let g = lab.getent(dns::SERVICE_SHORT, true, None);
    assert_eq!(g.exit_code, Some(0), "{}", g.output);
    assert!(g.addresses().contains(&IpAddr::V4(dns::SERVICE_V4)), "{}", g.output);
    let asked: Vec<_> = lab.server_queries()[before..].to_vec();
    let names: Vec<&str> = asked.iter().map(|q| q.name.as_str()).collect();
    let first = format!("{}.{}", dns::SERVICE_SHORT, dns::SEARCH[0]);
    assert!(names.iter().take_while(|n| **n == first).count() >= 1, "{names:?}");
    assert!(names.ends_with(&[dns::SERVICE_FQDN, dns::SERVICE_FQDN]), "getaddrinfo asks A and AAAA: {names:?}");
    assert!(names.iter().all(|n| *n == first || *n == dns::SERVICE_FQDN), "{names:?}");
    assert!(asked.iter().all(|q| q.client.ip() == lab.client_addr(Family::V4)), "{asked:?}");
    let a = lab.query(&Query::new(&first));
    assert_eq!(a.rcode(), "NXDOMAIN", "{}", a.output);
    assert!(g.pid > 0);
}

#[test]
#[ignore = "needs root"]
fn pod_clients_query_from_their_own_netns_and_kubernetes_cgroup() {
    let _turn = kernel_test("dns_lab_pod");
    let lab = DnsLab::start("pod");
    for systemd in [false, true] {
        let pod = lab.pod(systemd);
        assert_ne!(pod.netns(), lab.client_netns());
        assert!(pod.cgroup_path().starts_with(if systemd { "/kubepods.slice/" } else { "/kubepods/burstable/pod" }));
        assert!(pod.cgroup_path().contains(pod.container_id()), "{}", pod.cgroup_path());
        assert_eq!(pod.container_id().len(), 64);
        // What the pod's processes see: the cgroup in each hierarchy, the pod's netns.
        let who =
            lab.run_client(&["sh", "-c", "echo $$; cat /proc/self/cgroup; readlink /proc/self/ns/net"], Some(&pod));
        assert_eq!(who.exit_code, Some(0), "{}", who.stderr);
        let mut lines = who.stdout.lines();
        assert_eq!(lines.next().and_then(|l| l.parse().ok()), Some(who.pid), "the reported pid is the process's own");
        let cgroups: Vec<&str> = who.stdout.lines().filter(|l| l.contains("kubepods")).collect();
        assert_eq!(cgroups.len(), pod.cgroup.leaves().len(), "{}", who.stdout);
        assert!(cgroups.iter().all(|l| l.ends_with(pod.cgroup_path())), "{}", who.stdout);
        let pod_net = std::fs::read_link(format!("/proc/{}/ns/net", lab.named_pid())).expect("named's netns");
        assert!(!who.stdout.contains(&pod_net.display().to_string()), "the pod is not in the server namespace");

        for q in [Query::new(dns::ANSWERED).in_pod(&pod), Query::new(dns::NXDOMAIN).v6().tcp().in_pod(&pod)] {
            let a = lab.query(&q);
            let want = if q.name == dns::ANSWERED { "NOERROR" } else { "NXDOMAIN" };
            assert_eq!(a.rcode(), want, "{}", a.output);
            assert_eq!(a.client_netns, pod.netns());
            let seen = logged(&lab, &q.name);
            let last = seen.last().expect("BIND logged the pod's query");
            assert_eq!(last.client.ip(), pod.addr(q.family), "from the pod's address");
        }
        let g = lab.getent(dns::SERVICE_SHORT, false, Some(&pod));
        assert_eq!(g.exit_code, Some(0), "{}", g.output);
        let leaves = pod.cgroup.leaves();
        drop(pod);
        assert!(leaves.iter().all(|l| !l.exists()), "the pod's cgroups are removed");
    }
}

#[test]
#[ignore = "needs root"]
fn everything_the_lab_made_is_removed_on_drop_also_after_a_panic() {
    let _turn = kernel_test("dns_lab_cleanup");
    let host_resolver = std::fs::read("/etc/resolv.conf").expect("the host's resolv.conf");
    let made = std::panic::catch_unwind(|| {
        let lab = DnsLab::start("cleanup");
        assert_eq!(lab.run_client(&["cat", "/etc/resolv.conf"], None).stdout, lab.resolv_conf());
        let pod = lab.pod(false);
        lab.blackhole(true);
        let made = (
            lab.server_netns().to_string(),
            lab.client_netns().to_string(),
            pod.netns().to_string(),
            lab.named_pid(),
            pod.cgroup.leaves(),
        );
        // Hand out what was made, then fail the way a test does: Drop must still run.
        std::panic::panic_any(made);
    })
    .expect_err("the lab's user panicked");
    let (server, client, pod, named, leaves) =
        *made.downcast::<(String, String, String, u32, Vec<std::path::PathBuf>)>().expect("what the lab made");
    for ns in [&server, &client, &pod] {
        assert!(!Path::new("/var/run/netns").join(ns).exists(), "netns {ns} is left");
        assert!(!Path::new("/etc/netns").join(ns).exists(), "/etc/netns/{ns} is left");
    }
    assert!(!Path::new(&format!("/proc/{named}")).exists(), "named ({named}) still runs");
    assert!(leaves.iter().all(|l| !l.exists()), "cgroups left: {leaves:?}");
    let after = std::fs::read("/etc/resolv.conf").expect("the host's resolv.conf");
    assert_eq!(after, host_resolver, "the host's resolver config is untouched");
}

#[test]
#[ignore = "needs root"]
fn a_lab_left_by_a_killed_test_process_is_removed_by_the_next_lab() {
    let _turn = kernel_test("dns_lab_leftovers");
    // A pid above pid_max belongs to no process: as if its test binary had been killed.
    let pid_max: u32 =
        std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).expect("pid_max");
    let dead = pid_max + 1;
    let leftover = format!("dnslab-left-over-{dead}-0-srv");
    run(&["ip", "netns", "add", &leftover]);
    std::fs::create_dir_all(Path::new("/etc/netns").join(&leftover)).expect("mkdir");
    let _lab = DnsLab::start("leftovers");
    let gone = !Path::new("/var/run/netns").join(&leftover).exists();
    if !gone {
        let _ = std::process::Command::new("ip").args(["netns", "del", &leftover]).status();
    }
    assert!(gone, "the dead process's namespace {leftover} is still there");
    assert!(!Path::new("/etc/netns").join(&leftover).exists());
}

#[test]
#[ignore = "needs root"]
fn unbound_is_a_second_independent_server_and_glibc_falls_back_to_it_past_a_silent_first() {
    let _turn = kernel_test("dns_lab_second");
    let lab = DnsLab::start("second");
    let second = |q: Query<'static>| q.server(Server::Second);
    for (q, rcode) in [
        (second(Query::new(dns::ANSWERED)), "NOERROR"),
        (second(Query::new(dns::ANSWERED).qtype("AAAA").v6()), "NOERROR"),
        (second(Query::new(dns::NXDOMAIN).tcp()), "NXDOMAIN"),
        (second(Query::new(dns::REFUSED).v6().tcp()), "REFUSED"),
    ] {
        let a = lab.query(&q);
        assert_eq!(a.rcode(), rcode, "{q:?}: {}", a.output);
        assert_eq!(a.server, lab.server_socket(Server::Second, q.family));
    }
    let before = lab.server_queries().len();
    lab.query(&second(Query::new(dns::ANSWERED)));
    assert_eq!(lab.server_queries().len(), before, "Unbound answers without asking BIND");

    // BIND silent, Unbound second in resolv.conf: glibc waits out its one-second timeout
    // on BIND, then gets the answer from Unbound.
    lab.set_nameservers(&[lab.server_v4(), lab.server_addr(Server::Second, Family::V4)], None);
    lab.blackhole(true);
    let g = lab.getent(&format!("{}.", dns::ANSWERED), false, None);
    assert_eq!(g.exit_code, Some(0), "{}", g.output);
    assert!(g.addresses().contains(&IpAddr::V6(dns::ANSWERED_V6)), "{}", g.output);
    assert!(g.wall >= Duration::from_secs(1), "the first server's timeout was waited out: {:?}", g.wall);
    assert_eq!(lab.server_queries().len(), before, "BIND never got the black-holed query");
    let replies =
        lab.unbound_log().lines().filter(|l| l.contains(&format!("{}. AAAA IN NOERROR", dns::ANSWERED))).count();
    assert!(replies >= 2, "Unbound answered the fallback:\n{}", lab.unbound_log());

    // The second server black-holed on its own, BIND released.
    lab.blackhole(false);
    lab.blackhole_server(Server::Second, true);
    let a = lab.query(&second(Query::new(dns::ANSWERED)).wait(Duration::from_secs(1)));
    assert!(!a.answered(), "{}", a.output);
    assert_eq!(lab.query(&Query::new(dns::ANSWERED)).rcode(), "NOERROR");
    lab.blackhole_server(Server::Second, false);
    assert_eq!(lab.query(&second(Query::new(dns::ANSWERED))).rcode(), "NOERROR");
}

#[test]
#[ignore = "needs root"]
fn a_spawned_client_keeps_its_pid_netns_and_pod_cgroup_while_it_runs() {
    let _turn = kernel_test("dns_lab_spawn");
    let lab = DnsLab::start("spawn");
    let pod = lab.pod(true);
    let script = format!("read _; getent hosts {}", dns::SERVICE_SHORT);
    let mut child = lab.spawn_client(&["sh", "-c", &script], Some(&pod));
    let pid = child.id();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the client's cgroups");
    assert_eq!(
        cgroup.lines().filter(|l| l.ends_with(pod.cgroup_path())).count(),
        pod.cgroup.leaves().len(),
        "{cgroup}"
    );
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("the client's netns");
    let pod_ns = lab.run_client(&["readlink", "/proc/self/ns/net"], Some(&pod));
    assert_eq!(ns.display().to_string(), pod_ns.stdout.trim());
    assert_eq!(pod_ns.stdout.trim(), format!("net:[{}]", dns::netns_inode(pod.netns())));
    // Let it look the name up, then collect what it found.
    use std::io::Write;
    child.stdin.take().map(|mut i| i.write_all(b"go\n")).transpose().expect("stdin");
    let out = child.wait_with_output().expect("wait");
    let text = String::from_utf8_lossy(&out.stdout);
    // gethostbyname asks AAAA first, and the service has one.
    assert!(out.status.success() && text.starts_with("2001:db8::81 "), "{text}");
    let asked = lab.server_queries();
    assert!(asked.iter().any(|q| q.name == dns::SERVICE_FQDN && q.client.ip() == pod.addr(Family::V4)), "{asked:?}");
}

#[test]
#[ignore = "needs root"]
fn raw_packets_distinct_and_reused_ids_formerr_notimp_and_counted_black_hole_packets() {
    let _turn = kernel_test("dns_lab_raw");
    let lab = DnsLab::start("raw");
    let main = lab.server_socket(Server::Main, Family::V4);
    let wait = Duration::from_millis(1500);

    // Fifty queries with distinct ids at once from one socket: fifty answers, ids matched.
    let before = lab.server_queries().len();
    let packets: Vec<Vec<u8>> = (0..50u16).map(|i| dns::query_packet(1000 + i, dns::ANSWERED, 1)).collect();
    let x = lab.send_udp(&packets, main, wait, None);
    let mut ids: Vec<u16> = x.replies.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1000..1050).collect::<Vec<u16>>());
    assert!(x.replies.iter().all(|r| r.rcode_name() == "NOERROR"));
    let logged_now = lab.server_queries()[before..].to_vec();
    assert_eq!(logged_now.len(), 50);
    assert!(logged_now.iter().all(|q| q.client == x.local), "{logged_now:?}");

    // One id reused for two names: two answers with that id, each with its own rcode.
    let reused = [dns::query_packet(7, dns::ANSWERED, 1), dns::query_packet(7, dns::NXDOMAIN, 1)];
    let x = lab.send_udp(&reused, main, wait, None);
    let mut rcodes: Vec<(u16, &str)> = x.replies.iter().map(|r| (r.id, r.rcode_name())).collect();
    rcodes.sort_unstable();
    assert_eq!(rcodes, [(7, "NOERROR"), (7, "NXDOMAIN")]);

    // A retired opcode: NOTIMP. A question cut short: FORMERR.
    let x = lab.send_udp(&[dns::query_packet_with_opcode(8, dns::ANSWERED, 1, 1)], main, wait, None);
    assert_eq!(x.replies.iter().map(|r| (r.id, r.rcode_name())).collect::<Vec<_>>(), [(8, "NOTIMP")]);
    let mut cut = dns::query_packet(9, dns::ANSWERED, 1);
    cut.truncate(cut.len() - 3);
    let x = lab.send_udp(&[cut], main, wait, None);
    assert_eq!(x.replies.iter().map(|r| (r.id, r.rcode_name())).collect::<Vec<_>>(), [(9, "FORMERR")]);

    // The black hole swallows and counts: twenty raw packets, then dig retransmitting once.
    lab.blackhole(true);
    let packets: Vec<Vec<u8>> = (0..20u16).map(|i| dns::query_packet(2000 + i, dns::ANSWERED, 1)).collect();
    let x = lab.send_udp(&packets, main, Duration::from_millis(500), None);
    assert!(x.replies.is_empty(), "{:?}", x.replies);
    assert_eq!(lab.blackholed_packets(Server::Main), 20);
    let a = lab.query(&Query::new(dns::ANSWERED).wait(Duration::from_secs(1)).tries(2));
    assert!(!a.answered(), "{}", a.output);
    assert_eq!(lab.blackholed_packets(Server::Main), 22, "dig +tries=2 sent the query twice");
    let a = lab.query(&Query::new(dns::ANSWERED).wait(Duration::from_secs(1)));
    assert!(!a.answered());
    assert_eq!(lab.blackholed_packets(Server::Main), 23, "dig +tries=1 sent it once");
    lab.blackhole(false);
    assert_eq!(lab.blackholed_packets(Server::Main), 0);
}
