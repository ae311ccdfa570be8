//! The container observer's kernel side: its embedded object and record decoding.

use crate::abi::{tapio_ctr_config, tapio_exit_event, tapio_oom_event, TAPIO_CTR_EXIT, TAPIO_CTR_OOM_KILL};
use crate::record::{decode_as, read_header, DecodeError, Record};

unsafe impl Record for tapio_oom_event {}
unsafe impl Record for tapio_exit_event {}
unsafe impl Record for tapio_ctr_config {}

/// Classic tracepoint programs: (program name, category, tracepoint).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[("tapio_sched_process_exit", "sched", "sched_process_exit")];

/// BTF-typed tracepoint programs: (program name, tracepoint).
/// `signal_generate` only notes the kernel's own SIGKILLs, so `mark_victim` can tell an OOM
/// kill from the mark the kernel gives an already dying victim.
pub const BTF_TRACEPOINTS: &[(&str, &str)] =
    &[("tapio_mark_victim", "mark_victim"), ("tapio_signal_generate", "signal_generate")];

/// The typed OOM program, which reads the victim's task from `tp_btf/mark_victim`.
pub const TYPED_OOM_PROGRAM: &str = "tapio_mark_victim";

/// Its replacement on kernels whose `oom:mark_victim` passes only a pid: a classic
/// tracepoint program that reads the victim's task noted by `tapio_signal_generate`.
/// (program name, category, tracepoint); attached instead of [`TYPED_OOM_PROGRAM`], never
/// with it, or one kill would be two events.
pub const PID_OOM_TRACEPOINT: (&str, &str, &str) = ("tapio_mark_victim_pid", "oom", "mark_victim");

/// The compiled CO-RE object.
pub fn object() -> &'static [u8] {
    crate::include_object!("container")
}

/// One decoded record of the container object.
#[derive(Debug, Clone, Copy)]
pub enum ContainerRecord {
    OomKill(tapio_oom_event),
    Exit(tapio_exit_event),
}

/// Decodes one ring-buffer record of the container object.
pub fn decode(bytes: &[u8]) -> Result<ContainerRecord, DecodeError> {
    let header = read_header(bytes)?;
    match header.kind {
        TAPIO_CTR_OOM_KILL => decode_as(bytes, header.kind).map(ContainerRecord::OomKill),
        TAPIO_CTR_EXIT => decode_as(bytes, header.kind).map(ContainerRecord::Exit),
        kind => Err(DecodeError::UnknownKind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::as_bytes;

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
}
