//! Network records → evidence. Pure: every rule here is unit-tested with crafted records.
//!
//! A failed connect is exactly one of refused (an RST answered the SYN), timeout (the kernel
//! gave up after its SYN retries), or unreachable (an ICMP error ended it). A connect whose
//! outcome cannot be told apart without guessing is dropped and counted instead.

use crate::evidence::{ip_text, ipv4_text, AddrText, ConnectionFacts, Facts, Message, Outcome, Severity, WorkloadIds};
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
    Endpoint { ipv6: family == AF_INET6, addr: addr(family, raw), port }.push_to(&mut out);
    out
}

/// An address and port, written into a record's message where it is needed: as a `String`
/// of its own it was an allocation per record.
#[derive(Clone, Copy)]
pub(crate) struct Endpoint {
    pub ipv6: bool,
    pub addr: AddrText,
    pub port: u16,
}

impl Endpoint {
    /// Appends `addr:port` (IPv6 in brackets).
    pub fn push_to(self, out: &mut String) {
        if self.ipv6 {
            out.push('[');
        }
        out.push_str(self.addr.as_str());
        if self.ipv6 {
            out.push(']');
        }
        out.push(':');
        out.push_str(itoa::Buffer::new().format(self.port));
    }
}

/// The text of a kernel address (IPv4 in the first 4 bytes).
pub(crate) fn addr(family: u16, raw: &[u8; 16]) -> AddrText {
    if family == AF_INET6 {
        ip_text(Ipv6Addr::from(*raw).into())
    } else {
        ipv4_text([raw[0], raw[1], raw[2], raw[3]])
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
    let workload = WorkloadIds { cgroup_id: ev.task.cgroup_id, mem_cgroup_id: ev.task.mem_cgroup_id };
    let mut facts = base_facts(ev);
    let dst = Endpoint { ipv6: ev.family == AF_INET6, addr: facts.dst_addr, port: ev.dport };
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
                    Message::new("TCP connect to ")
                        .with(|out| dst.push_to(out))
                        .text(" was refused: the peer answered the SYN with RST")
                        .done(),
                )
            } else if ev.sk_err == ETIMEDOUT && !soft {
                (
                    "kernel.network.connection_timeout",
                    Severity::Error,
                    Outcome::Timeout,
                    "ETIMEDOUT",
                    Message::new("TCP connect to ")
                        .with(|out| dst.push_to(out))
                        .text(" timed out after ")
                        .number(ev.syn_retries)
                        .text(" SYN retransmits with no answer")
                        .done(),
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
                    Message::new("TCP connect to ")
                        .with(|out| dst.push_to(out))
                        .text(" failed on an ICMP unreachable (")
                        .text(name)
                        .text(")")
                        .text(how)
                        .done(),
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
                Message::new("TCP connection with ")
                    .with(|out| dst.push_to(out))
                    .text(" was reset by the peer in state ")
                    .text(state)
                    .done(),
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
                Message::new("TCP connection with ")
                    .with(|out| dst.push_to(out))
                    .text(" retransmitted ")
                    .number(ev.retransmits_in_window)
                    .text(" segments within ")
                    .number(ev.window_ms)
                    .text(" ms")
                    .done(),
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
                Message::new("smoothed RTT to ")
                    .with(|out| dst.push_to(out))
                    .text(" is ")
                    .number(ev.srtt_us)
                    .text(" us against a learned baseline of ")
                    .number(ev.baseline_us)
                    .text(" us")
                    .done(),
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
            assert_eq!(addr(AF_INET, &raw).as_str(), std.to_string());
            assert_eq!(endpoint(AF_INET, &raw, 65535), format!("{std}:65535"));
            assert_eq!(endpoint(AF_INET, &raw, 0), format!("{std}:0"));
        }
        // Every octet value in every position, and addresses of every text length.
        for octet in 0..=255u8 {
            for at in 0..4 {
                let mut raw = [0u8; 16];
                raw[..4].copy_from_slice(&[9, 99, 199, 255]);
                raw[at] = octet;
                let std = std::net::Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]);
                assert_eq!(addr(AF_INET, &raw).as_str(), std.to_string());
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Sparse groups too, so that runs of zeros are compressed ("::") in varied places.
            let mask = seed.rotate_left(17) | seed.rotate_left(31);
            let raw: [u8; 16] = (u128::from(seed) << 64 | u128::from(seed & mask)).to_be_bytes();
            let std = Ipv6Addr::from(raw);
            assert_eq!(addr(AF_INET6, &raw).as_str(), std.to_string());
        }
        for v6 in [
            "::1",
            "::",
            "::ffff:10.1.2.3",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2001:db8::8a2e:370:7334",
            "fe80::1",
        ] {
            let std: Ipv6Addr = v6.parse().unwrap();
            assert_eq!(addr(AF_INET6, &std.octets()).as_str(), std.to_string());
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

    /// Every message, whole: they are written piece by piece (`Message`), and read as the
    /// one line each always was.
    #[test]
    fn each_kind_says_its_message_in_full() {
        let message = |ev: &tapio_net_event| emitted(classify(ev, &mut stamper())).error.message;
        let known = TAPIO_NET_F_TASK_KNOWN | TAPIO_NET_F_START_KNOWN;
        let mut ev = connect_failure(ECONNREFUSED, known | TAPIO_NET_F_RST_IN_SYN_SENT);
        ev.daddr[..4].copy_from_slice(&[192, 168, 100, 9]);
        ev.dport = 65535;
        assert_eq!(message(&ev), "TCP connect to 192.168.100.9:65535 was refused: the peer answered the SYN with RST");
        let mut ev = connect_failure(ETIMEDOUT, known);
        ev.syn_retries = 6;
        assert_eq!(message(&ev), "TCP connect to 10.0.0.2:5432 timed out after 6 SYN retransmits with no answer");
        ev.family = AF_INET6;
        ev.daddr = "2001:db8::8a2e:370:7334".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            message(&ev),
            "TCP connect to [2001:db8::8a2e:370:7334]:5432 timed out after 6 SYN retransmits with no answer"
        );
        let ev = connect_failure(113, known);
        assert_eq!(message(&ev), "TCP connect to 10.0.0.2:5432 failed on an ICMP unreachable (EHOSTUNREACH)");
        let ev = connect_failure(101, known | TAPIO_NET_F_SOFT_ERROR);
        assert_eq!(
            message(&ev),
            "TCP connect to 10.0.0.2:5432 failed on an ICMP unreachable (ENETUNREACH); the application then gave up the connect"
        );
        let mut ev = connect_failure(0, 0);
        ev.daddr[..4].copy_from_slice(&[0, 0, 0, 0]);
        ev.dport = 0;
        ev.hdr.kind = TAPIO_NET_RESET;
        ev.state = 8;
        assert_eq!(message(&ev), "TCP connection with 0.0.0.0:0 was reset by the peer in state CLOSE_WAIT");
        ev.hdr.kind = TAPIO_NET_RETRANSMIT_SPIKE;
        (ev.retransmits_in_window, ev.window_ms) = (12, 4294967295);
        assert_eq!(message(&ev), "TCP connection with 0.0.0.0:0 retransmitted 12 segments within 4294967295 ms");
        ev.hdr.kind = TAPIO_NET_RTT_DEGRADED;
        (ev.srtt_us, ev.baseline_us) = (9000, 100);
        assert_eq!(message(&ev), "smoothed RTT to 0.0.0.0:0 is 9000 us against a learned baseline of 100 us");
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
