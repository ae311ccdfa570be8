//! The container observer's kernel side: its embedded object, its own counter names and
//! record decoding.

use crate::abi::{
    tapio_cgroup_event, tapio_ctr_config, tapio_exit_event, tapio_oom_event, TAPIO_CGROUP_PATH_SHORT,
    TAPIO_CTR_CGROUP_MKDIR, TAPIO_CTR_CNT_OOM_VICTIM_SLOT_REUSED, TAPIO_CTR_EXIT, TAPIO_CTR_F_NO_PATH,
    TAPIO_CTR_OOM_KILL,
};
use crate::record::{decode_as, decode_prefix, read_header, DecodeError, Record};

// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_oom_event {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_exit_event {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_ctr_config {}
// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_cgroup_event {}

/// Classic tracepoint programs: (program name, category, tracepoint).
/// `cgroup_mkdir` is not evidence: it reports each new cgroup's path while it exists, for
/// workload identity (see `tapio_cgroup_event`).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[("tapio_cgroup_mkdir", "cgroup", "cgroup_mkdir")];

/// BTF-typed tracepoint programs: (program name, tracepoint). `sched_process_exit` runs
/// on every exit of the node, so the kernel builds no tracepoint record for it.
/// `signal_generate` only notes the kernel's own SIGKILLs, so `mark_victim` can tell an
/// OOM kill from the mark the kernel gives an already dying victim.
pub const BTF_TRACEPOINTS: &[(&str, &str)] = &[
    ("tapio_sched_process_exit", "sched_process_exit"),
    ("tapio_mark_victim", "mark_victim"),
    ("tapio_signal_generate", "signal_generate"),
];

/// The typed OOM program, which reads the victim's task from `tp_btf/mark_victim`.
pub const TYPED_OOM_PROGRAM: &str = "tapio_mark_victim";

/// Its replacement on kernels whose `oom:mark_victim` passes only a pid: a classic
/// tracepoint program that reads the victim's task noted by `tapio_signal_generate`.
/// (program name, category, tracepoint); attached instead of [`TYPED_OOM_PROGRAM`], never
/// with it, or one kill would be two events.
pub const PID_OOM_TRACEPOINT: (&str, &str, &str) = ("tapio_mark_victim_pid", "oom", "mark_victim");

/// The table of reported OOM victims (buckets of `TAPIO_CTR_OOM_VICTIM_WAYS` process keys,
/// see `container.h`).
pub const OOM_VICTIMS_MAP: &str = "oom_victims";

/// This object's own counter slots and their names (see `container.h`).
pub const COUNTER_NAMES: &[(u32, &str)] = &[(TAPIO_CTR_CNT_OOM_VICTIM_SLOT_REUSED, "oom_victim_slot_reused")];

/// The compiled CO-RE object.
pub static OBJECT: crate::EmbeddedObject = crate::include_object!("container");

/// One decoded record of the container object.
#[derive(Debug, Clone)]
pub enum ContainerRecord {
    OomKill(tapio_oom_event),
    Exit(tapio_exit_event),
    /// A cgroup was created (not evidence). Boxed: its path makes it 4x the others, and
    /// cgroups are made far less often than evidence.
    CgroupMkdir(Box<tapio_cgroup_event>),
}

impl tapio_cgroup_event {
    /// The path the record carries; `None` when it carries none (too long or unreadable).
    pub fn path_bytes(&self) -> Option<&[u8]> {
        if u32::from(self.flags) & crate::abi::TAPIO_CTR_F_NO_PATH != 0 {
            return None;
        }
        self.path.get(..usize::from(self.path_len))
    }
}

/// Bytes of a short cgroup record: the event up to the end of its first
/// `TAPIO_CGROUP_PATH_SHORT` path bytes (container.h), which carries any path shorter than
/// that, or none.
pub const CGROUP_SHORT_BYTES: usize = std::mem::offset_of!(tapio_cgroup_event, path) + TAPIO_CGROUP_PATH_SHORT as usize;

/// A cgroup record, short or full. A short one whose path would not end inside it is
/// malformed (its path would read the zeros past what was sent).
fn decode_cgroup(bytes: &[u8], kind: u32) -> Result<tapio_cgroup_event, DecodeError> {
    if bytes.len() != CGROUP_SHORT_BYTES {
        return decode_as(bytes, kind);
    }
    let ev: tapio_cgroup_event = decode_prefix(bytes, kind, CGROUP_SHORT_BYTES)?;
    let carries_path = u32::from(ev.flags) & TAPIO_CTR_F_NO_PATH == 0;
    if carries_path && u32::from(ev.path_len) >= TAPIO_CGROUP_PATH_SHORT {
        return Err(DecodeError::WrongSize {
            kind,
            len: bytes.len(),
            expected: std::mem::size_of::<tapio_cgroup_event>(),
        });
    }
    Ok(ev)
}

/// Decodes one ring-buffer record of the container object.
pub fn decode(bytes: &[u8]) -> Result<ContainerRecord, DecodeError> {
    let header = read_header(bytes)?;
    match header.kind {
        TAPIO_CTR_OOM_KILL => decode_as(bytes, header.kind).map(ContainerRecord::OomKill),
        TAPIO_CTR_EXIT => decode_as(bytes, header.kind).map(ContainerRecord::Exit),
        TAPIO_CTR_CGROUP_MKDIR => {
            decode_cgroup(bytes, header.kind).map(|ev| ContainerRecord::CgroupMkdir(Box::new(ev)))
        }
        kind => Err(DecodeError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::TAPIO_CNT_OBSERVER_BASE;
    use crate::record::as_bytes;

    #[test]
    fn counter_slots_are_this_objects_own_and_distinct() {
        let mut slots: Vec<u32> = COUNTER_NAMES.iter().map(|&(i, _)| i).collect();
        assert!(slots.iter().all(|&i| (TAPIO_CNT_OBSERVER_BASE..crate::abi::TAPIO_CNT_MAX).contains(&i)));
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), COUNTER_NAMES.len());
    }

    #[test]
    fn decodes_each_kind_by_its_own_size() {
        let mut exit = tapio_exit_event::default();
        exit.hdr.kind = TAPIO_CTR_EXIT;
        exit.exit_status = 3 << 8;
        match decode(as_bytes(&exit)).unwrap() {
            ContainerRecord::Exit(e) => assert_eq!(e.exit_status, 768),
            other => panic!("wrong record {other:?}"),
        }
        // An exit header on an OOM-sized record is malformed, not reinterpreted.
        let mut oom = tapio_oom_event::default();
        oom.hdr.kind = TAPIO_CTR_EXIT;
        assert!(matches!(decode(as_bytes(&oom)), Err(DecodeError::WrongSize { .. })));
    }

    fn cgroup_record(path: &[u8]) -> tapio_cgroup_event {
        let mut ev = tapio_cgroup_event { cgroup_id: 9, ..Default::default() };
        ev.hdr.kind = TAPIO_CTR_CGROUP_MKDIR;
        ev.path[..path.len()].copy_from_slice(path);
        ev.path_len = path.len() as u16;
        ev
    }

    fn path_of(bytes: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        match decode(bytes)? {
            ContainerRecord::CgroupMkdir(ev) => Ok(ev.path_bytes().map(<[u8]>::to_vec)),
            other => panic!("wrong record {other:?}"),
        }
    }

    #[test]
    fn a_cgroup_record_is_short_or_full_and_a_short_one_carries_only_a_path_that_ends_in_it() {
        let short_path = vec![b'k'; TAPIO_CGROUP_PATH_SHORT as usize - 1];
        let ev = cgroup_record(&short_path);
        // The kernel sends a path of 255 bytes (256 with its NUL) in the short record…
        assert_eq!(path_of(&as_bytes(&ev)[..CGROUP_SHORT_BYTES]), Ok(Some(short_path.clone())));
        // … and the same record in full reads the same.
        assert_eq!(path_of(as_bytes(&ev)), Ok(Some(short_path)));
        // A longer path comes only in full.
        let long_path = vec![b'l'; TAPIO_CGROUP_PATH_SHORT as usize];
        let ev = cgroup_record(&long_path);
        assert_eq!(path_of(as_bytes(&ev)), Ok(Some(long_path)));
        // A short record claiming it is malformed, not read as zeros.
        assert!(matches!(path_of(&as_bytes(&ev)[..CGROUP_SHORT_BYTES]), Err(DecodeError::WrongSize { .. })));
        // A short record without a path (too long for the full one, or unreadable) is whole.
        let mut none = cgroup_record(b"");
        none.flags = TAPIO_CTR_F_NO_PATH as u16;
        none.path_len = 0;
        assert_eq!(path_of(&as_bytes(&none)[..CGROUP_SHORT_BYTES]), Ok(None));
        // Any other length is malformed.
        assert!(matches!(decode(&as_bytes(&none)[..CGROUP_SHORT_BYTES + 8]), Err(DecodeError::WrongSize { .. })));
    }
}
