//! The network observer's kernel side: its embedded object and record decoding.

use crate::abi::{
    tapio_net_config, tapio_net_connect4, tapio_net_event, TAPIO_NET_CONNECT_FAILED, TAPIO_NET_CONNECT_FAILED_V4,
    TAPIO_NET_RTT_DEGRADED,
};
use crate::record::{decode_as, decode_prefix, read_header, DecodeError, Record};

// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_net_event {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_net_connect4 {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_net_config {}

/// Tracepoint programs of this object: (program name, category, tracepoint).
/// `tcp_retransmit_skb` fires only for retransmits, and its context's layout is read
/// either way across kernels.
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[("tapio_tcp_retransmit_skb", "tcp", "tcp_retransmit_skb")];

/// BTF tracepoint programs of this object (the hooks every connection, RST or received
/// segment passes: no tracepoint record is built for them): (program name, tracepoint).
pub const BTF_TRACEPOINTS: &[(&str, &str)] = &[
    ("tapio_inet_sock_set_state", "inet_sock_set_state"),
    ("tapio_tcp_receive_reset", "tcp_receive_reset"),
    ("tapio_tcp_probe", "tcp_probe"),
];

/// The hashed twins of the two programs that keep the table of connects in SYN_SENT
/// (program, twin): the same hooks, with a hash instead of the slot array, for kernels
/// whose BPF has no compare-and-swap (before 5.12; network.bpf.c).
pub const HASHED_TWINS: &[(&str, &str)] = &[
    ("tapio_inet_sock_set_state", "tapio_inet_sock_set_state_hashed"),
    ("tapio_tcp_receive_reset", "tapio_tcp_receive_reset_hashed"),
];

/// The compiled CO-RE object.
pub static OBJECT: crate::EmbeddedObject = crate::include_object!("network");

/// Bytes of an IPv6 connect failure's record: the event up to `bytes_acked`, where its facts
/// end (network.h; the kernel reserves only this prefix, so a ring holds more of them).
pub const CONNECT_FAILED_BYTES: usize = std::mem::offset_of!(tapio_net_event, bytes_acked);

const AF_INET: u16 = 2;
/// The state a connect failure left (the compact IPv4 record does not carry it).
const TCP_SYN_SENT: u32 = 2;

/// Decodes one ring-buffer record of the network object. An IPv4 connect failure arrives in
/// its compact record and comes out as every other connect failure: the shared layout, kind
/// `TAPIO_NET_CONNECT_FAILED`.
pub fn decode(bytes: &[u8]) -> Result<tapio_net_event, DecodeError> {
    let header = read_header(bytes)?;
    match header.kind {
        TAPIO_NET_CONNECT_FAILED_V4 => decode_as::<tapio_net_connect4>(bytes, header.kind).map(|v4| widen(&v4)),
        TAPIO_NET_CONNECT_FAILED => decode_prefix(bytes, header.kind, CONNECT_FAILED_BYTES),
        kind if (TAPIO_NET_CONNECT_FAILED..=TAPIO_NET_RTT_DEGRADED).contains(&kind) => decode_as(bytes, kind),
        kind => Err(DecodeError::UnknownKind { kind }),
    }
}

/// An IPv4 connect failure in the shared layout.
fn widen(v4: &tapio_net_connect4) -> tapio_net_event {
    let mut ev = tapio_net_event { hdr: v4.hdr, task: v4.task, ..Default::default() };
    ev.hdr.kind = TAPIO_NET_CONNECT_FAILED;
    ev.saddr[..4].copy_from_slice(&v4.saddr);
    ev.daddr[..4].copy_from_slice(&v4.daddr);
    ev.sport = v4.sport;
    ev.dport = v4.dport;
    ev.family = AF_INET;
    ev.flags = v4.flags;
    ev.state = TCP_SYN_SENT;
    ev.sk_err = v4.sk_err;
    ev.syn_retries = v4.syn_retries;
    ev.duration_ns = v4.duration_ns;
    ev
}

/// The raw bytes of a record, as the kernel writes them (for tests and benchmarks): an IPv4
/// connect failure as its compact record, an IPv6 one as its prefix.
pub fn encode(event: &tapio_net_event) -> Vec<u8> {
    if event.hdr.kind == TAPIO_NET_CONNECT_FAILED && event.family == AF_INET {
        let mut v4 = tapio_net_connect4 { hdr: event.hdr, task: event.task, ..Default::default() };
        v4.hdr.kind = TAPIO_NET_CONNECT_FAILED_V4;
        v4.saddr.copy_from_slice(&event.saddr[..4]);
        v4.daddr.copy_from_slice(&event.daddr[..4]);
        v4.sport = event.sport;
        v4.dport = event.dport;
        v4.flags = event.flags;
        v4.sk_err = event.sk_err;
        v4.syn_retries = event.syn_retries;
        v4.duration_ns = event.duration_ns;
        return crate::record::as_bytes(&v4).to_vec();
    }
    let all = crate::record::as_bytes(event);
    let len = if event.hdr.kind == TAPIO_NET_CONNECT_FAILED { CONNECT_FAILED_BYTES } else { all.len() };
    all[..len].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::TAPIO_NET_RESET;

    #[test]
    fn decodes_round_trip_and_rejects_bad_records() {
        let mut ev = tapio_net_event::default();
        ev.hdr.kind = TAPIO_NET_RESET;
        ev.dport = 443;
        let bytes = encode(&ev);
        assert_eq!(decode(&bytes).unwrap().dport, 443);
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(DecodeError::WrongSize { .. })));
        let mut unknown = bytes.clone();
        unknown[8] = 99;
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind { kind: 99 });
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::TooShort { len: 3 })));
    }

    /// An IPv4 connect failure is its 88-byte compact record, read back as the shared layout
    /// with every fact in place; any other length of it is malformed.
    #[test]
    fn an_ipv4_connect_failure_is_its_compact_record_read_back_whole() {
        assert_eq!(std::mem::size_of::<tapio_net_connect4>(), 88);
        let mut ev = tapio_net_event {
            hdr: crate::abi::tapio_event_header { boot_ns: 9, kind: TAPIO_NET_CONNECT_FAILED, generation: 4 },
            ..Default::default()
        };
        ev.task.pid = 11;
        ev.task.tid = 12;
        ev.task.cgroup_id = 13;
        ev.task.mem_cgroup_id = 14;
        ev.task.comm[..4].copy_from_slice(b"curl");
        ev.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        ev.sport = 40_000;
        ev.dport = 1;
        ev.family = AF_INET;
        ev.flags = 7;
        ev.state = TCP_SYN_SENT;
        ev.sk_err = 111;
        ev.syn_retries = 2;
        ev.duration_ns = 5_000;
        let bytes = encode(&ev);
        assert_eq!(bytes.len(), 88);
        assert_eq!(read_header(&bytes).unwrap().kind, TAPIO_NET_CONNECT_FAILED_V4);
        assert_eq!(crate::record::as_bytes(&decode(&bytes).unwrap()), crate::record::as_bytes(&ev));
        assert!(matches!(decode(&bytes[..87]), Err(DecodeError::WrongSize { .. })));
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(matches!(decode(&longer), Err(DecodeError::WrongSize { .. })));
    }

    #[test]
    fn an_ipv6_connect_failure_is_its_prefix_and_nothing_else() {
        assert_eq!(CONNECT_FAILED_BYTES, 120);
        let mut ev = tapio_net_event::default();
        ev.hdr.kind = TAPIO_NET_CONNECT_FAILED;
        ev.family = 10;
        ev.sk_err = 111;
        ev.duration_ns = 7;
        ev.bytes_acked = 5; // past the prefix: never written by the kernel for this kind
        let bytes = encode(&ev);
        assert_eq!(bytes.len(), CONNECT_FAILED_BYTES);
        let back = decode(&bytes).unwrap();
        assert_eq!((back.sk_err, back.duration_ns, back.bytes_acked), (111, 7, 0));
        // The whole struct is not what the kernel writes for this kind: malformed, counted.
        let whole = crate::record::as_bytes(&ev).to_vec();
        let expected = DecodeError::WrongSize { kind: TAPIO_NET_CONNECT_FAILED, len: whole.len(), expected: 120 };
        assert_eq!(decode(&whole).unwrap_err(), expected);
        assert!(matches!(decode(&bytes[..119]), Err(DecodeError::WrongSize { .. })));
    }
}
