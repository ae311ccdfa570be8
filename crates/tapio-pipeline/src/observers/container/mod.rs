//! Container observer (userspace half): the hooks it attaches and its classifier, which also
//! hands the kernel's reports of new cgroups to workload identity (see [`learn_cgroup`]).

pub mod classify;

use super::{
    no_globals, no_sized_maps, no_userspace, open_carrier, CarrierLayout, Classifier, EventRings, Hook, KernelHalf,
    Observer, RuntimeFacts,
};
use crate::stamp::{Stamper, Verdict};
use classify::PageSize;
use tapio_bpf::abi::{tapio_cgroup_event, tapio_ctr_config, TAPIO_CTR_EN_EXIT, TAPIO_CTR_EN_OOM};
use tapio_bpf::container::ContainerRecord;
use tapio_identity::Learner;
use tapio_wire::CompiledConfig;

pub const NAME: &str = "container";

/// The container observer: OOM kills and abnormal process exits, and the cgroups workload
/// identity learns from.
pub static OBSERVER: Observer = Observer {
    name: NAME,
    enabled: |c| c.container.enabled,
    kernel: Some(KernelHalf {
        object: &tapio_bpf::container::OBJECT,
        hooks,
        carrier: open_carrier::<tapio_ctr_config>,
        classifier: |ctx| Box::new(ContainerClassifier::new(ctx.learner.clone())),
        counters: tapio_bpf::container::COUNTER_NAMES,
        correlation_counters: &[],
        event_rings: EventRings::Shared,
        sized_maps: no_sized_maps,
        globals: no_globals,
    }),
    userspace: no_userspace,
};

impl CarrierLayout for tapio_ctr_config {
    fn build(config: &CompiledConfig, generation: u32, _facts: &RuntimeFacts) -> Self {
        let cc = &config.container;
        let mut c = tapio_ctr_config::default();
        c.hdr.abi_version = tapio_bpf::ABI_VERSION;
        c.hdr.generation = generation;
        c.generation_check = generation;
        if cc.enabled {
            if cc.oom_kills {
                c.enabled |= TAPIO_CTR_EN_OOM;
            }
            if cc.abnormal_exits {
                c.enabled |= TAPIO_CTR_EN_EXIT;
            }
        }
        for &code in &cc.exit_ignore_codes {
            let code = usize::from(code);
            c.ignored_exit_codes[code / 64] |= 1 << (code % 64);
        }
        for &sig in &cc.exit_ignore_signals {
            c.ignored_signals |= 1u64.checked_shl(u32::from(sig)).unwrap_or(0);
        }
        c
    }
}

/// How the kernel's `oom:mark_victim` becomes oom_kill evidence on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomHook {
    /// `tp_btf/mark_victim`: the tracepoint passes the victim's task (mainline 6.9+, and
    /// stable kernels that took that change, e.g. Debian's 5.10.262 and 6.1.192).
    Typed,
    /// `tracepoint/oom/mark_victim` (a pid only, older kernels), with the victim's task
    /// noted by `tp_btf/signal_generate` when the OOM killer sends it SIGKILL.
    Pid,
}

/// Overrides the automatic choice: `auto` (default), `typed` or `pid`. For an operator whose
/// vendor kernel is detected wrongly, and for the kernel matrix, which runs the pid path on
/// kernels that would otherwise take the typed one.
pub const OOM_HOOK_ENV: &str = "TAPIO_OOM_HOOK";

const MARK_VICTIM_FORMATS: [&str; 2] =
    ["/sys/kernel/tracing/events/oom/mark_victim/format", "/sys/kernel/debug/tracing/events/oom/mark_victim/format"];

/// The change that gave mark_victim the task also gave its event these size fields, so the
/// event's format says which prototype the kernel has (the same test the typed program
/// makes with CO-RE, `trace_event_raw_mark_victim.anon_rss`).
fn typed_from_format(format: &str) -> bool {
    format.lines().any(|l| l.trim_start().starts_with("field:") && l.contains(" anon_rss;"))
}

fn detect() -> Result<OomHook, String> {
    let format = MARK_VICTIM_FORMATS
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .ok_or("the oom:mark_victim tracepoint's format is not readable (tracefs)")?;
    Ok(if typed_from_format(&format) { OomHook::Typed } else { OomHook::Pid })
}

/// The OOM hook for this kernel, logged with the reason.
pub fn oom_hook() -> OomHook {
    let forced = match std::env::var(OOM_HOOK_ENV).as_deref() {
        Ok("typed") => Some(OomHook::Typed),
        Ok("pid") => Some(OomHook::Pid),
        Ok("auto") | Ok("") | Err(_) => None,
        Ok(other) => {
            log::warn!("{OOM_HOOK_ENV}={other} is not auto, typed or pid: choosing automatically");
            None
        }
    };
    let (hook, why) = match (forced, detect()) {
        (Some(hook), _) => (hook, format!("forced by {OOM_HOOK_ENV}")),
        (None, Ok(OomHook::Typed)) => (OomHook::Typed, "this kernel's mark_victim passes the victim's task".into()),
        (None, Ok(OomHook::Pid)) => (OomHook::Pid, "this kernel's mark_victim passes only a pid".into()),
        // The typed program checks the same thing itself and counts unsupported_kernel.
        (None, Err(e)) => (OomHook::Typed, format!("{e}; trying the typed hook")),
    };
    let via = match hook {
        OomHook::Typed => "tp_btf/mark_victim",
        OomHook::Pid => "tracepoint/oom/mark_victim with tp_btf/signal_generate",
    };
    log::info!("observer {NAME}: OOM kills via {via} ({why})");
    hook
}

pub fn hooks() -> Vec<(&'static str, Hook)> {
    hooks_for(oom_hook())
}

/// The programs to attach with `oom` as the OOM hook: the typed OOM program or its pid-only
/// replacement, never both (one kill would be two events).
pub fn hooks_for(oom: OomHook) -> Vec<(&'static str, Hook)> {
    use tapio_bpf::container::{BTF_TRACEPOINTS, PID_OOM_TRACEPOINT, TRACEPOINTS, TYPED_OOM_PROGRAM};
    let classic = TRACEPOINTS.iter().map(|&(prog, cat, tp)| (prog, Hook::TracePoint(cat, tp)));
    let typed = BTF_TRACEPOINTS
        .iter()
        .filter(|&&(prog, _)| oom == OomHook::Typed || prog != TYPED_OOM_PROGRAM)
        .map(|&(prog, tp)| (prog, Hook::BtfTracePoint(tp)));
    let (prog, cat, tp) = PID_OOM_TRACEPOINT;
    let pid = (oom == OomHook::Pid).then_some((prog, Hook::TracePoint(cat, tp)));
    classic.chain(typed).chain(pid).collect()
}

pub struct ContainerClassifier {
    pages: PageSize,
    /// Where new cgroups' paths go; `None` when the agent resolves no identity.
    learner: Option<Learner>,
}

impl ContainerClassifier {
    pub fn new(learner: Option<Learner>) -> Self {
        Self { pages: PageSize::of_this_system(), learner }
    }
}

/// Teaches workload identity the path of a cgroup the kernel just created, so evidence
/// about it still names the workload once the cgroup is removed. A path the record could
/// not carry (too long, unreadable) or that is not UTF-8 is counted, never guessed at.
pub fn learn_cgroup(learner: Option<&Learner>, ev: &tapio_cgroup_event) -> Verdict {
    let Some(learner) = learner else { return Verdict::Ignore };
    match ev.path_bytes().map(std::str::from_utf8) {
        None => Verdict::Drop("cgroup_path_too_long"),
        Some(Err(_)) => Verdict::Drop("cgroup_path_not_utf8"),
        Some(Ok(path)) => {
            learner.learn(ev.hierarchy_id, ev.cgroup_id, path);
            Verdict::Ignore
        }
    }
}

impl Classifier for ContainerClassifier {
    fn classify(&mut self, record: &[u8], stamper: &mut Stamper) -> Result<Verdict, tapio_bpf::DecodeError> {
        let rec = tapio_bpf::container::decode(record)?;
        if let ContainerRecord::CgroupMkdir(ev) = &rec {
            return Ok(learn_cgroup(self.learner.as_ref(), ev));
        }
        Ok(classify::classify(&rec, &self.pages, stamper))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The carrier of a config whose `[container]` section sets `key = [value]`, laid over
    /// `production-default` as the agent's config file and a controller's profile are.
    fn carrier(key: &str, value: u16) -> Result<tapio_ctr_config, String> {
        use tapio_profile::{Builtin, Value};
        let list = Value::Seq(vec![Value::Int(value.into())]);
        let section = Value::Map(vec![(Value::Str(key.into()), list)]);
        let overrides = Value::Map(vec![(Value::Str("container".into()), section)]);
        let config = tapio_profile::overlay(Builtin::ProductionDefault, &overrides, "").map_err(|e| e.to_string())?;
        Ok(tapio_ctr_config::build(&config, 1, &RuntimeFacts::default()))
    }

    /// Every ignore value the config accepts sets exactly the bit the container program
    /// reads for it (`ignored_exit_codes[code >> 6] & 1 << (code & 63)`, `ignored_signals &
    /// 1 << (sig & 63)`): no accepted value is a no-op, and none silences another.
    #[test]
    fn every_accepted_ignore_value_sets_the_bit_the_kernel_reads() {
        for code in 1u16..=255 {
            let c = carrier("exit_ignore_codes", code).unwrap();
            let mut want = [0u64; 4];
            want[usize::from(code >> 6) & 3] = 1 << (code & 63);
            assert_eq!(c.ignored_exit_codes, want, "exit code {code}");
        }
        for sig in 1u16..=127 {
            match carrier("exit_ignore_signals", sig) {
                Ok(c) => {
                    assert_eq!(c.ignored_signals, 1u64 << (sig & 63), "signal {sig}");
                    assert!(sig < 64, "signal {sig} accepted but the kernel's mask has no bit for it");
                }
                Err(e) => assert!(sig >= 64, "signal {sig} refused: {e}"),
            }
        }
    }

    #[test]
    fn the_carrier_encodes_switches_generation_and_ignore_lists() {
        let mut config = CompiledConfig::default();
        config.container.exit_ignore_codes = vec![1, 64, 255];
        config.container.exit_ignore_signals = vec![15];
        let c = tapio_ctr_config::build(&config, 7, &RuntimeFacts::default());
        assert_eq!((c.hdr.generation, c.generation_check, c.hdr.abi_version), (7, 7, tapio_bpf::ABI_VERSION));
        assert_eq!(c.enabled, TAPIO_CTR_EN_OOM | TAPIO_CTR_EN_EXIT);
        assert_eq!(c.ignored_exit_codes, [1 << 1, 1, 0, 1 << 63]);
        assert_eq!(c.ignored_signals, 1 << 15);
        config.container.oom_kills = false;
        assert_eq!(tapio_ctr_config::build(&config, 7, &RuntimeFacts::default()).enabled, TAPIO_CTR_EN_EXIT);
    }

    fn programs(oom: OomHook) -> Vec<&'static str> {
        hooks_for(oom).into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn one_oom_program_per_kernel_and_the_signal_note_for_both() {
        let typed = programs(OomHook::Typed);
        assert!(typed.contains(&"tapio_mark_victim") && !typed.contains(&"tapio_mark_victim_pid"), "{typed:?}");
        let pid = programs(OomHook::Pid);
        assert!(pid.contains(&"tapio_mark_victim_pid") && !pid.contains(&"tapio_mark_victim"), "{pid:?}");
        for p in [&typed, &pid] {
            assert!(p.contains(&"tapio_signal_generate") && p.contains(&"tapio_sched_process_exit"), "{p:?}");
        }
    }

    #[test]
    fn cgroup_records_teach_identity_and_paths_they_cannot_carry_are_counted() {
        use tapio_bpf::abi::TAPIO_CTR_F_NO_PATH;
        let resolver = tapio_identity::Resolver::from_mountinfo(
            "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            tapio_identity::Config::default(),
        );
        let learner = resolver.learner(&[tapio_identity::CgroupHierarchy::Unified]);
        let mut ev = tapio_cgroup_event { cgroup_id: 77, hierarchy_id: 0, ..Default::default() };
        let path = b"/kubepods/burstable/pod1";
        ev.path[..path.len()].copy_from_slice(path);
        ev.path_len = path.len() as u16;
        assert!(matches!(learn_cgroup(Some(&learner), &ev), Verdict::Ignore));
        assert_eq!(learner.stats().learned, 1);
        ev.path[0] = 0xff;
        assert!(matches!(learn_cgroup(Some(&learner), &ev), Verdict::Drop("cgroup_path_not_utf8")));
        ev.flags = TAPIO_CTR_F_NO_PATH as u16;
        assert!(matches!(learn_cgroup(Some(&learner), &ev), Verdict::Drop("cgroup_path_too_long")));
        assert!(matches!(learn_cgroup(None, &ev), Verdict::Ignore), "no identity, nothing to learn");
        assert_eq!(learner.stats().learned, 1);
    }

    #[test]
    fn the_event_format_tells_the_prototype() {
        // Shapes as the kernels print them (5.10.262 with the change, an older one without).
        let with_task = "name: mark_victim\nformat:\n\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\
                         \tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;\n";
        let pid_only = "name: mark_victim\nformat:\n\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\n\
                        print fmt: \"pid=%d\", REC->pid\n";
        assert!(typed_from_format(with_task));
        assert!(!typed_from_format(pid_only));
    }
}
