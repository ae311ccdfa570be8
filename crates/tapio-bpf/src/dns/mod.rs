//! The DNS observer's kernel side: its embedded object, its own counter names and record
//! decoding.

use crate::abi::{
    tapio_dns_config, tapio_dns_event, tapio_dns_key, tapio_dns_query, TAPIO_DNS_ANSWER, TAPIO_DNS_CNT_INTERRUPTED,
    TAPIO_DNS_CNT_OWNER_UNKNOWN, TAPIO_DNS_CNT_RETRANSMISSION, TAPIO_DNS_CNT_TCP_QUERY_UNREAD,
    TAPIO_DNS_CNT_UNMATCHED_ANSWER, TAPIO_DNS_CNT_UNPARSABLE,
};
use crate::record::{decode_as, read_header, DecodeError, Record};

// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_dns_event {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_dns_config {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_dns_query {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_dns_key {}

/// Programs attached to the cgroup2 root. The sock_addr programs (connect4|6, sendmsg4|6)
/// record a socket's owner in its own context; the skb programs see the messages. Names
/// fit the kernel's 15 characters, so the kernel's run-time statistics tell them apart.
pub const OWNER_PROGRAMS: &[&str] = &["tapio_dns_conn4", "tapio_dns_conn6", "tapio_dns_send4", "tapio_dns_send6"];
/// The packet programs: (program name, true for egress, where queries leave).
pub const PACKET_PROGRAMS: &[(&str, bool)] = &[("tapio_dns_out", true), ("tapio_dns_in", false)];

/// The outstanding-query table (key `tapio_dns_key`, value `tapio_dns_query`).
pub const QUERIES_MAP: &str = "queries";

/// TCP connections that brought bytes the kernel did not read as an answer (key: socket
/// cookie, value: boot-clock ns of the latest such segment).
pub const TCP_UNREAD_MAP: &str = "tcp_unread";

/// A port-53 packet the kernel could not read as a DNS message (a correlation drop).
pub const UNPARSABLE: &str = "unparsable_message";
/// A DNS message not read because another packet's program on the same CPU took its
/// scratch meanwhile (a correlation drop).
pub const INTERRUPTED: &str = "packet_interrupted";
/// TCP queries not read: past the messages one segment is read for, or on a connection
/// whose message boundaries were lost (a correlation drop).
pub const TCP_QUERY_UNREAD: &str = "tcp_query_unread";
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
    (TAPIO_DNS_CNT_INTERRUPTED, INTERRUPTED),
    (TAPIO_DNS_CNT_TCP_QUERY_UNREAD, TCP_QUERY_UNREAD),
];

/// The compiled CO-RE object.
pub static OBJECT: crate::EmbeddedObject = crate::include_object!("dns");

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

/// The query name a record carries (wire form: length-prefixed labels), as dotted,
/// lower-cased text: `""` for the root name. Bytes that are not printable ASCII, and a dot
/// or backslash inside a label, are written `\DDD` (decimal, as dig does), so a label can
/// never pass for two. A name cut short by the record's bound ends where its bytes end.
pub fn qname(query: &tapio_dns_query) -> String {
    let wire = &query.qname;
    let mut text = String::new();
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        let end = (pos + 1 + usize::from(len)).min(wire.len());
        if !text.is_empty() {
            text.push('.');
        }
        for &b in &wire[pos + 1..end] {
            match b.to_ascii_lowercase() {
                c @ (b'!'..=b'~') if c != b'.' && c != b'\\' => text.push(char::from(c)),
                c => text.push_str(&format!("\\{c:03}")),
            }
        }
        pos = end;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::TAPIO_CNT_OBSERVER_BASE;

    #[test]
    fn decodes_round_trip_and_rejects_bad_records() {
        let mut ev = tapio_dns_event::default();
        ev.hdr.kind = TAPIO_DNS_ANSWER;
        ev.rcode = 2;
        ev.query.qname[..13].copy_from_slice(b"\x07example\x03org\x00");
        let bytes = encode(&ev);
        let back = decode(&bytes).unwrap();
        assert_eq!((back.rcode, qname(&back.query).as_str()), (2, "example.org"));
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(DecodeError::WrongSize { .. })));
        let mut unknown = bytes.clone();
        unknown[8] = 9;
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind { kind: 9 });
    }

    fn named(wire: &[u8]) -> String {
        let mut q = tapio_dns_query::default();
        q.qname[..wire.len()].copy_from_slice(wire);
        qname(&q)
    }

    #[test]
    fn wire_names_become_dotted_lower_case_text_that_cannot_be_forged() {
        assert_eq!(named(b"\x03API\x07Example\x03ORG\x00"), "api.example.org");
        assert_eq!(named(b"\x00"), "", "the root name");
        assert_eq!(named(b"\x03a.b\x01c\x00"), "a\\046b.c", "a dot inside a label is escaped");
        assert_eq!(named(b"\x02\x00\xff\x00"), "\\000\\255");
        // Cut at the record's bound: the last label ends where the bytes end.
        let mut long = Vec::new();
        for _ in 0..3 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        let a63 = "a".repeat(63);
        assert_eq!(named(&long[..128]), format!("{a63}.{a63}"));
    }

    #[test]
    fn counter_slots_are_the_objects_own_and_distinct() {
        let mut slots: Vec<u32> = COUNTER_NAMES.iter().map(|&(i, _)| i).collect();
        assert!(slots.iter().all(|&i| (TAPIO_CNT_OBSERVER_BASE..crate::abi::TAPIO_CNT_MAX).contains(&i)));
        slots.dedup();
        assert_eq!(slots.len(), COUNTER_NAMES.len());
    }
}
