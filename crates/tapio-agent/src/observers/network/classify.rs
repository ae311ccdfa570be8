//! Network records → evidence. Pure: every rule here is unit-tested with crafted records.
//!
//! A failed connect is exactly one of refused (an RST answered the SYN), timeout (the kernel
//! gave up after its SYN retries), or unreachable (an ICMP error ended it). A connect whose
//! outcome cannot be told apart without guessing is dropped and counted instead.

use crate::evidence::{ConnectionFacts, Facts, Outcome, Severity, WorkloadIds};
use crate::stamp::{Draft, Stamper, Verdict};
use std::net::Ipv6Addr;
use tapio_bpf::abi::{
    tapio_net_event, TAPIO_NET_CONNECT_FAILED, TAPIO_NET_F_LOCAL_SHUTDOWN, TAPIO_NET_F_RST_IN_SYN_SENT,
    TAPIO_NET_F_SOFT_ERROR, TAPIO_NET_F_START_KNOWN, TAPIO_NET_F_TASK_KNOWN, TAPIO_NET_RESET,
    TAPIO_NET_RETRANSMIT_SPIKE, TAPIO_NET_RTT_DEGRADED,
};
use tapio_bpf::record::comm_str;

const OBSERVER: &str = "network";
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

const ETIMEDOUT: u32 = 110;
const ECONNREFUSED: u32 = 111;

/// Errors an ICMP unreachable (v4 or v6) leaves on a connecting socket.
fn icmp_errno_name(errno: u32) -> Option<&'static str> {
    Some(match errno {
        101 => "ENETUNREACH",
        113 => "EHOSTUNREACH",
        112 => "EHOSTDOWN",
        64 => "ENONET",
        92 => "ENOPROTOOPT",
        13 => "EACCES",
        95 => "EOPNOTSUPP",
        71 => "EPROTO",
        ECONNREFUSED => "ECONNREFUSED",
        _ => return None,
    })
}

pub fn tcp_state_name(state: u32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// `addr:port` (IPv6 in brackets) of a kernel address (IPv4 in the first 4 bytes).
pub(crate) fn endpoint(family: u16, raw: &[u8; 16], port: u16) -> String {
    let mut out = String::with_capacity(47);
    if family == AF_INET6 {
        out.push('[');
        push_addr(&mut out, family, raw);
        out.push(']');
    } else {
        push_addr(&mut out, family, raw);
    }
    out.push(':');
    out.push_str(itoa::Buffer::new().format(port));
    out
}

/// The text of a kernel address (IPv4 in the first 4 bytes).
pub(crate) fn addr(family: u16, raw: &[u8; 16]) -> String {
    let mut out = String::with_capacity(if family == AF_INET6 { 39 } else { 15 });
    push_addr(&mut out, family, raw);
    out
}

/// Appends an address's text. IPv4, the common case and the one a flood repeats, is written
/// octet by octet: through the formatting machinery, a record's three IPv4 texts cost about
/// a fifth of its classification and serialization (`scripts/bench pipeline`).
fn push_addr(out: &mut String, family: u16, raw: &[u8; 16]) {
    if family == AF_INET6 {
        use std::fmt::Write;
        // Writing into a String cannot fail.
        let _ = write!(out, "{}", Ipv6Addr::from(*raw));
        return;
    }
    let mut digits = itoa::Buffer::new();
    for (i, octet) in raw[..4].iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(digits.format(*octet));
    }
}

fn base_facts(ev: &tapio_net_event) -> ConnectionFacts {
    let known = u32::from(ev.flags) & TAPIO_NET_F_TASK_KNOWN != 0;
    ConnectionFacts {
        pid: known.then_some(ev.task.pid),
        comm: known.then(|| comm_str(&ev.task.comm)),
        family: if ev.family == AF_INET6 { "ipv6" } else { "ipv4" },
        src_addr: addr(ev.family, &ev.saddr),
        src_port: ev.sport,
        dst_addr: addr(ev.family, &ev.daddr),
        dst_port: ev.dport,
        ..ConnectionFacts::default()
    }
}

/// Classifies one network record, with every network hook attached.
pub fn classify(ev: &tapio_net_event, stamper: &mut Stamper) -> Verdict {
    classify_with(ev, stamper, true)
}

/// Classifies one network record. `resets_seen` says whether the RST hook
/// (tcp:tcp_receive_reset) is attached: without it, a refused connect's missing RST mark
/// proves nothing, so ECONNREFUSED cannot be told from an ICMP port unreachable.
pub fn classify_with(ev: &tapio_net_event, stamper: &mut Stamper, resets_seen: bool) -> Verdict {
    if ev.family != AF_INET && ev.family != AF_INET6 {
        return Verdict::Drop("unknown_address_family");
    }
    let dst = endpoint(ev.family, &ev.daddr, ev.dport);
    let workload = WorkloadIds { cgroup_id: ev.task.cgroup_id, mem_cgroup_id: ev.task.mem_cgroup_id };
    let mut facts = base_facts(ev);
    let flags = u32::from(ev.flags);
    let (kind, severity, outcome, code, message) = match ev.hdr.kind {
        TAPIO_NET_CONNECT_FAILED => {
            let rst = flags & TAPIO_NET_F_RST_IN_SYN_SENT != 0;
            let start_known = flags & TAPIO_NET_F_START_KNOWN != 0;
            let soft = flags & TAPIO_NET_F_SOFT_ERROR != 0;
            facts.errno = Some(ev.sk_err);
            facts.soft_error = Some(soft);
            facts.syn_retries = Some(ev.syn_retries);
            facts.connect_duration_ns = (start_known && flags & TAPIO_NET_F_TASK_KNOWN != 0).then_some(ev.duration_ns);
            if rst {
                (
                    "kernel.network.connection_refused",
                    Severity::Warning,
                    Outcome::Failure,
                    "ECONNREFUSED",
                    format!("TCP connect to {dst} was refused: the peer answered the SYN with RST"),
                )
            } else if ev.sk_err == ETIMEDOUT && !soft {
                (
                    "kernel.network.connection_timeout",
                    Severity::Error,
                    Outcome::Timeout,
                    "ETIMEDOUT",
                    format!("TCP connect to {dst} timed out after {} SYN retransmits with no answer", ev.syn_retries),
                )
            } else if ev.sk_err == ECONNREFUSED && (!start_known || !resets_seen) && !soft {
                // Refused by RST or by ICMP port unreachable: without the connect's start, or
                // with the RST hook not attached, we did not see which. Counted, not guessed.
                return Verdict::Drop("ambiguous_connect_failure");
            } else if let Some(name) = icmp_errno_name(ev.sk_err) {
                let how = if soft { "; the application then gave up the connect" } else { "" };
                (
                    "kernel.network.connection_unreachable",
                    Severity::Error,
                    Outcome::Failure,
                    name,
                    format!("TCP connect to {dst} failed on an ICMP unreachable ({name}){how}"),
                )
            } else {
                return Verdict::Drop("unclassified_connect_error");
            }
        }
        TAPIO_NET_RESET => {
            // The application had shut down reading and the connection was in FIN_WAIT1/2:
            // there the kernel aborts on arriving data with the same tcp_reset() a peer's
            // RST causes, and the hook cannot see which segment it was. Not "reset by the
            // peer" without proof; counted by name. (The application had closed both
            // directions already, so no reader of the connection loses anything.)
            if flags & TAPIO_NET_F_LOCAL_SHUTDOWN != 0 {
                return Verdict::Drop("reset_after_local_shutdown");
            }
            let state = tcp_state_name(ev.state);
            facts.tcp_state = Some(state);
            facts.bytes_acked = Some(ev.bytes_acked);
            facts.bytes_received = Some(ev.bytes_received);
            facts.srtt_us = Some(ev.srtt_us);
            facts.total_retransmits = Some(ev.total_retransmits);
            (
                "kernel.network.connection_reset",
                Severity::Warning,
                Outcome::Failure,
                "ECONNRESET",
                format!("TCP connection with {dst} was reset by the peer in state {state}"),
            )
        }
        TAPIO_NET_RETRANSMIT_SPIKE => {
            facts.tcp_state = Some(tcp_state_name(ev.state));
            facts.retransmits_in_window = Some(ev.retransmits_in_window);
            facts.window_ms = Some(ev.window_ms);
            facts.total_retransmits = Some(ev.total_retransmits);
            facts.srtt_us = Some(ev.srtt_us);
            facts.cwnd = Some(ev.cwnd);
            (
                "kernel.network.retransmit_spike",
                Severity::Warning,
                Outcome::Degraded,
                "RETRANSMIT_SPIKE",
                format!(
                    "TCP connection with {dst} retransmitted {} segments within {} ms",
                    ev.retransmits_in_window, ev.window_ms
                ),
            )
        }
        TAPIO_NET_RTT_DEGRADED => {
            facts.srtt_us = Some(ev.srtt_us);
            facts.cwnd = Some(ev.cwnd);
            facts.baseline_us = Some(ev.baseline_us);
            facts.baseline_samples = Some(ev.baseline_samples);
            (
                "kernel.network.rtt_degradation",
                Severity::Warning,
                Outcome::Degraded,
                "RTT_DEGRADATION",
                format!(
                    "smoothed RTT to {dst} is {} us against a learned baseline of {} us",
                    ev.srtt_us, ev.baseline_us
                ),
            )
        }
        _ => return Verdict::Drop("unknown_record_kind"),
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
        workload,
        facts: Facts::Connection(facts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::testing::{emitted, stamper};

    #[test]
    fn addresses_read_as_the_standard_library_writes_them() {
        for v4 in [[0, 0, 0, 0], [255, 255, 255, 255], [10, 0, 12, 3], [127, 0, 0, 1], [192, 168, 100, 9]] {
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&v4);
            let std = std::net::Ipv4Addr::from(v4);
            assert_eq!(addr(AF_INET, &raw), std.to_string());
            assert_eq!(endpoint(AF_INET, &raw, 65535), format!("{std}:65535"));
            assert_eq!(endpoint(AF_INET, &raw, 0), format!("{std}:0"));
        }
        for v6 in ["::1", "::ffff:10.1.2.3", "2001:db8::8a2e:370:7334", "fe80::1"] {
            let std: Ipv6Addr = v6.parse().unwrap();
            assert_eq!(addr(AF_INET6, &std.octets()), std.to_string());
            assert_eq!(endpoint(AF_INET6, &std.octets(), 53), format!("[{std}]:53"));
        }
    }

    fn connect_failure(sk_err: u32, flags: u32) -> tapio_net_event {
        let mut ev = tapio_net_event::default();
        ev.hdr.kind = TAPIO_NET_CONNECT_FAILED;
        ev.hdr.generation = 3;
        ev.family = AF_INET;
        ev.saddr = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        ev.daddr = [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        ev.sport = 40000;
        ev.dport = 5432;
        ev.sk_err = sk_err;
        ev.flags = flags as u16;
        ev.task.pid = 42;
        ev.task.comm[..4].copy_from_slice(b"curl");
        ev.duration_ns = 1234;
        ev
    }

    #[test]
    fn without_the_reset_hook_a_refusal_is_ambiguous_not_icmp() {
        let known = TAPIO_NET_F_TASK_KNOWN | TAPIO_NET_F_START_KNOWN;
        // With the hook attached, no RST mark means ICMP port unreachable; without it, it
        // means nothing (the first kernel-matrix run on 5.10 reported RSTs as ICMP).
        let with_hook = emitted(classify_with(&connect_failure(ECONNREFUSED, known), &mut stamper(), true));
        assert_eq!(with_hook.kind, "kernel.network.connection_unreachable");
        assert!(matches!(
            classify_with(&connect_failure(ECONNREFUSED, known), &mut stamper(), false),
            Verdict::Drop("ambiguous_connect_failure")
        ));
        // A soft error comes only from ICMP, and a timeout never involves an RST: both stay.
        let soft = known | TAPIO_NET_F_SOFT_ERROR;
        let e = emitted(classify_with(&connect_failure(ECONNREFUSED, soft), &mut stamper(), false));
        assert_eq!(e.kind, "kernel.network.connection_unreachable");
        let e = emitted(classify_with(&connect_failure(ETIMEDOUT, known), &mut stamper(), false));
        assert_eq!(e.kind, "kernel.network.connection_timeout");
    }

    #[test]
    fn rst_in_syn_sent_is_refused_with_task_and_addresses() {
        let known = TAPIO_NET_F_RST_IN_SYN_SENT | TAPIO_NET_F_TASK_KNOWN | TAPIO_NET_F_START_KNOWN;
        let e = emitted(classify(&connect_failure(ECONNREFUSED, known), &mut stamper()));
        assert_eq!(e.kind, "kernel.network.connection_refused");
        assert_eq!(e.config_generation, 3);
        let Facts::Connection(f) = e.facts else { panic!() };
        assert_eq!((f.pid, f.comm.as_deref()), (Some(42), Some("curl")));
        assert_eq!((f.dst_addr.as_str(), f.dst_port, f.family), ("10.0.0.2", 5432, "ipv4"));
        assert_eq!(f.connect_duration_ns, Some(1234));
    }

    #[test]
    fn timeout_and_icmp_unreachable_are_told_apart_by_errno() {
        let started = TAPIO_NET_F_TASK_KNOWN | TAPIO_NET_F_START_KNOWN;
        let e = emitted(classify(&connect_failure(ETIMEDOUT, started), &mut stamper()));
        assert_eq!((e.kind, e.outcome), ("kernel.network.connection_timeout", Outcome::Timeout));
        let e = emitted(classify(&connect_failure(113, started), &mut stamper()));
        assert_eq!((e.kind, e.error.code), ("kernel.network.connection_unreachable", "EHOSTUNREACH"));
        // ICMP port unreachable (ECONNREFUSED without an RST) is unreachable, not refused.
        let e = emitted(classify(&connect_failure(ECONNREFUSED, started), &mut stamper()));
        assert_eq!(e.kind, "kernel.network.connection_unreachable");
    }

    #[test]
    fn a_soft_icmp_error_the_application_acted_on_is_unreachable() {
        let flags = TAPIO_NET_F_SOFT_ERROR | TAPIO_NET_F_TASK_KNOWN | TAPIO_NET_F_START_KNOWN;
        let e = emitted(classify(&connect_failure(113, flags), &mut stamper()));
        assert_eq!(e.kind, "kernel.network.connection_unreachable");
        assert!(e.error.message.ends_with("the application then gave up the connect"));
        let Facts::Connection(f) = e.facts else { panic!() };
        assert_eq!(f.soft_error, Some(true));
        // A soft ICMP port unreachable is still ICMP, even without the connect's start.
        let e = emitted(classify(&connect_failure(ECONNREFUSED, TAPIO_NET_F_SOFT_ERROR), &mut stamper()));
        assert_eq!(e.kind, "kernel.network.connection_unreachable");
    }

    #[test]
    fn what_cannot_be_told_apart_is_dropped_not_guessed() {
        assert!(matches!(
            classify(&connect_failure(ECONNREFUSED, 0), &mut stamper()),
            Verdict::Drop("ambiguous_connect_failure")
        ));
        assert!(matches!(
            classify(&connect_failure(9999, TAPIO_NET_F_START_KNOWN), &mut stamper()),
            Verdict::Drop("unclassified_connect_error")
        ));
        let mut bad = connect_failure(ETIMEDOUT, 0);
        bad.family = 99;
        assert!(matches!(classify(&bad, &mut stamper()), Verdict::Drop("unknown_address_family")));
    }

    #[test]
    fn unattributed_connects_say_so_instead_of_naming_a_task() {
        let e = emitted(classify(&connect_failure(ETIMEDOUT, TAPIO_NET_F_START_KNOWN), &mut stamper()));
        let Facts::Connection(f) = e.facts else { panic!() };
        assert_eq!((f.pid, f.comm), (None, None));
    }

    #[test]
    fn ipv6_endpoints_are_formatted() {
        let mut ev = connect_failure(ETIMEDOUT, TAPIO_NET_F_START_KNOWN);
        ev.family = AF_INET6;
        ev.daddr = Ipv6Addr::LOCALHOST.octets();
        let e = emitted(classify(&ev, &mut stamper()));
        assert!(e.error.message.contains("[::1]:5432"), "{}", e.error.message);
        let Facts::Connection(f) = e.facts else { panic!() };
        assert_eq!((f.dst_addr.as_str(), f.family), ("::1", "ipv6"));
    }

    #[test]
    fn reset_spike_and_rtt_carry_their_facts() {
        let mut ev = connect_failure(0, 0);
        ev.hdr.kind = TAPIO_NET_RESET;
        ev.state = 1;
        ev.bytes_acked = 10;
        let e = emitted(classify(&ev, &mut stamper()));
        let Facts::Connection(f) = e.facts else { panic!() };
        assert_eq!((f.tcp_state, f.bytes_acked, f.errno), (Some("ESTABLISHED"), Some(10), None));

        ev.hdr.kind = TAPIO_NET_RETRANSMIT_SPIKE;
        ev.retransmits_in_window = 5;
        ev.window_ms = 1000;
        let e = emitted(classify(&ev, &mut stamper()));
        assert_eq!(e.kind, "kernel.network.retransmit_spike");
        assert!(e.error.message.contains("5 segments within 1000 ms"));

        ev.hdr.kind = TAPIO_NET_RTT_DEGRADED;
        ev.srtt_us = 9000;
        ev.baseline_us = 100;
        let e = emitted(classify(&ev, &mut stamper()));
        let Facts::Connection(f) = e.facts else { panic!() };
        assert_eq!((f.srtt_us, f.baseline_us), (Some(9000), Some(100)));
    }

    #[test]
    fn a_reset_after_the_application_shut_down_reading_is_not_a_peer_reset() {
        let mut ev = connect_failure(0, TAPIO_NET_F_LOCAL_SHUTDOWN);
        ev.hdr.kind = TAPIO_NET_RESET;
        ev.state = 5;
        assert!(matches!(classify(&ev, &mut stamper()), Verdict::Drop("reset_after_local_shutdown")));
        ev.flags = 0;
        assert_eq!(emitted(classify(&ev, &mut stamper())).kind, "kernel.network.connection_reset");
    }

    #[test]
    fn records_serialize_in_the_evidence_shape() {
        let known = TAPIO_NET_F_RST_IN_SYN_SENT | TAPIO_NET_F_TASK_KNOWN | TAPIO_NET_F_START_KNOWN;
        let e = emitted(classify(&connect_failure(ECONNREFUSED, known), &mut stamper()));
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        for key in [
            "id",
            "type",
            "observer",
            "severity",
            "outcome",
            "error",
            "timestamp",
            "timestamp_unix_nanos",
            "node",
            "config_generation",
            "workload",
            "facts",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["error"]["code"], "ECONNREFUSED");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(v["facts"].get("retransmits_in_window").is_none());
    }
}
