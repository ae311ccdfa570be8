//! The floor of the kernel measurement: empty programs (the bench's own object,
//! `bpf/floor.bpf.c`) attached alone to the hooks of the programs judged in windows of their
//! own, before the agent starts, under the same load as the agent's window. What one of them
//! costs per call is what BPF run-time statistics charge on this machine for any program on
//! that hook, so each Tapio figure can be read against it. The connect-heavy part attaches
//! the set a refused connect passes ([`CONNECT`]) for rounds of its own.

use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, TracePoint};
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
    /// A packet program at the cgroup2 root, where the agent attaches its own (true: egress).
    CgroupSkb(bool),
    /// A socket-address program at the cgroup2 root (its attach type is the section's).
    CgroupSockAddr,
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Typed(tracepoint) => write!(f, "tp_btf/{tracepoint}"),
            Self::Classic(category, tracepoint) => write!(f, "tracepoint/{category}/{tracepoint}"),
            Self::CgroupSkb(true) => f.write_str("cgroup_skb/egress"),
            Self::CgroupSkb(false) => f.write_str("cgroup_skb/ingress"),
            Self::CgroupSockAddr => f.write_str("cgroup/connect4"),
        }
    }
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

/// Every hook a refused IPv4 connect passes with the agent running: the network observer's
/// two tracepoints, and the DNS observer's connect and packet programs (each packet, both
/// directions, of every socket).
pub const CONNECT: [Floor; 5] = [
    ("floor_set_state", Hook::Typed("inet_sock_set_state")),
    ("floor_rst", Hook::Typed("tcp_receive_reset")),
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
    let program = object.program_mut(name).ok_or_else(|| format!("the floor object has no program {name}"))?;
    match hook {
        Hook::Typed(tracepoint) => {
            let p: &mut BtfTracePoint = program.try_into().map_err(|e| format!("{name}: {e}"))?;
            p.load(tracepoint, btf).map_err(|e| format!("loading {name}: {e}"))?;
            p.attach().map_err(|e| format!("attaching {name} to {hook}: {e}"))?;
            p.info().map(|i| i.id()).map_err(|e| format!("{name}: {e}"))
        }
        Hook::Classic(category, tracepoint) => {
            let p: &mut TracePoint = program.try_into().map_err(|e| format!("{name}: {e}"))?;
            p.load().map_err(|e| format!("loading {name}: {e}"))?;
            p.attach(category, tracepoint).map_err(|e| format!("attaching {name} to {hook}: {e}"))?;
            p.info().map(|i| i.id()).map_err(|e| format!("{name}: {e}"))
        }
        Hook::CgroupSkb(egress) => {
            let root = tapio_agent::observers::cgroup2_root()?;
            let p: &mut CgroupSkb = program.try_into().map_err(|e| format!("{name}: {e}"))?;
            p.load().map_err(|e| format!("loading {name}: {e}"))?;
            let direction = if egress { CgroupSkbAttachType::Egress } else { CgroupSkbAttachType::Ingress };
            p.attach(&root, direction, CgroupAttachMode::Single)
                .map_err(|e| format!("attaching {name} to {hook} at the cgroup2 root: {e}"))?;
            p.info().map(|i| i.id()).map_err(|e| format!("{name}: {e}"))
        }
        Hook::CgroupSockAddr => {
            let root = tapio_agent::observers::cgroup2_root()?;
            let p: &mut CgroupSockAddr = program.try_into().map_err(|e| format!("{name}: {e}"))?;
            p.load().map_err(|e| format!("loading {name}: {e}"))?;
            p.attach(&root, CgroupAttachMode::Single)
                .map_err(|e| format!("attaching {name} to {hook} at the cgroup2 root: {e}"))?;
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
        let judged = [EXIT, MKDIR, VICTIM, IO_START, RQ_ISSUE, RQ_COMPLETE];
        for (name, hook) in judged.into_iter().chain(CONNECT) {
            assert!(name.len() <= 15, "{name} would be truncated by the kernel");
            let program = object.programs.get(name).unwrap_or_else(|| panic!("no program {name}"));
            let section = format!("{:?}", program.section);
            match hook {
                Hook::Typed(tp) => assert!(section.starts_with("BtfTracePoint"), "{name}: {section} for {tp}"),
                Hook::Classic(..) => assert!(section.starts_with("TracePoint"), "{name}: {section}"),
                Hook::CgroupSkb(egress) => {
                    let wanted = if egress { "Egress" } else { "Ingress" };
                    assert!(section.starts_with("CgroupSkb") && section.contains(wanted), "{name}: {section}")
                }
                Hook::CgroupSockAddr => assert!(section.contains("Connect4"), "{name}: {section}"),
            }
        }
        assert_eq!(object.programs.len(), 11, "a program of the object no floor names");
    }
}
