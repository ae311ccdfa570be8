//! The DNS observer's kernel side: its embedded object, its own counter names and record
//! decoding.

use crate::abi::{
    tapio_dns_config, tapio_dns_event, tapio_dns_key, tapio_dns_query, TAPIO_DNS_ANSWER, TAPIO_DNS_CNT_OWNER_UNKNOWN,
    TAPIO_DNS_CNT_RETRANSMISSION, TAPIO_DNS_CNT_UNMATCHED_ANSWER, TAPIO_DNS_CNT_UNPARSABLE,
};
use crate::record::{decode_as, read_header, DecodeError, Record};

unsafe impl Record for tapio_dns_event {}
unsafe impl Record for tapio_dns_config {}
unsafe impl Record for tapio_dns_query {}
unsafe impl Record for tapio_dns_key {}

/// Programs attached to the cgroup2 root: (program name, what it sees). The sock_addr
/// programs record a socket's owner in its own context; the skb programs see the messages.
pub const OWNER_PROGRAMS: &[&str] =
    &["tapio_dns_connect4", "tapio_dns_connect6", "tapio_dns_sendmsg4", "tapio_dns_sendmsg6"];
/// The packet programs: (program name, true for egress).
pub const PACKET_PROGRAMS: &[(&str, bool)] = &[("tapio_dns_egress", true), ("tapio_dns_ingress", false)];

/// The outstanding-query table (key `tapio_dns_key`, value `tapio_dns_query`).
pub const QUERIES_MAP: &str = "queries";

/// A port-53 packet the kernel could not read as a DNS message (a correlation drop).
pub const UNPARSABLE: &str = "unparsable_message";
/// Informational counters (see `dns.h`).
pub const UNMATCHED_ANSWER: &str = "unmatched_answer";
pub const RETRANSMISSIONS: &str = "retransmissions";
pub const OWNER_UNKNOWN: &str = "owner_unknown";

/// This object's own counter slots and their names (see `dns.h`).
pub const COUNTER_NAMES: &[(u32, &str)] = &[
    (TAPIO_DNS_CNT_UNPARSABLE, UNPARSABLE),
    (TAPIO_DNS_CNT_UNMATCHED_ANSWER, UNMATCHED_ANSWER),
    (TAPIO_DNS_CNT_RETRANSMISSION, RETRANSMISSIONS),
    (TAPIO_DNS_CNT_OWNER_UNKNOWN, OWNER_UNKNOWN),
];

/// The compiled CO-RE object.
pub fn object() -> &'static [u8] {
    crate::include_object!("dns")
}

/// Decodes one ring-buffer record of the DNS object.
pub fn decode(bytes: &[u8]) -> Result<tapio_dns_event, DecodeError> {
    let header = read_header(bytes)?;
    if header.kind != TAPIO_DNS_ANSWER {
        return Err(DecodeError::UnknownKind { kind: header.kind });
    }
    decode_as(bytes, header.kind)
}

/// The raw bytes of a record, as the kernel writes them (for tests and benchmarks).
pub fn encode(event: &tapio_dns_event) -> Vec<u8> {
    crate::record::as_bytes(event).to_vec()
}

/// The query name a record carries, as text (up to its NUL; bytes that are not UTF-8 are
/// replaced, as the kernel copies names byte for byte).
pub fn qname(query: &tapio_dns_query) -> String {
    crate::record::comm_str(&query.qname)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::TAPIO_CNT_OBSERVER_BASE;

    #[test]
    fn object_is_an_embedded_bpf_elf() {
        let obj = object();
        assert_eq!(&obj[..4], b"\x7fELF");
        assert_eq!(obj.as_ptr() as usize % 8, 0, "object must be 8-byte aligned");
    }

    #[test]
    fn decodes_round_trip_and_rejects_bad_records() {
        let mut ev = tapio_dns_event::default();
        ev.hdr.kind = TAPIO_DNS_ANSWER;
        ev.rcode = 2;
        ev.query.qname[..11].copy_from_slice(b"example.org");
        let bytes = encode(&ev);
        let back = decode(&bytes).unwrap();
        assert_eq!((back.rcode, qname(&back.query).as_str()), (2, "example.org"));
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(DecodeError::WrongSize { .. })));
        let mut unknown = bytes.clone();
        unknown[8] = 9;
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind { kind: 9 });
    }

    #[test]
    fn counter_slots_are_the_objects_own_and_distinct() {
        let mut slots: Vec<u32> = COUNTER_NAMES.iter().map(|&(i, _)| i).collect();
        assert!(slots.iter().all(|&i| (TAPIO_CNT_OBSERVER_BASE..crate::abi::TAPIO_CNT_MAX).contains(&i)));
        slots.dedup();
        assert_eq!(slots.len(), COUNTER_NAMES.len());
        assert_eq!(crate::observer_counter_names("dns").len(), COUNTER_NAMES.len());
    }
}
