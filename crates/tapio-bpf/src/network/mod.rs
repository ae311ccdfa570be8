//! The network observer's kernel side: its embedded object and record decoding.

use crate::abi::{tapio_net_config, tapio_net_event, TAPIO_NET_CONNECT_FAILED, TAPIO_NET_RTT_DEGRADED};
use crate::record::{decode_as, decode_prefix, read_header, DecodeError, Record};

// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_net_event {}
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

/// The compiled CO-RE object.
pub static OBJECT: crate::EmbeddedObject = crate::include_object!("network");

/// Bytes of a connect failure's record: the event up to `bytes_acked`, where its facts end
/// (network.h; the kernel reserves only this prefix, so a ring holds more of them).
pub const CONNECT_FAILED_BYTES: usize = std::mem::offset_of!(tapio_net_event, bytes_acked);

/// Decodes one ring-buffer record of the network object.
pub fn decode(bytes: &[u8]) -> Result<tapio_net_event, DecodeError> {
    let header = read_header(bytes)?;
    if !(TAPIO_NET_CONNECT_FAILED..=TAPIO_NET_RTT_DEGRADED).contains(&header.kind) {
        return Err(DecodeError::UnknownKind { kind: header.kind });
    }
    if header.kind == TAPIO_NET_CONNECT_FAILED {
        return decode_prefix(bytes, header.kind, CONNECT_FAILED_BYTES);
    }
    decode_as(bytes, header.kind)
}

/// The raw bytes of a record, as the kernel writes them (for tests and benchmarks).
pub fn encode(event: &tapio_net_event) -> Vec<u8> {
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

    #[test]
    fn a_connect_failure_is_its_prefix_and_nothing_else() {
        assert_eq!(CONNECT_FAILED_BYTES, 120);
        let mut ev = tapio_net_event::default();
        ev.hdr.kind = TAPIO_NET_CONNECT_FAILED;
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
