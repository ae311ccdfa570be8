//! Container records → evidence. Pure: unit-tested with crafted records.

use crate::evidence::{one_line, ExitFacts, Facts, OomFacts, Outcome, Severity, WorkloadIds};
use crate::stamp::{Draft, Stamper, Verdict};
use tapio_bpf::abi::{
    tapio_exit_event, tapio_oom_event, TAPIO_CTR_F_MEMCG_KNOWN, TAPIO_CTR_F_MM_KNOWN, TAPIO_CTR_F_START_KNOWN,
};
use tapio_bpf::container::ContainerRecord;
use tapio_bpf::record::comm_str;

const OBSERVER: &str = "container";

/// Page-based sizes are converted with the running kernel's page size.
pub struct PageSize(pub u64);

impl PageSize {
    pub fn of_this_system() -> Self {
        // SAFETY: sysconf has no memory effects.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Self(if size > 0 { size as u64 } else { 4096 })
    }

    fn bytes(&self, pages: u64) -> u64 {
        pages.saturating_mul(self.0)
    }

    /// A page_counter max at or above PAGE_COUNTER_MAX (LONG_MAX / page size) is "no limit".
    fn limit_bytes(&self, pages: u64) -> Option<u64> {
        (pages < i64::MAX as u64 / self.0).then(|| self.bytes(pages))
    }
}

pub fn signal_name(sig: u8) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    NAMES.get(usize::from(sig).checked_sub(1)?).copied()
}

/// Bytes as MiB with one decimal, in integer arithmetic (no float formatting code).
fn mib(bytes: u64) -> String {
    // In u128: a limit near u64::MAX (the kernel's value, not one Tapio chose) times ten
    // would wrap u64 and print as nothing.
    let tenths = (u128::from(bytes) * 10 + (1 << 19)) >> 20;
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

pub fn classify(record: &ContainerRecord, pages: &PageSize, stamper: &mut Stamper) -> Verdict {
    match record {
        ContainerRecord::OomKill(ev) => classify_oom(ev, pages, stamper),
        ContainerRecord::Exit(ev) => classify_exit(ev, stamper),
        // Not evidence; the classifier hands it to workload identity before this point.
        ContainerRecord::CgroupMkdir(_) => Verdict::Ignore,
    }
}

fn classify_oom(ev: &tapio_oom_event, pages: &PageSize, stamper: &mut Stamper) -> Verdict {
    let mm = u32::from(ev.flags) & TAPIO_CTR_F_MM_KNOWN != 0;
    let memcg = u32::from(ev.flags) & TAPIO_CTR_F_MEMCG_KNOWN != 0;
    let comm = comm_str(&ev.task.comm);
    let facts = OomFacts {
        pid: ev.task.pid,
        tid: ev.task.tid,
        comm: comm.clone(),
        uid: ev.uid,
        oom_score_adj: ev.oom_score_adj,
        total_vm_bytes: mm.then(|| pages.bytes(ev.total_vm_pages)),
        anon_rss_bytes: mm.then(|| pages.bytes(ev.anon_rss_pages)),
        file_rss_bytes: mm.then(|| pages.bytes(ev.file_rss_pages)),
        shmem_rss_bytes: mm.then(|| pages.bytes(ev.shmem_rss_pages)),
        pgtables_bytes: mm.then_some(ev.pgtables_bytes),
        memory_cgroup_id: memcg.then_some(ev.task.mem_cgroup_id),
        memory_cgroup_limit_bytes: if memcg { pages.limit_bytes(ev.memcg_limit_pages) } else { None },
        memory_cgroup_usage_bytes: memcg.then(|| pages.bytes(ev.memcg_usage_pages)),
    };
    let mut message = format!("the OOM killer killed {comm} (pid {})", ev.task.pid);
    if let Some(rss) = facts.anon_rss_bytes {
        message.push_str(&format!(" with {} anonymous RSS", mib(rss)));
    }
    if let Some(limit) = facts.memory_cgroup_limit_bytes {
        message.push_str(&format!("; its memory cgroup is limited to {}", mib(limit)));
    }
    stamper.stamp(Draft {
        kind: "kernel.container.oom_kill",
        observer: OBSERVER,
        severity: Severity::Critical,
        outcome: Outcome::Failure,
        code: "OOM_KILLED",
        message: one_line(message),
        boot_ns: ev.hdr.boot_ns,
        generation: ev.hdr.generation,
        workload: WorkloadIds { cgroup_id: ev.task.cgroup_id, mem_cgroup_id: ev.task.mem_cgroup_id },
        facts: Facts::Oom(facts),
    })
}

fn classify_exit(ev: &tapio_exit_event, stamper: &mut Stamper) -> Verdict {
    let status = ev.exit_status;
    let sig = (status & 0x7f) as u8;
    let core_dumped = status & 0x80 != 0;
    let code = ((status >> 8) & 0xff) as u8;
    if status == 0 {
        return Verdict::Ignore;
    }
    let comm = comm_str(&ev.task.comm);
    let pid = ev.task.pid;
    let start_known = u32::from(ev.flags) & TAPIO_CTR_F_START_KNOWN != 0;
    let (severity, err_code, message, exit_code, signal) = if sig == 0 {
        (
            Severity::Warning,
            "NONZERO_EXIT",
            format!("process {comm} (pid {pid}) exited with code {code}"),
            Some(code),
            None,
        )
    } else {
        let name = signal_name(sig).unwrap_or("SIGRT");
        let core = if core_dumped { " (core dumped)" } else { "" };
        (Severity::Error, name, format!("process {comm} (pid {pid}) was killed by {name}{core}"), None, Some(sig))
    };
    stamper.stamp(Draft {
        kind: "kernel.container.abnormal_exit",
        observer: OBSERVER,
        severity,
        outcome: Outcome::Failure,
        code: err_code,
        message: one_line(message),
        boot_ns: ev.hdr.boot_ns,
        generation: ev.hdr.generation,
        workload: WorkloadIds { cgroup_id: ev.task.cgroup_id, mem_cgroup_id: ev.task.mem_cgroup_id },
        facts: Facts::Exit(ExitFacts {
            pid,
            tid: ev.task.tid,
            comm,
            exit_code,
            signal,
            signal_name: signal.and_then(signal_name),
            core_dumped,
            threads: ev.nr_threads,
            lifetime_ns: start_known.then(|| ev.hdr.boot_ns.saturating_sub(ev.start_boot_ns)),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::testing::{emitted, stamper};

    fn exit(exit_status: u32) -> tapio_exit_event {
        let mut ev = tapio_exit_event { exit_status, ..Default::default() };
        ev.task.pid = 100;
        ev.task.tid = 104;
        ev.task.comm[..2].copy_from_slice(b"sh");
        ev.nr_threads = 5;
        ev.hdr.boot_ns = 5_000;
        ev.start_boot_ns = 1_000;
        ev.flags = TAPIO_CTR_F_START_KNOWN as u16;
        ev
    }

    #[test]
    fn exit_codes_and_signals_are_decoded_from_the_wait_status() {
        let e = emitted(classify_exit(&exit(3 << 8), &mut stamper()));
        assert_eq!(
            (e.kind, e.error.code, e.severity),
            ("kernel.container.abnormal_exit", "NONZERO_EXIT", Severity::Warning)
        );
        let Facts::Exit(f) = e.facts else { panic!() };
        assert_eq!((f.pid, f.exit_code, f.signal, f.lifetime_ns, f.threads), (100, Some(3), None, Some(4_000), 5));

        let e = emitted(classify_exit(&exit(11 | 0x80), &mut stamper()));
        assert_eq!(e.error.code, "SIGSEGV");
        assert!(e.error.message.ends_with("killed by SIGSEGV (core dumped)"), "{}", e.error.message);
        let Facts::Exit(f) = e.facts else { panic!() };
        assert_eq!((f.exit_code, f.signal, f.core_dumped), (None, Some(11), true));
    }

    /// A process may name itself with a line break (prctl, or an executable's file name):
    /// the message stays one line, the comm fact keeps the name as the kernel has it.
    #[test]
    fn a_name_with_line_breaks_keeps_the_message_one_line() {
        let mut ev = exit(3 << 8);
        ev.task.comm = [0; 16];
        ev.task.comm[..9].copy_from_slice(b"a\nfake\rok");
        let e = emitted(classify_exit(&ev, &mut stamper()));
        assert_eq!(e.error.message, "process a fake ok (pid 100) exited with code 3");
        let Facts::Exit(f) = &e.facts else { panic!() };
        assert_eq!(f.comm, "a\nfake\rok");
        let mut oom = tapio_oom_event::default();
        oom.task.comm = ev.task.comm;
        let e = emitted(classify_oom(&oom, &PageSize(4096), &mut stamper()));
        assert_eq!(e.error.message, "the OOM killer killed a fake ok (pid 0)");
    }

    #[test]
    fn a_clean_exit_is_never_evidence() {
        assert!(matches!(classify_exit(&exit(0), &mut stamper()), Verdict::Ignore));
    }

    #[test]
    fn oom_sizes_are_bytes_and_unlimited_cgroups_have_no_limit() {
        let pages = PageSize(4096);
        let mut ev = tapio_oom_event::default();
        ev.task.pid = 7;
        ev.anon_rss_pages = 16_384; // 64 MiB
        ev.memcg_limit_pages = 16_384;
        ev.flags = (TAPIO_CTR_F_MM_KNOWN | TAPIO_CTR_F_MEMCG_KNOWN) as u16;
        let e = emitted(classify_oom(&ev, &pages, &mut stamper()));
        let Facts::Oom(f) = &e.facts else { panic!() };
        assert_eq!(f.anon_rss_bytes, Some(64 << 20));
        assert_eq!(f.memory_cgroup_limit_bytes, Some(64 << 20));
        assert!(e.error.message.contains("64.0 MiB"), "{}", e.error.message);

        // The largest real limit (one page under the counter's maximum) is printed as itself.
        ev.memcg_limit_pages = i64::MAX as u64 / 4096 - 1;
        let e = emitted(classify_oom(&ev, &pages, &mut stamper()));
        assert!(e.error.message.contains("limited to 8796093022208.0 MiB"), "{}", e.error.message);

        ev.memcg_limit_pages = i64::MAX as u64 / 4096; // PAGE_COUNTER_MAX
        let e = emitted(classify_oom(&ev, &pages, &mut stamper()));
        let Facts::Oom(f) = e.facts else { panic!() };
        assert_eq!(f.memory_cgroup_limit_bytes, None);

        ev.flags = 0;
        let e = emitted(classify_oom(&ev, &pages, &mut stamper()));
        let Facts::Oom(f) = e.facts else { panic!() };
        assert_eq!((f.anon_rss_bytes, f.memory_cgroup_id), (None, None));
    }

    #[test]
    fn signal_names_cover_the_standard_set() {
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(31), Some("SIGSYS"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(40), None);
    }
}
