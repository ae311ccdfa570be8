//! The floor of the kernel measurement: empty programs (the bench's own object,
//! `bpf/floor.bpf.c`) attached alone to the hooks of the programs judged in windows of their
//! own, before the agent starts, under the same load as the agent's window. What one of them
//! costs per call is what BPF run-time statistics charge on this machine for any program on
//! that hook, so each Tapio figure can be read against it. The connect-heavy part attaches
//! the set a refused connect passes ([`CONNECT`]) for rounds of its own.

use aya::{Btf, Ebpf};
pub use tapio_agent::observers::Hook;

/// The compiled object (build.rs), aligned for the ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

/// One empty program: its name in the object (also the kernel's name: under 16 characters)
/// and its hook.
pub type Floor = (&'static str, Hook);

pub const EXIT: Floor = ("floor_exit", Hook::BtfTracePoint("sched_process_exit"));
pub const MKDIR: Floor = ("floor_mkdir", Hook::TracePoint("cgroup", "cgroup_mkdir"));
/// Not empty: it only writes a cgroup record's header to a ring of its own (no path), the
/// floor of a hook that reports each cgroup. Never attached with [`MKDIR`].
pub const MKDIR_RECORD: Floor = ("floor_mkdir_rec", Hook::TracePoint("cgroup", "cgroup_mkdir"));
pub const VICTIM: Floor = ("floor_victim", Hook::BtfTracePoint("mark_victim"));
/// Not empty: it only writes one OOM kill's record to a ring of its own (cleared and
/// stamped), the floor of a hook that reports where its context leaves the ring cold. Never
/// attached with [`VICTIM`]: each floor runs alone on its hook.
pub const VICTIM_RECORD: Floor = ("floor_oom_rec", Hook::BtfTracePoint("mark_victim"));
pub const IO_START: Floor = ("floor_io_start", Hook::BtfTracePoint("block_io_start"));
pub const RQ_ISSUE: Floor = ("floor_rq_issue", Hook::BtfTracePoint("block_rq_issue"));
pub const RQ_COMPLETE: Floor = ("floor_rq_done", Hook::BtfTracePoint("block_rq_complete"));

/// Every hook a refused IPv4 connect passes with the agent running: the network observer's
/// two tracepoints, and the DNS observer's connect and packet programs (each packet, both
/// directions, of every socket).
pub const CONNECT: [Floor; 5] = [
    ("floor_set_state", Hook::BtfTracePoint("inet_sock_set_state")),
    ("floor_rst", Hook::BtfTracePoint("tcp_receive_reset")),
    ("floor_conn4", Hook::CgroupSockAddr),
    ("floor_skb_in", Hook::CgroupSkb(false)),
    ("floor_skb_out", Hook::CgroupSkb(true)),
];

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
    // The agent's own attach: the same program types, the same cgroup2 root and mode.
    tapio_agent::observers::attach(object, Some(btf), name, hook).map_err(|e| format!("{name} on {hook}: {e}"))?;
    let program = object.program(name).ok_or_else(|| format!("the floor object has no program {name}"))?;
    program.info().map(|i| i.id()).map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every floor the bench names is a program of the object, with the section its hook
    /// needs, and its name survives the kernel's 15-character truncation intact.
    #[test]
    fn every_floor_is_a_program_of_the_object() {
        let object = aya_obj::Object::parse(OBJECT).expect("the floor object parses");
        let judged = [EXIT, MKDIR, MKDIR_RECORD, VICTIM, VICTIM_RECORD, IO_START, RQ_ISSUE, RQ_COMPLETE];
        for (name, hook) in judged.into_iter().chain(CONNECT) {
            assert!(name.len() <= 15, "{name} would be truncated by the kernel");
            let program = object.programs.get(name).unwrap_or_else(|| panic!("no program {name}"));
            let section = format!("{:?}", program.section);
            match hook {
                Hook::BtfTracePoint(tp) => assert!(section.starts_with("BtfTracePoint"), "{name}: {section} for {tp}"),
                Hook::TracePoint(..) => assert!(section.starts_with("TracePoint"), "{name}: {section}"),
                Hook::CgroupSkb(egress) => {
                    let wanted = if egress { "Egress" } else { "Ingress" };
                    assert!(section.starts_with("CgroupSkb") && section.contains(wanted), "{name}: {section}")
                }
                Hook::CgroupSockAddr => assert!(section.contains("Connect4"), "{name}: {section}"),
            }
        }
        assert_eq!(object.programs.len(), 13, "a program of the object no floor names");
    }
}
