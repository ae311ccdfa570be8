//! The floor of the kernel measurement: empty programs (the bench's own object,
//! `bpf/floor.bpf.c`) attached alone to the hooks of the programs judged in windows of their
//! own, before the agent starts, under the same load as the agent's window. What one of them
//! costs per call is what BPF run-time statistics charge on this machine for any program on
//! that hook, so each Tapio figure can be read against it.

use aya::programs::{BtfTracePoint, TracePoint};
use aya::{Btf, Ebpf};

/// The compiled object (build.rs), aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

/// Where an empty program goes.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// A BTF tracepoint, by its name.
    Typed(&'static str),
    /// A classic tracepoint: category and name.
    Classic(&'static str, &'static str),
}

/// One empty program: its name in the object (also the kernel's name: under 16 characters)
/// and its hook.
pub type Floor = (&'static str, Hook);

pub const EXIT: Floor = ("floor_exit", Hook::Typed("sched_process_exit"));
pub const MKDIR: Floor = ("floor_mkdir", Hook::Classic("cgroup", "cgroup_mkdir"));
pub const VICTIM: Floor = ("floor_victim", Hook::Typed("mark_victim"));
pub const IO_START: Floor = ("floor_io_start", Hook::Typed("block_io_start"));
pub const RQ_ISSUE: Floor = ("floor_rq_issue", Hook::Typed("block_rq_issue"));
pub const RQ_COMPLETE: Floor = ("floor_rq_done", Hook::Typed("block_rq_complete"));

/// Empty programs attached while this lives (dropping it detaches them).
pub struct Attached {
    _object: Ebpf,
    /// Ids of the programs that attached.
    pub ids: Vec<u32>,
    /// The programs that did not, with why.
    pub failed: Vec<(&'static str, String)>,
}

/// Attaches each of `floors`; one that cannot attach (a hook this kernel lacks) is listed in
/// `failed` and the others still attach.
pub fn attach(floors: &[Floor]) -> Result<Attached, String> {
    let mut object = Ebpf::load(OBJECT).map_err(|e| format!("loading the floor object: {e}"))?;
    let btf = Btf::from_sys_fs().map_err(|e| format!("reading the kernel's BTF: {e}"))?;
    let mut ids = Vec::new();
    let mut failed = Vec::new();
    for &(name, hook) in floors {
        match attach_one(&mut object, &btf, name, hook) {
            Ok(id) => ids.push(id),
            Err(e) => failed.push((name, e)),
        }
    }
    Ok(Attached { _object: object, ids, failed })
}

fn attach_one(object: &mut Ebpf, btf: &Btf, name: &str, hook: Hook) -> Result<u32, String> {
    let program = object.program_mut(name).ok_or_else(|| format!("the floor object has no program {name}"))?;
    match hook {
        Hook::Typed(tracepoint) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{name}: {e}"))?;
            p.load(tracepoint, btf).map_err(|e| format!("loading {name}: {e}"))?;
            p.attach().map_err(|e| format!("attaching {name} to tp_btf/{tracepoint}: {e}"))?;
            p.info().map(|i| i.id()).map_err(|e| format!("{name}: {e}"))
        }
        Hook::Classic(category, tracepoint) => {
            let p: &mut TracePoint = program.try_into().map_err(|e| format!("{name}: {e}"))?;
            p.load().map_err(|e| format!("loading {name}: {e}"))?;
            p.attach(category, tracepoint)
                .map_err(|e| format!("attaching {name} to tracepoint/{category}/{tracepoint}: {e}"))?;
            p.info().map(|i| i.id()).map_err(|e| format!("{name}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every floor the bench names is a program of the object, with the section its hook
    /// needs, and its name survives the kernel's 15-character truncation intact.
    #[test]
    fn every_floor_is_a_program_of_the_object() {
        let object = aya_obj::Object::parse(OBJECT).expect("the floor object parses");
        for (name, hook) in [EXIT, MKDIR, VICTIM, IO_START, RQ_ISSUE, RQ_COMPLETE] {
            assert!(name.len() <= 15, "{name} would be truncated by the kernel");
            let program = object.programs.get(name).unwrap_or_else(|| panic!("no program {name}"));
            let section = format!("{:?}", program.section);
            match hook {
                Hook::Typed(tp) => assert!(section.starts_with("BtfTracePoint"), "{name}: {section} for {tp}"),
                Hook::Classic(..) => assert!(section.starts_with("TracePoint"), "{name}: {section}"),
            }
        }
        assert_eq!(object.programs.len(), 6, "a program of the object no floor names");
    }
}
