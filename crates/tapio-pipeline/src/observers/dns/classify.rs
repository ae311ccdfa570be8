//! DNS records → evidence: answers the kernel judged, and queries the sweep found
//! unanswered. Pure: unit-tested with crafted records.

use crate::evidence::{millis_text, one_line, DnsFacts, Facts, Outcome, Severity, WorkloadIds};
use crate::observers::network::classify::{addr, endpoint};
use crate::stamp::{Draft, Stamper, Verdict};
use tapio_bpf::abi::{
    tapio_dns_event, tapio_dns_query, TAPIO_DNS_Q_NAME_TRUNCATED, TAPIO_DNS_Q_TASK_KNOWN, TAPIO_DNS_TCP,
    TAPIO_DNS_V_FAILURE, TAPIO_DNS_V_LATE, TAPIO_DNS_V_LATENCY_CRITICAL, TAPIO_DNS_V_LATENCY_WARNING,
};
use tapio_bpf::record::comm_str;

const OBSERVER: &str = "dns";
const AF_INET6: u16 = 10;

/// The names of the rcodes the header of an answer to a standard query can carry (RFC 1035;
/// YXDOMAIN for a DNAME substitution too long, RFC 6672; NOTAUTH for a TSIG failure, RFC
/// 8945). The header holds only an rcode's low four bits: an answer with EDNS may carry the
/// rest in its OPT record, which is not read, so the update-only codes (RFC 2136) are not
/// named here. 7 (YXRRSET to an update) is what BADCOOKIE (23) leaves in the header; such
/// codes are reported by number.
pub fn rcode_name(rcode: u16) -> Option<&'static str> {
    Some(match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        9 => "NOTAUTH",
        _ => return None,
    })
}

/// The names of common query types; others are reported by number only.
pub fn qtype_name(qtype: u16) -> Option<&'static str> {
    Some(match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return None,
    })
}

fn base_facts(q: &tapio_dns_query) -> DnsFacts {
    let known = u32::from(q.flags) & TAPIO_DNS_Q_TASK_KNOWN != 0;
    let name = tapio_bpf::dns::qname(q);
    DnsFacts {
        pid: known.then_some(q.task.pid),
        tid: known.then_some(q.task.tid),
        comm: known.then(|| comm_str(&q.task.comm)),
        // The root name is empty on the wire.
        query_name: if name.is_empty() { ".".to_string() } else { name },
        query_name_truncated: u32::from(q.flags) & TAPIO_DNS_Q_NAME_TRUNCATED != 0,
        query_type: q.qtype,
        query_type_name: qtype_name(q.qtype),
        rcode: None,
        rcode_name: None,
        family: if q.family == AF_INET6 { "ipv6" } else { "ipv4" },
        transport: if u32::from(q.transport) == TAPIO_DNS_TCP { "tcp" } else { "udp" },
        server_addr: addr(q.family, &q.server),
        server_port: q.server_port,
        client_addr: addr(q.family, &q.client),
        client_port: q.client_port,
        transaction_id: q.txid,
        latency_ns: None,
        waited_ns: 0,
        transmissions: q.transmissions,
        answer_count: None,
        threshold_ns: None,
    }
}

/// The query's workload: its socket owner's cgroups, or (owner unseen) the socket's own
/// cgroup2 id, which the kernel set when the socket was created.
fn workload(q: &tapio_dns_query) -> WorkloadIds {
    WorkloadIds { cgroup_id: q.task.cgroup_id, mem_cgroup_id: q.task.mem_cgroup_id }
}

/// "example.org A from curl (pid 7) to 10.0.0.1:53 over udp"
fn describe(f: &DnsFacts, q: &tapio_dns_query) -> String {
    let qtype = f.query_type_name.map(str::to_string).unwrap_or_else(|| format!("type {}", f.query_type));
    let who = match (&f.comm, f.pid) {
        (Some(comm), Some(pid)) => format!(" from {comm} (pid {pid})"),
        _ => String::new(),
    };
    // The comm is text a process chose (the name's bytes come escaped): one line all the same.
    one_line(format!(
        "DNS query {} {qtype}{who} to {} over {}",
        f.query_name,
        endpoint(q.family, &q.server, q.server_port),
        f.transport
    ))
}

/// Classifies an answer the kernel judged evidence.
pub fn answer(ev: &tapio_dns_event, stamper: &mut Stamper) -> Verdict {
    let q = &ev.query;
    let verdict = u32::from(ev.verdict);
    let mut facts = base_facts(q);
    facts.rcode = Some(ev.rcode);
    facts.rcode_name = rcode_name(ev.rcode);
    facts.latency_ns = Some(ev.latency_ns);
    facts.waited_ns = ev.hdr.boot_ns.saturating_sub(q.first_sent_ns);
    facts.answer_count = Some(ev.answer_count);
    let what = describe(&facts, q);
    let (kind, severity, outcome, code, message) = if verdict & TAPIO_DNS_V_LATE != 0 {
        facts.threshold_ns = Some(ev.threshold_ns);
        let message = format!(
            "{what} got no answer within {}; the answer came after {}",
            millis_text(ev.threshold_ns),
            millis_text(ev.latency_ns)
        );
        ("kernel.dns.timeout", Severity::Error, Outcome::Timeout, "DNS_TIMEOUT", message)
    } else if verdict & TAPIO_DNS_V_FAILURE != 0 {
        if ev.rcode == 0 {
            return Verdict::Drop("invalid_failure_record");
        }
        let name = facts.rcode_name.map(str::to_string).unwrap_or_else(|| format!("rcode {}", ev.rcode));
        let message = format!("{what} was answered {name} after {}", millis_text(ev.latency_ns));
        // NXDOMAIN is reported only on request, and says less about the resolver's health.
        let severity = if ev.rcode == 3 { Severity::Warning } else { Severity::Error };
        ("kernel.dns.failure", severity, Outcome::Failure, facts.rcode_name.unwrap_or("DNS_ERROR"), message)
    } else if verdict & (TAPIO_DNS_V_LATENCY_WARNING | TAPIO_DNS_V_LATENCY_CRITICAL) != 0 {
        if ev.threshold_ns == 0 || ev.latency_ns < ev.threshold_ns {
            // The kernel judged this answer slow: a record that says otherwise is corrupt.
            return Verdict::Drop("invalid_latency_record");
        }
        let critical = verdict & TAPIO_DNS_V_LATENCY_CRITICAL != 0;
        facts.threshold_ns = Some(ev.threshold_ns);
        let level = if critical { "critical" } else { "warning" };
        let message = format!(
            "{what} was answered after {} ({level} threshold {})",
            millis_text(ev.latency_ns),
            millis_text(ev.threshold_ns)
        );
        let severity = if critical { Severity::Critical } else { Severity::Warning };
        ("kernel.dns.latency_spike", severity, Outcome::Degraded, "SLOW_DNS_ANSWER", message)
    } else {
        return Verdict::Drop("invalid_answer_record");
    };
    stamper.stamp(Draft {
        kind,
        observer: OBSERVER,
        severity,
        outcome,
        code,
        message,
        boot_ns: ev.hdr.boot_ns,
        generation: ev.hdr.generation,
        workload: workload(q),
        facts: Facts::Dns(facts),
    })
}

/// Classifies a query the sweep found unanswered `timeout_ns` after its latest
/// transmission, at boot time `now_ns`, judged by config `generation`.
pub fn timeout(q: &tapio_dns_query, now_ns: u64, timeout_ns: u64, generation: u32, stamper: &mut Stamper) -> Verdict {
    let mut facts = base_facts(q);
    facts.waited_ns = now_ns.saturating_sub(q.first_sent_ns);
    facts.threshold_ns = Some(timeout_ns);
    let sent = if q.transmissions > 1 { format!(" (sent {} times)", q.transmissions) } else { String::new() };
    let message = format!("{}{sent} got no answer within {}", describe(&facts, q), millis_text(timeout_ns));
    stamper.stamp(Draft {
        kind: "kernel.dns.timeout",
        observer: OBSERVER,
        severity: Severity::Error,
        outcome: Outcome::Timeout,
        code: "DNS_TIMEOUT",
        message,
        // The moment the timeout elapsed, not the moment the sweep saw it.
        boot_ns: q.last_sent_ns.saturating_add(timeout_ns),
        generation,
        workload: workload(q),
        facts: Facts::Dns(facts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::testing::{emitted, stamper};
    use tapio_bpf::abi::{TAPIO_DNS_ANSWER, TAPIO_DNS_UDP};

    fn query() -> tapio_dns_query {
        let mut q = tapio_dns_query {
            first_sent_ns: 1_000_000_000,
            last_sent_ns: 1_000_000_000,
            client_port: 40_000,
            server_port: 53,
            family: 2,
            txid: 0xbeef,
            qtype: 28,
            transport: TAPIO_DNS_UDP as u8,
            flags: TAPIO_DNS_Q_TASK_KNOWN as u8,
            transmissions: 1,
            ..Default::default()
        };
        q.task.pid = 42;
        q.task.tid = 43;
        q.task.cgroup_id = 7;
        q.task.mem_cgroup_id = 9;
        q.task.comm[..4].copy_from_slice(b"curl");
        q.client[..4].copy_from_slice(&[10, 99, 0, 2]);
        q.server[..4].copy_from_slice(&[10, 99, 0, 1]);
        q.qname[..17].copy_from_slice(b"\x03API\x07example\x03org\x00");
        q
    }

    fn answered(rcode: u16, verdict: u32, latency_ns: u64, threshold_ns: u64) -> tapio_dns_event {
        let mut ev = tapio_dns_event { query: query(), latency_ns, threshold_ns, rcode, ..Default::default() };
        ev.hdr.kind = TAPIO_DNS_ANSWER;
        ev.hdr.generation = 5;
        ev.hdr.boot_ns = ev.query.last_sent_ns + latency_ns;
        ev.verdict = verdict as u16;
        ev.answer_count = 0;
        ev
    }

    #[test]
    fn servfail_is_a_failure_with_every_fact() {
        let e = emitted(answer(&answered(2, TAPIO_DNS_V_FAILURE, 1_500_000, 0), &mut stamper()));
        assert_eq!(
            (e.kind, e.error.code, e.severity, e.config_generation),
            ("kernel.dns.failure", "SERVFAIL", Severity::Error, 5)
        );
        assert_eq!(e.workload_ids, WorkloadIds { cgroup_id: 7, mem_cgroup_id: 9 });
        let Facts::Dns(f) = &e.facts else { panic!("dns facts expected") };
        assert_eq!((f.pid, f.comm.as_deref(), f.query_name.as_str()), (Some(42), Some("curl"), "api.example.org"));
        assert_eq!((f.query_type_name, f.rcode, f.rcode_name), (Some("AAAA"), Some(2), Some("SERVFAIL")));
        assert_eq!(
            (f.server_addr.as_str(), f.server_port, f.client_addr.as_str(), f.client_port),
            ("10.99.0.1", 53, "10.99.0.2", 40_000)
        );
        assert_eq!((f.transport, f.family, f.transaction_id, f.latency_ns), ("udp", "ipv4", 0xbeef, Some(1_500_000)));
        assert!(
            e.error
                .message
                .contains("api.example.org AAAA from curl (pid 42) to 10.99.0.1:53 over udp was answered SERVFAIL"),
            "{}",
            e.error.message
        );
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("query_name_truncated"), "a false flag is left out: {json}");
    }

    #[test]
    fn an_unknown_owner_is_null_not_invented() {
        let mut ev = answered(5, TAPIO_DNS_V_FAILURE, 1_000, 0);
        ev.query.flags = 0;
        ev.query.task.pid = 0;
        let e = emitted(answer(&ev, &mut stamper()));
        let Facts::Dns(f) = &e.facts else { panic!("dns facts expected") };
        assert_eq!((f.pid, f.comm.clone(), e.error.code), (None, None, "REFUSED"));
    }

    #[test]
    fn slow_answers_are_latency_spikes_at_their_level_and_corrupt_ones_are_dropped() {
        let e = emitted(answer(&answered(0, TAPIO_DNS_V_LATENCY_WARNING, 600_000_000, 500_000_000), &mut stamper()));
        assert_eq!((e.kind, e.severity, e.outcome), ("kernel.dns.latency_spike", Severity::Warning, Outcome::Degraded));
        let e =
            emitted(answer(&answered(0, TAPIO_DNS_V_LATENCY_CRITICAL, 3_000_000_000, 2_000_000_000), &mut stamper()));
        assert_eq!(e.severity, Severity::Critical);
        assert!(e.error.message.contains("after 3000.0 ms (critical threshold 2000.0 ms)"), "{}", e.error.message);
        assert!(matches!(answer(&answered(0, TAPIO_DNS_V_LATENCY_WARNING, 1, 500), &mut stamper()), Verdict::Drop(_)));
        assert!(matches!(answer(&answered(0, TAPIO_DNS_V_FAILURE, 1, 0), &mut stamper()), Verdict::Drop(_)));
        assert!(matches!(answer(&answered(0, 0, 1, 0), &mut stamper()), Verdict::Drop(_)));
    }

    #[test]
    fn an_answer_after_the_timeout_is_a_timeout_and_so_is_silence() {
        let e = emitted(answer(&answered(0, TAPIO_DNS_V_LATE, 5_200_000_000, 5_000_000_000), &mut stamper()));
        assert_eq!((e.kind, e.outcome, e.error.code), ("kernel.dns.timeout", Outcome::Timeout, "DNS_TIMEOUT"));
        // The late answer is a fact of this timeout: its rcode and latency are reported.
        let Facts::Dns(f) = &e.facts else { panic!("dns facts expected") };
        assert_eq!((f.rcode, f.latency_ns, f.threshold_ns), (Some(0), Some(5_200_000_000), Some(5_000_000_000)));
        let mut q = query();
        q.transmissions = 2;
        q.last_sent_ns = q.first_sent_ns + 5_000_000_000;
        let e = emitted(timeout(&q, q.last_sent_ns + 5_300_000_000, 5_000_000_000, 3, &mut stamper()));
        assert_eq!((e.kind, e.config_generation), ("kernel.dns.timeout", 3));
        let Facts::Dns(f) = &e.facts else { panic!("dns facts expected") };
        assert_eq!((f.latency_ns, f.rcode, f.transmissions, f.waited_ns), (None, None, 2, 10_300_000_000));
        assert!(e.error.message.contains("(sent 2 times) got no answer within 5000.0 ms"), "{}", e.error.message);
    }

    /// A comm may hold a line break (a label's bytes are escaped by the name's decoding):
    /// the message stays one line; the comm fact keeps the name as it was.
    #[test]
    fn a_comm_with_line_breaks_keeps_the_message_one_line() {
        let mut ev = answered(2, TAPIO_DNS_V_FAILURE, 1_000_000, 0);
        ev.query.task.comm[..4].copy_from_slice(b"c\rl\n");
        let e = emitted(answer(&ev, &mut stamper()));
        assert!(
            e.error.message.starts_with("DNS query api.example.org AAAA from c l  (pid 42) to 10.99.0.1:53"),
            "{:?}",
            e.error.message
        );
        let Facts::Dns(f) = &e.facts else { panic!("dns facts expected") };
        assert_eq!(f.comm.as_deref(), Some("c\rl\n"));
    }

    #[test]
    fn names_of_types_and_codes() {
        assert_eq!((qtype_name(1), qtype_name(65), qtype_name(999)), (Some("A"), Some("HTTPS"), None));
        assert_eq!((rcode_name(2), rcode_name(5), rcode_name(11)), (Some("SERVFAIL"), Some("REFUSED"), None));
        // BADCOOKIE (23) leaves 7 in the header: not an update's YXRRSET.
        assert_eq!((rcode_name(7), rcode_name(8), rcode_name(10)), (None, None, None));
    }

    #[test]
    fn an_rcode_whose_high_bits_are_not_read_is_reported_by_number_not_misnamed() {
        let e = emitted(answer(&answered(7, TAPIO_DNS_V_FAILURE, 1_000_000, 0), &mut stamper()));
        assert_eq!((e.kind, e.error.code), ("kernel.dns.failure", "DNS_ERROR"));
        assert!(e.error.message.contains("was answered rcode 7 after"), "{}", e.error.message);
        let Facts::Dns(f) = &e.facts else { panic!("dns facts expected") };
        assert_eq!((f.rcode, f.rcode_name), (Some(7), None));
    }
}
