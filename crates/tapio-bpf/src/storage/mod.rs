//! The storage observer's kernel side: its embedded object, its own counter names and record
//! decoding.

use crate::abi::{
    tapio_sto_config, tapio_sto_event, tapio_sto_inflight, TAPIO_STO_CNT_AMBIGUOUS_INFLIGHT,
    TAPIO_STO_CNT_INFLIGHT_BUSY, TAPIO_STO_CNT_INFLIGHT_FULL, TAPIO_STO_CNT_INFLIGHT_REPLACED, TAPIO_STO_CNT_REQUEUES,
    TAPIO_STO_CNT_UNISSUED_FLUSH_FAILURE, TAPIO_STO_CNT_UNMATCHED_COMPLETION, TAPIO_STO_IO_ERROR, TAPIO_STO_LATENCY,
};
use crate::record::{decode_as, read_header, DecodeError, Record};

// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_sto_event {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_sto_config {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_sto_inflight {}

/// BTF-typed tracepoint programs: (program name, tracepoint). They take the `struct request`
/// itself, which is what makes one request one key from submission to completion. The
/// names differ within the kernel's 15 characters, so each program can be told apart in
/// the kernel's program list and run-time statistics.
pub const BTF_TRACEPOINTS: &[(&str, &str)] = &[
    ("tapio_io_start", "block_io_start"),
    ("tapio_rq_issue", "block_rq_issue"),
    ("tapio_rq_requeue", "block_rq_requeue"),
    ("tapio_rq_merge", "block_rq_merge"),
    ("tapio_rq_complete", "block_rq_complete"),
];

/// The in-flight table: an array of one-line slots (`tapio_sto_inflight`), each owned by the
/// request struct whose address it names (`storage.bpf.c`).
pub const INFLIGHT_MAP: &str = "inflight";
/// The slots that have an owner (key: slot index, value: the owner): how a program claims
/// a free slot without compare-and-swap.
pub const INFLIGHT_CLAIMS_MAP: &str = "inflight_claims";
/// Beside each slot, what a judged completion reads of its request.
pub const INFLIGHT_FACTS_MAP: &str = "inflight_facts";
/// One u32, nonzero once a request's struct found no free slot (completions then release
/// their slots instead of keeping them for reuse: `storage.bpf.c`).
pub const INFLIGHT_FULL_MAP: &str = "inflight_full";

/// Correlation drop reasons counted in the kernel, by counter slot.
pub const AMBIGUOUS_INFLIGHT_IO: &str = "ambiguous_inflight_io";
pub const UNMATCHED_COMPLETION: &str = "unmatched_completion";
pub const INFLIGHT_REPLACED: &str = "inflight_replaced";
pub const UNISSUED_FLUSH_FAILURE: &str = "unissued_flush_failure";

/// This object's own counter slots and their names (see `storage.h`).
pub const COUNTER_NAMES: &[(u32, &str)] = &[
    (TAPIO_STO_CNT_AMBIGUOUS_INFLIGHT, AMBIGUOUS_INFLIGHT_IO),
    (TAPIO_STO_CNT_UNMATCHED_COMPLETION, UNMATCHED_COMPLETION),
    (TAPIO_STO_CNT_INFLIGHT_REPLACED, INFLIGHT_REPLACED),
    (TAPIO_STO_CNT_INFLIGHT_FULL, "inflight_table_full"),
    (TAPIO_STO_CNT_REQUEUES, "requeues"),
    (TAPIO_STO_CNT_INFLIGHT_BUSY, "inflight_busy"),
    (TAPIO_STO_CNT_UNISSUED_FLUSH_FAILURE, UNISSUED_FLUSH_FAILURE),
];

/// The compiled CO-RE object.
pub static OBJECT: crate::EmbeddedObject = crate::include_object!("storage");

/// Decodes one ring-buffer record of the storage object.
pub fn decode(bytes: &[u8]) -> Result<tapio_sto_event, DecodeError> {
    let header = read_header(bytes)?;
    match header.kind {
        TAPIO_STO_IO_ERROR | TAPIO_STO_LATENCY => decode_as(bytes, header.kind),
        kind => Err(DecodeError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::TAPIO_CNT_OBSERVER_BASE;
    use crate::record::as_bytes;

    #[test]
    fn decodes_known_kinds_and_rejects_truncated_or_garbage_records() {
        let mut ev = tapio_sto_event::default();
        ev.hdr.kind = TAPIO_STO_IO_ERROR;
        ev.error = 10;
        let bytes = as_bytes(&ev).to_vec();
        assert_eq!(decode(&bytes).unwrap().error, 10);
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(DecodeError::WrongSize { .. })));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(DecodeError::WrongSize { .. })));
        let mut unknown = bytes.clone();
        unknown[8] = 0;
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind { kind: 0 });
        assert!(matches!(decode(&[0xff; 7]), Err(DecodeError::TooShort { len: 7 })));
        // Garbage with a valid-looking header but the wrong length is never reinterpreted.
        let mut garbage = vec![0xa5u8; 40];
        garbage[8..12].copy_from_slice(&TAPIO_STO_LATENCY.to_ne_bytes());
        assert!(matches!(decode(&garbage), Err(DecodeError::WrongSize { .. })));
    }

    #[test]
    fn program_names_stay_distinct_in_the_kernels_15_characters() {
        let mut short: Vec<&str> = BTF_TRACEPOINTS.iter().map(|&(p, _)| &p[..p.len().min(15)]).collect();
        short.sort_unstable();
        short.dedup();
        assert_eq!(short.len(), BTF_TRACEPOINTS.len());
    }

    #[test]
    fn counter_slots_are_this_objects_own_and_distinct() {
        let mut slots: Vec<u32> = COUNTER_NAMES.iter().map(|&(i, _)| i).collect();
        assert!(slots.iter().all(|&i| (TAPIO_CNT_OBSERVER_BASE..crate::abi::TAPIO_CNT_MAX).contains(&i)));
        slots.dedup();
        assert_eq!(slots.len(), COUNTER_NAMES.len());
    }
}
